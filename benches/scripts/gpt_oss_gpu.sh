#!/usr/bin/env bash
# GPT-OSS on the GPU machine (issue 16), in one device call per step:
#   gpt_oss_gpu.sh tests  BINS_TAR OUT   kernel and fidelity tests (debug test binaries)
#   gpt_oss_gpu.sh memory BINS_TAR OUT   GPT-OSS-20B-shaped MXFP4 checkpoint, predicted vs
#                                        measured peak at --vram 8GiB (every capture point)
#   gpt_oss_gpu.sh split  BINS_TAR OUT   GPT-OSS-120B-shaped, 8 of its 36 layers (the disk holds
#                                        no more): predicted vs measured peak at --vram 8GiB,
#                                        where its layers stream in expert groups
#   gpt_oss_gpu.sh compare BINS_TAR OUT  the same checkpoint: layerstream at 8 GiB against
#                                        transformers (whole model, experts dequantized to
#                                        bf16) and accelerate (8 GiB), side by side
# BINS_TAR holds layerstream, layerstream-benches and the gpu_* test binaries.
set -u
step=$1 tar=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
bins=/tmp/ls-bins
mkdir -p "$bins" "$out"
tar xJf "$tar" -C "$bins"
work=/tmp/ls-work
mkdir -p "$work"
model=$work/gpt-oss-20b
make_model() {
  [ -f "$model/config.json" ] || python3 "$here/make_gpt_oss_mxfp4.py" gpt-oss-20b "$model" 2>&1 | tail -2
}
case $step in
  tests)
    export LAYERSTREAM_REQUIRE_GPU=1 LAYERSTREAM_FIXTURES=$repo/tests/fixtures
    for t in gpu_gpt_oss_kernels gpu_fidelity gpu_kernels gpu_analysis_kernels; do
      timeout 200 "$bins/$t" --test-threads 1 >"$out/$t.log" 2>&1
      echo "$t exit $? $(grep -E '^test result' "$out/$t.log" | tail -1)"
    done
    ;;
  memory)
    make_model
    "$bins/layerstream" inspect --model "$model" | tee "$out/inspect.txt"
    "$bins/layerstream" estimate --model "$model" --vram 8GiB --num-samples 16 --seq-len 2048 \
      | head -14 | tee "$out/estimate.txt"
    ACCURACY_LOG=$out/memory-runs.log timeout 420 python3 "$here/memory_accuracy.py" \
      "$bins/layerstream" "$repo/cli/assets/default-data.txt" "$repo/cli/assets/default-model" \
      "$model:8GiB" | tee "$out/memory.md"
    ;;
  split)
    big=$work/gpt-oss-120b-8
    [ -f "$big/config.json" ] || python3 "$here/make_gpt_oss_mxfp4.py" gpt-oss-120b "$big" --layers 8 2>&1 | tail -2
    "$bins/layerstream" inspect --model "$big" >"$out/inspect-120b.txt"
    "$bins/layerstream" estimate --model "$big" --vram 8GiB --num-samples 16 --seq-len 2048 >"$out/estimate-120b.txt"
    ACCURACY_LOG=$out/memory-runs-120b.log timeout 480 python3 "$here/memory_accuracy.py" \
      "$bins/layerstream" "$repo/cli/assets/default-data.txt" "$repo/cli/assets/default-model" \
      "$big:8GiB" | tee "$out/memory-120b.md"
    ;;
  compare)
    make_model
    timeout 500 python3 "$here/compare_tools.py" run --layerstream "$bins/layerstream" \
      --benches "$bins/layerstream-benches" --work "$work/compare" --out "$out" \
      --workload "$model" --tools layerstream,transformers,accelerate
    python3 "$here/compare_tools.py" render "$out/results.jsonl" | tee "$out/compare.md"
    ;;
esac
