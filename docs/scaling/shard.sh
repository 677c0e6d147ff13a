#!/bin/sh
# One shard of an analysis, its index and count from the scheduler (`--shard env`): Slurm job
# arrays (SLURM_ARRAY_TASK_ID / _COUNT), Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX, with
# SHARDS for the count) or SkyPilot (SKYPILOT_NODE_RANK / _NUM_NODES). Running it again
# resumes the shard where it stopped (a requeued or restarted task).
#   ANALYZE_ARGS  the analysis, the same for every shard: --model DIR --data FILE ...
#   OUT           a folder every shard can write to (shared storage); shard i in OUT/shard-i
#   SHARDS        the shard count, where the scheduler gives none (Kubernetes)
#   LAYERSTREAM   the binary (default: layerstream on PATH)
set -eu
: "${LAYERSTREAM:=layerstream}" "${OUT:=layerstream-out}" "${ANALYZE_ARGS:=}"
index=${SLURM_ARRAY_TASK_ID:-${JOB_COMPLETION_INDEX:-${SKYPILOT_NODE_RANK:-}}}
if [ -z "$index" ]; then
  echo "shard.sh: no SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX or SKYPILOT_NODE_RANK: run it from a job array" >&2
  exit 1
fi
# shellcheck disable=SC2086 # ANALYZE_ARGS is a list of flags
exec "$LAYERSTREAM" analyze $ANALYZE_ARGS --shard "env${SHARDS:+/$SHARDS}" --out "$OUT/shard-$index"
