#!/bin/sh
# Submits the array and a merge job that waits for all of it.
#   ANALYZE_ARGS="--model /shared/Qwen3-30B-A3B --data /shared/fineweb.parquet --num-samples 1024 --vram 40GiB" \
#   OUT=/shared/out sh docs/scaling/slurm-submit.sh
set -eu
export ANALYZE_ARGS OUT
array=$(sbatch --parsable --export=ALL docs/scaling/slurm-array.sbatch)
sbatch --parsable --export=ALL --dependency=afterok:"${array%%;*}" docs/scaling/slurm-merge.sbatch
