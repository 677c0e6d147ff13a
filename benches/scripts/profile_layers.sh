#!/usr/bin/env bash
# Where a layer's GPU time goes (issue 19, goal 1): random-init checkpoints cut to LAYERS layers
# (make_random_model.py --layers), `analyze --vram 8GiB --points ln1,ln2,resid_post` at
# SEQS x 2048 with the timeline (wall per layer), then the same under Nsight Compute with one
# metric (each kernel's duration), summed per kernel by kernel_summary.py.
#   [LAYERS=2] [SEQS=16] [SHAPES="llama-3.1-8b olmoe-1b-7b"] profile_layers.sh BIN WORK
set -u
bin=$1 work=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
data="$here/cli/assets/default-data.txt"
mkdir -p "$work"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for shape in ${SHAPES:-llama-3.1-8b olmoe-1b-7b}; do
  model="$work/$shape"
  [ -f "$model/config.json" ] || python3 "$here/benches/scripts/make_random_model.py" "$shape" "$model" --layers "${LAYERS:-2}"
  run() {
    "$@" analyze --model "$model" --data "$data" --device cuda --vram 8GiB --points ln1,ln2,resid_post \
      --num-samples "${SEQS:-16}" --seq-len 2048 --out "$work/out-$shape" --restart --progress none
  }
  LAYERSTREAM_TIMELINE=1 run "$bin" >"$work/$shape.warm.log" 2>&1
  start=$(date +%s%N)
  LAYERSTREAM_TIMELINE=1 run "$bin" >"$work/$shape.log" 2>&1
  end=$(date +%s%N)
  wall=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", (e - s) / 1e9 }')
  echo "== $shape: ${SEQS:-16} x 2048, ${LAYERS:-2} layers, wall $wall s"
  grep -E "timeline|tokens through|micro-batch" "$work/$shape.log" | tail -12
  timeout "${NCU_TIMEOUT:-240}" "$ncu" --metrics gpu__time_duration.sum --csv --log-file "$work/$shape.ncu.csv" \
    "$bin" analyze --model "$model" --data "$data" --device cuda --vram 8GiB --points ln1,ln2,resid_post \
    --num-samples "${SEQS:-16}" --seq-len 2048 --out "$work/ncu-$shape" --restart --progress none >"$work/$shape.ncu.log" 2>&1
  echo "ncu exit $?"
  python3 "$here/benches/scripts/kernel_summary.py" "$work/$shape.ncu.csv" "$wall"
  # The same layers at BIG sequences, timeline only (hidden states off the device at 8 GiB),
  # with each of BIG_BINS ("name:path ..."; default: BIN) in turn; report.json compared.
  if [ -n "${BIG:-}" ]; then
    [ -f "$work/big.txt" ] || for i in $(seq 30); do cat "$data"; done >"$work/big.txt"
    for entry in ${BIG_BINS:-bin:$bin}; do
      name=${entry%%:*} path=${entry#*:}
      start=$(date +%s%N)
      LAYERSTREAM_TIMELINE=1 "$path" analyze --model "$model" --data "$work/big.txt" --device cuda --vram 8GiB \
        --points ln1,ln2,resid_post --num-samples "$BIG" --seq-len 2048 --out "$work/big-$shape-$name" \
        --restart --progress none >"$work/$shape.big-$name.log" 2>&1
      end=$(date +%s%N)
      echo "== $shape $name: $BIG x 2048, wall $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", (e - s) / 1e9 }') s"
      grep -E "timeline|tokens through" "$work/$shape.big-$name.log" | tail -8
      grep -o '"hidden_placement":[^,]*\|"micro_batch_sequences":[^,]*' "$work/big-$shape-$name/progress.json" | head -3
      first=${first:-$work/big-$shape-$name/report.json}
      cmp "$first" "$work/big-$shape-$name/report.json" && echo "report.json identical to the first binary's"
    done
    unset first
  fi
done
