#!/bin/sh
# Runs the libFuzzer target FUZZER for SECONDS on a copy of the committed corpus CORPUS (new inputs
# go to a temporary folder, never into the repository). Exit 77 (skipped) with the reason printed
# when FUZZER is "none" (no clang with libFuzzer at configure time). libFuzzer's own exit code for
# a crash is 77 as well, which ctest would report as a skip: the fuzzer runs with exit code 1 for
# crashes and timeouts, and the failing inputs are kept in fuzz-artifacts/ under the current folder
# (the build's tests/ under ctest) and printed.
# Usage: run_fuzz.sh FUZZER CORPUS SECONDS
set -eu
fuzzer=$1 corpus=$2 seconds=$3
if [ "$fuzzer" = none ]; then
  echo "skipped: no clang++ with -fsanitize=fuzzer (libFuzzer) was found when configuring;" \
    "install clang and libclang-rt-14-dev (P2BW_SETUP_TESTS=1 scripts/setup) and reconfigure"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$work/artifacts"
# Every committed input must pass on its own first, then the fuzzer mutates for SECONDS.
kept="$PWD/fuzz-artifacts"
failed() {
  mkdir -p "$kept"
  cp "$work"/artifacts/* "$kept"/ 2>/dev/null || true
  for input in "$work"/artifacts/*; do
    [ -e "$input" ] || continue
    echo "failing input: $kept/$(basename "$input") (od -c below; rerun: $fuzzer $kept/$(basename "$input"))"
    od -c "$input" | head -40
  done
  exit 1
}
ASAN_OPTIONS=detect_leaks=0 "$fuzzer" -runs=0 -detect_leaks=0 -error_exitcode=1 \
  -artifact_prefix="$work/artifacts/" "$corpus" || failed
ASAN_OPTIONS=detect_leaks=0 "$fuzzer" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
  -detect_leaks=0 -error_exitcode=1 -timeout_exitcode=1 -artifact_prefix="$work/artifacts/" \
  "$work/corpus" "$corpus" || failed
