#!/usr/bin/env python3
"""Hostile inputs of issue 14: nothing a user types loses a run. Each case asserts the exit code,
a one-line message on stderr and that the run it could damage is untouched: the five data-loss
cases (a rerun into an owned output.dir, a second live run, --resume '', a stage file of another
step, prepare-data over its input), the memory check before allocating, 64-bit deck ranges,
filesystem mistakes, Kokkos options and KOKKOS_* variables Kokkos cannot read, checkpoint manifests and `latest` pointers that lie,
simulate --write-schedule into a folder, NaN options, and escaping of echoed file contents.
Usage: test_hostile.py P2BW MPIEXEC [MPIEXEC_FLAGS...]"""
import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
P2BW, MPIEXEC, FLAGS = sys.argv[1], sys.argv[2], sys.argv[3:]
results = []
TINY = ["inputs/gpt-tiny.yaml", "--set", "train.log_every=1"]


def run(*args, env=None, timeout=300):
    return subprocess.run([P2BW, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok' if condition else 'FAILED':6} {name}" + ("" if condition else f"\n       {detail}"))


def one_line(r, *needles, code=2):
    """Exit `code`, exactly one line on stderr, containing every needle."""
    return r.returncode == code and r.stderr.count("\n") == 1 and all(n in r.stderr for n in needles)


def digest(folder):
    """Hash of every file under `folder` (names and bytes), train.lock excluded."""
    h = hashlib.sha256()
    for path in sorted(pathlib.Path(folder).rglob("*")):
        if path.is_file() and path.name != "train.lock":
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def detail(r):
    return f"exit {r.returncode}; stderr {r.stderr[-600:]!r}; stdout {r.stdout[-300:]!r}"


tmp = tempfile.mkdtemp(prefix="p2bw-hostile-")
run_dir = f"{tmp}/run"
r = run("train", *TINY, "--set", f"output.dir={run_dir}", "--set", "checkpoint.every=2", "--set", "checkpoint.keep=5")
check("a first run into a new output.dir trains and records a run id", r.returncode == 0 and
      re.fullmatch(r"p2bw-run 1 [0-9a-f]{32}\n", pathlib.Path(f"{run_dir}/run_id").read_text()), detail(r))
run_id = pathlib.Path(f"{run_dir}/run_id").read_text()
before = digest(run_dir)

# 1. The same command again, without --resume.
r = run("train", *TINY, "--set", f"output.dir={run_dir}")
check("1. rerun into an output.dir that holds a run: refused in one line that says what to do, run untouched",
      one_line(r, "already holds a run", "--resume latest", "--start-over") and digest(run_dir) == before, detail(r))

# 3. --resume with an empty value.
r = run("train", *TINY, "--set", f"output.dir={run_dir}", "--resume", "")
check("3. --resume '': refused, run untouched", one_line(r, "--resume: empty") and digest(run_dir) == before, detail(r))
r = run("train", *TINY, "--set", f"output.dir={run_dir}", "--resume", "latest", "--start-over")
check("--resume with --start-over: refused, run untouched", one_line(r, "one of them") and digest(run_dir) == before,
      detail(r))

# 4. A stage file copied in from another step.
ckpt = pathlib.Path(run_dir) / "checkpoints"
shutil.copy(ckpt / "step_00000002" / "stage_0.h5", ckpt / "step_00000006" / "stage_0.h5")
mixed = digest(run_dir)
r = run("train", *TINY, "--set", f"output.dir={run_dir}", "--set", "train.steps=8", "--resume", "latest")
check("4. a stage file of step 2 inside checkpoint step 6: refused before anything is written",
      one_line(r, "stage_0.h5: a stage file of step 2", "checkpoint of step 6") and digest(run_dir) == mixed, detail(r))
r = run("train", *TINY, "--set", f"output.dir={run_dir}", "--set", "train.steps=8", "--resume",
        str(ckpt / "step_00000004"))
check("an intact older checkpoint of the same run still resumes", r.returncode == 0 and "resumed after step 4" in r.stdout,
      detail(r))

# A checkpoint of another run.
other = f"{tmp}/other"
r = run("train", *TINY, "--set", f"output.dir={other}")
r = run("train", *TINY, "--set", f"output.dir={run_dir}", "--set", "train.steps=8", "--resume",
        f"{other}/checkpoints/step_00000006")
check("a checkpoint of another run cannot resume into this run's folder", one_line(r, "belongs to run"), detail(r))
moved = f"{tmp}/moved"
r = run("train", *TINY, "--set", f"output.dir={moved}", "--set", "train.steps=8", "--resume", f"{other}/checkpoints/step_00000006")
check("... but continues that run in a new folder, keeping its run id", r.returncode == 0 and
      pathlib.Path(f"{moved}/run_id").read_text() == pathlib.Path(f"{other}/run_id").read_text(), detail(r))

# --start-over: says what it removes, keeps other files, makes a new run id.
pathlib.Path(f"{run_dir}/notes.txt").write_text("mine")
r = run("train", *TINY, "--set", f"output.dir={run_dir}", "--start-over")
check("--start-over removes the run's files only and starts a new run", r.returncode == 0 and "--start-over: removing" in r.stdout
      and pathlib.Path(f"{run_dir}/notes.txt").read_text() == "mine" and
      pathlib.Path(f"{run_dir}/run_id").read_text() != run_id and
      sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_00000006"], detail(r))

# 2. A second run while the first is live; the lock dies with a killed run.
live = f"{tmp}/live"
long_run = [P2BW, "train", *TINY, "--set", f"output.dir={live}", "--set", "train.steps=1000000",
            "--set", "checkpoint.every=0", "--set", "train.lr_decay=constant"]


def start_and_wait(extra=()):
    job = subprocess.Popen(long_run + list(extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = job.stdout.readline()
        if not line or re.search(r"step +3/", line):
            break
    return job


job = start_and_wait()
r = run("train", *TINY, "--set", f"output.dir={live}", "--start-over")
r2 = run("train", *TINY, "--set", f"output.dir={live}")
check("2. a second run (even with --start-over) into a live run's folder: refused in one line naming the live run",
      one_line(r, "another p2bw train is running in it", f"(pid {job.pid})") and one_line(r2), detail(r) + detail(r2))
job.send_signal(signal.SIGUSR1)
out, err = job.communicate(timeout=120)
stopped = re.search(r"checkpoint after step (\d+) \(stop signal\)", out)
inspect = run("inspect", f"{live}/metrics.h5")
check("the live run was not disturbed: SIGUSR1 checkpoints it, it exits 0 and its metrics.h5 reads whole",
      job.returncode == 0 and stopped and inspect.returncode == 0, f"exit {job.returncode}: {err[-400:]} {detail(inspect)}")
job = start_and_wait(["--resume", "latest"])
job.kill()
job.communicate(timeout=60)
n = int(stopped.group(1)) if stopped else 0
r = run("train", *TINY, "--set", f"output.dir={live}", "--set", f"train.steps={n + 2}", "--resume", "latest")
check("the lock of a run killed with SIGKILL is gone: the next --resume runs", r.returncode == 0 and
      f"resumed after step {n}" in r.stdout, detail(r))

# 5. prepare-data over its own input; folders as input or output.
text = pathlib.Path(f"{tmp}/corpus.txt")
text.write_text("some text\n" * 100)
r = run("prepare-data", str(text), "-o", str(text))
check("5. prepare-data X -o X: refused, X unchanged", one_line(r, "is also an input") and
      text.read_text() == "some text\n" * 100, detail(r))
r = run("prepare-data", str(text), "-o", f"{tmp}/./corpus.txt")
check("prepare-data X -o (another spelling of X): refused", one_line(r, "is also an input"), detail(r))
os.makedirs(f"{tmp}/folder", exist_ok=True)
r = run("prepare-data", f"{tmp}/folder", "-o", f"{tmp}/t.tok")
check("9. prepare-data with a folder as input: one line, exit 2", one_line(r, "is a folder"), detail(r))
r = run("prepare-data", str(text), "-o", f"{tmp}/folder")
check("9. prepare-data with a folder as output: one line, exit 2, no .tmp left", one_line(r, "is a folder") and
      not os.path.exists(f"{tmp}/folder.tmp"), detail(r))

# 6. Memory is checked before allocating.
tight = {"P2BW_TEST_MEMORY_AVAILABLE": "100000"}
r = run("train", *TINY, "--set", f"output.dir={tmp}/tight", env=tight)
check("6. train beyond the memory: refused before anything is written, naming predicted and available bytes and the knobs",
      one_line(r, "stage 0 (rank 0): predicted peak memory", "100000 byt", "pipeline.depth", "pipeline.recompute",
               "train.microbatch_size", "p2bw plan", "P2BW_IGNORE_MEMORY_CHECK=1")
      and not os.path.exists(f"{tmp}/tight"), detail(r))
r = run("train", *TINY, "--set", f"output.dir={tmp}/tight", env={**tight, "P2BW_IGNORE_MEMORY_CHECK": "1"})
check("P2BW_IGNORE_MEMORY_CHECK=1 goes past the refusal", r.returncode == 0 and "step      6/6" in r.stdout, detail(r))
r = run("bench", *TINY, "--repeats", "1", env=tight)
check("bench checks memory too", one_line(r, "p2bw bench: predicted peak memory"), detail(r))
r = run("profile", *TINY, "--microbatch-sizes", "1", "-o", f"{tmp}/p.h5", env=tight)
check("profile checks memory too", one_line(r, "p2bw profile: predicted peak memory") and not os.path.exists(f"{tmp}/p.h5"),
      detail(r))
r = run("profile", *TINY, "--set", "model.seq_len=1048576", "--microbatch-sizes", "1,2147483647", "-o", f"{tmp}/p.h5")
check("profile --microbatch-sizes beyond the deck's 32-bit token limit: one line, exit 2",
      one_line(r, "--microbatch-sizes 2147483647", "tokens per microbatch"), detail(r))
r = run("check", *TINY, env=tight)
check("check shows the same verdict", r.returncode == 0 and "does not fit" in r.stdout and "100000 bytes" in r.stdout, detail(r))
# The real machine: the 3.8B model on one rank needs far more than any CI host has.
r = run("train", "inputs/gpt-3.8b.yaml", "--set", "pipeline.depth=1", "--set", "pipeline.width=1", "--set",
        f"output.dir={tmp}/big", timeout=60)
check("6. a model far beyond this machine's memory (real MemAvailable / cgroup): exit 2 within seconds",
      one_line(r, "predicted peak memory", "available") and not os.path.exists(f"{tmp}/big"), detail(r))

# The memory on a node is divided among its ranks (MPI_Comm_split_type SHARED).
r = run("check", *TINY, "--set", "pipeline.depth=2", env={"P2BW_TEST_MEMORY_AVAILABLE": "1"})
peak = int(re.search(r"predicted peak memory .*? \((\d+) bytes\)", r.stdout).group(1)) if "predicted peak" in r.stdout else 0
node = {"P2BW_TEST_MEMORY_AVAILABLE": str(int(1.5 * peak))}
r = subprocess.run([MPIEXEC, "-n", "2", *FLAGS, P2BW, "train", *TINY, "--set", "pipeline.depth=2", "--set",
                    f"output.dir={tmp}/shared"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                   env={**os.environ, **node})
check("6. two ranks sharing a node that holds 1.5 stage peaks: refused, naming the share",
      peak > 0 and one_line(r, "shared by 2 ranks on this node") and not os.path.exists(f"{tmp}/shared"), detail(r))
r = subprocess.run([MPIEXEC, "-n", "2", *FLAGS, P2BW, "check", *TINY, "--set", "pipeline.depth=2"], cwd=ROOT,
                   capture_output=True, text=True, timeout=120, env={**os.environ, **node})
check("... and check inside that launch gives the same verdict, exit 2", one_line(r, "shared by 2 ranks on this node"),
      detail(r))
node = {"P2BW_TEST_MEMORY_AVAILABLE": str(int(2.5 * peak))}
r = subprocess.run([MPIEXEC, "-n", "2", *FLAGS, P2BW, "train", *TINY, "--set", "pipeline.depth=2", "--set",
                    f"output.dir={tmp}/shared"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                   env={**os.environ, **node})
check("... with 2.5 stage peaks on the node both ranks fit and train", r.returncode == 0 and "step      6/6" in r.stdout,
      detail(r))

# 7., 8. Sizes and ranges.
r = run("check", "inputs/gpt-tiny.yaml", "--set", "model.layers=100000", "--set", "model.hidden=16384",
        "--set", "model.heads=1", "--set", "pipeline.microbatches=2147483647", "--set", "train.steps=1",
        "--set", "pipeline.schedule=gpipe")
check("7. check of a model whose sizes overflow 64 bits: one line, exit 2", one_line(r, "beyond 2^60 bytes"), detail(r))
r = run("check", "inputs/gpt-tiny.yaml", "--set", "model.layers=100000", "--set", "model.hidden=16384",
        "--set", "model.heads=1", "--set", "pipeline.microbatches=4096", "--set", "pipeline.schedule=gpipe")
table = r.stdout[r.stdout.find("# predicted memory"):]
check("7. check of a huge model that fits 64 bits: positive byte counts (PiB) and the memory verdict",
      r.returncode == 0 and "PiB" in table and not re.search(r"\s-\d", table)
      and "does not fit" in r.stdout, detail(r) + table[:600])
r = run("check", "inputs/gpt-tiny.yaml", "--set", "train.microbatch_size=2147483647", "--set", "model.seq_len=1048576")
check("7. a microbatch beyond 32-bit token counts: one line, exit 2", one_line(r, "tokens per microbatch"), detail(r))
r = run("check", "inputs/gpt-tiny.yaml", "--set", "train.steps=1000000000", "--set", "pipeline.microbatches=8")
check("8. train.steps · microbatches beyond the schedule's 32-bit numbering: one line, exit 2",
      one_line(r, "more microbatches than 32-bit counts hold"), detail(r))
r = run("check", "inputs/gpt-tiny.yaml", "--set", "train.microbatch_size=1024", "--set", "model.seq_len=1024",
        "--set", "model.hidden=4096")
check("7. a stage boundary message beyond 32-bit counts: one line, exit 2", one_line(r, "b·T·C"), detail(r))
r = run("check", "inputs/gpt-tiny.yaml", "--set", "train.steps=2147483648")
check("8. train.steps=2147483648 fails check, not train", one_line(r, "train.steps: 2147483648 is out of range"), detail(r))

# 9. Filesystem mistakes.
pathlib.Path(f"{tmp}/a-file").write_text("x")
for what, where, needle in [("a regular file", f"{tmp}/a-file", "is a file, not a folder"),
                            ("below a regular file", f"{tmp}/a-file/run", "is a file, not a folder"),
                            ("not writable", "/proc/p2bw-run", "output.dir /proc/p2bw-run")]:
    r = run("train", *TINY, "--set", f"output.dir={where}")
    check(f"9. output.dir {what}: one line, exit 2", one_line(r, needle), detail(r))
r = run("plan", "inputs/gpt-tiny.yaml", "--cluster", "inputs/clusters/cpu.yaml", "--write-deck", f"{tmp}/a-file/x.yaml")
check("9. --write-deck below a regular file: one line, exit 2", one_line(r, "--write-deck", "is a file"), detail(r))

# 10. Kokkos arguments.
r = run("--kokkos-threads=abc", "check", "inputs/gpt-tiny.yaml")
check("10. --kokkos-threads=abc: one line, exit 2", one_line(r, "--kokkos-threads: 'abc' is not allowed (allowed: an integer >= 1)"), detail(r))
r = run("--kokkos-threads", "2", "check", "inputs/gpt-tiny.yaml")
check("--kokkos-threads 2 (without '='): one line, exit 2", one_line(r, "--kokkos-threads: needs a value"), detail(r))
for arg, needle in [("--kokkos-numa=1x", "--kokkos-numa: '1x' is not allowed"),
                    ("--kokkos-num-threads=0", "--kokkos-num-threads: '0' is not allowed (allowed: an integer >= 1)"),
                    ("--kokkos-disable-warnings=ON", "--kokkos-disable-warnings: 'ON' is not allowed (allowed: yes, true, 1,"),
                    ("--kokkos-map-device-id-by=host", "--kokkos-map-device-id-by: 'host' is not allowed (allowed: mpi_rank or random)")]:
    r = run(arg, "check", "inputs/gpt-tiny.yaml")
    check(f"{arg}: one line, exit 2", one_line(r, needle), detail(r))
# Kokkos's environment variables: Kokkos 4 aborts with a backtrace on a value it cannot read.
for name, value, needle in [("KOKKOS_DISABLE_WARNINGS", "ON", "yes, true, 1, no, false or 0, in any case"),
                            ("KOKKOS_NUM_THREADS", "two", "an integer >= 1"),
                            ("KOKKOS_DEVICE_ID", "-1", "an integer >= 0"),
                            ("KOKKOS_VISIBLE_DEVICES", "0,,1", "integers >= 0, separated by commas"),
                            ("KOKKOS_MAP_DEVICE_ID_BY", "hostname", "mpi_rank or random")]:
    r = run("check", "inputs/gpt-tiny.yaml", env={name: value})
    check(f"{name}={value}: one line, exit 2",
          one_line(r, f"environment variable {name}: '{value}' is not allowed (allowed: {needle})"), detail(r))
r = run("check", "inputs/gpt-tiny.yaml", env={"KOKKOS_DISABLE_WARNINGS": "Yes", "KOKKOS_NUM_THREADS": "1"})
check("KOKKOS_DISABLE_WARNINGS=Yes and KOKKOS_NUM_THREADS=1 are taken", r.returncode == 0, detail(r))

# A user's own deck.yaml in output.dir is no run: a fresh run is refused and --start-over keeps it.
mine = f"{tmp}/mine"
os.makedirs(mine)
deck_text = (ROOT / "inputs" / "gpt-tiny.yaml").read_text().replace("../data/", f"{ROOT}/data/")
pathlib.Path(f"{mine}/deck.yaml").write_text(deck_text)
r = run("train", f"{mine}/deck.yaml", "--set", f"output.dir={mine}")
check("a folder holding the user's deck.yaml: a fresh run is refused, naming the file", one_line(r, "(deck.yaml)"), detail(r))
r = run("train", f"{mine}/deck.yaml", "--set", f"output.dir={mine}", "--start-over")
check("... and --start-over does not delete it", one_line(r, "may be yours and is not deleted") and
      pathlib.Path(f"{mine}/deck.yaml").read_text() == deck_text, detail(r))

# 12., 15. The latest pointer.
lie = f"{tmp}/lie"
run("train", *TINY, "--set", f"output.dir={lie}")
lie_before = digest(lie)
pointer = pathlib.Path(f"{lie}/checkpoints/latest")
pointer.write_text("x" * 300 + "\n")
r = run("train", *TINY, "--set", f"output.dir={lie}", "--set", "train.steps=8", "--resume", "latest")
check("12. a 300-character latest: one line, exit 2, the echo cut short", one_line(r, "(allowed: a step_<N> folder")
      and len(r.stderr) < 400, detail(r))
pointer.write_bytes(b"\x1b[31mred\x07\x9b\n")
r = run("train", *TINY, "--set", f"output.dir={lie}", "--set", "train.steps=8", "--resume", "latest")
check("15. control characters and escapes in latest are escaped in the message", one_line(r, "\\x1b[31mred\\x07\\x9b")
      and "\x1b" not in r.stderr and "\x07" not in r.stderr, detail(r))
pointer.write_text("../../other/checkpoints/step_00000006\n")
r = run("train", *TINY, "--set", f"output.dir={lie}", "--set", "train.steps=8", "--resume", "latest")
check("latest naming a folder outside this run's checkpoints: refused", one_line(r, "(allowed: a step_<N> folder"), detail(r))
pointer.write_text("step_00000006\n")

# 13., 14. simulate and plan options.
r = run("simulate", "inputs/gpt-tiny.yaml", "--write-schedule", f"{tmp}/folder", "-o", f"{tmp}/sim.h5")
check("13. simulate --write-schedule FOLDER: one line, exit 2", one_line(r, "--write-schedule", "is a folder"), detail(r))
for option in ["--cost-forward", "--cost-backward", "--cost-message", "--cost-allreduce", "--cost-step"]:
    r = run("simulate", "inputs/gpt-tiny.yaml", option, "nan", "-o", f"{tmp}/sim.h5")
    check(f"14. simulate {option} nan: one line, exit 2", one_line(r, "not a finite number"), detail(r))
r = run("simulate", "inputs/gpt-tiny.yaml", "--batches", "100000000", "-o", f"{tmp}/sim.h5")
check("simulate --batches 100000000: one line, exit 2 (was std::bad_alloc, exit 1)", one_line(r, "--batches"),
      detail(r))
r = run("simulate", "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=4", "--set", "pipeline.microbatches=100000",
        "--batches", "100", "-o", f"{tmp}/sim.h5")
check("simulate of batches · m · d beyond the bound: one line, exit 2", one_line(r, "actions to simulate"), detail(r))
r = run("plan", "inputs/gpt-tiny.yaml", "--cluster", "inputs/clusters/cpu.yaml", "--memory-headroom", "nan")
check("14. plan --memory-headroom nan: one line, exit 2", one_line(r, "not a finite number"), detail(r))

# A damaged run_id file.
pathlib.Path(f"{lie}/run_id").write_bytes(b"p2bw-run 1 \x1b]0;owned\x07\n")
r = run("train", *TINY, "--set", f"output.dir={lie}", "--set", "train.steps=8", "--resume", "latest")
check("a damaged run_id: one line, exit 2, escaped", one_line(r, "not a p2bw run id file") and "\x1b" not in r.stderr,
      detail(r))

shutil.rmtree(tmp, ignore_errors=True)
print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
