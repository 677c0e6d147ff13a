#!/usr/bin/env bash
# Issue 19 goal 5 (`--compute-dtype f16`, the T4 path) on the GPU machine in one call.
# BINS_TAR holds `layerstream` and the gpu_* test binaries of this build.
#  1. The f16 tests, and the attention/analysis kernel tests, natively and with
#     LAYERSTREAM_KERNEL_ARCH=75 (the kernels a T4 gets: PTX for compute_75 through the
#     driver's JIT, so an H100/H200 runs the sm_75 code paths, two m16n8k8 per product).
#  2. Every fixture analysed with bf16, f16 (both builds of the kernels) and f32: the outlier
#     features and massive activations of report.json must be the same for bf16 and f16;
#     where not, f16_reports.py says which agrees with f32.
#  3. Speed, SEQS x 2048 on LAYERS-layer cuts of SHAPES: f32 and f16 with the T4's kernels
#     (goal: f16 >= 4x f32), and bf16 and f16 natively; the time of the last layer (from the
#     timeline: weights ready to layer done) and the wall time.
#     SPEED_BIN (a binary of BINS_TAR, e.g. the build before) and SPEED_MODES choose what runs.
#   [PARTS="tests fixtures speed"] [FIXTURES="<every fixture>"] [SEQS=64] [LAYERS=2]
#   [SHAPES="olmoe-1b-7b llama-3.1-8b"] [SPEED_BIN=layerstream] [SPEED_MODES="f32-sm75 f16-sm75 bf16 f16"]
#   [MORE_TESTS=...] f16_check_gpu.sh BINS_TAR OUT
set -u
tar=$1 out=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
b=/tmp/ls-f16-bins
mkdir -p "$b" "$out" && tar xJf "$tar" -C "$b"
nvidia-smi --query-gpu=name --format=csv,noheader
tests() {  # $1: label, then env assignments
  local label=$1; shift
  for t in gpu_f16_kernels gpu_attention_kernels gpu_analysis_kernels gpu_f16_fidelity ${MORE_TESTS:-}; do
    env "$@" LAYERSTREAM_REQUIRE_GPU=1 LAYERSTREAM_FIXTURES="$here/tests/fixtures" \
      timeout 300 "$b/$t" --test-threads 1 >"$out/$t-$label.log" 2>&1
    echo "$label $t exit $? $(grep -E '^test result' "$out/$t-$label.log" | tail -1)"
  done
}
parts=${PARTS:-tests fixtures speed}
if [[ " $parts " == *" tests "* ]]; then
  tests native LAYERSTREAM_KERNEL_CACHE=/tmp/ls-kc
  tests sm75 LAYERSTREAM_KERNEL_ARCH=75
fi
bin=$b/layerstream
for dir in "$here"/tests/fixtures/*/model; do
  [[ " $parts " == *" fixtures "* ]] || break
  name=$(basename "$(dirname "$dir")")
  [ -z "${FIXTURES:-}" ] || [[ " $FIXTURES " == *" $name "* ]] || continue
  for mode in bf16 f16 f16-sm75 f32; do
    dtype=${mode%-sm75} arch=
    [ "$mode" = f16-sm75 ] && arch=75
    env ${arch:+LAYERSTREAM_KERNEL_ARCH=$arch} "$bin" analyze --model "$dir" --num-samples 4 --seq-len 64 \
      --threshold 0.5 --device cuda --compute-dtype "$dtype" --progress none \
      --out "/tmp/ls-f16/$name-$mode" >"$out/analyze-$name-$mode.log" 2>&1 || echo "FAILED $name $mode"
  done
done
[[ " $parts " == *" fixtures "* ]] && python3 "$here/benches/scripts/f16_reports.py" /tmp/ls-f16 | tee "$out/f16_reports.txt"
[[ " $parts " == *" speed "* ]] || exit 0
python3 -c "import sys, pathlib; print(pathlib.Path(sys.argv[1]).read_text() * 30)" "$here/cli/assets/default-data.txt" > /tmp/ls-f16-data.txt
last=$(( ${LAYERS:-2} - 1 ))
for shape in ${SHAPES:-olmoe-1b-7b llama-3.1-8b}; do
  [ -f "/tmp/m-$shape/config.json" ] ||
    python3 "$here/benches/scripts/make_random_model.py" "$shape" "/tmp/m-$shape" --layers "${LAYERS:-2}" >/dev/null 2>&1
  for mode in ${SPEED_MODES:-f32-sm75 f16-sm75 bf16 f16}; do
    dtype=${mode%-sm75} arch=
    case $mode in *-sm75) arch=75 ;; esac
    log=$out/speed-${SPEED_BIN:-layerstream}-$shape-$mode.log
    /usr/bin/time -f "wall %e s" env ${arch:+LAYERSTREAM_KERNEL_ARCH=$arch} LAYERSTREAM_TIMELINE=1 "$b/${SPEED_BIN:-layerstream}" analyze \
      --model "/tmp/m-$shape" --data /tmp/ls-f16-data.txt --num-samples "${SEQS:-64}" --seq-len 2048 --vram 8GiB \
      --points ln1,ln2,resid_post --device cuda --compute-dtype "$dtype" --out "/tmp/ls-speed-$shape-$mode" --restart \
      --progress none >"$log" 2>&1
    ready=$(grep -E "layer $last: weights ready" "$log" | awk '{print $2}')
    done_at=$(grep -E "layer $last done" "$log" | awk '{print $2}')
    echo "${SPEED_BIN:-layerstream} $shape $mode: layer $last $(python3 -c "print(f'{float(\"$done_at\") - float(\"$ready\"):.3f}')" 2>/dev/null) s, $(grep -E '^wall' "$log"), $(grep -cE 'sequences from' "$log") micro-batches; $(grep -E 'f16 compute' "$log")"
  done
done
