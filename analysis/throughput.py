#!/usr/bin/env python3
"""Throughput and per-stage time breakdown of one or more p2bw training runs.

Writes throughput.{png,svg} (tokens/s per optimizer step, one line per run) and
stage_times.{png,svg} (per stage: mean compute, wait and idle seconds per step, stacked) into
--out, and prints per run the mean tokens/s over the steps after the first 3 and per stage the
bubble = (wait + idle) / (compute + wait + idle), summed over all steps.
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import p2bw_h5 as ph  # noqa: E402

SKIP_FIRST = 3
ROLLING = 10  # steps in the rolling mean drawn thick


def stage_breakdown(stage):
    """Mean compute, wait, idle seconds per step and the bubble of one stage."""
    c, w, i = (float(np.mean(stage[k])) if len(stage[k]) else 0.0
               for k in ("compute_s", "wait_s", "idle_s"))
    total = c + w + i
    return c, w, i, ((w + i) / total if total > 0 else 0.0)


def make(paths, out, formats=("png", "svg"), dpi=100, labels=None):
    runs = [ph.read_metrics(p) for p in paths]
    if labels and len(labels) != len(runs):
        raise ph.AnalysisError(f"--labels: {len(labels)} labels for {len(runs)} runs")
    names = [labels[i] if labels else ph.run_name(m)
             for i, m in enumerate(runs)]
    plt = ph.pyplot()
    lines = [f"throughput (mean tokens/s over steps after the first {SKIP_FIRST}; bubble = "
             f"(wait + idle) / (compute + wait + idle) over all steps)"]

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (m, name) in enumerate(zip(runs, names)):
        st = m["steps"]
        ax.plot(st["step"], st["tokens_per_s"], color=f"C{i}", linewidth=0.7, alpha=0.35)
        k = min(ROLLING, len(st["step"]))
        if k > 1:
            roll = np.convolve(st["tokens_per_s"], np.ones(k) / k, mode="valid")
            ax.plot(st["step"][k - 1:], roll, color=f"C{i}", linewidth=2, label=name)
        else:
            ax.plot(st["step"], st["tokens_per_s"], color=f"C{i}", linewidth=2, label=name)
        rest = st["tokens_per_s"][SKIP_FIRST:]
        mean = float(np.mean(rest)) if len(rest) else float("nan")
        ax.axhline(mean, color=f"C{i}", linestyle="--", linewidth=0.8, alpha=0.7)
        lines.append(f"  {name}: steps {len(st['step'])}, mean tokens/s {mean:.1f}, "
                     f"tokens per step {ph.tokens_per_step(m)}")
        for s in m["stages"]:
            c, w, idle, b = stage_breakdown(s)
            lines.append(f"    stage {s['index']}: compute {c:.4f} s, wait {w:.4f} s, idle "
                         f"{idle:.4f} s per step, bubble {b:.4f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(f"Training throughput (thin: per step, thick: mean of {ROLLING} steps, "
                 f"dashed: mean after step {SKIP_FIRST})", fontsize=10)
    ax.set_ylim(bottom=0)
    ph.mark_warmup(ax, runs)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    files1 = ph.save(fig, out, "throughput", formats, dpi)

    bars = [(name, s) for m, name in zip(runs, names) for s in m["stages"]]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(bars) + 2), 4.5))
    x = np.arange(len(bars))
    parts = [("compute_s", "compute", "#4C72B0", None), ("wait_s", "waiting on a peer",
                                                         "#DD8452", "//"),
             ("idle_s", "idle", "#C0C0C0", "..")]
    bottom = np.zeros(len(bars))
    for key, label, color, hatch in parts:
        vals = np.array([float(np.mean(s[key])) if len(s[key]) else 0.0 for _, s in bars])
        ax.bar(x, vals, bottom=bottom, color=color, hatch=hatch, edgecolor="white", label=label)
        bottom += vals
    for xi, (_, s) in zip(x, bars):
        ax.text(xi, bottom[xi], f"bubble\n{stage_breakdown(s)[3]:.0%}", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n.split(' (')[0]}\nstage {s['index']}" for n, s in bars])
    ax.set_ylabel("mean time per optimizer step (s)")
    ax.set_ylim(0, bottom.max() * 1.25 if len(bars) else 1)
    ax.set_title("Where each stage spends a step")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    files2 = ph.save(fig, out, "stage_times", formats, dpi)
    return "\n".join(lines) + "\n", [
        (files1, "Tokens per second of each optimizer step (thin), its rolling mean over "
                 f"{ROLLING} steps (thick) and the mean after the first {SKIP_FIRST} steps "
                 "(dashed)."),
        (files2, "Mean seconds per optimizer step that each pipeline stage spends computing, "
                 "waiting on a peer (blocked in a send or receive) and idle; the label on top is "
                 "the bubble (wait + idle) / total.")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ph.add_run_args(p)
    a = p.parse_args()
    return ph.print_result(*make(a.runs, a.out, ph.parse_formats(a.formats), a.dpi, a.labels))


if __name__ == "__main__":
    ph.main_guard(main)
