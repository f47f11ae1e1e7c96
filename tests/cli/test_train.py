#!/usr/bin/env python3
"""`p2bw train` as users run it, under mpiexec: a 4-stage 2bw run of the tiny GPT; the demo deck on
2 stages with 2bw, whose loss must fall on real text; a deliberately stalled rank, which must make
the run fail with the timeout message instead of hanging; and user errors with exit code 2.
Usage: test_train.py P2BW MPIEXEC [MPIEXEC_FLAGS...]"""
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
P2BW, MPIEXEC, FLAGS = sys.argv[1], sys.argv[2], sys.argv[3:]
results = []


def train(ranks, *args, env=None, timeout=300):
    command = [MPIEXEC, "-n", str(ranks), *FLAGS, P2BW, "train", *args]
    start = time.monotonic()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    return run, time.monotonic() - start


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok' if condition else 'FAILED':6} {name}" + ("" if condition else f"\n       {detail}"))


def losses(stdout):
    return [float(x) for x in re.findall(r"\| loss ([0-9.]+)", stdout)]


import shutil
out = "/tmp/p2bw-cli-train"
shutil.rmtree(out, ignore_errors=True)  # every run below owns a folder of its own
r, _ = train(4, "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=4", "--set", "pipeline.schedule=2bw",
             "--set", f"output.dir={out}/tiny4")
check("mpiexec -n 4 p2bw train inputs/gpt-tiny.yaml --set pipeline.depth=4 --set pipeline.schedule=2bw",
      r.returncode == 0 and "step      6/6" in r.stdout and "stage 3 on ranks 3..3: blocks 3-3 + head" in r.stdout,
      r.stdout[-800:] + r.stderr[-800:])
check("the train log names the transport and why (no build has the NCCL transport yet)",
      "  transport: mpi (this build has no NCCL transport)\n" in r.stdout, r.stdout[:1200])

r, _ = train(2, "inputs/demo.yaml", "--set", "train.steps=30", "--set", f"output.dir={out}/demo")
curve = losses(r.stdout)
check("the demo deck on 2 stages with 2bw: the loss falls on real text",
      r.returncode == 0 and len(curve) >= 3 and curve[-1] < curve[0] - 1.5, r.stdout[-1500:] + r.stderr[-800:])
val_fp32 = [float(x) for x in re.findall(r"\| val loss ([0-9.]+)", r.stdout)]

# model.precision: bf16 (bf16 storage) on the same run: its loss curve against
# fp32's. The rounding moves step 1's loss by about 2e-5 relative. Training amplifies differences
# once the lr nears its peak of 3e-3: AdamW's normalised steps and the demo's loss spikes are
# chaotic, and which run spikes where depends on the float bits, so on the CPU's GEMM kernels too
# (on an AMD EPYC VM the two curves stayed within 1.2% through step 30; on an Intel Xeon VM fp32
# spiked at step 20, grad norm 6.0, and bf16 did not, putting step 25's validation losses 3.0%
# apart). So: the logged losses up to step 10 (lr 1.5e-3, before the spikes; measured within
# 0.05% on both machines) are held to 1%, and the last validation loss (measured 0.2% and 1.8%
# apart) to 5%, which a bf16 that trains worse than fp32 by more than the chaos would break; bf16
# must learn like fp32 (its last validation loss 1.5 below its first loss). Some value must
# differ: bf16 rounds.
r, _ = train(2, "inputs/demo.yaml", "--set", "train.steps=30", "--set", "model.precision=bf16",
             "--set", f"output.dir={out}/demo-bf16")
bf16_curve = losses(r.stdout)
val_bf16 = [float(x) for x in re.findall(r"\| val loss ([0-9.]+)", r.stdout)]
check("the demo in bf16 says what it stores in bf16",
      r.returncode == 0 and "\n  precision: bf16 storage (" in r.stdout, r.stdout[:1500] + r.stderr[-800:])
steps = [int(x) for x in re.findall(r"step +([0-9]+)/30 \| loss ", r.stdout)]
check("the demo in bf16: losses to step 10 within 1% of fp32's, the last validation loss within 5%",
      r.returncode == 0 and len(bf16_curve) == len(curve) == len(steps) >= 3
      and len(val_bf16) == len(val_fp32) >= 1
      and all(abs(b - f) <= 0.01 * f for b, f, s in zip(bf16_curve, curve, steps) if s <= 10)
      and abs(val_bf16[-1] - val_fp32[-1]) <= 0.05 * val_fp32[-1]
      and val_bf16[-1] < bf16_curve[0] - 1.5
      and bf16_curve + val_bf16 != curve + val_fp32,
      f"fp32 {curve} {val_fp32}, bf16 {bf16_curve} {val_bf16}; " + r.stderr[-800:])

# Held-out validation: every 10 steps and at the end, on the log, in metrics.h5 and in inspect; the
# same numbers bit for bit on 2 stages and on 1 (evaluation is layout-free).
def h5_series(path, dataset):
    """A 1-D dataset's values at full precision, read with h5dump (hdf5-tools)."""
    dump = subprocess.run(["h5dump", "-m", "%.17g", "-d", dataset, "-y", "-w", "0", path],
                          capture_output=True, text=True)
    data = dump.stdout.split("DATA {", 1)[1].split("}", 1)[0] if dump.returncode == 0 else ""
    return [float(x) for x in re.findall(r"[-+0-9.eE]+", data.split(":", 1)[-1])]


val_losses = {}
for ranks in (2, 1):
    r, _ = train(ranks, "inputs/demo.yaml", "--set", "train.steps=20", "--set", f"pipeline.depth={ranks}",
                 "--set", "data.val_fraction=0.05", "--set", "train.eval_every=10", "--set", "train.eval_batches=2",
                 "--set", f"output.dir={out}/val{ranks}")
    printed = re.findall(r"step +(\d+)/20 \| val loss ([0-9.]+) \| 32 validation sequences", r.stdout)
    metrics = f"{out}/val{ranks}/metrics.h5"
    val_losses[ranks] = (h5_series(metrics, "/eval/step"), h5_series(metrics, "/eval/loss"))
    check(f"validation on {ranks} rank(s): the loss after steps 10 and 20, printed and in /eval",
          r.returncode == 0 and [int(p[0]) for p in printed] == [10, 20] and val_losses[ranks][0] == [10, 20]
          and all(abs(float(p[1]) - v) < 1e-4 for p, v in zip(printed, val_losses[ranks][1])),
          r.stdout[-1500:] + r.stderr[-800:])
check("the validation losses are the same bits on 2 stages and on 1", val_losses[2] == val_losses[1],
      str(val_losses))
r = subprocess.run([P2BW, "inspect", f"{out}/val2/metrics.h5"], cwd=ROOT, capture_output=True, text=True)
check("p2bw inspect shows the validation loss",
      r.returncode == 0 and re.search(r"validation loss: 2 evaluations, last [0-9.]+ \(step 20\)", r.stdout),
      r.stdout[-800:] + r.stderr[-400:])

r, seconds = train(2, "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2", "--set", "pipeline.timeout_s=2",
                   "--set", f"output.dir={out}/stall", env={"P2BW_TEST_STALL_RANK": "1"}, timeout=120)
check("a stalled rank makes the run fail with the timeout message, not hang",
      r.returncode != 0 and re.search(r"stage 0: .*no progress for 2 s .*rank 1", r.stderr),
      f"exit {r.returncode} after {seconds:.0f} s; stderr: {r.stderr[-600:]}")

# A peer that stops while a non-blocking collective is pending (2bw defers its update, so rank 0
# only waits for the data-parallel all-reduce when W(1) is needed): the named message, not a hang.
replicas = ["inputs/gpt-tiny.yaml", "--set", "pipeline.depth=1", "--set", "pipeline.width=2", "--set",
            "pipeline.schedule=2bw", "--set", "pipeline.sync_warmup_steps=0", "--set", "pipeline.timeout_s=2",
            "--set", f"output.dir={out}"]
r, seconds = train(2, *replicas, env={"P2BW_TEST_STALL_RANK": "1", "P2BW_TEST_STALL_AT": "reduction"}, timeout=120)
check("a peer stalled while a collective is pending makes the run fail with the collective's message",
      r.returncode != 0 and re.search(
          r"stage 0: gradient all-reduce of batch 0 over the replicas of stage 0 \(ranks 0..1\): no progress for 2 s",
          r.stderr), f"exit {r.returncode} after {seconds:.0f} s; stderr: {r.stderr[-600:]}")
r, seconds = train(2, *replicas, env={"P2BW_TEST_STALL_RANK": "1", "P2BW_TEST_STALL_AT": "kill"}, timeout=120)
check("a peer killed while a collective is pending stops the run instead of hanging",
      r.returncode != 0, f"exit {r.returncode} after {seconds:.0f} s; stderr: {r.stderr[-600:]}")

profiled = f"{out}/profile-2-ranks.h5"
r = subprocess.run([MPIEXEC, "-n", "2", *FLAGS, P2BW, "profile", "inputs/gpt-tiny.yaml", "--microbatch-sizes", "1",
                    "--repeats", "2", "-o", profiled], cwd=ROOT, capture_output=True, text=True, timeout=120)
check("mpiexec -n 2 p2bw profile: both ranks measure at once, the slowest is kept",
      r.returncode == 0 and "slowest of 2 ranks" in r.stdout and os.path.getsize(profiled) > 0 and
      r.stdout.count("profile:") == 1 and re.search(r"link rank 0 <-> rank 1 .*: latency [0-9.]+ us, "
                                                   r"bandwidth [0-9.]+ GB/s", r.stdout),
      r.stdout[-800:] + r.stderr[-800:])

# A configuration the planner reports as fitting really fits when run: a cluster whose memory
# rejects most configurations, the planned deck trained as written, every stage's measured peak
# under the limit the planner used.
plan_dir = f"{out}/plan"
os.makedirs(plan_dir, exist_ok=True)
cluster = (ROOT / "inputs" / "clusters" / "cpu.yaml").read_text().replace("memory_per_device_gb: 10",
                                                                          "memory_per_device_gb: 0.0013")
pathlib.Path(f"{plan_dir}/tight.yaml").write_text(cluster)
r = subprocess.run([P2BW, "plan", "inputs/gpt-tiny.yaml", "--cluster", f"{plan_dir}/tight.yaml", "--global-batch-max", "32",
                    "--write-deck", f"{plan_dir}/plan.yaml", "--set", f"output.dir={plan_dir}/run"],
                   cwd=ROOT, capture_output=True, text=True, timeout=120)
row = re.search(r"^ +1 +(\d+) +(\d+) .*", r.stdout, re.M)
rejected = re.search(r"(\d+)  does not fit device memory", r.stdout)
planned = r.returncode == 0 and row and rejected and int(rejected.group(1)) > 0
check("plan on a cluster whose memory binds: a best configuration, others rejected for memory", planned,
      r.stdout[-800:] + r.stderr)
if planned:
    ranks = int(row.group(1)) * int(row.group(2))
    t, _ = train(ranks, f"{plan_dir}/plan.yaml", "--set", "train.steps=3")
    inspect = subprocess.run([P2BW, "inspect", f"{plan_dir}/run/metrics.h5"], capture_output=True, text=True)
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    peaks = [(float(x) - 0.005) * units[u] for x, u in  # inspect prints 2 decimals
             re.findall(r"^ +\d+ +3 +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +([0-9.]+) (B|KiB|MiB|GiB)", inspect.stdout, re.M)]
    limit = 0.9 * 0.0013e9
    check("the planned deck runs as written and every stage's measured peak is under the planner's limit",
          t.returncode == 0 and len(peaks) == int(row.group(2)) and all(p <= limit for p in peaks),
          f"peaks {peaks} B, limit {limit} B; {t.stderr[-400:]} {inspect.stdout[-600:]}")

r, _ = train(3, "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2")
check("train with the wrong number of ranks: one line, exit 2",
      r.returncode == 2 and r.stderr.count("\n") == 1 and "but the run has 3 MPI ranks" in r.stderr, r.stderr)

r, _ = train(1, "inputs/gpt-tiny.yaml", "--set", "model.vocab=100", "--set", "data.format=tokens",
             "--set", "data.path=data/fortunes.tok")
check("data that does not fit the model: one line, exit 2",
      r.returncode == 2 and r.stderr.count("\n") == 1 and "model.vocab = 100" in r.stderr, r.stderr)

def processes_with(marker):
    """PIDs of the p2bw processes whose command line contains `marker`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"p2bw") and any(marker.encode() in part for part in cmdline):
                pids.append(int(entry))
    return pids


def start(ranks, *args, env=None):
    command = [MPIEXEC, "-n", str(ranks), *FLAGS, P2BW, "train", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def read_until(process, pattern, limit=120):
    """Lines of stdout up to the first that matches `pattern`."""
    lines, deadline = [], time.monotonic() + limit
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            break
    return "".join(lines)


# SIGUSR1 (SLURM's warning before a time limit): every rank finishes its step, checkpoints, exits 0;
# resuming continues exactly as the uninterrupted run.
import shutil
import signal
stop_dir = "/tmp/p2bw-cli-signal"
shutil.rmtree(stop_dir, ignore_errors=True)
common = ["inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2", "--set", "train.lr_decay=constant", "--set", "train.log_every=1",
          "--set", "checkpoint.every=0"]
job = start(2, *common, "--set", "train.steps=100000", "--set", f"output.dir={stop_dir}")
read_until(job, r"step +30/")
for pid in processes_with(stop_dir):
    os.kill(pid, signal.SIGUSR1)
rest, errors = job.communicate(timeout=120)
stopped = re.search(r"checkpoint after step (\d+) \(stop signal\)", rest)
check("SIGUSR1 makes every rank checkpoint and exit 0", job.returncode == 0 and stopped, f"exit {job.returncode}: {rest[-500:]} {errors[-500:]}")
if stopped:
    n = int(stopped.group(1))
    resumed, _ = train(2, *common, "--set", f"train.steps={n + 5}", "--set", f"output.dir={stop_dir}", "--resume", "latest")
    shutil.rmtree("/tmp/p2bw-cli-whole", ignore_errors=True)
    whole, _ = train(2, *common, "--set", f"train.steps={n + 5}", "--set", "output.dir=/tmp/p2bw-cli-whole")
    tail = lambda out: re.findall(r"step +(\d+)/\d+ \| loss ([0-9.]+)", out)[-5:]
    check("the resumed run continues as the uninterrupted one", resumed.returncode == 0 and f"resumed after step {n}" in resumed.stdout
          and tail(resumed.stdout) == tail(whole.stdout) and len(tail(whole.stdout)) == 5,
          f"{tail(resumed.stdout)} vs {tail(whole.stdout)}; {resumed.stderr[-300:]}")

# kill -9 of a rank while a checkpoint is being committed: the previous checkpoint still loads.
kill_dir = "/tmp/p2bw-cli-kill"
shutil.rmtree(kill_dir, ignore_errors=True)
job = start(2, "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2", "--set", "checkpoint.every=2", "--set", "train.steps=6",
            "--set", f"output.dir={kill_dir}", env={"P2BW_TEST_SLOW_CHECKPOINT": "4"})
read_until(job, r"checkpoint after step 2")
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not os.path.exists(f"{kill_dir}/checkpoints/step_00000004.tmp/manifest.h5"):
    time.sleep(0.1)
for pid in processes_with(kill_dir):
    os.kill(pid, signal.SIGKILL)
job.communicate(timeout=60)
latest = open(f"{kill_dir}/checkpoints/latest").read().strip() if os.path.exists(f"{kill_dir}/checkpoints/latest") else ""
r, _ = train(2, "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2", "--set", "train.steps=6", "--set", f"output.dir={kill_dir}",
             "--resume", "latest")
check("kill -9 during a checkpoint write leaves the previous checkpoint loadable",
      latest == "step_00000002" and r.returncode == 0 and "resumed after step 2" in r.stdout and "step      6/6" in r.stdout,
      f"latest={latest!r}; exit {r.returncode}; {r.stdout[-400:]} {r.stderr[-400:]}")

print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
