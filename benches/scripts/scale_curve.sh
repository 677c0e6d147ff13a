#!/usr/bin/env bash
# Issue 19, goal 3: the scale curve. For each shape and each workload size (SIZES, sequences
# of 2048 tokens) runs compare_tools.py with layerstream (`--vram 8GiB`) and transformers
# (whole model on the GPU, grouped_mm experts, SDPA, batch HF_BATCH), one results.jsonl per
# size under OUT, then scale_plot.py draws seconds per sequence against the size.
#   [SIZES="16 64 256 1024"] [SHAPES="olmoe-1b-7b llama-3.1-8b"] [HF_BATCH=8]
#   scale_curve.sh LAYERSTREAM_BIN BENCHES_BIN WORK OUT
set -u
ls_bin=$1 benches=$2 work=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out" "$work"
# The embedded text holds about 50 sequences of 2048 tokens: 30 copies hold 1500.
data="$work/scale-data.txt"
[ -f "$data" ] || for i in $(seq 30); do cat "$here/../../cli/assets/default-data.txt"; done >"$data"
for shape in ${SHAPES:-olmoe-1b-7b llama-3.1-8b}; do
  for n in ${SIZES:-16 64 256 1024}; do
    python3 "$here/compare_tools.py" run --layerstream "$ls_bin" --benches "$benches" --work "$work" \
      --out "$out/$shape-$n" --workload "$shape" --tools layerstream,transformers --data "$data" \
      --num-samples "$n" --hf-batch "${HF_BATCH:-8}" || echo "$shape $n: compare_tools exit $?"
  done
done
python3 "$here/scale_plot.py" "$out" "$out/scale-curve.svg"
