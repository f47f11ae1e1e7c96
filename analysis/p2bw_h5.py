#!/usr/bin/env python3
"""Shared reader for p2bw's HDF5 outputs (used by the other analysis scripts).

- read_metrics(path): <output.dir>/metrics.h5 (format "p2bw-metrics" version 1) as numpy arrays.
- read_timeline(path): the per-rank trace of a metrics file, or the per-stage timeline of
  `p2bw simulate` (format "p2bw-simulation" version 1), as a list of lanes.
A path may name the file or the run directory holding it. Every problem with a user's file raises
AnalysisError with a one-line message; `main_guard` turns it into that line on stderr and exit 2.
"""
import math
import os
import sys

import numpy as np

METRICS_FORMAT = "p2bw-metrics"
SIMULATION_FORMAT = "p2bw-simulation"
FORMAT_VERSION = 1
STEP_SERIES = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "time_s", "skipped")
STAGE_SERIES = ("step", "compute_s", "wait_s", "idle_s", "peak_memory_bytes")
EVENT_SERIES = ("microbatch", "version", "start", "end")
MEMORY_CATEGORIES = ("weights", "gradients", "optimizer", "activations", "buffers", "workspace")
MIB = 1024.0 * 1024.0


class AnalysisError(Exception):
    """A user-facing problem (missing or malformed input, bad option): one line, exit code 2."""


def main_guard(main):
    """Runs main(); AnalysisError becomes 'prog: error: message' on stderr and exit code 2."""
    prog = os.path.basename(sys.argv[0])
    try:
        code = main()
    except AnalysisError as e:
        msg = " ".join(str(e).split())
        print(f"{prog}: error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)


def _h5py():
    try:
        import h5py  # noqa: F401
    except ImportError as e:  # pragma: no cover - environment problem
        raise AnalysisError(f"python module h5py is missing ({e}); install python3-h5py")
    return h5py


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def resolve(path, filename):
    """A file path, or a run directory holding `filename`."""
    if os.path.isdir(path):
        candidate = os.path.join(path, filename)
        if not os.path.exists(candidate):
            raise AnalysisError(f"{path}: directory has no {filename} (allowed: a p2bw output "
                                f"directory or an HDF5 file written by p2bw)")
        return candidate
    if not os.path.exists(path):
        raise AnalysisError(f"{path}: no such file or directory")
    return path


def open_h5(path, formats):
    """Opens an HDF5 file written by p2bw whose root `format` is one of `formats`."""
    h5py = _h5py()
    if not os.path.isfile(path):
        raise AnalysisError(f"{path}: not a file")
    try:
        if not h5py.is_hdf5(path):
            raise AnalysisError(f"{path}: not an HDF5 file (allowed: {', '.join(formats)} files "
                                f"written by p2bw)")
        f = h5py.File(path, "r")
    except AnalysisError:
        raise
    except (OSError, ValueError) as e:
        raise AnalysisError(f"{path}: cannot open as HDF5 ({e})")
    fmt = _text(f.attrs["format"]) if "format" in f.attrs else None
    if fmt not in formats:
        f.close()
        shown = "missing" if fmt is None else f'"{fmt}"'
        raise AnalysisError(f"{path}: format attribute is {shown} (allowed: "
                            f"{', '.join(formats)})")
    version = f.attrs.get("format_version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        version = None
    if version != FORMAT_VERSION:
        f.close()
        raise AnalysisError(f"{path}: format_version is {version} (allowed: {FORMAT_VERSION})")
    return f


def _dataset(f, path, name, kind=float):
    if name not in f:
        raise AnalysisError(f"{path}: dataset {name} is missing (allowed: a complete file "
                            f"written by p2bw)")
    obj = f[name]
    if not hasattr(obj, "shape") or len(obj.shape) != 1:
        raise AnalysisError(f"{path}: {name} is not a 1-D dataset")
    try:
        data = np.asarray(obj[()])
    except (OSError, TypeError, ValueError) as e:
        raise AnalysisError(f"{path}: cannot read {name} ({e})")
    if data.dtype.kind not in "iuf":
        raise AnalysisError(f"{path}: {name} is not numeric")
    return data.astype(np.float64 if kind is float else np.int64)


def _group_series(f, path, group, names, ints=()):
    out = {}
    for n in names:
        out[n] = _dataset(f, path, f"{group}/{n}", int if n in ints else float)
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise AnalysisError(f"{path}: the series of {group} have different lengths")
    return out


def _int_attr(f, path, obj, name, default=None):
    attrs = f[obj].attrs
    if name not in attrs:
        if default is not None:
            return default
        raise AnalysisError(f"{path}: attribute {name} of {obj} is missing")
    try:
        return int(attrs[name])
    except (TypeError, ValueError):
        raise AnalysisError(f"{path}: attribute {name} of {obj} is not a number")


def parse_deck(text):
    """The resolved deck YAML (two levels, as p2bw writes it) as {"section.key": "value"}."""
    values, section = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        value = value.split(" #")[0].strip()
        if indent == 0:
            section = key
            if value:
                values[key] = value
        elif section is not None and indent <= 2:
            values[f"{section}.{key}"] = value
        elif section is not None:
            values.setdefault(f"{section}.{key}", value)
    return values


def deck_int(deck, key, default):
    try:
        return int(float(deck.get(key, default)))
    except (TypeError, ValueError):
        return default


def run_label(path):
    """A short label for a run: the run directory's name."""
    path = os.path.abspath(path)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    return os.path.basename(path.rstrip(os.sep)) or path


def read_metrics(path):
    """Validated contents of a metrics file (or run directory) as a dict of numpy arrays."""
    file = resolve(path, "metrics.h5")
    with open_h5(file, (METRICS_FORMAT,)) as f:
        m = {"path": file, "label": run_label(path)}
        m["deck_yaml"] = _text(f.attrs.get("deck", ""))
        m["deck"] = parse_deck(m["deck_yaml"])
        m["stage_map"] = _text(f.attrs.get("stage_map", ""))
        m["depth"] = _int_attr(f, file, "/", "depth")
        m["width"] = _int_attr(f, file, "/", "width")
        m["steps"] = _group_series(f, file, "steps", STEP_SERIES, ints=("step", "skipped"))
        m["stages"] = []
        if "stages" not in f:
            raise AnalysisError(f"{file}: group stages is missing")
        for s in range(m["depth"]):
            g = f"stages/{s}"
            if g not in f:
                raise AnalysisError(f"{file}: group {g} is missing (the file has depth "
                                    f"{m['depth']})")
            stage = _group_series(f, file, g, STAGE_SERIES, ints=("step", "peak_memory_bytes"))
            stage["index"] = s
            stage["predicted"] = {c: _int_attr(f, file, g, f"predicted_{c}_bytes")
                                  for c in MEMORY_CATEGORIES}
            stage["predicted_total"] = _int_attr(f, file, g, "predicted_memory_bytes")
            m["stages"].append(stage)
        m["eval"] = (_group_series(f, file, "eval", ("step", "loss"), ints=("step",))
                     if "eval" in f else None)
        m["trace"] = None
        if "trace" in f:
            m["action_names"] = [n.strip() for n in
                                 _text(f["trace"].attrs.get("action_names", "")).split(",")]
            ranks = sorted((int(k.split("_")[1]), k) for k in f["trace"].keys()
                           if k.startswith("rank_") and k.split("_")[1].isdigit())
            m["trace"] = [(r, _group_series(f, file, f"trace/{k}", ("kind",) + EVENT_SERIES,
                                            ints=("kind", "microbatch", "version")))
                          for r, k in ranks]
    m["schedule"] = m["deck"].get("pipeline.schedule", "?")  # at depth 1: its semantics
    return m


def run_name(m):
    """Legend name of a run: its label, schedule and depth."""
    if m["label"] == m["schedule"]:
        return f"{m['label']} (d={m['depth']})"
    return f"{m['label']} ({m['schedule']}, d={m['depth']})"


def warmup_end(runs):
    """The last synchronous warm-up step of the 2bw runs, when they all share one inside the run
    (else None)."""
    ends = {deck_int(m["deck"], "pipeline.sync_warmup_steps", 0) for m in runs
            if m["schedule"] == "2bw" and m["depth"] > 1}
    n = max((len(m["steps"]["step"]) for m in runs), default=0)
    if len(ends) == 1:
        end = ends.pop()
        if 0 < end < n:
            return end
    return None


def mark_warmup(ax, runs, x_scale=1):
    end = warmup_end(runs)
    if end is not None:
        ax.axvline(end * x_scale, color="black", linestyle="-.", linewidth=0.8, alpha=0.6)
        ax.text(end * x_scale, ax.get_ylim()[1], " 2bw: end of flush warm-up", va="top",
                ha="left", fontsize=8, alpha=0.8)


def tokens_per_step(m):
    d = m["deck"]
    return (deck_int(d, "pipeline.microbatches", 1) * deck_int(d, "train.microbatch_size", 1) *
            deck_int(d, "model.seq_len", 1) * max(1, m["width"]))


def median_step_seconds(m, skip):
    """Median duration of the steps after the first `skip` (from /steps/time_s; the median keeps a
    machine's occasional stall out)."""
    times = m["steps"]["time_s"]
    if len(times) < skip + 3:
        raise AnalysisError(f"{m['path']}: {len(times)} steps; needs at least {skip + 3} "
                            f"(--skip {skip})")
    # time_s[k] is when step k+1 ended, so diff[k] is the duration of step k+2: the steps after
    # the first `skip` start at diff[skip - 1].
    return float(np.median(np.diff(times)[max(skip - 1, 0):]))


COMPUTE_PREFIXES = ("forward", "backward")


def is_compute(name):
    """Compute actions, as p2bw counts them for the bubble: F, B, Bi, Bw, forward*, backward*."""
    return name in ("F", "B", "Bi", "Bw") or name.startswith(COMPUTE_PREFIXES)


def read_timeline(path):
    """Lanes of events from a metrics file with a trace or a simulation timeline.

    Returns {"path", "source": "trace"|"simulation", "action_names", "lanes": [{"name", "stage",
    "kind", "microbatch", "version", "start", "end"}], "label"} with lanes sorted by rank/stage.
    """
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "metrics.h5")):
            file = os.path.join(path, "metrics.h5")
        else:
            file = resolve(path, "simulation.h5")
    else:
        file = resolve(path, "metrics.h5")
    with open_h5(file, (METRICS_FORMAT, SIMULATION_FORMAT)) as f:
        fmt = _text(f.attrs["format"])
        deck = parse_deck(_text(f.attrs.get("deck", "")))
        lanes = []
        if fmt == METRICS_FORMAT:
            if "trace" not in f:
                raise AnalysisError(f"{file}: has no trace (run p2bw train with "
                                    f"--set output.trace=true)")
            names = _text(f["trace"].attrs.get("action_names", ""))
            width = max(1, _int_attr(f, file, "/", "width", 1))
            keys = sorted((int(k.split("_")[1]), k) for k in f["trace"].keys()
                          if k.startswith("rank_") and k.split("_")[1].isdigit())
            for r, k in keys:
                lane = _group_series(f, file, f"trace/{k}", ("kind",) + EVENT_SERIES,
                                     ints=("kind", "microbatch", "version"))
                lane.update(name=f"rank {r} (stage {r // width})", stage=r // width)
                lanes.append(lane)
        else:
            names = _text(f.attrs.get("action_names", ""))
            if "timeline" not in f:
                raise AnalysisError(f"{file}: group timeline is missing")
            keys = sorted((int(k.split("_")[1]), k) for k in f["timeline"].keys()
                          if k.startswith("stage_") and k.split("_")[1].isdigit())
            for s, k in keys:
                lane = _group_series(f, file, f"timeline/{k}", ("action",) + EVENT_SERIES,
                                     ints=("action", "microbatch", "version"))
                lane["kind"] = lane.pop("action")
                lane.update(name=f"stage {s}", stage=s)
                lanes.append(lane)
        if not lanes:
            raise AnalysisError(f"{file}: the timeline has no ranks or stages")
        if not names:
            raise AnalysisError(f"{file}: attribute action_names is missing")
    return {"path": file, "source": "trace" if fmt == METRICS_FORMAT else "simulation",
            "action_names": [n.strip() for n in names.split(",")], "lanes": lanes,
            "deck": deck, "label": run_label(path)}


def busy_span(kind, start, end, names):
    """(busy, span): total duration of compute events and last end - first start."""
    if len(kind) == 0:
        return 0.0, 0.0
    compute = np.array([is_compute(n) for n in names] + [False])
    k = np.where((kind >= 0) & (kind < len(names)), kind, len(names))
    busy = float(np.sum((end - start)[compute[k]]))
    return busy, float(np.max(end) - np.min(start))


def bubble(kind, start, end, names):
    busy, span = busy_span(kind, start, end, names)
    return 1.0 - busy / span if span > 0 else 0.0


def finite(x):
    return x is not None and math.isfinite(x)


def parse_formats(text):
    formats = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in formats if t not in ("png", "svg", "pdf")]
    if not formats or bad:
        raise AnalysisError(f"--formats {text}: allowed: png, svg, pdf (comma-separated)")
    return formats


def print_result(text, figs):
    """Prints a script's summary and the files it wrote; returns the exit code 0."""
    print(text, end="")
    for files, _ in figs:
        print("wrote " + ", ".join(files))
    return 0


def add_common_args(parser):
    parser.add_argument("--out", required=True, help="output directory for the figures")
    parser.add_argument("--formats", default="png,svg",
                        help="comma-separated figure formats (default: png,svg)")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution (default: 100)")


def add_run_args(parser, labels_help="one label per run"):
    """The RUN... positional, the common options and --labels of the scripts that compare runs."""
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directory (with metrics.h5) or metrics.h5 file")
    add_common_args(parser)
    parser.add_argument("--labels", nargs="+", help=labels_help)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, out, stem, formats, dpi):
    """Writes fig as out/stem.<fmt> for each format; returns the paths."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise AnalysisError(f"{out}: cannot create the output directory ({e.strerror})")
    paths = []
    for fmt in formats:
        p = os.path.join(out, f"{stem}.{fmt}")
        try:
            fig.savefig(p, dpi=dpi, bbox_inches="tight")
        except OSError as e:
            raise AnalysisError(f"{p}: cannot write the figure ({e.strerror or e})")
        paths.append(p)
    pyplot().close(fig)
    return paths




def main():
    import argparse
    p = argparse.ArgumentParser(description="Validate p2bw HDF5 outputs (metrics.h5 or "
                                            "simulation.h5) and print what they hold; the module "
                                            "is the reader the other analysis scripts share.")
    p.add_argument("files", nargs="+", metavar="RUN_DIR_OR_FILE")
    a = p.parse_args()
    for path in a.files:
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, "metrics.h5")):
            tl = read_timeline(path)
            print(f"{tl['path']}: {SIMULATION_FORMAT}, {len(tl['lanes'])} stages, "
                  f"{sum(len(l['kind']) for l in tl['lanes'])} events")
            continue
        file = resolve(path, "metrics.h5")
        with open_h5(file, (METRICS_FORMAT, SIMULATION_FORMAT)) as f:
            simulation = _text(f.attrs["format"]) == SIMULATION_FORMAT
        if simulation:
            tl = read_timeline(file)
            print(f"{file}: {SIMULATION_FORMAT}, {len(tl['lanes'])} stages, "
                  f"{sum(len(l['kind']) for l in tl['lanes'])} events")
            continue
        m = read_metrics(file)
        trace = (f", trace of {len(m['trace'])} ranks" if m["trace"] else ", no trace")
        print(f"{file}: {METRICS_FORMAT}, {m['schedule']}, depth {m['depth']}, width "
              f"{m['width']}, {len(m['steps']['step'])} steps{trace}")
    return 0


if __name__ == "__main__":
    main_guard(main)
