#!/usr/bin/env python3
"""The GPU check of a p2bw CUDA bundle (run through the bundle's `gpu-check`): every part with its
own time limit inside one overall budget (default 450 s), and each part keeps a minimum for the
parts after it, so one slow or hanging part cannot eat the rest. Writes gpu-check.json,
gpu-check.md (one table) and gpu-check-logs.txt (the end of every part's output) to the output
folder; runs happen in a scratch folder outside it.

Parts, in order: environment (nvidia-smi, nvcc, torch, p2bw --version); the kernel tests on the GPU
(finite differences in double) and the training tests; the NCCL test on one rank; the pipeline
exactness grid at 1 and 2 MPI ranks sharing the GPU (MPI transport staged through pinned host
memory); the memory tests on one rank (the executor's memory against `p2bw check`'s prediction and
against the Kokkos allocator's high water, nothing allocated after the first step, fences per
step independent of the microbatches); the demo trained on one GPU (one stage) against the host run's loss curve shipped in the
bundle; the same demo in bf16 (bf16 storage) against that fp32 curve with bf16's tolerance;
`p2bw bench` at GPT-2 124M (B = 16, T = 1024) in fp32, TF32 and bf16 (bf16 with each kernel's
time from CUDA events, `--kernels`, and with cuDNN's fused attention
where the bundle has it and the machine has cuDNN, and once more with P2BW_ATTENTION=native); the
kernel tests include cuDNN's attention against the native kernels; the same model in PyTorch in
fp32, TF32, bf16 eager and bf16 compiled. A part that cannot run is a `skip` row with the reason; a
part that ran and failed is a `FAIL` row; the exit code is 1 when any part failed.

Loss-curve tolerance: the GPU sums in other orders than the host, so the curves drift apart
slowly: each of the first 10 steps within 1e-3 of the host's loss (relative), and the mean of
the last 20 steps within 0.05 nats. bf16 against the fp32 host curve: each rounding point moves a
value by up to 2^-9 relative, so the losses differ from the first step on: each of the first 10
steps within 5e-3 (relative) and the mean of the last 20 within 0.05 nats (the host's bf16 demo,
2 stages, 2026-12-01: 5.5e-4 and 0.009 nats; final validation loss 2.5380 against fp32's 2.5456).

--dry-run runs every part without a GPU (on the bundle's programs, or on a host build laid out as
a bundle), with bench and PyTorch at a small size on the CPU: it checks this script's running,
parsing and reporting, not the GPU.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

FIRST_STEPS, FIRST_TOL, LAST_STEPS, LAST_TOL = 10, 1e-3, 20, 0.05
BF16_FIRST_TOL, BF16_LAST_TOL = 5e-3, 0.05  # bf16 against the fp32 host curve
LOG_TAIL_LINES = 60  # per part, in gpu-check-logs.txt
MIN_S = 20  # what each later part keeps of the budget
# bench and PyTorch in the dry run: GPT-2's shape, small enough for a CPU.
SMALL_BENCH = ["model.layers=2", "model.hidden=64", "model.heads=2", "model.seq_len=64",
               "model.vocab=256", "train.microbatch_size=2"]
SMALL_TORCH = ["--device", "cpu", "--layers", "2", "--hidden", "64", "--heads", "2", "--seq", "64",
               "--vocab", "256", "--batch", "2", "--warmup", "1", "--repeats", "2"]


class Check:
    def __init__(self, bundle, out, budget_s, dry_run):
        self.bundle, self.out, self.dry_run = bundle, out, dry_run
        self.deadline = time.time() + budget_s
        self.rows = []
        self.logs = []
        self.later = 0  # parts still to come after the running one
        self.work = tempfile.mkdtemp(prefix="p2bw-gpu-check-")

    def run(self, name, cmd, timeout_s, env=None):
        """Runs cmd with min(timeout_s, what is left after the later parts' minimum) and the
        variables in env added to this environment; returns (rc, output, seconds); rc is None when
        not run, "timeout" when stopped."""
        left = self.deadline - time.time() - self.later * MIN_S
        limit = min(timeout_s, left - 2)
        if limit < 5:
            return None, f"not run: the overall budget is spent ({name})", 0.0
        start = time.time()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", timeout=limit, env={**os.environ, **(env or {})}, cwd=self.work,
                               start_new_session=True)
            rc, text = p.returncode, p.stdout
        except subprocess.TimeoutExpired as e:
            rc = "timeout"
            text = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            text += f"\n[gpu-check] {name}: stopped after {limit:.0f} s"
        except OSError as e:
            rc, text = "error", f"{cmd[0]}: {e}"
        seconds = time.time() - start
        tail = text.rstrip().splitlines()[-LOG_TAIL_LINES:]
        self.logs.append(f"===== {name}: rc {rc}, {seconds:.1f} s: {' '.join(cmd)}\n" + "\n".join(tail))
        return rc, text, seconds

    def add(self, part, status, value="", detail="", seconds=0.0, **extra):
        row = {"part": part, "status": status, "value": value, "detail": detail,
               "seconds": round(seconds, 1), **extra}
        self.rows.append(row)
        print(f"[gpu-check] {part}: {status} {value} {detail}".rstrip(), flush=True)

    def bin(self, name):
        return os.path.join(self.bundle, "bin", name)

    def share(self, *parts):
        return os.path.join(self.bundle, "share", "p2bw", *parts)


def last_line(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1].strip() if lines else ""


def failed(rc):
    return "skip" if rc is None else f"FAIL ({rc})"


def gpu_info():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False, "no nvidia-smi on PATH"
    try:
        p = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"nvidia-smi: {e}"
    return p.returncode == 0 and p.stdout.strip() != "", p.stdout.strip()


def gtest_summary(text):
    m = re.search(r"\[  PASSED  \] (\d+) test", text)
    f = re.search(r"\[  FAILED  \] (\d+) test", text)
    s = re.search(r"\[  SKIPPED \] (\d+) test", text)
    return (f"{m.group(1) if m else 0} passed, {f.group(1) if f else 0} failed"
            + (f", {s.group(1)} skipped" if s else ""))


def part_tests(c, name, cmd, timeout_s):
    if not os.path.exists(cmd[-1]):
        c.add(name, "skip", "", f"{os.path.basename(cmd[-1])} is not in the bundle")
        return
    rc, text, s = c.run(name, cmd, timeout_s)
    failed_tests = re.findall(r"^\[  FAILED  \] (\S+)", text, re.M)
    detail = "" if rc == 0 else (f"failed: {' '.join(sorted(set(failed_tests))[:8])}"
                                 if failed_tests else last_line(text))
    c.add(name, "pass" if rc == 0 else failed(rc), gtest_summary(text), detail, s)


def read_losses(metrics):
    import h5py
    with h5py.File(metrics, "r") as f:
        return [float(x) for x in f["steps/loss"][:]]


def compare_curves(losses, host, first_tol=FIRST_TOL, last_tol=LAST_TOL):
    """(ok, first-steps max relative difference, last-steps means, detail) of two loss curves."""
    n = min(len(losses), len(host))
    if n < max(FIRST_STEPS, LAST_STEPS):
        return False, float("nan"), (float("nan"), float("nan")), f"only {n} steps"
    first = max(abs(a - b) / abs(b) for a, b in zip(losses[:FIRST_STEPS], host[:FIRST_STEPS]))
    gpu_last = sum(losses[n - LAST_STEPS:n]) / LAST_STEPS
    host_last = sum(host[n - LAST_STEPS:n]) / LAST_STEPS
    ok = len(losses) == len(host) and first <= first_tol and abs(gpu_last - host_last) <= last_tol
    detail = (f"first {FIRST_STEPS} steps max rel. diff {first:.2e} (tol {first_tol}); last "
              f"{LAST_STEPS} mean diff {abs(gpu_last - host_last):.4f} (tol {last_tol}); "
              f"{len(losses)} steps (host {len(host)})")
    return ok, first, (gpu_last, host_last), detail


def part_demo(c, mpiexec, bf16=False):
    name = ("demo training in bf16, 1 GPU, vs the fp32 host loss curve" if bf16
            else "demo training (1 GPU, 1 stage) vs host loss curve")
    ref_path = c.share("reference", "demo-host-loss.json")
    if not os.path.exists(ref_path):
        c.add(name, "skip", "", f"no host loss curve {ref_path}")
        return
    with open(ref_path) as f:
        ref = json.load(f)
    if ref.get("format") != "p2bw-loss-curve" or ref.get("format_version") != 1:
        c.add(name, "FAIL", "", f"{ref_path}: not a p2bw-loss-curve of format_version 1")
        return
    try:
        import h5py  # noqa: F401  (read_losses needs it)
    except ImportError as e:
        c.add(name, "skip", "", f"python3 has no h5py ({e}): cannot read metrics.h5")
        return
    run_dir = os.path.join(c.work, "demo-bf16" if bf16 else "demo")
    cmd = mpiexec + ["-n", "1", c.bin("p2bw"), "train", c.share("inputs", "demo.yaml")]
    for s in ref["overrides"] + [f"output.dir={run_dir}", f"data.path={c.share('data', 'fortunes.tok')}"] + (
            ["model.precision=bf16"] if bf16 else []):
        cmd += ["--set", s]
    rc, text, s = c.run(name, cmd, 420 if c.dry_run else 150)  # the host needs minutes
    if rc != 0:
        c.add(name, failed(rc), "", last_line(text), s)
        return
    losses = read_losses(os.path.join(run_dir, "metrics.h5"))
    host = ref["loss"]
    ok, _, (gpu_last, host_last), detail = (compare_curves(losses, host, BF16_FIRST_TOL, BF16_LAST_TOL) if bf16
                                            else compare_curves(losses, host))
    tps = re.findall(r"([\d,.]+) tok(?:ens)?/s", text)
    c.add(name, "pass" if ok else "FAIL", f"last {LAST_STEPS} mean {gpu_last:.4f} (host {host_last:.4f})",
          detail + (f"; last log {tps[-1]} tok/s" if tps else ""), s, gpu_loss=losses, host_loss=host)
    part_memory(c, os.path.join(run_dir, "metrics.h5"), "bf16" if bf16 else "fp32")


def part_memory(c, metrics, precision):
    """The run's measured peak memory per stage against the prediction it recorded: within 5%."""
    import h5py
    name = f"demo memory measured vs predicted ({precision})"
    rows = []
    with h5py.File(metrics, "r") as f:
        for stage in sorted(f["stages"].keys(), key=int):
            g = f["stages"][stage]
            predicted = int(g.attrs["predicted_memory_bytes"])
            measured = int(max(g["peak_memory_bytes"][:]))
            rows.append((stage, measured, predicted, abs(measured - predicted) / predicted))
    worst = max(r[3] for r in rows)
    c.add(name, "pass" if worst <= 0.05 else "FAIL", f"worst {100 * worst:.2f}% off",
          "; ".join(f"stage {st}: {m / 2**20:.2f} MiB measured, {p / 2**20:.2f} MiB predicted"
                    for st, m, p, _ in rows) + " (tol 5%)", 0.0)


def part_bench(c, label, extra, env=None):
    name = f"p2bw bench GPT-2 124M {label}"
    cmd = [c.bin("p2bw"), "bench", c.share("inputs", "gpt2-124m.yaml")]
    size = "B=16, T=1024"
    if c.dry_run:
        name = f"p2bw bench (small GPT, dry run) {label}"
        cmd += [a for s in SMALL_BENCH for a in ("--set", s)] + ["--repeats", "2"]
        size = "dry run: 2 x 64, B=2, T=64"
    else:
        cmd += ["--repeats", "5"]
    rc, text, s = c.run(name, cmd + extra, 120, env=env)
    m = re.search(r"^model\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)", text, re.M)
    gemm = re.search(r"GEMM: ([^,\n]*)", text)
    attention = re.search(r"attention: (.*)$", text, re.M)
    if rc == 0 and m:
        c.add(name, "pass", f"{int(m.group(4)):,} tok/s",
              f"fwd {m.group(1)} ms, bwd {m.group(2)} ms ({size}; GEMM {gemm.group(1) if gemm else '?'}; "
              f"attention {attention.group(1) if attention else '?'})",
              s, tokens_per_s=int(m.group(4)))
    elif rc == 0:
        c.add(name, "FAIL (output)", "", "no 'model' row in bench's output", s)
    else:
        c.add(name, failed(rc), "", last_line(text), s)
    kernels = [{"part": k[0], "phase": k[1], "kernel": k[2], "calls": int(k[3]), "ms": float(k[4]),
                "share_percent": float(k[5])}
               for k in re.findall(r"^(embedding|block|head)\s+(forward|backward)\s+(.+?)\s+(\d+)\s+"
                                   r"([\d.]+)\s+([\d.]+)%$", text, re.M)]
    clock = re.search(r"^kernels \(([^;]*);", text, re.M)
    if "--kernels" in extra and rc == 0:
        block = sorted((k for k in kernels if k["part"] == "block"), key=lambda k: -k["ms"])
        c.add(f"{name}: kernels of one block", "pass" if block else "FAIL (output)",
              f"{sum(k['ms'] for k in block):.3f} ms" if block else "",
              "; ".join(f"{k['phase']} {k['kernel']} {k['ms']:.3f} ms ({k['share_percent']:.0f}%)"
                        for k in block[:8]) + f" ({clock.group(1) if clock else '?'}; all rows in gpu-check.json)",
              0.0, kernels=kernels)


def part_torch(c):
    script = c.share("torch_gpt2_gpu.py")
    for mode, limit in (("fp32", 70), ("tf32", 50), ("bf16", 50), ("bf16-compiled", 150)):
        name = f"PyTorch GPT-2 124M {mode}" + (" (small, CPU, dry run)" if c.dry_run else "")
        rc, text, s = c.run(name, [sys.executable, script, "--modes", mode]
                            + (SMALL_TORCH if c.dry_run else []), limit)
        c.later = max(0, c.later - 1)
        rows = []
        for line in text.splitlines():
            try:
                rows.append(json.loads(line)) if line.startswith("{") else None
            except ValueError:
                pass
        result = [r for r in rows if r.get("mode") == mode]
        header = rows[0] if rows and "mode" not in rows[0] else {}
        versions = f"torch {header.get('torch', '?')}, CUDA {header.get('cuda', '?')}"
        if rc == 0 and result and "tokens_per_s" in result[0]:
            r = result[0]
            c.add(name, "pass", f"{r['tokens_per_s']:,.0f} tok/s",
                  f"loss {r['loss']:.3f}, peak {r['peak_memory_gib']:.1f} GiB; {versions}", s,
                  tokens_per_s=r["tokens_per_s"])
        elif rc == 0 and result and "skipped" in result[0]:
            c.add(name, "skip", "", result[0]["skipped"], s)
        elif rc == 77:
            c.add(name, "skip", "", header.get("skipped", last_line(text)), s)
        else:
            c.add(name, failed(rc), "", last_line(text), s)


def write(c, env):
    with open(os.path.join(c.out, "gpu-check.json"), "w") as f:
        json.dump({"format": "p2bw-gpu-check", "format_version": 1, "dry_run": c.dry_run,
                   "environment": env, "rows": c.rows}, f, indent=1)
    title = "# p2bw GPU check" + (" (dry run, no GPU: not a GPU result)" if c.dry_run else "")
    lines = [title, "", *[f"- {k}: {v}" for k, v in env.items()], "",
             "| part | status | value | detail | s |", "|---|---|---|---|---|"]
    for r in c.rows:
        cells = [str(r[k]).replace("|", "\\|") for k in ("part", "status", "value", "detail", "seconds")]
        lines.append("| " + " | ".join(cells) + " |")
    with open(os.path.join(c.out, "gpu-check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(c.out, "gpu-check-logs.txt"), "w") as f:
        f.write("\n\n".join(c.logs) + "\n")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description="the GPU check of a p2bw CUDA bundle")
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--budget-s", type=float, help="overall time limit (450 s; dry run 900 s)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every part without a GPU, bench and PyTorch small on the CPU")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    budget = args.budget_s or (900 if args.dry_run else 450)
    c = Check(os.path.abspath(args.bundle), os.path.abspath(args.out), budget, args.dry_run)
    env = {}
    bundle_txt = os.path.join(c.bundle, "BUNDLE.txt")
    env["bundle"] = open(bundle_txt).readline().strip() if os.path.exists(bundle_txt) else c.bundle
    gpu, smi = gpu_info()
    env["gpu"] = smi
    _, text, _ = c.run("nvcc --version", ["nvcc", "--version"], 10)
    env["nvcc"] = last_line(text)
    _, text, _ = c.run("torch version", [sys.executable, "-c", "import torch; print(torch.__version__, "
                                         "torch.version.cuda, torch.cuda.is_available())"], 60)
    env["torch (version, CUDA, GPU seen)"] = last_line(text)
    env["libraries found for p2bw in"] = os.environ.get("P2BW_GPU_CHECK_LIBRARY_DIRS") or "(none added)"
    unresolved = os.environ.get("P2BW_GPU_CHECK_UNRESOLVED", "").split()
    rc, text, _ = c.run("p2bw --version", [c.bin("p2bw"), "--version"], 30)
    env["p2bw"] = " / ".join(text.strip().splitlines()[:6]) if rc == 0 else f"rc {rc}: {last_line(text)}"
    mpiexec = [c.bin("mpiexec"), "-launcher", "fork"]

    tests = lambda name, cmd, limit: (name, 1, lambda: part_tests(c, name, cmd, limit))
    parts = [  # (name, runs, part)
        tests("kernel tests (finite differences in double)", [c.bin("test_kernels")], 120),
        tests("training tests", [c.bin("test_training")], 90),
        tests("NCCL test, 1 rank", mpiexec + ["-n", "1", c.bin("test_nccl")], 45),
        tests("exactness grid, 1 rank", mpiexec + ["-n", "1", c.bin("test_pipeline_exact")], 120),
        tests("exactness grid, 2 ranks on one GPU", mpiexec + ["-n", "2", c.bin("test_pipeline_exact")], 150),
        tests("memory tests, 1 rank (prediction, the allocator's peak, steady state)",
              mpiexec + ["-n", "1", c.bin("test_pipeline_memory")], 90),
        ("demo training", 1, lambda: part_demo(c, mpiexec)),
        ("demo training bf16", 1, lambda: part_demo(c, mpiexec, bf16=True)),
        ("p2bw bench fp32", 1, lambda: part_bench(c, "fp32", [])),
        ("p2bw bench TF32", 1, lambda: part_bench(c, "TF32", ["--set", "model.precision=tf32"])),
        ("p2bw bench bf16", 1,
         lambda: part_bench(c, "bf16", ["--set", "model.precision=bf16", "--kernels"])),
        # the same without cuDNN's fused attention: what it gains (the same as above without it)
        ("p2bw bench bf16, native attention", 1,
         lambda: part_bench(c, "bf16, native attention", ["--set", "model.precision=bf16"],
                            env={"P2BW_ATTENTION": "native"})),
        ("PyTorch", 4, lambda: part_torch(c)),  # four runs: fp32, TF32, bf16, bf16 compiled
    ]
    if not gpu and not c.dry_run:
        c.add("GPU parts", "skip", "", f"no GPU: {smi}")
    elif unresolved:
        c.add("p2bw's libraries", "FAIL", "", "not found: " + " ".join(unresolved)
              + " (not in the driver's, the CUDA toolkit's or PyTorch's nvidia wheels' folders)")
    else:
        for i, (name, runs, part) in enumerate(parts):
            c.later = sum(r for _, r, _ in parts[i + 1:]) + runs - 1
            try:
                part()
            except Exception as e:  # a broken part is a row, never the end of the check
                c.add(name, "FAIL (gpu_check.py)", "", f"{type(e).__name__}: {e}")
    write(c, env)
    shutil.rmtree(c.work, ignore_errors=True)
    return 1 if any(r["status"].startswith("FAIL") for r in c.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
