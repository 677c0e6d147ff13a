#!/usr/bin/env bash
# Qwen3-Next on the GPU machine (issue 18), in few device calls:
#   qwen3_next_gpu.sh tests  BINS_TAR OUT   the DeltaNet kernel tests and every fixture's
#                                           fidelity on CUDA (debug test binaries)
#   qwen3_next_gpu.sh bench  BINS_TAR OUT   a Qwen3-Next-80B-A3B-shaped checkpoint cut to LAYERS
#                                           (default 8: layers 3 and 7 gated attention, the rest
#                                           Gated DeltaNet): inspect, estimate, predicted vs
#                                           measured peak at --vram 8GiB (every capture point),
#                                           then layerstream at 8 GiB beside transformers with
#                                           the whole model on the GPU (warm page cache)
# BINS_TAR holds layerstream, layerstream-benches and the gpu_* test binaries.
set -u
step=$1 tar=$2 out=$3
layers=${LAYERS:-8}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
bins=/tmp/ls-bins
mkdir -p "$bins" "$out"
[ -x "$bins/layerstream" ] || tar xJf "$tar" -C "$bins"
work=/tmp/ls-work
mkdir -p "$work"
model=$work/qwen3-next-$layers
case $step in
  tests)
    export LAYERSTREAM_REQUIRE_GPU=1 LAYERSTREAM_FIXTURES=$repo/tests/fixtures
    for t in gpu_delta_net_kernels gpu_fidelity gpu_kernels; do
      timeout 240 "$bins/$t" --test-threads 1 --nocapture >"$out/$t.log" 2>&1
      echo "$t exit $? $(grep -E '^test result' "$out/$t.log" | tail -1)"
    done
    grep -h "delta rule" "$out/gpu_delta_net_kernels.log"
    ;;
  bench)
    [ -f "$model/config.json" ] || python3 "$here/make_qwen3_next.py" "$model" --layers "$layers" 2>&1 | tail -1
    df -h "$work" | tail -1
    "$bins/layerstream" inspect --model "$model" >"$out/inspect.txt"
    "$bins/layerstream" estimate --model "$model" --vram 8GiB --num-samples 16 --seq-len 2048 >"$out/estimate.txt"
    ACCURACY_LOG=$out/memory-runs.log timeout 200 python3 "$here/memory_accuracy.py" \
      "$bins/layerstream" "$repo/cli/assets/default-data.txt" "$repo/cli/assets/default-model" \
      "$model:8GiB" | tee "$out/memory.md"
    LAYERSTREAM_TIMELINE=1 "$bins/layerstream" analyze --model "$model" --data "$repo/cli/assets/default-data.txt" \
      --out "$work/timeline" --vram 8GiB --num-samples 16 --seq-len 2048 --points ln1,ln2,resid_post \
      >"$out/timeline.txt" 2>&1
    timeout 330 python3 "$here/compare_tools.py" run --layerstream "$bins/layerstream" \
      --benches "$bins/layerstream-benches" --work "$work/compare" --out "$out" \
      --workload "$model" --tools layerstream,transformers
    python3 "$here/compare_tools.py" render "$out/results.jsonl" | tee "$out/compare.md"
    ;;
esac
