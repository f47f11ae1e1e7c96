#!/usr/bin/env python3
"""The GPU check's dry run (gpu-check --dry-run) on a host build laid out as a CUDA bundle, so that
CI catches what would break the check's one short run on a lent GPU: a part that no longer runs,
output it no longer parses, a row missing from its table. The host programs stand in for the
bundle's (bin/ links to them; no test_nccl, whose row is then a skip), scripts/bundle-layout writes
the rest, and bin/mpiexec runs this machine's launcher. Every part must pass, except these
skips: the NCCL test (not in a host build), the demo's loss curves and memory without h5py, and
PyTorch's rows without torch (or torch.compile). It checks the script, not a GPU.
Usage: test_gpu_check.py P2BW TEST_KERNELS TEST_TRAINING TEST_PIPELINE_EXACT MPIEXEC [FLAGS...]"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent

# Parts that must be in the table and pass, by the start of their names.
MUST_PASS = ["kernel tests", "training tests", "exactness grid, 1 rank",
             "exactness grid, 2 ranks", "memory tests, 1 rank", "p2bw bench (small GPT, dry run) fp32",
             "p2bw bench (small GPT, dry run) TF32", "p2bw bench (small GPT, dry run) bf16",
             "p2bw bench (small GPT, dry run) bf16: kernels of one block",
             "p2bw bench (small GPT, dry run) bf16, native attention"]
# Parts that may be skipped, with a word their reason must contain.
MAY_SKIP = {"NCCL test": "not in the bundle", "demo": "h5py", "PyTorch": "torch"}


def has_h5py(interpreter):
    return subprocess.run([interpreter, "-c", "import h5py"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def python():
    system = "/usr/bin/python3"
    if not has_h5py(sys.executable) and os.path.exists(system) and has_h5py(system):
        return system
    return sys.executable


def main():
    p2bw, test_kernels, test_training, test_exact, test_memory, mpiexec, *flags = sys.argv[1:]
    failures = []
    with tempfile.TemporaryDirectory(prefix="p2bw-gpu-check-test-") as tmp:
        stage = pathlib.Path(tmp) / "bundle"
        (stage / "bin").mkdir(parents=True)
        for program in (p2bw, test_kernels, test_training, test_exact, test_memory):
            (stage / "bin" / pathlib.Path(program).name).symlink_to(os.path.abspath(program))
        # gpu-check runs MPICH's `mpiexec -launcher fork`; this machine's launcher gets its own
        # flags instead (Open MPI's --oversubscribe where the ranks outnumber the cores).
        launcher = stage / "bin" / "mpiexec"
        launcher.write_text("#!/bin/sh\n[ \"$1\" = -launcher ] && shift 2\nexec "
                            + " ".join([mpiexec] + flags) + " \"$@\"\n")
        launcher.chmod(0o755)
        subprocess.run([str(ROOT / "scripts" / "bundle-layout"), str(stage)], check=True)
        out = pathlib.Path(tmp) / "out"
        # gpu-check runs `python3` from PATH: this interpreter, or /usr/bin's where only that one
        # has h5py (to read the demo's metrics).
        env = {**os.environ,
               "PATH": os.path.dirname(python()) + os.pathsep + os.environ.get("PATH", "")}
        run = subprocess.run([str(stage / "gpu-check"), "--dry-run", str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=900)
        print(run.stdout[-6000:])
        if run.returncode != 0:
            failures.append(f"gpu-check --dry-run exited with {run.returncode}")
        try:
            report = json.loads((out / "gpu-check.json").read_text())
            table = (out / "gpu-check.md").read_text()
        except (OSError, ValueError) as e:
            print(f"FAIL: no readable report: {e}")
            return 1
        if report.get("format") != "p2bw-gpu-check" or report.get("dry_run") is not True:
            failures.append(f"the report's header: format {report.get('format')!r}, dry_run "
                            f"{report.get('dry_run')!r}")
        if "| part | status |" not in table or not (out / "gpu-check-logs.txt").is_file():
            failures.append("gpu-check.md has no table, or gpu-check-logs.txt is missing")
        rows = report.get("rows", [])
        for want in MUST_PASS:
            found = [r for r in rows if r["part"].startswith(want)]
            if not found:
                failures.append(f"no row '{want}...'")
            elif not any(r["status"] == "pass" for r in found):
                failures.append(f"'{want}': {found[0]['status']} ({found[0]['detail']})")
        for r in rows:
            if r["status"].startswith("FAIL"):
                failures.append(f"'{r['part']}': {r['status']}: {r['value']} {r['detail']}")
            elif r["status"] == "skip":
                reason = next((w for k, w in MAY_SKIP.items() if r["part"].startswith(k)), None)
                if reason is None or reason not in r["detail"]:
                    failures.append(f"'{r['part']}' skipped: {r['detail']}")
                else:
                    print(f"skipped as allowed: {r['part']}: {r['detail']}")
        for need in ("demo training", "PyTorch GPT-2 124M fp32"):
            if not any(r["part"].startswith(need) for r in rows):
                failures.append(f"no row '{need}...'")
    for f in failures:
        print("FAIL:", f)
    print(f"{len(rows)} rows, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
