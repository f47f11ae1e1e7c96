#!/usr/bin/env python3
"""The convergence benchmark's table and figure (scripts/bench-convergence): 2bw against flush.

Each --run SIZE LR SEED VARIANT RUN names the output directory (or metrics.h5) of one `p2bw train`
with a validation split; VARIANT is flush, 2bw (p2bw's default settings for 2bw) or 2bw-step0
(the paper's rule from step 0, pipeline.sync_warmup_steps = 0). Per (size, learning rate) and
variant the final validation loss is averaged over the seeds. The gap is 2bw / flush - 1 on
those means. Throughput is tokens per second over the whole run (total tokens / wall time of
steps 2..N, from /steps/time_s), so a synchronous warm-up costs what it really costs; the gain
is 2bw's over flush, and "kept" is the default's gain as a fraction of 2bw-step0's (the gain
without any warm-up). Prints a Markdown table and writes convergence.{png,svg} into --out: the
validation loss of every run against the step, one panel per (size, learning rate).
"""
import argparse
import os
import sys
from collections import defaultdict

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import p2bw_h5 as ph  # noqa: E402

VARIANTS = ("flush", "2bw", "2bw-step0")


def measure(path):
    m = ph.read_metrics(path)
    ev = m.get("eval")
    if ev is None or len(ev["step"]) == 0:
        raise ph.AnalysisError(f"{m['path']}: no validation loss (/eval); train with "
                               f"data.val_fraction > 0")
    times = m["steps"]["time_s"]
    if len(times) < 3:
        raise ph.AnalysisError(f"{m['path']}: {len(times)} steps; needs at least 3")
    # Steps 2..N: the first step carries start-up costs that no schedule is to blame for.
    tokens_per_s = ph.tokens_per_step(m) * (len(times) - 1) / float(times[-1] - times[0])
    return {"metrics": m, "final": float(ev["loss"][-1]), "eval_step": ev["step"],
            "eval_loss": ev["loss"], "tokens_per_s": tokens_per_s,
            "warmup": ph.deck_int(m["deck"], "pipeline.sync_warmup_steps", 0),
            "steps": len(m["steps"]["step"])}


def make(runs, out, formats=("png", "svg"), dpi=100):
    groups = defaultdict(lambda: defaultdict(dict))  # (size, lr) -> variant -> seed -> result
    for size, lr, seed, variant, path in runs:
        if variant not in VARIANTS:
            raise ph.AnalysisError(f"--run {size} {lr} {seed} {variant}: variant allowed: "
                                   f"{', '.join(VARIANTS)}")
        try:
            lr_value = float(lr)
        except ValueError:
            raise ph.AnalysisError(f"--run {size} {lr} ...: the learning rate is not a number")
        groups[(size, lr_value)][variant][seed] = measure(path)
    lines = ["| model | lr | seeds | flush val loss | 2bw val loss (default) | gap | "
             "2bw from step 0 | its gap | 2bw warm-up steps | throughput gain (default) | "
             "gain from step 0 | gain kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []

    def mean(variant_runs, key):
        return float(np.mean([r[key] for r in variant_runs.values()])) if variant_runs else None

    def fmt(x, spec):
        return "—" if x is None else format(x, spec)

    def pct(x, spec):
        return "—" if x is None else format(100 * x, spec) + "%"

    for (size, lr), variants in sorted(groups.items()):
        flush, default, step0 = (variants.get(v, {}) for v in VARIANTS)
        f_val, d_val, z_val = (mean(v, "final") for v in (flush, default, step0))
        f_tps, d_tps, z_tps = (mean(v, "tokens_per_s") for v in (flush, default, step0))
        gap = d_val / f_val - 1 if f_val and d_val else None
        gap0 = z_val / f_val - 1 if f_val and z_val else None
        gain = d_tps / f_tps - 1 if f_tps and d_tps else None
        gain0 = z_tps / f_tps - 1 if f_tps and z_tps else None
        kept = gain / gain0 if gain is not None and gain0 else None
        seeds = sorted(set(flush) | set(default) | set(step0))
        warm = sorted({r["warmup"] for r in default.values()})
        steps = sorted({r["steps"] for v in variants.values() for r in v.values()})
        lines.append(
            f"| {size} ({'/'.join(map(str, steps))} steps) | {lr:g} | {len(seeds)} | "
            f"{fmt(f_val, '.4f')} | {fmt(d_val, '.4f')} | {pct(gap, '+.2f')} | "
            f"{fmt(z_val, '.4f')} | {pct(gap0, '+.2f')} | "
            f"{'/'.join(map(str, warm)) or '—'} | {pct(gain, '+.1f')} | "
            f"{pct(gain0, '+.1f')} | {pct(kept, '.0f')} |")
        summary.append((size, lr, gap, kept))
    text = "\n".join(lines) + "\n"
    if summary:
        worst = max((g for _, _, g, _ in summary if g is not None), default=None)
        text += f"\nworst gap of the default: {pct(worst, '+.2f')} (target: at most +1%)\n"

    plt = ph.pyplot()
    keys = sorted(groups)
    cols = min(2, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.8 * rows), squeeze=False)
    styles = {"flush": ("C0", "-"), "2bw": ("C1", "--"), "2bw-step0": ("C3", ":")}
    for ax, key in zip(axes.flat, keys):
        size, lr = key
        for variant in VARIANTS:
            for i, (seed, r) in enumerate(sorted(groups[key].get(variant, {}).items())):
                color, style = styles[variant]
                label = None if i else {"flush": "flush", "2bw": "2bw (default)",
                                        "2bw-step0": "2bw from step 0"}[variant]
                ax.plot(r["eval_step"], r["eval_loss"], color=color, linestyle=style, marker="o",
                        markersize=3, linewidth=1.2, label=label)
        warm = {r["warmup"] for r in groups[key].get("2bw", {}).values()}
        if len(warm) == 1 and 0 < next(iter(warm)):
            end = next(iter(warm))
            ax.axvline(end, color="black", linestyle="-.", linewidth=0.8, alpha=0.6)
        ax.set_title(f"{size}, lr {lr:g}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation loss (nats per token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()  # titles clear of the x labels of the panels above
    files = ph.save(fig, out, "convergence", formats, dpi)
    caption = ("Validation loss on held-out text of flush, 2bw with p2bw's default settings, and "
               "2bw from step 0 (the paper's rule without warm-up), every seed drawn; the "
               "dash-dotted line is the end of 2bw's synchronous warm-up.")
    return text, [(files, caption)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs=5, action="append", required=True,
                   metavar=("SIZE", "LR", "SEED", "VARIANT", "RUN"),
                   help="one training run: model size label, learning rate, seed, variant "
                        "(flush | 2bw | 2bw-step0) and its output directory")
    ph.add_common_args(p)
    a = p.parse_args()
    return ph.print_result(*make(a.run, a.out, ph.parse_formats(a.formats), a.dpi))


if __name__ == "__main__":
    ph.main_guard(main)
