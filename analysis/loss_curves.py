#!/usr/bin/env python3
"""Loss curves of one or more p2bw training runs, overlaid (e.g. 2bw vs flush vs single rank).

Reads <run>/metrics.h5 of each run, plots the training loss (raw, thin; exponentially smoothed,
thick) against optimizer steps or tokens seen, writes loss_curves.{png,svg} into --out and prints
per run: steps, first/last/min loss and the final smoothed loss (EMA with weight 0.9). Runs with a
validation split (/eval) add their validation loss as markers joined by a line, and its last value.
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import p2bw_h5 as ph  # noqa: E402

EMA_WEIGHT = 0.9


def smooth(values, weight=EMA_WEIGHT):
    """Exponential moving average s_0 = x_0, s_i = w s_{i-1} + (1 - w) x_i."""
    out = np.empty_like(values)
    s = values[0] if len(values) else 0.0
    for i, v in enumerate(values):
        s = weight * s + (1 - weight) * v if i else v
        out[i] = s
    return out


def make(paths, out, formats=("png", "svg"), dpi=100, x="steps", labels=None):
    runs = [ph.read_metrics(p) for p in paths]
    if labels and len(labels) != len(runs):
        raise ph.AnalysisError(f"--labels: {len(labels)} labels for {len(runs)} runs")
    plt = ph.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lines = [f"loss curves ({'x = tokens' if x == 'tokens' else 'x = steps'}; smoothed = EMA "
             f"with weight {EMA_WEIGHT})"]
    for i, m in enumerate(runs):
        label = labels[i] if labels else ph.run_name(m)
        st = m["steps"]
        ok = np.isfinite(st["loss"]) & (st["skipped"] == 0)
        steps, loss = st["step"][ok], st["loss"][ok]
        if len(loss) == 0:
            lines.append(f"  {label}: no finite steps")
            continue
        xs = steps * ph.tokens_per_step(m) if x == "tokens" else steps
        sm = smooth(loss)
        color = f"C{i}"
        ax.plot(xs, loss, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(xs, sm, color=color, linewidth=2, label=label,
                linestyle=("-", "--", ":", "-.")[i % 4])
        skipped = int(np.sum(st["skipped"] != 0))
        ev = m.get("eval")
        val = ""
        if ev is not None and len(ev["step"]):
            ex = ev["step"] * ph.tokens_per_step(m) if x == "tokens" else ev["step"]
            ax.plot(ex, ev["loss"], color=color, marker="o", markersize=4, linewidth=1,
                    linestyle=":", label=f"{label}: validation")
            val = f", validation loss {ev['loss'][-1]:.4f} (step {int(ev['step'][-1])})"
        lines.append(f"  {label}: steps {len(st['step'])}, first loss {loss[0]:.4f}, last loss "
                     f"{loss[-1]:.4f}, min loss {loss.min():.4f} (step {int(steps[loss.argmin()])}),"
                     f" final smoothed loss {sm[-1]:.4f}" + val +
                     (f", skipped {skipped}" if skipped else ""))
    ax.axhline(np.log(256), color="grey", linestyle=":", linewidth=1)
    ax.text(ax.get_xlim()[1], np.log(256), " ln 256 (uniform bytes)", va="bottom", ha="right",
            color="grey", fontsize=8)
    ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
    if x != "tokens" or len({ph.tokens_per_step(m) for m in runs}) == 1:
        ph.mark_warmup(ax, runs, ph.tokens_per_step(runs[0]) if x == "tokens" else 1)
    ax.set_xlabel("tokens seen" if x == "tokens" else "optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("Training loss (thin: per step, thick: smoothed; dots: validation)")
    ax.grid(alpha=0.3)
    ax.legend()
    files = ph.save(fig, out, "loss_curves", formats, dpi)
    caption = ("Training loss per optimizer step of each run (thin lines) and its exponential "
               "moving average (thick); the dotted line is ln 256, the loss of a uniform guess "
               "over bytes; dots joined by a dotted line are the validation loss on held-out "
               "data (data.val_fraction), where the run has one. Runs with the same semantics lie on top of each other (every schedule "
               "during 2bw's synchronous flush warm-up; a single-rank run reproduces its deck's "
               "schedule exactly); line styles tell them apart.")
    return "\n".join(lines) + "\n", [(files, caption)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ph.add_run_args(p, labels_help="one legend label per run")
    p.add_argument("--x", choices=("steps", "tokens"), default="steps",
                   help="x axis: optimizer steps or tokens seen (default: steps)")
    a = p.parse_args()
    return ph.print_result(*make(a.runs, a.out, ph.parse_formats(a.formats), a.dpi, a.x, a.labels))


if __name__ == "__main__":
    ph.main_guard(main)
