#!/usr/bin/env python3
"""The GPU check of a p2bw CUDA bundle (run through the bundle's `gpu-check`): every part with its
own timeout inside one overall budget (default 450 s), so one hang cannot eat the rest. Writes
gpu-check.json and gpu-check.md (one table) to the output folder.

Parts, in order: environment (nvidia-smi, nvcc, torch); the kernel tests on the GPU (finite
differences in double); the pipeline exactness grid at 1 and 2 MPI ranks sharing the GPU (MPI
transport staged through pinned host memory); the demo trained on one GPU (one stage) against the
host run's loss curve shipped in the bundle; `p2bw bench` at GPT-2 124M (B = 16, T = 1024) in fp32
and TF32; the same model in PyTorch in fp32, TF32, bf16 eager and bf16 compiled.

Loss-curve tolerance: the GPU sums in other orders than the host, so the curves drift apart
slowly: each of the first 10 steps within 1e-3 of the host's loss (relative), and the mean of
the last 20 steps within 0.05 nats.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

FIRST_STEPS, FIRST_TOL, LAST_STEPS, LAST_TOL = 10, 1e-3, 20, 0.05


class Check:
    def __init__(self, bundle, out, budget_s):
        self.bundle, self.out = bundle, out
        self.deadline = time.time() + budget_s
        self.rows = []
        self.work = os.path.join(out, "work")
        os.makedirs(self.work, exist_ok=True)

    def run(self, name, cmd, timeout_s, env=None, cwd=None):
        """Runs cmd with min(timeout_s, what is left); returns (rc, output, seconds)."""
        left = self.deadline - time.time()
        limit = max(1.0, min(timeout_s, left - 5))
        if left < 10:
            return None, f"not run: the overall budget is spent ({name})", 0.0
        start = time.time()
        log = os.path.join(self.work, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".log")
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=limit, env=env, cwd=cwd or self.work, start_new_session=True)
            rc, text = p.returncode, p.stdout
        except subprocess.TimeoutExpired as e:
            rc = "timeout"
            text = (e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))
            text += f"\n[gpu-check] {name}: stopped after {limit:.0f} s"
        except OSError as e:
            rc, text = "error", str(e)
        with open(log, "w") as f:
            f.write(text)
        return rc, text, time.time() - start

    def add(self, part, status, value="", detail="", seconds=0.0, **extra):
        row = {"part": part, "status": status, "value": value, "detail": detail,
               "seconds": round(seconds, 1), **extra}
        self.rows.append(row)
        print(f"[gpu-check] {part}: {status} {value} {detail}".rstrip(), flush=True)

    def bin(self, name):
        return os.path.join(self.bundle, "bin", name)

    def share(self, *parts):
        return os.path.join(self.bundle, "share", "p2bw", *parts)


def have_gpu():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False, "no nvidia-smi"
    p = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p.returncode == 0 and p.stdout.strip() != "", p.stdout.strip()


def gtest_summary(text):
    m = re.search(r"\[  PASSED  \] (\d+) test", text)
    f = re.search(r"\[  FAILED  \] (\d+) test", text)
    return f"{m.group(1) if m else 0} passed, {f.group(1) if f else 0} failed"


def part_tests(c, name, cmd, timeout_s):
    rc, text, s = c.run(name, cmd, timeout_s)
    status = "pass" if rc == 0 else ("skip" if rc is None else f"FAIL ({rc})")
    c.add(name, status, gtest_summary(text), "" if rc == 0 else text.strip().splitlines()[-1:][0] if text.strip() else "", s)


def read_losses(metrics):
    import h5py
    with h5py.File(metrics, "r") as f:
        return [float(x) for x in f["steps/loss"][:]], [int(x) for x in f["steps/step"][:]]


def part_demo(c, mpiexec):
    ref_path = c.share("reference", "demo-host-loss.json")
    with open(ref_path) as f:
        ref = json.load(f)
    if ref.get("format") != "p2bw-loss-curve" or ref.get("format_version") != 1:
        c.add("demo training (1 GPU)", "FAIL", "", f"{ref_path}: not a p2bw-loss-curve of format_version 1")
        return
    run_dir = os.path.join(c.work, "demo")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = mpiexec + ["-n", "1", c.bin("p2bw"), "train", c.share("inputs", "demo.yaml"), "--start-over"]
    for s in ref["overrides"] + [f"output.dir={run_dir}", f"data.path={c.share('data', 'fortunes.tok')}"]:
        cmd += ["--set", s]
    rc, text, s = c.run("demo training (1 GPU)", cmd, 150)
    if rc != 0:
        c.add("demo training (1 GPU)", f"FAIL ({rc})", "", text.strip().splitlines()[-1] if text.strip() else "", s)
        return
    losses, _ = read_losses(os.path.join(run_dir, "metrics.h5"))
    host = ref["loss"]
    n = min(len(losses), len(host))
    first = max(abs(a - b) / abs(b) for a, b in zip(losses[:FIRST_STEPS], host[:FIRST_STEPS]))
    last_gpu = sum(losses[n - LAST_STEPS:n]) / LAST_STEPS
    last_host = sum(host[n - LAST_STEPS:n]) / LAST_STEPS
    ok = len(losses) == len(host) and first <= FIRST_TOL and abs(last_gpu - last_host) <= LAST_TOL
    tps = re.findall(r"([\d,]+) tok(?:ens)?/s", text)
    c.add("demo training (1 GPU)", "pass" if ok else "FAIL",
          f"last {LAST_STEPS} mean {last_gpu:.4f} (host {last_host:.4f})",
          f"first {FIRST_STEPS} steps max rel. diff {first:.2e} (tol {FIRST_TOL}); last-{LAST_STEPS} tol "
          f"{LAST_TOL}; {len(losses)} steps" + (f"; last log {tps[-1]} tok/s" if tps else ""), s,
          gpu_loss=losses, host_loss=host)


def part_bench(c, label, extra):
    cmd = [c.bin("p2bw"), "bench", c.share("inputs", "gpt2-124m.yaml"), "--repeats", "5"] + extra
    rc, text, s = c.run(f"p2bw bench {label}", cmd, 120)
    m = re.search(r"^model\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)", text, re.M)
    if rc == 0 and m:
        c.add(f"p2bw bench GPT-2 124M {label}", "pass", f"{int(m.group(4)):,} tok/s",
              f"fwd {m.group(1)} ms, bwd {m.group(2)} ms (B=16, T=1024)", s, tokens_per_s=int(m.group(4)))
    else:
        c.add(f"p2bw bench GPT-2 124M {label}", f"FAIL ({rc})", "",
              text.strip().splitlines()[-1] if text.strip() else "", s)


def part_torch(c):
    script = c.share("torch_gpt2_gpu.py")
    for mode, limit in (("fp32", 70), ("tf32", 50), ("bf16", 50), ("bf16-compiled", 150)):
        rc, text, s = c.run(f"torch {mode}", [sys.executable, script, "--modes", mode], limit)
        rows = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
        result = [r for r in rows if r.get("mode") == mode]
        if rc == 0 and result:
            r = result[0]
            c.add(f"PyTorch GPT-2 124M {mode}", "pass", f"{r['tokens_per_s']:,.0f} tok/s",
                  f"loss {r['loss']:.3f}, peak {r['peak_memory_gib']:.1f} GiB", s,
                  tokens_per_s=r["tokens_per_s"])
        elif rc == 77:
            c.add(f"PyTorch GPT-2 124M {mode}", "skip", "", rows[0].get("skipped", "") if rows else "", s)
        else:
            c.add(f"PyTorch GPT-2 124M {mode}", f"FAIL ({rc})", "",
                  text.strip().splitlines()[-1] if text.strip() else "", s)


def write(c, env):
    with open(os.path.join(c.out, "gpu-check.json"), "w") as f:
        json.dump({"environment": env, "rows": c.rows}, f, indent=1)
    lines = ["# p2bw GPU check", "", *[f"- {k}: {v}" for k, v in env.items()], "",
             "| part | status | value | detail | s |", "|---|---|---|---|---|"]
    for r in c.rows:
        lines.append(f"| {r['part']} | {r['status']} | {r['value']} | {r['detail']} | {r['seconds']} |")
    with open(os.path.join(c.out, "gpu-check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description="the GPU check of a p2bw CUDA bundle")
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--budget-s", type=float, default=450)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    c = Check(os.path.abspath(args.bundle), os.path.abspath(args.out), args.budget_s)
    env = {"bundle": open(os.path.join(c.bundle, "BUNDLE.txt")).readline().strip()
           if os.path.exists(os.path.join(c.bundle, "BUNDLE.txt")) else c.bundle}
    gpu, smi = have_gpu()
    env["gpu"] = smi
    _, text, _ = c.run("nvcc", ["nvcc", "--version"], 10)
    env["nvcc"] = (text.strip().splitlines() or [""])[-1]
    _, text, _ = c.run("p2bw --version", [c.bin("p2bw"), "--version"], 20)
    env["p2bw"] = " / ".join(text.strip().splitlines()[:3])
    mpiexec = [c.bin("mpiexec"), "-launcher", "fork"]
    if not gpu:
        c.add("GPU parts", "skip", "", f"no GPU: {smi}")
    else:
        part_tests(c, "kernel tests on the GPU", [c.bin("test_kernels")], 120)
        part_tests(c, "training tests on the GPU", [c.bin("test_training")], 90)
        for n in (1, 2):
            part_tests(c, f"exactness grid, {n} rank(s) on one GPU",
                       mpiexec + ["-n", str(n), c.bin("test_pipeline_exact")], 150)
        part_demo(c, mpiexec)
        part_bench(c, "fp32", [])
        part_bench(c, "TF32", ["--set", "model.precision=tf32"])
        part_torch(c)
    write(c, env)
    failed = [r for r in c.rows if r["status"].startswith("FAIL")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
