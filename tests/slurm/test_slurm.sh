#!/usr/bin/env bash
# Runs p2bw's SLURM jobscripts (jobscripts/cpu.sbatch) on a real single-node SLURM cluster made
# from Debian's packages (munged, slurmctld, slurmd started here, no systemd, everything under a
# temporary directory): a 2-rank training job, a resume job, and a job stopped with USR1 that
# checkpoints and chains a dependent job which finishes the run; gpu.sbatch's logic without GPUs;
# and the jobscript `p2bw plan --write-jobscript` writes, submitted as written.
# Usage: tests/slurm/test_slurm.sh P2BW REPO_ROOT   Exit: 0 passed, 1 failed, 77 skipped.
set -uo pipefail
[ $# -eq 2 ] || { echo "usage: $0 P2BW REPO_ROOT" >&2; exit 2; }
p2bw=$(realpath "$1")
root=$(realpath "$2")
t0=$(date +%s)

skip() { echo "skipped: $*"; exit 77; }

# --- the packages ----------------------------------------------------------------------------
have_slurm() {
  for c in slurmctld slurmd munged sbatch h5dump; do
    command -v "$c" >/dev/null 2>&1 || return 1
  done
}
export PATH=$PATH:/usr/sbin:/sbin
if ! have_slurm; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing slurmctld slurmd slurm-client munge (apt-get)"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge hdf5-tools \
      >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 &&
      apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge hdf5-tools \
        >/dev/null 2>&1; } || skip "slurm packages missing and apt-get install failed"
    have_slurm || skip "slurm packages missing after apt-get install"
  else
    skip "slurmctld, slurmd, munged, sbatch or h5dump missing and not root with apt-get"
  fi
fi
[ "$(id -u)" = 0 ] || skip "slurmd and this cluster's SlurmUser=root need root"
[ -x "$p2bw" ] || { echo "FAIL: no binary $p2bw"; exit 1; }

# --- the cluster ------------------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/p2bw-slurm.XXXXXX")
chmod 755 "$tmp"
pids=()
cleanup() {
  local rc=$?
  if [ -n "${SLURM_CONF:-}" ] && [ -f "$SLURM_CONF" ]; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true   # only this cluster's jobs: SLURM_CONF
    sleep 1
  fi
  local p
  [ -n "${hold:-}" ] && kill "$hold" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # job steps outlive slurmd: end the p2bw processes that this cluster started (found by the
  # temporary directory on their command line, which is unique to this run)
  local left
  left=$(pgrep -f -- "$tmp/" || true)
  # shellcheck disable=SC2086  # a list of process ids
  [ -n "$left" ] && kill $left 2>/dev/null
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# munged refuses group- or world-writable folders; the key folder is private, the socket's is not
mkdir -p "$tmp"/{etc,key,munge,state,spool,log,run}
chmod 700 "$tmp/key"
chmod 755 "$tmp/munge"
key=$tmp/key/munge.key
mungekey --create --keyfile="$key" 2>/dev/null ||
  dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
chmod 400 "$key"
sock=$tmp/munge/munge.socket
setsid munged -F --key-file="$key" --socket="$sock" --pid-file="$tmp/key/munged.pid" \
  --log-file="$tmp/log/munged.log" --seed-file="$tmp/key/munged.seed" >"$tmp/log/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "FAIL: munged did not start"; cat "$tmp/log/munged.out"; exit 1; }

host=$(hostname -s)
node=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
# ports from the process id so that a second cluster on the machine does not clash
port=$(( 20000 + ($$ % 5000) * 2 ))
export SLURM_CONF=$tmp/etc/slurm.conf
cat >"$SLURM_CONF" <<CONF
ClusterName=p2bwtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool/%n
SlurmctldPidFile=$tmp/run/slurmctld.pid
SlurmdPidFile=$tmp/run/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmi2
SchedulerParameters=batch_sched_delay=0
MinJobAge=5
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 $node State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
sed -i 's/ UpTime=[^ ]*//' "$SLURM_CONF"
setsid slurmctld -D -f "$SLURM_CONF" >"$tmp/log/slurmctld.out" 2>&1 &
pids+=($!)
setsid slurmd -D -f "$SLURM_CONF" >"$tmp/log/slurmd.out" 2>&1 &
pids+=($!)

ready=0
for _ in $(seq 100); do
  if sinfo -h -o '%t' 2>/dev/null | grep -qx idle; then ready=1; break; fi
  sleep 0.2
done
if [ $ready = 0 ]; then
  echo "FAIL: the node did not become idle within 20 s"
  tail -n 20 "$tmp"/log/*.log "$tmp"/log/*.out
  exit 1
fi
echo "cluster up after $(( $(date +%s) - t0 )) s (SLURM_CONF=$SLURM_CONF)"
# debugging: HOLD=SECONDS keeps the cluster up that long (export SLURM_CONF from the line above)
if [ -n "${HOLD:-}" ]; then sleep "$HOLD" & hold=$!; wait "$hold"; fi

# --- helpers ----------------------------------------------------------------------------------
passed=0 failed=0
check() { # check NAME COMMAND...: one line per check
  local name=$1; shift
  if "$@"; then echo "PASS: $name"; passed=$((passed + 1))
  else echo "FAIL: $name"; failed=$((failed + 1)); fi
}
steps_in() { # the /steps/step dataset of a metrics file, one number a line
  h5dump -d /steps/step -y "$1" 2>/dev/null | sed -n '/DATA {/,/}/p' | sed '1d;$d' |
    sed 's/([0-9,]*)://g' | tr -s ', ' '\n' | sed '/^$/d'
}
steps_are() { [ "$(steps_in "$1" | tr '\n' ' ')" = "$(seq "$2" | tr '\n' ' ')" ]; }
latest_is() { [ "$(cat "$1/checkpoints/latest" 2>/dev/null)" = "$(printf 'step_%08d' "$2")" ]; }
job_end() { # job_end ID SECONDS: waits for the job to end; prints "STATE EXITCODE" (last seen)
  local id=$1 last="UNKNOWN ?" line
  for _ in $(seq $(( $2 * 5 ))); do
    line=$(scontrol show job -o "$id" 2>/dev/null) || break
    last="$(sed -n 's/.*JobState=\([^ ]*\).*/\1/p' <<<"$line") $(sed -n 's/.* ExitCode=\([^ ]*\).*/\1/p' <<<"$line")"
    case $last in COMPLETED*|FAILED*|CANCELLED*|TIMEOUT*|NODE_FAIL*|OUT_OF_MEMORY*) break ;; esac
    sleep 0.2
  done
  echo "$last"
}
show() { echo "---- $1"; sed 's/^/    /' "$1" 2>/dev/null; }

# Submit from an unrelated directory, with the deck relative to the repository (the jobscript
# looks it up there) and the jobscript by absolute path.
jobscript=$root/jobscripts/cpu.sbatch
mkdir -p "$tmp/submit"
cd "$tmp/submit" || exit 1
sb=(sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=1)
tiny=(inputs/gpt-tiny.yaml)
run=$tmp/run

# --- 1: a 2-rank job of 6 steps ---------------------------------------------------------------
t=$(date +%s)
rc=0
P2BW=$p2bw CHAIN=0 OUTPUT_DIR=$run SETS="pipeline.depth=2 train.steps=6 checkpoint.every=2" \
  "${sb[@]}" --wait --output="$tmp/job1.out" "$jobscript" "${tiny[@]}" >/dev/null || rc=$?
echo "job 1 (6 steps, 2 ranks): exit $rc, $(( $(date +%s) - t )) s"
check "job 1: sbatch --wait exit code 0" [ "$rc" = 0 ]
check "job 1: 2 MPI ranks (stage 1 on rank 1)" grep -q "stage 1 on ranks 1..1" "$tmp/job1.out"
check "job 1: metrics.h5 has steps 1..6" steps_are "$run/metrics.h5" 6
check "job 1: checkpoints/latest is step_00000006" latest_is "$run" 6
check "job 1: periodic checkpoints" grep -q "checkpoint after step 4 (periodic)" "$tmp/job1.out"
[ $failed = 0 ] || show "$tmp/job1.out"

# --- 2: the same output.dir with train.steps=10 resumes -----------------------------------------
t=$(date +%s)
rc=0
P2BW=$p2bw CHAIN=0 OUTPUT_DIR=$run SETS="pipeline.depth=2 train.steps=10 checkpoint.every=2" \
  "${sb[@]}" --wait --output="$tmp/job2.out" "$jobscript" "${tiny[@]}" >/dev/null || rc=$?
echo "job 2 (resume to 10 steps): exit $rc, $(( $(date +%s) - t )) s"
check "job 2: sbatch --wait exit code 0" [ "$rc" = 0 ]
check "job 2: resumed after step 6" grep -q "resumed after step 6" "$tmp/job2.out"
check "job 2: metrics.h5 has steps 1..10 without duplicates" steps_are "$run/metrics.h5" 10
check "job 2: checkpoints/latest is step_00000010" latest_is "$run" 10
[ $failed = 0 ] || show "$tmp/job2.out"

# --- 3: USR1 stops a long run, which checkpoints and chains a job that finishes it --------------
t=$(date +%s)
run3=$tmp/run3
n3=600
id3=$(P2BW=$p2bw CHAIN=1 MAX_CHAIN=3 OUTPUT_DIR=$run3 CHAIN_SBATCH_ARGS="--output=$tmp/chain-%j.out" \
  SETS="pipeline.depth=2 train.steps=$n3 train.log_every=10" \
  "${sb[@]}" --parsable --output="$tmp/job3.out" "$jobscript" "${tiny[@]}")
seen=0
for _ in $(seq 150); do
  if grep -qE "^step +[0-9]+/$n3" "$tmp/job3.out" 2>/dev/null; then seen=1; break; fi
  [ -n "$(squeue -h -j "$id3" 2>/dev/null)" ] || break   # ended without training
  sleep 0.2
done
check "job 3: training started" [ $seen = 1 ]
scancel --signal=USR1 "$id3"   # to the job steps (p2bw), as --signal=USR1@120 does
end3=$(job_end "$id3" 60)
echo "job 3 (USR1 after the first steps): $end3, $(( $(date +%s) - t )) s"
check "job 3: completed with exit code 0 after USR1" [ "$end3" = "COMPLETED 0:0" ]
check "job 3: checkpoint on the stop signal" grep -q "(stop signal)" "$tmp/job3.out"
stopped=$(sed -n 's/.*checkpoint step \([0-9]*\) of.*/\1/p' "$tmp/job3.out" | tail -n 1)
check "job 3: stopped before step $n3 (at ${stopped:-?})" [ "${stopped:-$n3}" -lt $n3 ]
id4=$(sed -n 's/.*submitted job \([0-9]*\).*/\1/p' "$tmp/job3.out")
check "job 3: submitted a chained job" [ -n "$id4" ]
if [ -n "$id4" ]; then
  end4=$(job_end "$id4" 90)
  echo "job 4 (chained): $end4, $(( $(date +%s) - t )) s since job 3 was submitted"
  check "job 4: completed with exit code 0" [ "$end4" = "COMPLETED 0:0" ]
  check "job 4: resumed after step ${stopped:-?}" grep -q "resumed after step ${stopped:-x} " "$tmp/chain-$id4.out"
  check "job 4: chain position 2/3" grep -q "chain 2/3" "$tmp/chain-$id4.out"
  check "job 4: metrics.h5 has steps 1..$n3 without duplicates" steps_are "$run3/metrics.h5" $n3
  check "job 4: checkpoints/latest is step_$(printf %08d $n3)" latest_is "$run3" $n3
  check "job 4: no further job submitted" bash -c "! grep -q 'submitted job' '$tmp/chain-$id4.out'"
  [ $failed = 0 ] || show "$tmp/chain-$id4.out"
fi
[ $failed = 0 ] || show "$tmp/job3.out"

# --- 5: gpu.sbatch, run without GPUs (--gpus-per-node=0): the script's logic, not a GPU ---------
t=$(date +%s)
rc=0
P2BW=$p2bw CHAIN=0 OUTPUT_DIR=$tmp/run5 SETS="pipeline.depth=2 train.steps=3" \
  "${sb[@]}" --gpus-per-node=0 --wait --output="$tmp/job5.out" "$root/jobscripts/gpu.sbatch" \
  "${tiny[@]}" >/dev/null || rc=$?
echo "job 5 (gpu.sbatch without GPUs, 3 steps): exit $rc, $(( $(date +%s) - t )) s"
check "job 5: gpu.sbatch exit code 0" [ "$rc" = 0 ]
check "job 5: metrics.h5 has steps 1..3" steps_are "$tmp/run5/metrics.h5" 3
check "job 5: checkpoints/latest is step_00000003" latest_is "$tmp/run5" 3
[ "$rc" = 0 ] || show "$tmp/job5.out"

# --- 6: the jobscript p2bw plan writes, submitted as written ------------------------------------
t=$(date +%s)
cat >"$tmp/node.yaml" <<'EOF6'
name: test-node
nodes: 1
devices_per_node: 2
memory_per_device_gb: 1
intra_node_bandwidth_gbps: 2
inter_node_bandwidth_gbps: 1
intra_node_latency_us: 1
inter_node_latency_us: 50
flops_per_device: 2.0e10
gpus: false
EOF6
rc=0
(cd "$root" && "$p2bw" plan "${tiny[@]}" --cluster "$tmp/node.yaml" --global-batch-max 16 \
  --set train.steps=3 --set output.dir="$tmp/run6" --write-deck "$tmp/plan6.yaml" \
  --write-jobscript "$tmp/plan6.sbatch" >"$tmp/plan6.out" 2>&1) || rc=$?
check "job 6: p2bw plan wrote a deck and a jobscript" test "$rc" = 0 -a -s "$tmp/plan6.sbatch"
rc=0
PATH=$(dirname "$p2bw"):$PATH sbatch --wait --output="$tmp/job6.out" "$tmp/plan6.sbatch" >/dev/null || rc=$?
echo "job 6 (the planner's jobscript, 3 steps): exit $rc, $(( $(date +%s) - t )) s"
check "job 6: the planner's jobscript runs as written, exit code 0" [ "$rc" = 0 ]
check "job 6: metrics.h5 has steps 1..3" steps_are "$tmp/run6/metrics.h5" 3
[ "$rc" = 0 ] || { show "$tmp/plan6.out"; show "$tmp/plan6.sbatch"; show "$tmp/job6.out"; }

echo "$passed passed, $failed failed ($(( $(date +%s) - t0 )) s)"
[ $failed = 0 ]
