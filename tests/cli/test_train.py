#!/usr/bin/env python3
"""`p2bw train` as users run it, under mpiexec: a 4-stage 2bw run of the tiny GPT; the demo deck on
2 stages with 2bw, whose loss must fall on real text; a deliberately stalled rank, which must make
the run fail with the timeout message instead of hanging; and user errors with exit code 2.
Usage: test_train.py P2BW MPIEXEC [MPIEXEC_FLAGS...]"""
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
P2BW, MPIEXEC, FLAGS = sys.argv[1], sys.argv[2], sys.argv[3:]
results = []


def train(ranks, *args, env=None, timeout=300):
    command = [MPIEXEC, "-n", str(ranks), *FLAGS, P2BW, "train", *args]
    start = time.monotonic()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    return run, time.monotonic() - start


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok' if condition else 'FAILED':6} {name}" + ("" if condition else f"\n       {detail}"))


def losses(stdout):
    return [float(x) for x in re.findall(r"\| loss ([0-9.]+)", stdout)]


out = "/tmp/p2bw-cli-train"
r, _ = train(4, "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=4", "--set", "pipeline.schedule=2bw",
             "--set", f"output.dir={out}")
check("mpiexec -n 4 p2bw train inputs/gpt-tiny.yaml --set pipeline.depth=4 --set pipeline.schedule=2bw",
      r.returncode == 0 and "step      6/6" in r.stdout and "stage 3 on ranks 3..3: blocks 3-3 + head" in r.stdout,
      r.stdout[-800:] + r.stderr[-800:])

r, _ = train(2, "inputs/demo.yaml", "--set", "train.steps=30", "--set", f"output.dir={out}")
curve = losses(r.stdout)
check("the demo deck on 2 stages with 2bw: the loss falls on real text",
      r.returncode == 0 and len(curve) >= 3 and curve[-1] < curve[0] - 1.5, r.stdout[-1500:] + r.stderr[-800:])

r, seconds = train(2, "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2", "--set", "pipeline.timeout_s=2",
                   "--set", f"output.dir={out}", env={"P2BW_TEST_STALL_RANK": "1"}, timeout=120)
check("a stalled rank makes the run fail with the timeout message, not hang",
      r.returncode != 0 and seconds < 60 and re.search(r"stage 0: .*no progress for 2 s .*rank 1", r.stderr),
      f"exit {r.returncode} after {seconds:.0f} s; stderr: {r.stderr[-600:]}")

r, _ = train(3, "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2")
check("train with the wrong number of ranks: one line, exit 2",
      r.returncode == 2 and r.stderr.count("\n") == 1 and "but the run has 3 MPI ranks" in r.stderr, r.stderr)

r, _ = train(1, "inputs/gpt-tiny.yaml", "--set", "model.vocab=100", "--set", "data.format=tokens",
             "--set", "data.path=data/fortunes.tok")
check("data that does not fit the model: one line, exit 2",
      r.returncode == 2 and r.stderr.count("\n") == 1 and "model.vocab = 100" in r.stderr, r.stderr)

print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
