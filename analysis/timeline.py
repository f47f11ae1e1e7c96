#!/usr/bin/env python3
"""Gantt chart of a pipeline run: per rank (from a training trace) or per stage (from a timeline
written by `p2bw simulate`).

Forward and backward boxes are colored by kind with the microbatch number inside when wide
enough; communication (time blocked in sends and receives) is light and hatched; the optimizer
step and all-reduce are dark; the gaps between events are shaded as bubbles. Writes
timeline.{png,svg} into --out and prints per lane the bubble fraction 1 - busy / span over the
chosen window, busy = total duration of forward and backward events (F, B, Bi, Bw), span = last
end - first start of the lane's events in the window (of all stages' events for a simulation,
whose stages share one clock; this matches the simulator's own bubble).

--steps A:B (1-based, inclusive) keeps the events of optimizer steps A to B: on each lane, those
that start after the end of that lane's optimizer step A-1 and end by the end of its step B.
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # keep analysis/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import p2bw_h5 as ph  # noqa: E402

STYLE = {  # action name -> (face color, hatch, legend label)
    "F": ("#4C72B0", None, "forward"),
    "B": ("#DD8452", None, "backward"),
    "Bi": ("#C44E52", None, "backward (inputs)"),
    "Bw": ("#8C564B", None, "backward (weights)"),
    "allreduce": ("#55A868", None, "all-reduce"),
    "step": ("#333333", None, "optimizer step"),
}
COMM = ("#E8E8E8", "////", "communication (send/recv)")
BUBBLE = "#F6C6C6"


def parse_steps(text):
    try:
        a, b = text.split(":")
        a, b = int(a), int(b)
    except ValueError:
        raise ph.AnalysisError(f"--steps {text}: expected A:B with whole numbers 1 <= A <= B")
    if a < 1 or b < a:
        raise ph.AnalysisError(f"--steps {text}: expected A:B with whole numbers 1 <= A <= B")
    return a, b


def window(lane, names, steps):
    """Boolean mask of the lane's events in steps A:B (all events without a window)."""
    n = len(lane["kind"])
    if steps is None:
        return np.ones(n, dtype=bool)
    a, b = steps
    if "step" not in names:
        raise ph.AnalysisError("--steps: the timeline has no optimizer step events")
    ends = np.sort(lane["end"][lane["kind"] == names.index("step")])
    if len(ends) < b:
        raise ph.AnalysisError(f"--steps {a}:{b}: {lane['name']} has only {len(ends)} optimizer "
                               f"steps")
    t0 = ends[a - 2] if a > 1 else -np.inf
    t1 = ends[b - 1]
    return (lane["start"] >= t0) & (lane["end"] <= t1)


def make(path, out, formats=("png", "svg"), dpi=100, steps=None, stem="timeline"):
    tl = ph.read_timeline(path)
    names = tl["action_names"]
    plt = ph.pyplot()
    from matplotlib.patches import Patch

    lanes = []
    for lane in tl["lanes"]:
        mask = window(lane, names, steps)
        sel = {k: lane[k][mask] for k in ("kind", "microbatch", "start", "end")}
        sel["name"] = lane["name"]
        sel["busy"], sel["span"] = ph.busy_span(sel["kind"], sel["start"], sel["end"], names)
        sel["bubble"] = 1 - sel["busy"] / sel["span"] if sel["span"] > 0 else 0.0
        lanes.append(sel)
    if all(len(l["kind"]) == 0 for l in lanes):
        raise ph.AnalysisError(f"{tl['path']}: no events in the chosen window")
    t_origin = min(l["start"].min() for l in lanes if len(l["kind"]))
    t_end = max(l["end"].max() for l in lanes if len(l["kind"]))
    if tl["source"] == "simulation":  # one clock: every stage's span is the whole window
        for l in lanes:
            l["span"] = t_end - t_origin
            l["bubble"] = 1 - l["busy"] / l["span"] if l["span"] > 0 else 0.0
    unit, scale = ("units", 1.0) if tl["source"] == "simulation" else ("ms", 1e3)
    xlabel = ("simulated time (cost units)" if tl["source"] == "simulation"
              else "time since the window's first event (ms)")
    total = (t_end - t_origin) * scale

    fig, ax = plt.subplots(figsize=(11, 0.9 * len(lanes) + 1.8))
    height = 0.7
    used = set()
    for y, l in enumerate(lanes):
        if len(l["kind"]) == 0:
            continue
        s0 = (l["start"].min() - t_origin) * scale
        s1 = (l["end"].max() - t_origin) * scale
        if tl["source"] == "simulation":
            s0, s1 = 0.0, total
        ax.broken_barh([(s0, s1 - s0)], (y - height / 2, height), facecolors=BUBBLE)
        for k, mb, st, en in zip(l["kind"], l["microbatch"], l["start"], l["end"]):
            name = names[k] if 0 <= k < len(names) else "?"
            if name in ("batch_begin", "batch_end"):
                continue
            face, hatch, label = STYLE.get(name, COMM)
            used.add(name if name in STYLE else "comm")
            x0, w = (st - t_origin) * scale, (en - st) * scale
            ax.broken_barh([(x0, w)], (y - height / 2, height), facecolors=face,
                           edgecolor="white" if name in STYLE else "#999999", linewidth=0.4,
                           hatch=hatch)
            if ph.is_compute(name) and mb >= 0 and w >= total * 0.011 * max(2, len(str(mb))):
                ax.text(x0 + w / 2, y, str(mb), ha="center", va="center", fontsize=7,
                        color="white")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([l["name"] for l in lanes])
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlim(0, total)
    ax.set_xlabel(xlabel)
    handles = [Patch(facecolor=STYLE[n][0], label=STYLE[n][2]) for n in STYLE if n in used]
    if "comm" in used:
        handles.append(Patch(facecolor=COMM[0], hatch=COMM[1], edgecolor="#999999",
                             label=COMM[2]))
    handles.append(Patch(facecolor=BUBBLE, label="idle (bubble)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              frameon=False)
    what = "simulated" if tl["source"] == "simulation" else "measured"
    sched = tl["deck"].get("pipeline.schedule", "?")
    win = f"steps {steps[0]}-{steps[1]}" if steps else "whole run"
    bubbles = ", ".join(f"{l['name'].split(' (')[0]} {l['bubble']:.0%}" for l in lanes)
    ax.set_title(f"{tl['label']}: {sched} pipeline, {win}; {what} bubble: {bubbles}\n"
                 f"(numbers in the boxes: microbatch)", fontsize=10)
    files = ph.save(fig, out, stem, formats, dpi)

    lines = [f"timeline of {tl['path']} ({tl['source']}, {win}; bubble = 1 - busy / span, busy "
             f"= forward + backward time)"]
    for l in lanes:
        lines.append(f"  {l['name']}: events {len(l['kind'])}, busy {l['busy'] * scale:.3f} "
                     f"{unit}, span {l['span'] * scale:.3f} {unit}, bubble {l['bubble']:.4f}")
    caption = (f"Gantt chart ({win}) of each {'stage' if tl['source'] == 'simulation' else 'rank'}"
               f": forward (blue) and backward (orange) work per microbatch, hatched grey "
               f"communication, dark optimizer step, pink idle gaps. The title gives the "
               f"{what} bubble 1 - busy/span per lane."
               + (" The ranks' clocks share an origin taken at a barrier when training starts; a "
                  "forward or backward box starts when its input has arrived." if tl["source"] == "trace" else ""))
    return "\n".join(lines) + "\n", [(files, caption)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", metavar="RUN_DIR_OR_FILE",
                   help="run directory or metrics.h5 with a trace (output.trace=true), or a "
                        "simulation.h5 from p2bw simulate")
    ph.add_common_args(p)
    p.add_argument("--steps", metavar="A:B", help="only optimizer steps A to B (1-based, "
                                                  "inclusive)")
    a = p.parse_args()
    steps = parse_steps(a.steps) if a.steps else None
    return ph.print_result(*make(a.run, a.out, ph.parse_formats(a.formats), a.dpi, steps))


if __name__ == "__main__":
    ph.main_guard(main)
