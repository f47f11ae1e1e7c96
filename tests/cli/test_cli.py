#!/usr/bin/env python3
"""The p2bw command itself: every shipped deck in inputs/ passes `p2bw check`, docs/deck.md is
what `p2bw check --keys` prints, --version names the components, --help lists the subcommands,
and a command line error is one line with exit code 2.
Usage: test_cli.py P2BW"""
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
P2BW = sys.argv[1]
results = []


def run(*args):
    return subprocess.run([P2BW, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def check(name, condition, detail=""):
    results.append(condition)
    print(f"{'ok' if condition else 'FAILED':6} {name}" + ("" if condition else f"\n       {detail}"))


for deck in sorted((ROOT / "inputs").glob("*.yaml")):
    r = run("check", str(deck.relative_to(ROOT)))
    check(f"check {deck.name}", r.returncode == 0 and "# stage map" in r.stdout, r.stderr)
r = run("check", "inputs/demo.yaml", "--set", "pipeline.transport=mpi")
check("check prints the transport in the stage map",
      r.returncode == 0 and "\ntransport: mpi (pipeline.transport = mpi)\n" in r.stdout, r.stdout + r.stderr)
check("check prints the messages' element type on the wire: fp32, 4 bytes per value",
      "\nmessages: fp32 on the wire (4 bytes per value)\n" in r.stdout, r.stdout)

# model.precision: bf16 is predicted (check, plan), trained, benchmarked and profiled in bf16
# storage. cli_train trains it.
r = run("check", "inputs/gpt-tiny.yaml", "--set", "model.precision=bf16")
check("check predicts bf16 memory: two bf16 compute copies plus one fp32 master",
      r.returncode == 0 and ", bf16)\n#   bf16: weights = 2 bf16 compute copies + one fp32 master" in r.stdout,
      r.stdout[-1500:] + r.stderr)
check("check says that bf16 messages are 16-bit on the wire (what the planner's message time assumes)",
      "\nmessages: bf16 on the wire (2 bytes per value)\n" in r.stdout, r.stdout[:1500])
r = run("bench", "inputs/gpt-tiny.yaml", "--set", "model.precision=bf16")
check("bench times bf16 and says so", r.returncode == 0 and ", bf16, median of" in r.stdout and
      "\nmodel " in r.stdout, f"exit {r.returncode}: {r.stdout[:600]} {r.stderr}")
r = run("plan", "inputs/gpt-tiny.yaml", "--cluster", "inputs/clusters/h100.yaml", "--set", "model.precision=bf16",
        "--top", "1")
check("plan accepts bf16 with the cluster's bf16 rate", r.returncode == 0 and "4e+14 FLOP/s per device, bf16" in r.stdout,
      r.stdout[:600] + r.stderr)
r = run("plan", "inputs/gpt-tiny.yaml", "--cluster", "inputs/clusters/cpu.yaml", "--set", "model.precision=bf16")
check("plan without the deck's precision rate: one line, exit 2",
      r.returncode == 2 and r.stderr.count("\n") == 1 and
      "flops_per_device.bf16: is required without --profile for model.precision: bf16" in r.stderr, r.stderr)

r = run("check", "--keys")
reference = (ROOT / "docs" / "deck.md").read_text()
begin, end = "<!-- keys:begin -->\n", "<!-- keys:end -->"
table = reference[reference.index(begin) + len(begin):reference.index(end)]
check("docs/deck.md lists exactly the keys of p2bw check --keys", r.returncode == 0 and table == r.stdout,
      "regenerate the table with: p2bw check --keys")

r = run("--version")
check("--version names p2bw, Kokkos, MPI, HDF5, NCCL",
      r.returncode == 0 and all(w in r.stdout for w in ("p2bw ", "Kokkos ", "MPI: ", "HDF5 ", "NCCL: ")), r.stdout)

r = run("--help")
check("--help lists the subcommands", r.returncode == 0 and all(
    c in r.stdout for c in ("check", "train", "simulate", "plan", "profile", "inspect", "prepare-data", "bench",
                            "generate")), r.stdout)

r = run("check", "inputs/demo.yaml", "--no-such-flag")
check("unknown flag: one line, exit 2", r.returncode == 2 and r.stderr.count("\n") == 1 and "--no-such-flag" in r.stderr,
      f"{r.returncode} {r.stderr!r}")

r = run("check", "inputs/demo.yaml", "--set", "pipeline.schedule=flush", "--set", "pipeline.microbatches=3")
check("--set overrides reach the resolved deck", r.returncode == 0 and "schedule: flush" in r.stdout
      and "microbatches: 3" in r.stdout and "every step W(t+1) = W(t) - lr·∇f(W(t))" in r.stdout, r.stdout[:300])

with tempfile.TemporaryDirectory() as tmp:
    r = run("simulate", "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=4", "--set", "pipeline.schedule=flush",
            "--set", "pipeline.microbatches=8", "-o", f"{tmp}/sim.h5")
    check("simulate: flush d=4 m=8 has bubble fraction 3/11", r.returncode == 0 and "bubble fraction: 0.2727 (3/11)" in r.stdout
          and "checker: ok" in r.stdout and os.path.getsize(f"{tmp}/sim.h5") > 0, r.stdout + r.stderr)
    r = run("simulate", "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=4", "--set", "pipeline.microbatches=8",
            "--batches", "6", "-o", f"{tmp}/sim2.h5")
    check("simulate: 2bw steady state has no bubble", r.returncode == 0 and "steady state 0.0000" in r.stdout, r.stdout + r.stderr)
    r = run("simulate", "inputs/gpt-tiny.yaml", "--set", "pipeline.depth=2", "--set", "pipeline.microbatches=4",
            "--set", "pipeline.sync_warmup_steps=0", "--batches", "6", "--global-sync", "-o", f"{tmp}/sim3.h5")
    check("simulate --global-sync: 2bw d=2 m=4 pays one backward per batch (14 instead of 12)",
          r.returncode == 0 and "steady-state time per batch 14.000" in r.stdout, r.stdout + r.stderr)

import json
with tempfile.TemporaryDirectory() as tmp:
    r = run("profile", "inputs/gpt-tiny.yaml", "--microbatch-sizes", "1,2", "-o", f"{tmp}/profile.h5")
    check("profile writes profile.h5 with step times", r.returncode == 0 and os.path.getsize(f"{tmp}/profile.h5") > 0
          and "step ms" in r.stdout and "slowest of 1 ranks" in r.stdout, r.stdout + r.stderr)
    r = run("plan", "inputs/gpt-tiny.yaml", "--cluster", "inputs/clusters/cpu.yaml", "--profile", f"{tmp}/profile.h5",
            "--format", "json", "--write-deck", f"{tmp}/planned.yaml")
    try:
        ranking = json.loads(r.stdout)
    except ValueError:
        ranking = []
    keys = {"w", "d", "b", "m", "schedule", "recompute", "samples_per_s", "tokens_per_s", "peak_memory_bytes", "fits"}
    check("plan --format json: a ranked list with the documented keys", r.returncode == 0 and ranking and
          all(keys <= set(item) for item in ranking) and
          all(a["samples_per_s"] >= b["samples_per_s"] * (1 - 1e-9) for a, b in zip(ranking, ranking[1:]) if a["fits"] and b["fits"]),
          r.stdout[:300] + r.stderr)
    r2 = run("check", f"{tmp}/planned.yaml")
    best = ranking[0] if ranking else {}
    check("the planned deck is valid and holds the best configuration", r2.returncode == 0 and
          f"depth: {best.get('d')}" in r2.stdout and f"microbatches: {best.get('m')}" in r2.stdout, r2.stdout[:400] + r2.stderr)
    r = run("plan", "inputs/gpt-tiny.yaml", "--cluster", "inputs/clusters/nothing.yaml")
    check("plan with a missing cluster file: one line, exit 2", r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr)
    cpu = (ROOT / "inputs" / "clusters" / "cpu.yaml").read_text()
    (pathlib.Path(tmp) / "twice.yaml").write_text(cpu + "nodes: 3\n")
    # Without flops_per_device (the key and its map of rates per precision).
    (pathlib.Path(tmp) / "noflops.yaml").write_text(
        "\n".join(l for l in cpu.splitlines() if not l.startswith(("flops", "  fp32", "  tf32", "  bf16"))))
    user_errors = [
        ("a key given twice in the cluster file", ["--cluster", f"{tmp}/twice.yaml"], "nodes: is given twice"),
        ("--nodes beyond the device limit", ["--cluster", "inputs/clusters/cpu.yaml", "--nodes", "2147483647"],
         "too many devices"),
        ("analytic mode without flops_per_device", ["--cluster", f"{tmp}/noflops.yaml"],
         "flops_per_device.fp32: is required without --profile"),
        ("a profile of another model", ["--cluster", "inputs/clusters/cpu.yaml", "--profile", f"{tmp}/profile.h5",
                                        "--set", "model.hidden=64"], "the profile is of another model"),
        ("--evaluate with a microbatch size the profile lacks",
         ["--cluster", "inputs/clusters/cpu.yaml", "--profile", f"{tmp}/profile.h5", "--evaluate",
          "--set", "train.microbatch_size=4"], "train.microbatch_size = 4 is not in the profile"),
        ("--evaluate with --write-deck", ["--cluster", "inputs/clusters/cpu.yaml", "--evaluate",
                                          "--write-deck", f"{tmp}/x.yaml"], "(allowed: one of them)"),
    ]
    for what, args, message in user_errors:
        r = run("plan", "inputs/gpt-tiny.yaml", *args)
        check(f"plan with {what}: one line, exit 2", r.returncode == 2 and r.stderr.count("\n") == 1
              and message in r.stderr, f"exit {r.returncode}: {r.stderr}")
    r = run("plan", "inputs/gpt-tiny.yaml", "--cluster", f"{tmp}/noflops.yaml", "--profile", f"{tmp}/profile.h5")
    check("plan with a profile needs no flops_per_device", r.returncode == 0, r.stderr)

print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
