#!/usr/bin/env bash
# Issue 20 on the single-GPU machine: the embedded default model and a Qwen3-MoE fixture
# analysed whole on CUDA, then as two shards running at the same time on the one GPU (each
# with half the budget), merged; and with --devices 0. Prints whether each merged report.json
# is byte for byte the whole run's.
#   shards_gpu.sh BINS_TAR OUT
set -u
tar=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
bins=/tmp/ls-bins-shards
mkdir -p "$bins" "$out"
tar xJf "$tar" -C "$bins"
L=$bins/layerstream
work=/tmp/ls-shards
rm -rf "$work" && mkdir -p "$work" && cd "$work"
check() {  # name, micro-batch tokens (4 sequences: shards of 8 split alike), workload flags
  name=$1 tokens=$2; shift 2
  common=(--device cuda --micro-batch-tokens "$tokens" "$@")
  "$L" analyze "${common[@]}" --vram 8GiB --out "$name-whole" >"$out/$name-whole.log" 2>&1 || echo "$name whole failed"
  "$L" analyze "${common[@]}" --vram 4GiB --shard 0/2 --out "$name-s0" >"$out/$name-s0.log" 2>&1 &
  a=$!
  "$L" analyze "${common[@]}" --vram 4GiB --shard 1/2 --out "$name-s1" >"$out/$name-s1.log" 2>&1 &
  b=$!
  wait $a; ea=$?; wait $b; eb=$?
  echo "$name: shards exit $ea $eb (both on the GPU at once: $(grep -h 'cuda (' "$out/$name-s0.log" "$out/$name-s1.log" | wc -l) of 2 on CUDA)"
  "$L" merge "$name-s0" "$name-s1" --out "$name-merged" >>"$out/$name-merge.log" 2>&1
  cmp -s "$name-whole/report.json" "$name-merged/report.json" && echo "$name: two shards merged: report.json IDENTICAL" || echo "$name: two shards merged: report.json DIFFERS"
  "$L" analyze "${common[@]}" --vram 8GiB --devices 0 --out "$name-devices" >"$out/$name-devices.log" 2>&1
  cmp -s "$name-whole/report.json" "$name-devices/report.json" && echo "$name: --devices 0: report.json IDENTICAL" || echo "$name: --devices 0: report.json DIFFERS"
}
check default 8192 --num-samples 16 --seq-len 2048
check qwen3_moe 512 --model "$repo/tests/fixtures/qwen3_moe/model" --data "$repo/cli/assets/default-data.txt" --num-samples 16 --seq-len 128
