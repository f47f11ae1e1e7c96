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
    c in r.stdout for c in ("check", "train", "simulate", "plan", "profile", "inspect", "prepare-data", "bench")), r.stdout)

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

print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
