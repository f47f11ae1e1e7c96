#!/usr/bin/env python3
"""One-folder report of p2bw training runs: loss curves, throughput, per-stage time breakdown,
memory (predicted vs measured) and a Gantt chart per traced run, with index.html.

Runs loss_curves, throughput, memory and timeline (for every run with a trace, over --steps or
3 optimizer steps in the middle of the run) into --out and writes index.html there: each figure
with a caption, and the scripts' text summaries in <pre> blocks; with --plan also the planner
figure (planner.py). Prints the summaries too.
"""
import argparse
import html
import os
import re
import sys

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loss_curves  # noqa: E402
import memory  # noqa: E402
import p2bw_h5 as ph  # noqa: E402
import planner  # noqa: E402
import throughput  # noqa: E402
import timeline  # noqa: E402


def middle_window(n_steps, count=3):
    a = max(1, n_steps // 2 + 1)
    b = min(n_steps, a + count - 1)
    return (a, b) if n_steps >= 1 else None


def make(paths, out, formats=("png", "svg"), dpi=100, steps=None, title="p2bw runs", plan=None):
    runs = [ph.read_metrics(p) for p in paths]  # validates every run before drawing anything
    sections = []
    text, figs = loss_curves.make(paths, out, formats, dpi)
    sections.append(("Training loss", text, figs))
    text, figs = throughput.make(paths, out, formats, dpi)
    sections.append(("Throughput and pipeline bubbles", text, figs))
    text, figs = memory.make(paths, out, formats, dpi)
    sections.append(("Memory", text, figs))
    used = set()
    for p, m in zip(paths, runs):
        if not m["trace"]:
            continue
        n = len(m["steps"]["step"])
        window = steps if steps else middle_window(n)
        stem = "timeline_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", m["label"])
        while stem in used:
            stem += "_"
        used.add(stem)
        text, figs = timeline.make(p, out, formats, dpi, window, stem=stem)
        sections.append((f"Timeline of {m['label']}", text, figs))

    if plan:
        text, figs = planner.make(plan, out, formats, dpi)
        sections.append(("Planner predictions", text, figs))

    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
             f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "img{max-width:100%;border:1px solid #ddd}figcaption{color:#444;margin-bottom:1.5em}"
             "pre{background:#f6f6f6;padding:.5em;overflow-x:auto}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", "<p>Runs:</p><ul>"]
    for m in runs:
        parts.append(f"<li><code>{html.escape(m['path'])}</code>: {html.escape(m['schedule'])},"
                     f" depth {m['depth']}, width {m['width']}, "
                     f"{len(m['steps']['step'])} steps</li>")
    parts.append("</ul>")
    summary = []
    for heading, text, figs in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for files, caption in figs:
            img = next((f for f in files if f.endswith(".png")), files[0])
            rel = os.path.relpath(img, out)
            others = " ".join(f"<a href=\"{html.escape(os.path.relpath(f, out))}\">"
                              f"{os.path.splitext(f)[1][1:].upper()}</a>" for f in files)
            parts.append(f"<figure><img src=\"{html.escape(rel)}\" alt=\"{html.escape(heading)}\">"
                         f"<figcaption>{html.escape(caption)} ({others})</figcaption></figure>")
        parts.append(f"<pre>{html.escape(text)}</pre>")
        summary.append(text)
    parts.append("</body></html>")
    try:
        with open(os.path.join(out, "index.html"), "w") as f:
            f.write("\n".join(parts) + "\n")
    except OSError as e:
        raise ph.AnalysisError(f"{out}/index.html: cannot write ({e.strerror or e})")
    return "".join(summary), os.path.join(out, "index.html")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directory (with metrics.h5) or metrics.h5 file")
    ph.add_common_args(p)
    p.add_argument("--steps", metavar="A:B",
                   help="window of the timelines (default: 3 steps in the middle of each run)")
    p.add_argument("--title", default="p2bw runs", help="heading of index.html")
    p.add_argument("--plan", metavar="PLAN_JSON",
                   help="also plot p2bw plan --format json output (planner.py)")
    a = p.parse_args()
    steps = timeline.parse_steps(a.steps) if a.steps else None
    text, index = make(a.runs, a.out, ph.parse_formats(a.formats), a.dpi, steps, a.title,
                       a.plan)
    print(text, end="")
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    ph.main_guard(main)
