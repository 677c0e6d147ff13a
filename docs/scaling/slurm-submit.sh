#!/bin/sh
# Submits the array and a merge job that waits for all of it.
#   ANALYZE_ARGS="--model /shared/Qwen3-30B-A3B --data /shared/fineweb.parquet --num-samples 1024 --vram 40GiB" \
#   OUT=/shared/out sh docs/scaling/slurm-submit.sh
#   GRES   what each task asks for (default gpu:1; empty: none)
set -eu
export ANALYZE_ARGS OUT
gres=${GRES-gpu:1}
array=$(sbatch --parsable --export=ALL ${gres:+--gres=$gres} docs/scaling/slurm-array.sbatch)
echo "${array%%;*}"
sbatch --parsable --export=ALL,WAIT=1 --dependency=afterok:"${array%%;*}" docs/scaling/slurm-merge.sbatch
