#!/usr/bin/env python3
"""Runs `p2bw check` on every deck in bad_decks/ and asserts the documented user-error contract:
exit code 2, exactly one line on stderr equal to the deck's `# expect:` header, nothing on stdout,
and no output directory created. Headers: `# expect: MESSAGE` ({deck} and {root} are substituted),
optional `# set: KEY=VALUE` (repeatable) and `# ranks: N` (run under mpiexec -n N).
Usage: test_deck_errors.py P2BW MPIEXEC [MPIEXEC_FLAGS...]"""
import os
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def headers(deck):
    expect, sets, ranks = None, [], 1
    for line in deck.read_text().splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        if key == "expect":
            expect = value
        elif key == "set":
            sets.append(value)
        elif key == "ranks":
            ranks = int(value)
    return expect, sets, ranks


def main():
    p2bw, mpiexec, mpi_flags = sys.argv[1], sys.argv[2], sys.argv[3:]
    output_dir = pathlib.Path("/tmp/p2bw-cli-bad-deck-output")
    shutil.rmtree(output_dir, ignore_errors=True)
    failures, decks = [], sorted((HERE / "bad_decks").glob("*.yaml"))
    for deck in decks:
        expect, sets, ranks = headers(deck)
        rel = os.path.relpath(deck, ROOT)
        command = [p2bw, "check", rel] + [arg for s in sets for arg in ("--set", s)]
        if ranks > 1:
            command = [mpiexec, "-n", str(ranks)] + mpi_flags + command
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        wanted = "error: " + expect.replace("{deck}", rel).replace("{root}", str(ROOT))
        problems = []
        if run.returncode != 2:
            problems.append(f"exit code {run.returncode}, wanted 2")
        if run.stderr != wanted + "\n":
            problems.append(f"stderr:\n    got:    {run.stderr!r}\n    wanted: {wanted!r}")
        if run.stdout:
            problems.append(f"stdout not empty: {run.stdout[:200]!r}")
        if output_dir.exists():
            problems.append(f"{output_dir} was created")
        status = "ok" if not problems else "FAILED"
        print(f"{status:6} {deck.name}")
        for problem in problems:
            print("       " + problem)
        if problems:
            failures.append(deck.name)
    print(f"{len(decks) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures or not decks else 0


if __name__ == "__main__":
    sys.exit(main())
