#!/usr/bin/env bash
# The f16 MoE experts change (issue 19 goal 5) on the GPU machine in one call. BINS_TAR holds
# `layerstream` (this build), `layerstream-base` (the build before) and the gpu_* test binaries.
#  1. The f16 tests natively and with a T4's kernels (LAYERSTREAM_KERNEL_ARCH=75), gpu_kernels
#     and gpu_fidelity natively.
#  2. Speed (f16_check_gpu.sh's speed part): the OLMoE cut with this build (f32 and f16 with
#     the T4's kernels, bf16 and f16 natively) and the build before (f16 both ways).
#  3. same_reports.sh, the build before against this one, `--device cuda --compute-dtype f16`:
#     the f16 results must not change (same conversions, same products, same fix-ups).
#  4. The Llama cut's speed as in 2 (this build).
#   [PARTS="tests speed same llama"] f16_experts_gpu.sh BINS_TAR OUT
set -u
tar=$1 out=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
b=/tmp/ls-f16x-bins
mkdir -p "$b" "$out" && tar xJf "$tar" -C "$b"
parts=${PARTS:-tests speed same llama}
has() { [[ " $parts " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name --format=csv,noheader
run_tests() {  # $1: label, $2: tests, then env assignments
  local label=$1 list=$2; shift 2
  for t in $list; do
    env "$@" LAYERSTREAM_REQUIRE_GPU=1 LAYERSTREAM_FIXTURES="$here/tests/fixtures" \
      timeout 240 "$b/$t" --test-threads 1 --nocapture >"$out/$t-$label.log" 2>&1
    echo "$label $t exit $? $(grep -E '^test result' "$out/$t-$label.log" | tail -1)"
  done
}
if has tests; then
  run_tests native "gpu_f16_expert_kernels gpu_f16_kernels gpu_f16_fidelity gpu_kernels gpu_fidelity" \
    LAYERSTREAM_KERNEL_CACHE=/tmp/ls-kc
  run_tests sm75 "gpu_f16_expert_kernels gpu_f16_fidelity" LAYERSTREAM_KERNEL_ARCH=75
  grep -hE "planted:" "$out"/gpu_f16_fidelity-*.log
fi
if has speed; then
  s=$here/benches/scripts/f16_check_gpu.sh
  PARTS=speed SHAPES=olmoe-1b-7b bash "$s" "$tar" "$out/speed" | grep -v "^NVIDIA"
  PARTS=speed SHAPES=olmoe-1b-7b SPEED_BIN=layerstream-base SPEED_MODES="f16-sm75 f16" bash "$s" "$tar" \
    "$out/speed" | grep -v "^NVIDIA"
fi
if has same; then
  LAYERSTREAM_KERNEL_CACHE=/tmp/ls-kc timeout 300 bash "$here/benches/scripts/same_reports.sh" \
    "$b/layerstream-base" "$b/layerstream" /tmp/ls-same-f16 --device cuda --compute-dtype f16 2>&1 | tail -4
fi
if has llama; then
  PARTS=speed SHAPES=llama-3.1-8b bash "$here/benches/scripts/f16_check_gpu.sh" "$tar" "$out/speed" |
    grep -v "^NVIDIA"
fi
