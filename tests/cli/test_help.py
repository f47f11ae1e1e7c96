#!/usr/bin/env python3
"""`p2bw --help` and `p2bw <subcommand> --help` show p2bw's help alone (none of Kokkos's options),
name --kokkos-help in their footer, and `p2bw --kokkos-help` lists Kokkos's options; Kokkos's own
options are still accepted on the command line.
Usage: test_help.py P2BW"""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
P2BW = sys.argv[1]
SUBCOMMANDS = ("check", "train", "simulate", "plan", "profile", "inspect", "prepare-data", "bench", "generate")
# Lines of Kokkos's help in both 3.4 (Debian) and 4.x (the CUDA build).
KOKKOS_HELP = ("Kokkos command line arguments", "--kokkos-tools-args")
results = []


def run(*args):
    return subprocess.run([P2BW, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def check(name, condition, detail=""):
    results.append(condition)
    print(f"{'ok' if condition else 'FAILED':6} {name}" + ("" if condition else f"\n       {detail}"))


def p2bw_help_alone(r, first_line):
    return (r.returncode == 0 and r.stdout.startswith(first_line) and "p2bw --kokkos-help" in r.stdout
            and not any(k in r.stdout for k in KOKKOS_HELP))


r = run("--help")
check("--help: p2bw's help alone, footer names --kokkos-help", p2bw_help_alone(r, "p2bw: "), r.stdout[:600])
for sub in SUBCOMMANDS:
    r = run(sub, "--help")
    head = "\n".join(r.stdout.splitlines()[:3])
    check(f"{sub} --help: p2bw's help alone ({len(r.stdout.splitlines())} lines)",
          p2bw_help_alone(r, "") and f" {sub} [OPTIONS]" in head, r.stdout[:600])

r = run("--kokkos-help")
check("--kokkos-help lists Kokkos's options", r.returncode == 0 and all(k in r.stdout for k in KOKKOS_HELP), r.stdout[:600] + r.stderr)

# The thread option the footer names (--kokkos-threads before Kokkos 3.7, --kokkos-num-threads after).
footer = run("--help").stdout
threads = re.search(r"\((--kokkos-[a-z-]*threads),", footer)
check("the help's footer names this Kokkos's thread option", threads is not None, footer[-300:])
r = run("check", "--keys", f"{threads.group(1) if threads else '--kokkos-threads'}=1")
check("a Kokkos option is accepted with a subcommand", r.returncode == 0 and "model.layers" in r.stdout, r.stderr)

print(f"{sum(results)} of {len(results)} checks passed")
sys.exit(0 if all(results) else 1)
