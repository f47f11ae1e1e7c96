#!/usr/bin/env python3
"""`p2bw inspect FILE` as users run it: the metrics file of a real tiny training run (and of a
resumed one: no step twice), the timeline of p2bw simulate, and every malformed file (missing,
not HDF5, foreign HDF5, wrong format or version, missing dataset, datasets of different lengths)
as one line on stderr naming the file, with exit code 2. Malformed metrics files are made with
h5py (in this interpreter, else /usr/bin/python3); without h5py those checks are skipped with the
reason. Usage: test_inspect.py P2BW
(Internally also: test_inspect.py --make-files DIR, which writes the h5py files into DIR.)"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
# Set to True once `p2bw train` writes <output.dir>/metrics.h5: a run without it then fails.
REQUIRE_TRAIN_METRICS = True

STEP_SERIES = {"step": "i8", "loss": "f8", "lr": "f8", "grad_norm": "f8", "tokens_per_s": "f8",
               "time_s": "f8", "skipped": "u1"}
STAGE_SERIES = {"step": "i8", "compute_s": "f8", "wait_s": "f8", "idle_s": "f8",
                "peak_memory_bytes": "i8"}
CATEGORIES = ("weights", "gradients", "optimizer", "activations", "buffers", "workspace")


def make_files(directory):
    """Writes metrics files in the documented layout with h5py: good.h5 (3 steps, 2 stages,
    a trace) and spoiled copies, one per kind of mistake."""
    import h5py
    import numpy as np

    def metrics(path, spoil=None):
        with h5py.File(path, "w") as f:
            f.attrs["format"] = "p2bw-metrics"
            f.attrs["format_version"] = np.int64(1)
            f.attrs["p2bw_version"] = "h5py-made"
            f.attrs["deck"] = "model:\n  kind: gpt\n  layers: 2\n  hidden: 8\n"
            f.attrs["depth"] = np.int64(2)
            f.attrs["width"] = np.int64(1)
            f.attrs["stage_map"] = "stage 0: block 0\nstage 1: block 1\n"
            f.attrs["kokkos"] = "Kokkos (Serial)"
            f.attrs["start_time"] = "2025-01-31T12:00:00Z"
            values = {"step": [1, 2, 3], "loss": [4.0, 3.5, 3.75], "lr": [0.1] * 3,
                      "grad_norm": [1.0] * 3, "tokens_per_s": [100.0, 200.0, 300.0],
                      "time_s": [1.0, 2.0, 3.0], "skipped": [0, 0, 0]}
            for name, dtype in STEP_SERIES.items():
                f.create_dataset(f"steps/{name}", data=np.array(values[name], dtype=dtype),
                                 maxshape=(None,), chunks=(1024,))
            for s in range(2):
                g = f.create_group(f"stages/{s}")
                rows = {"step": [1, 2, 3], "compute_s": [3.0] * 3, "wait_s": [0.5] * 3,
                        "idle_s": [0.5 + s] * 3, "peak_memory_bytes": [1000] * 3}
                for name, dtype in STAGE_SERIES.items():
                    g.create_dataset(name, data=np.array(rows[name], dtype=dtype), maxshape=(None,))
                g.attrs["predicted_memory_bytes"] = np.int64(1200)
                for c in CATEGORIES:
                    g.attrs[f"predicted_{c}_bytes"] = np.int64(200)
            t = f.create_group("trace")
            t.attrs["action_names"] = "F,B,Bi,Bw,send_act"
            r = t.create_group("rank_0")
            r["kind"] = np.array([0, 4, 1], dtype="i4")
            r["microbatch"] = np.array([1, 1, 1], dtype="i4")
            r["version"] = np.array([0, 0, 0], dtype="i4")
            r["start"] = np.array([0.0, 1.0, 2.0])
            r["end"] = np.array([1.0, 2.0, 4.0])
            if spoil:
                spoil(f)

    def resize(name, rows):
        return lambda f: f[name].resize((rows,))

    metrics(f"{directory}/good.h5")
    metrics(f"{directory}/wrong_format.h5", lambda f: f.attrs.modify("format", "p2bw-unknown"))
    metrics(f"{directory}/wrong_version.h5", lambda f: f.attrs.modify("format_version", np.int64(7)))
    metrics(f"{directory}/missing_dataset.h5", lambda f: f.__delitem__("steps/grad_norm"))
    metrics(f"{directory}/missing_stage.h5", lambda f: f.__delitem__("stages/1"))
    metrics(f"{directory}/different_lengths.h5", resize("steps/loss", 2))
    metrics(f"{directory}/stage_lengths.h5", resize("stages/1/wait_s", 4))
    with h5py.File(f"{directory}/foreign.h5", "w") as f:
        f["x"] = np.arange(3)


if len(sys.argv) == 3 and sys.argv[1] == "--make-files":
    make_files(sys.argv[2])
    sys.exit(0)

P2BW = sys.argv[1]
results = []


def run(*args, timeout=300):
    return subprocess.run([P2BW, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok' if condition else 'FAILED':6} {name}" + ("" if condition else f"\n       {detail}"))


def skip(name, reason):
    print(f"{'skip':6} {name}: {reason}")


def user_error(name, path, result, *words):
    """Exit code 2, one line on stderr naming the file (and the words), nothing on stdout."""
    check(name, result.returncode == 2 and result.stderr.count("\n") == 1 and path in result.stderr
          and not result.stdout and all(w in result.stderr for w in words),
          f"exit {result.returncode}; stdout {result.stdout[:200]!r}; stderr {result.stderr!r}")


def h5py_python():
    """An interpreter that can import h5py, or None."""
    for python in (sys.executable, "/usr/bin/python3"):
        if python and os.path.exists(python) and subprocess.run(
                [python, "-c", "import h5py"], capture_output=True).returncode == 0:
            return python
    return None


def read_steps(python, path):
    """/steps/step of a metrics file, through h5py."""
    r = subprocess.run([python, "-c", "import h5py, sys; print(list(h5py.File(sys.argv[1], 'r')"
                        "['steps/step'][:]))", path], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else r.stderr.strip()


help_text = run("--help").stdout
train_help = run("train", "--help").stdout if re.search(r"^\s+train\b", help_text, re.M) else ""
python = h5py_python()
tmp = tempfile.mkdtemp(prefix=f"p2bw-inspect-{os.getpid()}-")
try:
    # A real tiny training run.
    out = f"{tmp}/train"
    if not train_help:
        skip("inspect the metrics of p2bw train", "this p2bw has no train subcommand")
    else:
        r = run("train", "inputs/gpt-tiny.yaml", "--set", f"output.dir={out}", "--set", "train.steps=4")
        metrics = f"{out}/metrics.h5"
        if r.returncode == 0 and not os.path.exists(metrics) and not REQUIRE_TRAIN_METRICS:
            skip("inspect the metrics of p2bw train", "p2bw train does not write metrics.h5 yet")
        else:
            check("p2bw train inputs/gpt-tiny.yaml (4 steps) writes metrics.h5",
                  r.returncode == 0 and os.path.exists(metrics), r.stdout[-500:] + r.stderr[-500:])
            i = run("inspect", metrics)
            check("inspect the metrics of p2bw train: 4 steps, loss, throughput, stage 0",
                  i.returncode == 0 and f"{metrics}: p2bw-metrics version 1" in i.stdout
                  and "steps: 4 recorded (steps 1 to 4), 0 skipped" in i.stdout
                  and re.search(r"loss: first \d+\.\d{4} \(step 1\), last \d+\.\d{4} \(step 4\)", i.stdout)
                  and "model: gpt, layers 4, hidden 32" in i.stdout
                  and re.search(r"mean \d+\.\d tokens/s", i.stdout)
                  and re.search(r"^\s+0\s+4\s+\d", i.stdout, re.M), i.stdout + i.stderr)
            if "--resume" in train_help:
                common = ["inputs/gpt-tiny.yaml", "--set", f"output.dir={out}2", "--set", "checkpoint.every=2"]
                first = run("train", *common, "--set", "train.steps=3")
                again = run("train", *common, "--set", "train.steps=6", "--resume", "latest")
                i = run("inspect", f"{out}2/metrics.h5")
                steps = read_steps(python, f"{out}2/metrics.h5") if python else "[1, 2, 3, 4, 5, 6]"
                check("a resumed run's metrics hold every step once",
                      first.returncode == 0 and again.returncode == 0 and i.returncode == 0
                      and "steps: 6 recorded (steps 1 to 6)" in i.stdout and "resumed at step" in i.stdout
                      and steps == "[1, 2, 3, 4, 5, 6]",
                      f"{steps}; {first.stderr[-300:]} {again.stderr[-300:]} {i.stdout} {i.stderr}")

    # The simulator's timeline.
    r = run("simulate", "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=4", "--set", "pipeline.schedule=flush",
            "--set", "pipeline.microbatches=8", "-o", f"{tmp}/sim.h5")
    if r.returncode != 0 and not os.path.exists(f"{tmp}/sim.h5"):
        skip("inspect a p2bw simulate timeline", "this p2bw cannot simulate")
    else:
        i = run("inspect", f"{tmp}/sim.h5")
        check("inspect a p2bw simulate timeline: makespan, 4 stages, bubble 0.2727",
              i.returncode == 0 and "p2bw-simulation version 1" in i.stdout and "makespan " in i.stdout
              and re.search(r"^\s+3\s+\d+\s", i.stdout, re.M) and "bubble fraction: 0.2727" in i.stdout,
              i.stdout + i.stderr)

    # Files that are not what inspect reads.
    r = run("inspect")
    check("inspect without a file: one line, exit 2", r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr)
    absent = f"{tmp}/absent.h5"
    user_error("a missing file: one line, exit 2", absent, run("inspect", absent), "no such file")
    text = f"{tmp}/text.h5"
    pathlib.Path(text).write_text("not an HDF5 file\n")
    user_error("a text file: one line, exit 2", text, run("inspect", text), "not an HDF5 file")

    if python is None:
        skip("malformed metrics files", "h5py is not importable (python3-h5py), so none can be made")
    else:
        made = subprocess.run([python, __file__, "--make-files", tmp], capture_output=True, text=True)
        check("h5py writes the test files", made.returncode == 0, made.stderr[-800:])
        good = f"{tmp}/good.h5"
        i = run("inspect", good)
        # stage 0: compute 3, wait 0.5, idle 0.5 -> bubble 1/4; stage 1: idle 1.5 -> 2/5.
        check("inspect an h5py-made metrics file: steps, min loss, bubbles, trace",
              i.returncode == 0 and "steps: 3 recorded (steps 1 to 3), 0 skipped" in i.stdout
              and "min 3.5000 (step 2)" in i.stdout and "mean 200.0 tokens/s" in i.stdout
              and re.search(r"^\s+0\s+3\s+3\.000000\s+0\.500000\s+0\.500000\s+0\.2500", i.stdout, re.M)
              and re.search(r"^\s+1\s+3\s+3\.000000\s+0\.500000\s+1\.500000\s+0\.4000", i.stdout, re.M)
              and "rank 0: 3 events, busy 3.000000 s of 4.000000 s, bubble 0.2500" in i.stdout,
              i.stdout + i.stderr)
        for name, words in [("foreign", ("no format attribute", "p2bw-metrics", "p2bw-simulation")),
                            ("wrong_format", ("format 'p2bw-unknown'", "p2bw-metrics", "p2bw-simulation")),
                            ("wrong_version", ("format_version 7", "allowed: 1")),
                            ("missing_dataset", ("/steps/grad_norm is missing",)),
                            ("missing_stage", ("/stages/1 is missing",)),
                            ("different_lengths", ("/steps have different lengths", "loss 2")),
                            ("stage_lengths", ("/stages/1 have different lengths", "wait_s 4"))]:
            path = f"{tmp}/{name}.h5"
            user_error(f"{name.replace('_', ' ')}: one line naming the file, exit 2", path,
                       run("inspect", path), *words)
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
