#!/usr/bin/env bash
# GLM-4.5 on the GPU machine (issue 17), in few device calls:
#   glm_gpu.sh tests   BINS_TAR OUT   kernel and fidelity tests (debug test binaries)
#   glm_gpu.sh memory  BINS_TAR OUT   GLM-4.5-Air-shaped checkpoints cut to LAYERS (default 5,
#                                     what the disk holds for both) in bf16 and FP8, each with
#                                     its MTP layer: inspect, estimate, predicted vs measured
#                                     peak at --vram 8GiB (every capture point)
#   glm_gpu.sh compare BINS_TAR OUT   the same checkpoints: layerstream at 8 GiB (warm and cold
#                                     page cache) beside transformers with the whole model on
#                                     the GPU (warm), side by side
# BINS_TAR holds layerstream, layerstream-benches and the gpu_* test binaries.
set -u
step=$1 tar=$2 out=$3
layers=${LAYERS:-5}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
bins=/tmp/ls-bins
mkdir -p "$bins" "$out"
[ -x "$bins/layerstream" ] || tar xJf "$tar" -C "$bins"
work=/tmp/ls-work
mkdir -p "$work"
bf16=$work/glm-air-$layers
fp8=$work/glm-air-$layers-fp8
make_models() {
  [ -f "$bf16/config.json" ] || python3 "$here/make_glm_air.py" "$bf16" --layers "$layers" 2>&1 | tail -1
  [ -f "$fp8/config.json" ] || python3 "$here/make_glm_air.py" "$fp8" --layers "$layers" --fp8 2>&1 | tail -1
  df -h "$work" | tail -1
}
case $step in
  tests)
    export LAYERSTREAM_REQUIRE_GPU=1 LAYERSTREAM_FIXTURES=$repo/tests/fixtures
    for t in gpu_glm_kernels gpu_fidelity gpu_kernels gpu_gpt_oss_kernels gpu_analysis_kernels; do
      timeout 240 "$bins/$t" --test-threads 1 >"$out/$t.log" 2>&1
      echo "$t exit $? $(grep -E '^test result' "$out/$t.log" | tail -1)"
    done
    ;;
  memory)
    make_models
    for m in "$bf16" "$fp8"; do
      name=$(basename "$m")
      "$bins/layerstream" inspect --model "$m" >"$out/inspect-$name.txt"
      "$bins/layerstream" estimate --model "$m" --vram 8GiB --num-samples 16 --seq-len 2048 >"$out/estimate-$name.txt"
    done
    ACCURACY_LOG=$out/memory-runs.log timeout 400 python3 "$here/memory_accuracy.py" \
      "$bins/layerstream" "$repo/cli/assets/default-data.txt" "$repo/cli/assets/default-model" \
      "$bf16:8GiB" "$fp8:8GiB" | tee "$out/memory.md"
    ;;
  compare)
    make_models
    timeout 560 python3 "$here/compare_tools.py" run --layerstream "$bins/layerstream" \
      --benches "$bins/layerstream-benches" --work "$work/compare" --out "$out" \
      --workload "$bf16" --workload "$fp8" --tools layerstream,transformers \
      --cold --cold-tools layerstream
    python3 "$here/compare_tools.py" render "$out/results.jsonl" | tee "$out/compare.md"
    ;;
esac
