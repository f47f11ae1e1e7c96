#!/usr/bin/env python3
"""Switching pipeline.schedule at a resume works as "one key" promises: flush or gpipe -> 2bw
starts 2bw from the one saved version (the same as a 2bw run whose synchronous warm-up ended at
the checkpoint); 2bw -> flush keeps the newest version. Whatever is refused is refused before
anything is written: the run folder is byte for byte unchanged.
Usage: test_resume_switch.py P2BW MPIEXEC [MPIEXEC_FLAGS...]"""
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
P2BW, MPIEXEC, FLAGS = sys.argv[1], sys.argv[2], sys.argv[3:]
results = []
COMMON = ["inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2", "--set", "pipeline.microbatches=4",
          "--set", "train.log_every=1", "--set", "train.lr_decay=constant", "--set", "checkpoint.every=0"]


def train(*args):
    return subprocess.run([MPIEXEC, "-n", "2", *FLAGS, P2BW, "train", *COMMON, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok' if condition else 'FAILED':6} {name}" + ("" if condition else f"\n       {detail}"))


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(pathlib.Path(folder).rglob("*")):
        if path.is_file() and path.name != "train.lock":
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def losses(out):
    return re.findall(r"step +(\d+)/\d+ \| loss ([0-9.]+)", out)


tmp = tempfile.mkdtemp(prefix="p2bw-switch-")
# The reference of flush/gpipe -> 2bw: 2bw whose flush warm-up ends at step 4.
reference = train("--set", "pipeline.schedule=2bw", "--set", "pipeline.sync_warmup_steps=4", "--set", "train.steps=6",
                  "--set", f"output.dir={tmp}/reference")
check("reference: 2bw with 4 warm-up steps", reference.returncode == 0, reference.stderr[-400:])

for before, after in [("flush", "2bw"), ("gpipe", "2bw"), ("2bw", "flush")]:
    folder = f"{tmp}/{before}-{after}"
    first = train("--set", f"pipeline.schedule={before}", "--set", "pipeline.sync_warmup_steps=0", "--set", "train.steps=4",
                  "--set", f"output.dir={folder}")
    untouched = digest(folder)
    r = train("--set", f"pipeline.schedule={after}", "--set", "pipeline.sync_warmup_steps=0", "--set", "train.steps=6",
              "--set", f"output.dir={folder}", "--resume", "latest")
    if r.returncode != 0:
        check(f"{before} -> {after}: a refusal is one line, exit 2, before anything is written",
              first.returncode == 0 and r.returncode == 2 and r.stderr.count("\n") == 1 and digest(folder) == untouched,
              f"exit {r.returncode}: {r.stderr[-500:]}")
    resumed = r.returncode == 0 and "resumed after step 4" in r.stdout and "step      6/6" in r.stdout
    if after == "2bw":
        resumed = resumed and losses(r.stdout)[-2:] == losses(reference.stdout)[-2:]
    promise = "2bw starts from the one saved version" if after == "2bw" else "keeps the newest"
    check(f"{before} -> {after}: resumes ({promise})", resumed,
          f"exit {r.returncode}: {r.stderr[-300:]} {losses(r.stdout)} vs {losses(reference.stdout)}")

# What can never resume is refused before anything is written.
folder = f"{tmp}/flush-flush"
train("--set", "pipeline.schedule=flush", "--set", "train.steps=4", "--set", f"output.dir={folder}")
untouched = digest(folder)
for what, args, needle in [("another optimizer", ["--set", "train.optimizer.kind=sgd"], "optimizer adamw in the checkpoint"),
                           ("no steps left", ["--set", "train.steps=4"], "the checkpoint is at step 4"),
                           ("another model", ["--set", "model.hidden=64"], "model_hidden is 32")]:
    r = train("--set", "pipeline.schedule=flush", *(["--set", "train.steps=6"] + args), "--set", f"output.dir={folder}",
              "--resume", "latest")
    check(f"a resume with {what}: one line, exit 2, nothing written", r.returncode == 2 and r.stderr.count("\n") == 1
          and needle in r.stderr and digest(folder) == untouched, f"exit {r.returncode}: {r.stderr[-400:]}")

shutil.rmtree(tmp, ignore_errors=True)
print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
