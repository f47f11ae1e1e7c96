#!/usr/bin/env python3
"""Predicted throughput and memory of the configurations `p2bw plan --format json` ranks.

Reads the JSON list that `p2bw plan DECK --cluster FILE --format json` prints (objects with w, d,
b, m, schedule, recompute, tokens_per_s, peak_memory_bytes per stage, fits, optionally
memory_limit_bytes), draws one horizontal bar per configuration (predicted tokens/s, colored by
schedule, hatched when it does not fit) beside its largest per-stage peak memory, writes
planner.{png,svg} into --out and prints the configurations ranked by predicted tokens/s.
"""
import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import p2bw_h5 as ph  # noqa: E402

REQUIRED = ("w", "d", "b", "m", "schedule", "recompute", "tokens_per_s", "peak_memory_bytes",
            "fits")
COLORS = {"2bw": "#4C72B0", "flush": "#DD8452", "gpipe": "#55A868"}
GB = 1e9


def read_plan(path):
    if not os.path.exists(path):
        raise ph.AnalysisError(f"{path}: no such file")
    try:
        with open(path) as f:
            rows = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ph.AnalysisError(f"{path}: cannot read ({e})")
    except json.JSONDecodeError as e:
        raise ph.AnalysisError(f"{path}: not JSON ({e.msg} at line {e.lineno}) (allowed: the "
                               f"output of p2bw plan --format json)")
    if not isinstance(rows, list) or not rows:
        raise ph.AnalysisError(f"{path}: expected a non-empty JSON list of configurations "
                               f"(allowed: the output of p2bw plan --format json)")
    for i, r in enumerate(rows):
        missing = [k for k in REQUIRED if not isinstance(r, dict) or k not in r]
        if missing:
            raise ph.AnalysisError(f"{path}: configuration {i} lacks {', '.join(missing)}")
        mem = r["peak_memory_bytes"]
        if isinstance(mem, (int, float)):
            mem = [mem]
        try:
            r["_peak"] = max(float(x) for x in mem) if mem else 0.0
            r["tokens_per_s"] = float(r["tokens_per_s"])
        except (TypeError, ValueError):
            raise ph.AnalysisError(f"{path}: configuration {i} has non-numeric values")
    return rows


def config_name(r):
    return (f"w={r['w']} d={r['d']} b={r['b']} m={r['m']} {r['schedule']}"
            + (" +recompute" if r["recompute"] else ""))


def make(path, out, formats=("png", "svg"), dpi=100, top=20):
    rows = sorted(read_plan(path), key=lambda r: -r["tokens_per_s"])[:top]
    lines = [f"planner predictions from {path} (ranked by predicted tokens/s)"]
    for i, r in enumerate(rows, 1):
        limit = r.get("memory_limit_bytes")
        lines.append(f"  {i:2d}. {config_name(r)}: tokens/s {r['tokens_per_s']:.0f}, peak memory "
                     f"{r['_peak'] / GB:.3f} GB" + (f" of {float(limit) / GB:.3f} GB"
                                                    if isinstance(limit, (int, float)) else "")
                     + (", fits" if r["fits"] else ", does not fit"))
    plt = ph.pyplot()
    from matplotlib.patches import Patch
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 0.35 * len(rows) + 1.8), sharey=True,
                                  gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(rows))
    colors = [COLORS.get(r["schedule"], "#8172B3") for r in rows]
    hatches = [None if r["fits"] else "xx" for r in rows]
    for yi, r, c, h in zip(y, rows, colors, hatches):
        ax.barh(yi, r["tokens_per_s"], color=c if r["fits"] else "#DDDDDD", edgecolor=c,
                hatch=h)
        ax2.barh(yi, r["_peak"] / GB, color=c if r["fits"] else "#DDDDDD", edgecolor=c, hatch=h)
    limits = {float(r["memory_limit_bytes"]) for r in rows
              if isinstance(r.get("memory_limit_bytes"), (int, float))}
    for lim in limits:
        ax2.axvline(lim / GB, color="red", linestyle="--", linewidth=1)
    ax.set_yticks(y)
    ax.set_yticklabels([config_name(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("predicted throughput (tokens/s)")
    ax2.set_xlabel("largest per-stage peak memory (GB)" + ("\n(red dashed: memory limit per device)" if limits else ""))
    ax.grid(axis="x", alpha=0.3)
    ax2.grid(axis="x", alpha=0.3)
    handles = [Patch(facecolor=c, label=s) for s, c in COLORS.items()
               if any(r["schedule"] == s for r in rows)]
    if any(not r["fits"] for r in rows):
        handles.append(Patch(facecolor="#DDDDDD", hatch="xx", label="does not fit"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    fig.suptitle("Planner: predicted throughput and memory per configuration "
                 "(w = width, d = depth, b = microbatch size, m = microbatches)", fontsize=10)
    files = ph.save(fig, out, "planner", formats, dpi)
    caption = ("Configurations ranked by p2bw plan's predicted tokens/s (left) and their largest "
               "per-stage peak memory (right).")
    return "\n".join(lines) + "\n", [(files, caption)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan", metavar="PLAN_JSON", help="output of p2bw plan --format json")
    ph.add_common_args(p)
    p.add_argument("--top", type=int, default=20, help="show the best N (default: 20)")
    a = p.parse_args()
    return ph.print_result(*make(a.plan, a.out, ph.parse_formats(a.formats), a.dpi, a.top))


if __name__ == "__main__":
    ph.main_guard(main)
