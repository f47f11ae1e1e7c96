#!/usr/bin/env python3
"""Predicted against measured memory per pipeline stage of one or more p2bw training runs.

The prediction (p2bw's memory model, attributes predicted_*_bytes of /stages/<s>) is drawn as a
stacked bar by category; the measured peak (the largest peak_memory_bytes over the run's steps)
as a black marker. Writes memory.{png,svg} into --out and prints per stage the predicted and
measured bytes and the ratio measured / predicted.
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import p2bw_h5 as ph  # noqa: E402

COLORS = {"weights": "#4C72B0", "gradients": "#55A868", "optimizer": "#8172B3",
          "activations": "#DD8452", "buffers": "#937860", "workspace": "#BBBBBB"}


def stage_memory(stage):
    """(predicted total bytes, measured peak bytes, measured / predicted)."""
    pred = int(stage["predicted_total"])
    meas = int(stage["peak_memory_bytes"].max()) if len(stage["peak_memory_bytes"]) else 0
    return pred, meas, (meas / pred if pred > 0 else float("nan"))


def make(paths, out, formats=("png", "svg"), dpi=100, labels=None):
    runs = [ph.read_metrics(p) for p in paths]
    if labels and len(labels) != len(runs):
        raise ph.AnalysisError(f"--labels: {len(labels)} labels for {len(runs)} runs")
    names = [labels[i] if labels else m["label"] for i, m in enumerate(runs)]
    bars = [(name, s) for m, name in zip(runs, names) for s in m["stages"]]
    lines = ["memory per stage (predicted = p2bw's model, measured = largest peak over the run; "
             "bytes per rank)"]
    for name, s in bars:
        pred, meas, ratio = stage_memory(s)
        parts = ", ".join(f"{c} {s['predicted'][c] / ph.MIB:.2f}" for c in ph.MEMORY_CATEGORIES)
        lines.append(f"  {name} stage {s['index']}: predicted {pred} B ({pred / ph.MIB:.2f} MiB),"
                     f" measured {meas} B ({meas / ph.MIB:.2f} MiB), ratio {ratio:.4f}")
        lines.append(f"    predicted MiB: {parts}")

    plt = ph.pyplot()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(bars) + 3), 4.5))
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for c in ph.MEMORY_CATEGORIES:
        vals = np.array([s["predicted"][c] / ph.MIB for _, s in bars])
        ax.bar(x, vals, bottom=bottom, color=COLORS[c], edgecolor="white", width=0.6,
               label=f"predicted: {c}")
        bottom += vals
    meas = np.array([stage_memory(s)[1] / ph.MIB for _, s in bars])
    ax.scatter(x, meas, marker="_", s=1200, linewidths=3, color="black", zorder=3,
               label="measured peak")
    for xi, (_, s) in zip(x, bars):
        pred, m, ratio = stage_memory(s)
        ax.text(xi, max(pred, m) / ph.MIB * 1.02, f"{ratio:.0%}\nof predicted", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n}\nstage {s['index']}" for n, s in bars])
    ax.set_ylabel("memory per rank (MiB)")
    top = max(bottom.max(), meas.max()) if len(bars) else 1
    ax.set_ylim(0, top * 1.22)
    ax.set_title("Memory per stage: predicted (stacked by category) vs measured peak")
    from matplotlib.lines import Line2D
    handles, labels = ax.get_legend_handles_labels()
    handles = [Line2D([0], [0], color="black", linewidth=3) if lb == "measured peak" else h
               for h, lb in zip(handles, labels)]
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1),
              fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    files = ph.save(fig, out, "memory", formats, dpi)
    caption = ("Memory per rank of each pipeline stage: p2bw's prediction stacked by category "
               "(weights, gradients, optimizer state, stashed activations, communication buffers,"
               " workspace) and the measured peak (black bar); the label is measured / predicted.")
    return "\n".join(lines) + "\n", [(files, caption)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ph.add_run_args(p)
    a = p.parse_args()
    return ph.print_result(*make(a.runs, a.out, ph.parse_formats(a.formats), a.dpi, a.labels))


if __name__ == "__main__":
    ph.main_guard(main)
