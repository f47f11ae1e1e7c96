#!/usr/bin/env python3
"""Planner predictions against measured runs: the table of docs/planner.md's validation.

Each --pair PREDICTION.json RUN names what `p2bw plan DECK --evaluate --format json` predicted for
a configuration and the output directory (or metrics.h5) of `p2bw train` with the same
configuration. Measured time per step = median duration of the steps after the first --skip
(from the differences of /steps/time_s; the median keeps a VM's occasional stall out); measured memory = the largest
/stages/<s>/peak_memory_bytes over steps and stages. Prints a Markdown table with the relative
errors (predicted - measured) / measured and a summary against the targets (time 15%, memory 5%).
"""
import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import p2bw_h5 as ph  # noqa: E402

TIME_TARGET, MEMORY_TARGET = 0.15, 0.05


def read_prediction(path):
    try:
        with open(path) as f:
            ranking = json.load(f)
    except OSError as e:
        raise ph.AnalysisError(f"{path}: {e.strerror}")
    except ValueError as e:
        raise ph.AnalysisError(f"{path}: not JSON ({e})")
    if not isinstance(ranking, list) or not ranking or not isinstance(ranking[0], dict):
        raise ph.AnalysisError(f"{path}: expected the JSON list of p2bw plan --format json")
    p = ranking[0]
    allowed = "(allowed: the output of p2bw plan --evaluate --format json)"
    missing = [k for k in ("w", "d", "b", "m", "schedule", "recompute", "batch_time_s",
                           "peak_memory_bytes") if k not in p]
    if missing:
        raise ph.AnalysisError(f"{path}: missing keys {', '.join(missing)} {allowed}")
    time, peaks = p["batch_time_s"], p["peak_memory_bytes"]
    if not isinstance(time, (int, float)) or isinstance(time, bool) or not time > 0:
        raise ph.AnalysisError(f"{path}: batch_time_s is {time!r}, not a time > 0 "
                               f"({p.get('rejection', 'no prediction')}) {allowed}")
    if (not isinstance(peaks, list) or not peaks or
            not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
                    for x in peaks)):
        raise ph.AnalysisError(f"{path}: peak_memory_bytes is {peaks!r}, not a list of sizes > 0 "
                               f"{allowed}")
    return p


def measure(run, skip):
    m = ph.read_metrics(run)
    seconds = ph.median_step_seconds(m, skip)
    peak = max(int(s["peak_memory_bytes"].max()) for s in m["stages"])
    if not seconds > 0 or not peak > 0:
        raise ph.AnalysisError(f"{m['path']}: no positive step time or peak memory to compare")
    return seconds, peak


def label(p):
    return (f"d{p['d']} w{p['w']} b{p['b']} m{p['m']} {p['schedule']}"
            + (" rc" if p["recompute"] else ""))


def table(rows):
    out = ["| config | predicted s/step | measured s/step | time error | predicted peak MB | "
           "measured peak MB | memory error |", "|---|---|---|---|---|---|---|"]
    for name, pt, mt, pm, mm in rows:
        out.append(f"| {name} | {pt:.3f} | {mt:.3f} | {100 * (pt - mt) / mt:+.1f}% | "
                   f"{pm / 1e6:.2f} | {mm / 1e6:.2f} | {100 * (pm - mm) / mm:+.1f}% |")
    time_errors = [abs(pt - mt) / mt for _, pt, mt, _, _ in rows]
    memory_errors = [abs(pm - mm) / mm for _, _, _, pm, mm in rows]
    out.append("")
    out.append(f"time within {TIME_TARGET:.0%}: {sum(e <= TIME_TARGET for e in time_errors)} of "
               f"{len(rows)} (largest {max(time_errors):.1%}); memory within {MEMORY_TARGET:.0%}: "
               f"{sum(e <= MEMORY_TARGET for e in memory_errors)} of {len(rows)} "
               f"(largest {max(memory_errors):.1%})")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", nargs=2, action="append", required=True,
                        metavar=("PREDICTION_JSON", "RUN"),
                        help="a prediction and the run that measured it (repeatable)")
    parser.add_argument("--skip", type=int, default=5,
                        help="first steps left out of the measured time (default: 5)")
    args = parser.parse_args()
    if args.skip < 0:
        raise ph.AnalysisError(f"--skip {args.skip}: must be >= 0")
    rows = []
    for prediction, run in args.pair:
        p = read_prediction(prediction)
        seconds, peak = measure(run, args.skip)
        rows.append((label(p), float(p["batch_time_s"]), seconds, max(p["peak_memory_bytes"]),
                     peak))
    print(table(rows), end="")
    return 0


if __name__ == "__main__":
    ph.main_guard(main)
