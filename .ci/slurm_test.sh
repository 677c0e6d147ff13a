#!/usr/bin/env bash
# A real Slurm on this machine (issue 20): installs Debian's slurm-wlm and munge when they are
# missing, starts munged, slurmctld and slurmd for a one-node cluster in a temporary folder,
# submits docs/scaling/slurm-submit.sh's 4-task array over the embedded model plus the merge
# job that depends on it, requeues one task once, and compares the merged report.json with
# the unsharded run's. It stops the daemons it started, by process id.
#   .ci/slurm_test.sh [LAYERSTREAM_BINARY]   (default target/debug/layerstream)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$repo/target/debug/layerstream}")
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
fi
work=$(mktemp -d /tmp/layerstream-slurm.XXXXXX)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  [ -n "${KEEP_SLURM_WORK:-}" ] || rm -rf "$work"
}
trap stop EXIT
host=$(hostname -s)
mkdir -p "$work/state" "$work/spool" "$work/run"
cat >"$work/slurm.conf" <<CONF
ClusterName=layerstream-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/run/munge.socket
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldPort=26817
SlurmdPort=26818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$work/slurm.conf
dd if=/dev/urandom of="$work/munge.key" bs=1024 count=1 2>/dev/null
chmod 400 "$work/munge.key"
munged --force --key-file="$work/munge.key" --socket="$work/run/munge.socket" \
  --pid-file="$work/munged.pid" --log-file="$work/munged.log" --seed-file="$work/munge.seed"
pids+=("$(cat "$work/munged.pid")")
slurmctld -f "$SLURM_CONF"
for _ in $(seq 50); do [ -s "$work/slurmctld.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/slurmctld.pid")")
slurmd -f "$SLURM_CONF"
for _ in $(seq 50); do [ -s "$work/slurmd.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/slurmd.pid")")
for _ in $(seq 100); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 0.2; done
sinfo -h -o %t | grep -q idle || { echo "slurm: the node did not come up" >&2; tail "$work"/*.log >&2; exit 1; }

export LAYERSTREAM=$bin LAYERSTREAM_CACHE_DIR=$work/cache LAYERSTREAM_THREADS=1
export ANALYZE_ARGS="--device cpu --num-samples 8 --seq-len 256" OUT=$work/out GRES=
cd "$work" && ln -s "$repo/docs" docs
# shellcheck disable=SC2086
"$bin" analyze $ANALYZE_ARGS --out "$work/whole" >/dev/null 2>&1
mapfile -t jobs < <(sh docs/scaling/slurm-submit.sh)
array=${jobs[0]} merge=${jobs[1]}
state() { scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2; }
wait_for() {  # job, then the final state it must reach
  for _ in $(seq 600); do
    s=$(state "$1")
    [ "$s" = "$2" ] && return 0
    case $s in FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) echo "slurm: job $1 $s" >&2; return 1;; esac
    sleep 0.2
  done
  echo "slurm: job $1 did not reach $2 (is $(state "$1"))" >&2
  scontrol show job "$1" >&2 || true
  return 1
}
wait_for "${array}_1" COMPLETED
scontrol requeue "${array}_1"
# slurmctld delays a requeued job's start (BeginTime); let it start now.
sleep 0.5
scontrol show job "${array}_1" | grep -o 'Reason=[A-Za-z]*\|StartTime=[^ ]*\|BeginTime=[^ ]*' | tr '\n' ' ' >&2; echo >&2
scontrol update JobId="${array}_1" StartTime=now || true
wait_for "$merge" COMPLETED
runs=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['runs'])" "$OUT/shard-1/progress.json" 2>/dev/null \
  || grep -o '"runs": *[0-9]*' "$OUT/shard-1/progress.json" | grep -o '[0-9]*$')
[ "$runs" -ge 2 ] || { echo "slurm: the requeued task ran $runs time(s)" >&2; exit 1; }
cmp "$work/whole/report.json" "$OUT/merged/report.json"
echo "slurm: 4-task array (task 1 requeued, $runs runs) merged by a dependent job: report.json identical to the unsharded run"
