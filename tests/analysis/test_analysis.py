#!/usr/bin/env python3
"""Tests of the analysis scripts (analysis/*.py) on real tiny p2bw runs.

Usage: test_analysis.py P2BW MPIEXEC [MPIEXEC_FLAGS...]   (run with /usr/bin/python3)

Trains gpt-tiny for 8 steps on 2 ranks with 2bw and with flush (traced), simulates it, runs every
script, checks the numbers they print against an independent reading of the HDF5 files, checks
the figures and index.html, and checks that malformed inputs give exit code 2 and one line on
stderr. Prints one line per check and "N passed, M failed"; exit 1 on failure, 77 (skip) when
this Python lacks h5py, numpy or matplotlib.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import h5py
    import matplotlib  # noqa: F401
    import numpy as np
except ImportError as e:
    print(f"skipped: {sys.executable} lacks {e.name} (install python3-h5py python3-matplotlib "
          f"python3-numpy)")
    sys.exit(77)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANALYSIS = os.path.join(REPO, "analysis")
DECK = os.path.join(REPO, "inputs", "gpt-tiny.yaml")
STEPS = 8
COMPUTE = ("F", "B", "Bi", "Bw")

passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))
    return ok


def run(cmd, timeout=120):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)


def script(name, *args):
    return run([sys.executable, os.path.join(ANALYSIS, name), *args])


def close(a, b, tol):
    return a is not None and b is not None and abs(a - b) <= tol


def number(pattern, text):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def nonempty(path):
    return os.path.isfile(path) and os.path.getsize(path) > 0


def figures_ok(out, stems, name):
    missing = [f"{s}.{e}" for s in stems for e in ("png", "svg")
               if not nonempty(os.path.join(out, f"{s}.{e}"))]
    check(f"{name}: PNG and SVG files exist and are non-empty", not missing, f"missing {missing}")


def independent_bubble(group, names, steps=None):
    """1 - busy/span of one trace rank, optionally over steps A:B (inclusive), from h5py."""
    kind, start, end = group["kind"][()], group["start"][()], group["end"][()]
    mask = np.ones(len(kind), dtype=bool)
    if steps:
        step_ends = sorted(end[i] for i in range(len(kind)) if names[kind[i]] == "step")
        t0 = step_ends[steps[0] - 2] if steps[0] > 1 else -math.inf
        t1 = step_ends[steps[1] - 1]
        mask = (start >= t0) & (end <= t1)
    busy = sum(end[i] - start[i] for i in np.nonzero(mask)[0] if names[kind[i]] in COMPUTE)
    span = end[mask].max() - start[mask].min()
    return 1 - busy / span


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    p2bw, mpiexec, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
    tmp = tempfile.mkdtemp(prefix="p2bw-analysis-")
    try:
        return tests(p2bw, mpiexec, flags, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tests(p2bw, mpiexec, flags, tmp):
    runs = {}
    for sched in ("2bw", "flush"):
        d = os.path.join(tmp, sched)
        r = run([mpiexec, "-n", "2", *flags, p2bw, "train", DECK, "--set", "pipeline.depth=2",
                 "--set", f"pipeline.schedule={sched}", "--set", f"train.steps={STEPS}",
                 "--set", "output.trace=true", "--set", f"output.dir={d}"], timeout=180)
        if not check(f"train {sched} run", r.returncode == 0 and
                     os.path.isfile(os.path.join(d, "metrics.h5")),
                     (r.stderr or r.stdout)[-500:]):
            break
        runs[sched] = d
    sim = os.path.join(tmp, "sim")
    r = run([p2bw, "simulate", DECK, "--set", "pipeline.depth=2", "--set", f"output.dir={sim}"])
    check("simulate run", r.returncode == 0 and os.path.isfile(os.path.join(sim, "simulation.h5")),
          (r.stderr or r.stdout)[-500:])
    if len(runs) < 2:
        return finish()
    files = {k: h5py.File(os.path.join(v, "metrics.h5"), "r") for k, v in runs.items()}
    dirs = [runs["2bw"], runs["flush"]]

    for name in ("p2bw_h5.py", "loss_curves.py", "throughput.py", "timeline.py", "memory.py",
                 "report.py", "planner.py", "planner_validation.py", "convergence.py"):
        r = script(name, "--help")
        check(f"{name} --help", r.returncode == 0 and "usage" in r.stdout, r.stderr[-300:])

    # loss_curves.py
    out = os.path.join(tmp, "loss")
    r = script("loss_curves.py", *dirs, "--out", out)
    check("loss_curves.py exit 0", r.returncode == 0, r.stderr[-500:])
    for k, f in files.items():
        line = next((l for l in r.stdout.splitlines() if l.strip().startswith(f"{k} (")), "")
        loss = f["steps/loss"][()]
        check(f"loss_curves {k}: steps = {STEPS}", number(r"steps (\d+)", line) == STEPS, line)
        first = number(r"first loss ([\d.]+)", line)
        check(f"loss_curves {k}: first loss {first} ~ ln 256 = 5.545",
              close(first, math.log(256), 0.05), line)
        check(f"loss_curves {k}: first/last loss equal the file",
              close(first, loss[0], 1e-4) and
              close(number(r"last loss ([\d.]+)", line), loss[-1], 1e-4), line)
        check(f"loss_curves {k}: min loss equals min(/steps/loss) = {loss.min():.4f}",
              close(number(r"min loss ([\d.]+)", line), loss.min(), 1e-4), line)
        s = loss[0]
        for v in loss[1:]:
            s = 0.9 * s + 0.1 * v
        check(f"loss_curves {k}: final smoothed loss equals EMA(0.9) = {s:.4f}",
              close(number(r"final smoothed loss ([\d.]+)", line), s, 1e-4), line)
    figures_ok(out, ["loss_curves"], "loss_curves")
    # convergence.py: flush and 2bw with a validation split; the gap from /eval's last values
    val = {}
    for sched in ("flush", "2bw"):
        d = os.path.join(tmp, f"val-{sched}")
        r = run([mpiexec, "-n", "2", *flags, p2bw, "train", DECK, "--set", "pipeline.depth=2",
                 "--set", f"pipeline.schedule={sched}", "--set", f"train.steps={STEPS}",
                 "--set", "data.val_fraction=0.01", "--set", "train.eval_every=4",
                 "--set", f"output.dir={d}"], timeout=180)
        if check(f"train {sched} with a validation split", r.returncode == 0, r.stderr[-500:]):
            with h5py.File(os.path.join(d, "metrics.h5"), "r") as f:
                val[sched] = (d, float(f["eval/loss"][-1]), list(f["eval/step"][:]))
    if len(val) == 2:
        check("the validation loss after steps 4 and 8", val["2bw"][2] == [4, STEPS], str(val))
        r = script("convergence.py", "--run", "tiny", "3e-4", "1", "flush", val["flush"][0],
                   "--run", "tiny", "3e-4", "1", "2bw", val["2bw"][0], "--out", out)
        gap = val["2bw"][1] / val["flush"][1] - 1
        check(f"convergence.py: the gap {100 * gap:+.2f}% from /eval",
              r.returncode == 0 and f"| {val['flush'][1]:.4f} | {val['2bw'][1]:.4f} | "
              f"{100 * gap:+.2f}% |" in r.stdout, r.stdout[-800:] + r.stderr[-300:])
        figures_ok(out, ["convergence"], "convergence")
    r = script("convergence.py", "--run", "tiny", "3e-4", "1", "flush", runs["flush"], "--out", out)
    check("convergence.py on a run without /eval: exit 2, one line",
          r.returncode == 2 and "no validation loss" in r.stderr and
          len(r.stderr.strip().splitlines()) == 1, r.stderr)
    r = script("loss_curves.py", *dirs, "--out", out, "--x", "tokens", "--labels", "A", "B")
    check("loss_curves.py --x tokens --labels", r.returncode == 0 and "  A: steps" in r.stdout,
          r.stderr[-300:])

    # throughput.py
    out = os.path.join(tmp, "tput")
    r = script("throughput.py", *dirs, "--out", out)
    check("throughput.py exit 0", r.returncode == 0, r.stderr[-500:])
    blocks = re.split(r"\n  (?=\S)", r.stdout)
    for k, f in files.items():
        block = next((b for b in blocks if b.startswith(f"{k} (")), "")
        mean = float(np.mean(f["steps/tokens_per_s"][3:]))
        check(f"throughput {k}: mean tokens/s = {mean:.1f} (steps after the first 3)",
              close(number(r"mean tokens/s ([\d.]+)", block), mean, 0.051), block[:200])
        for s in range(2):
            g = f[f"stages/{s}"]
            c, w, i = (float(np.sum(g[n][()])) for n in ("compute_s", "wait_s", "idle_s"))
            want = (w + i) / (c + w + i)
            got = number(rf"stage {s}:.*bubble ([\d.]+)", block)
            check(f"throughput {k} stage {s}: bubble {got} in [0,1] and = (wait+idle)/total "
                  f"{want:.4f}", got is not None and 0 <= got <= 1 and close(got, want, 1e-4),
                  block[:300])
    figures_ok(out, ["throughput", "stage_times"], "throughput")

    # timeline.py, whole run and a window, trace and simulation
    for k, f in files.items():
        names = f["trace"].attrs["action_names"]
        names = (names.decode() if isinstance(names, bytes) else names).split(",")
        for steps in (None, (3, 5)):
            out = os.path.join(tmp, f"tl_{k}_{steps}")
            extra = ["--steps", f"{steps[0]}:{steps[1]}"] if steps else []
            r = script("timeline.py", runs[k], "--out", out, *extra)
            what = f"timeline {k} {'steps 3:5' if steps else 'whole run'}"
            check(f"{what}: exit 0", r.returncode == 0, r.stderr[-500:])
            for rank in range(2):
                want = independent_bubble(f[f"trace/rank_{rank}"], names, steps)
                got = number(rf"rank {rank} .*bubble ([\d.]+)", r.stdout)
                check(f"{what} rank {rank}: bubble {got} in [0,1] and = 1 - busy/span "
                      f"{want:.4f}", got is not None and 0 <= got <= 1 and close(got, want, 1e-4),
                      r.stdout[-300:])
            figures_ok(out, ["timeline"], what)
    out = os.path.join(tmp, "tl_sim")
    r = script("timeline.py", os.path.join(sim, "simulation.h5"), "--out", out)
    check("timeline simulation: exit 0", r.returncode == 0, r.stderr[-500:])
    if os.path.isfile(os.path.join(sim, "simulation.h5")):
        with h5py.File(os.path.join(sim, "simulation.h5"), "r") as s5:
            for s in range(2):
                want = float(s5[f"timeline/stage_{s}"].attrs["bubble"])
                got = number(rf"stage {s}: .*bubble ([\d.]+)", r.stdout)
                check(f"timeline simulation stage {s}: bubble {got} = simulator's {want:.4f}",
                      close(got, want, 1e-4), r.stdout[-300:])
    r = script("timeline.py", runs["2bw"], "--out", out, "--steps", "5:3")
    check("timeline --steps 5:3: exit 2, one line", r.returncode == 2 and
          len(r.stderr.strip().splitlines()) == 1, r.stderr)

    # memory.py
    out = os.path.join(tmp, "mem")
    r = script("memory.py", *dirs, "--out", out)
    check("memory.py exit 0", r.returncode == 0, r.stderr[-500:])
    for k, f in files.items():
        for s in range(2):
            g = f[f"stages/{s}"]
            pred = int(g.attrs["predicted_memory_bytes"])
            meas = int(g["peak_memory_bytes"][()].max())
            line = next((l for l in r.stdout.splitlines()
                         if l.strip().startswith(f"{k} stage {s}:")), "")
            check(f"memory {k} stage {s}: predicted {pred} and measured {meas} bytes printed",
                  number(r"predicted (\d+) B", line) == pred and
                  number(r"measured (\d+) B", line) == meas, line)
            check(f"memory {k} stage {s}: ratio = measured/predicted {meas / pred:.4f}",
                  close(number(r"ratio ([\d.]+)", line), meas / pred, 1e-4), line)
    figures_ok(out, ["memory"], "memory")

    # report.py
    out = os.path.join(tmp, "report")
    r = script("report.py", *dirs, "--out", out)
    check("report.py exit 0", r.returncode == 0, r.stderr[-500:])
    index = os.path.join(out, "index.html")
    html = open(index).read() if os.path.isfile(index) else ""
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png")) if os.path.isdir(out) else []
    refs = re.findall(r'src="([^"]+)"', html)
    check(f"report: {len(pngs)} PNGs, index.html references every one",
          len(pngs) >= 6 and all(p in refs for p in pngs), f"pngs {pngs} refs {refs}")
    check("report: every image link is relative and exists",
          refs and all(not os.path.isabs(x) and nonempty(os.path.join(out, x)) for x in refs),
          str(refs))
    check("report: summaries in <pre>", html.count("<pre>") >= 4 and "mean tokens/s" in html)

    # planner.py on a JSON list as p2bw plan --format json prints it
    plan = os.path.join(tmp, "plan.json")
    rows = [{"w": 2, "d": 2, "b": 4, "m": 8, "schedule": "2bw", "recompute": False,
             "samples_per_s": 10.0, "tokens_per_s": 5120.0, "peak_memory_bytes": [3e9, 2e9],
             "memory_limit_bytes": 4e9, "fits": True},
            {"w": 1, "d": 4, "b": 2, "m": 16, "schedule": "flush", "recompute": True,
             "samples_per_s": 12.0, "tokens_per_s": 6144.0, "peak_memory_bytes": [1e9] * 4,
             "memory_limit_bytes": 4e9, "fits": True}]
    with open(plan, "w") as f:
        json.dump(rows, f)
    out = os.path.join(tmp, "plan")
    r = script("planner.py", plan, "--out", out)
    ranked = re.findall(r"^\s+\d+\. (.*): tokens/s (\d+), peak memory ([\d.]+) GB", r.stdout, re.M)
    check("planner.py ranks by tokens/s with the largest stage peak",
          r.returncode == 0 and [(float(t), float(g)) for _, t, g in ranked] ==
          [(6144.0, 1.0), (5120.0, 3.0)], r.stdout + r.stderr[-300:])
    figures_ok(out, ["planner"], "planner")
    bad_plan = os.path.join(tmp, "bad_plan.json")
    with open(bad_plan, "w") as f:
        json.dump([{"w": 1}], f)
    for what, path in (("a JSON list missing keys", bad_plan), ("a text file", __file__)):
        r = script("planner.py", path, "--out", out)
        check(f"planner.py on {what}: exit 2, one line on stderr",
              r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-300:])

    # planner_validation.py: a prediction against the 2bw run, checked by an independent reading
    times = files["2bw"]["steps/time_s"][:]
    measured = float(np.median(np.diff(times)[1:]))  # the steps after the first 2
    peak = max(int(files["2bw"][f"stages/{s}/peak_memory_bytes"][:].max()) for s in ("0", "1"))
    predicted = os.path.join(tmp, "prediction.json")
    with open(predicted, "w") as f:
        json.dump([{"w": 1, "d": 2, "b": 2, "m": 4, "schedule": "2bw", "recompute": False,
                    "batch_time_s": 1.1 * measured, "peak_memory_bytes": [peak, peak // 2]}], f)
    r = script("planner_validation.py", "--pair", predicted, runs["2bw"], "--skip", "2")
    check("planner_validation.py: +10.0% time, +0.0% memory, both within target",
          r.returncode == 0 and "| d2 w1 b2 m4 2bw | " in r.stdout and "| +10.0% |" in r.stdout
          and "| +0.0% |" in r.stdout and "time within 15%: 1 of 1" in r.stdout
          and "memory within 5%: 1 of 1" in r.stdout, r.stdout + r.stderr[-300:])
    rejected = os.path.join(tmp, "rejected.json")  # what plan --evaluate prints for w·d > N
    with open(rejected, "w") as f:
        json.dump([{"w": 64, "d": 2, "b": 2, "m": 4, "schedule": "2bw", "recompute": False,
                    "batch_time_s": 0, "peak_memory_bytes": [], "fits": False,
                    "rejection": "w*d > devices"}], f)
    for what, args in (("a JSON list missing keys", ["--pair", bad_plan, runs["2bw"]]),
                       ("a rejected prediction", ["--pair", rejected, runs["2bw"]]),
                       ("too few steps", ["--pair", predicted, runs["2bw"], "--skip", "7"])):
        r = script("planner_validation.py", *args)
        check(f"planner_validation.py on {what}: exit 2, one line on stderr",
              r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-300:])

    # malformed inputs
    bad = os.path.join(tmp, "bad")
    os.makedirs(bad)
    text = os.path.join(bad, "notes.txt")
    with open(text, "w") as f:
        f.write("not hdf5\n")
    foreign = os.path.join(bad, "foreign.h5")
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something-else"
        f.attrs["format_version"] = 1
    broken = os.path.join(bad, "broken.h5")
    shutil.copy(os.path.join(runs["2bw"], "metrics.h5"), broken)
    with h5py.File(broken, "a") as f:
        del f["steps/loss"]
        del f["trace/rank_1/start"]
    cases = [("a text file", text), ("another format", foreign), ("a missing dataset", broken),
             ("a missing path", os.path.join(bad, "nope"))]
    for name in ("loss_curves.py", "throughput.py", "timeline.py", "memory.py", "report.py"):
        for what, path in cases:
            r = script(name, path, "--out", os.path.join(bad, "out"))
            lines = r.stderr.strip().splitlines()
            check(f"{name} on {what}: exit 2, one line on stderr",
                  r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr,
                  f"rc {r.returncode}, stderr {r.stderr.strip()[-300:]}")
    r = script("timeline.py", os.path.join(tmp, "nothing"), "--out", os.path.join(bad, "o"))
    check("timeline.py on a missing directory: exit 2", r.returncode == 2, r.stderr)
    for f in files.values():
        f.close()
    return finish()


def finish():
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
