#!/usr/bin/env python3
"""The pipeline benchmark's table (scripts/bench-pipeline): throughput, speed-up and bubbles.

Each --run SCHEDULE DEPTH RUN names the output directory (or metrics.h5) of one `p2bw train` of
the benchmark deck; repeated runs of one (schedule, depth) are summarised by their median.
Each --simulated SCHEDULE DEPTH FILE names the saved stdout of `p2bw simulate` for that
configuration (its per-stage steady-state bubble is the prediction). Measured, over the steps
after the first --skip: tokens/s = tokens per step / median step duration (from /steps/time_s);
each stage's bubble = (wait + idle) / (compute + wait + idle) summed over those steps (replica 0
of the stage), and its mean compute seconds per step (an imbalance between the stages shows there). Prints a Markdown table; speed-up is over the depth-1 run of the same schedule.
"""
import argparse
import os
import re
import sys

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import p2bw_h5 as ph  # noqa: E402


def measure(run, skip):
    m = ph.read_metrics(run)
    seconds = ph.median_step_seconds(m, skip)
    bubbles, compute = [], []
    for stage in m["stages"]:
        keep = stage["step"] > skip
        busy = stage["compute_s"][keep].sum()
        lost = stage["wait_s"][keep].sum() + stage["idle_s"][keep].sum()
        bubbles.append(float(lost / (busy + lost)) if busy + lost > 0 else float("nan"))
        compute.append(float(np.mean(stage["compute_s"][keep])))
    return ph.tokens_per_step(m) / seconds, bubbles, compute


def simulated_bubbles(path):
    """Per-stage steady-state bubble from `p2bw simulate`'s table (columns stage ... steady peak)."""
    try:
        text = open(path).read()
    except OSError as e:
        raise ph.AnalysisError(f"{path}: {e.strerror}")
    rows = re.findall(r"^\s*(\d+)\s+[-0-9.]+\s+[-0-9.]+\s+[-0-9.]+\s+[-0-9.]+\s+[-0-9.]+\s+"
                      r"([-0-9.]+)\s+\d+\s*$", text, re.M)
    if not rows:
        raise ph.AnalysisError(f"{path}: no per-stage table of p2bw simulate")
    return [float(steady) for _, steady in rows]


def table(measured, simulated, skip):
    out = ["| schedule | d | tokens/s | speed-up over d = 1 | bubble per stage, measured | "
           "bubble per stage, simulated | compute s/step per stage |", "|---|---|---|---|---|---|---|"]
    for (schedule, depth), runs in sorted(measured.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rate = float(np.median([r[0] for r in runs]))
        bubbles = np.median(np.array([r[1] for r in runs]), axis=0)
        compute = np.median(np.array([r[2] for r in runs]), axis=0)
        base = measured.get((schedule, 1))
        speedup = rate / float(np.median([r[0] for r in base])) if base else float("nan")
        sim = simulated.get((schedule, depth))
        out.append(f"| {schedule} | {depth} | {rate:,.0f} | {speedup:.2f}x | "
                   + " / ".join(f"{100 * b:.1f}%" for b in bubbles) + " | "
                   + (" / ".join(f"{100 * b:.1f}%" for b in sim) if sim else "-") + " | "
                   + " / ".join(f"{c:.2f}" for c in compute) + " |")
    out.append("")
    out.append(f"{len(next(iter(measured.values())))} run(s) each, median; steps after the first "
               f"{skip}.")
    for depth in sorted({d for _, d in measured}):
        flush, two_bw = measured.get(("flush", depth)), measured.get(("2bw", depth))
        if depth > 1 and flush and two_bw:
            ratio = np.median([r[0] for r in two_bw]) / np.median([r[0] for r in flush])
            out.append(f"d = {depth}: 2bw / flush = {ratio:.2f}x")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=3, action="append", required=True,
                        metavar=("SCHEDULE", "DEPTH", "RUN"), help="one measured run (repeatable)")
    parser.add_argument("--simulated", nargs=3, action="append", default=[],
                        metavar=("SCHEDULE", "DEPTH", "FILE"),
                        help="p2bw simulate's output for a configuration (repeatable)")
    parser.add_argument("--skip", type=int, default=2,
                        help="first steps left out of the measurement (default: 2)")
    args = parser.parse_args()
    if args.skip < 0:
        raise ph.AnalysisError(f"--skip {args.skip}: must be >= 0")
    measured, simulated = {}, {}
    for schedule, depth, run in args.run:
        measured.setdefault((schedule, int(depth)), []).append(measure(run, args.skip))
    for schedule, depth, path in args.simulated:
        simulated[(schedule, int(depth))] = simulated_bubbles(path)
    print(table(measured, simulated, args.skip), end="")
    return 0


if __name__ == "__main__":
    ph.main_guard(main)
