#!/usr/bin/env bash
# Issue 14: what the new statistics cost on the OLMoE-1B-7B-shaped speed check (random-init
# bf16 checkpoint from make_random_model.py, `analyze --vram 8GiB`, 16 x 2048 tokens of the
# embedded text, warm page cache), in one run on the GPU machine:
#   1. wall seconds and the pipeline's "tokens through N layers in S s" with
#      `--points ln1,ln2,resid_post` (the massive-activation magnitudes included) and with
#      `attn_sinks` added, ROUNDS rounds alternating which goes first;
#   2. Nsight Compute durations of the kernels the statistics add (row top three, the
#      median's histogram and pick passes, the sink sums) and of the attention kernel with and
#      without the sinks, summed by kernel_summary.py.
#
#   benches/scripts/analysis_cost.sh BIN WORK_DIR [ROUNDS]
set -uo pipefail
bin=$1 work=$2 rounds=${3:-3}
here=$(cd "$(dirname "$0")/../.." && pwd)
data="$here/cli/assets/default-data.txt"
model="$work/olmoe-1b-7b"
mkdir -p "$work"
[ -f "$model/config.json" ] || python3 "$here/benches/scripts/make_random_model.py" olmoe-1b-7b "$model" >/dev/null
run() { # points, out
    timeout -s KILL 300 "$bin" analyze --model "$model" --data "$data" --device cuda --vram 8GiB \
        --points "$1" --num-samples 16 --seq-len 2048 --bootstrap 0 --out "$2" --restart \
        >"$2.log" 2>&1
}
run ln1,ln2,resid_post "$work/warmup"
for round in $(seq 1 "$rounds"); do
    order="without with"
    [ $((round % 2)) -eq 0 ] && order="with without"
    for side in $order; do
        points=ln1,ln2,resid_post
        [ "$side" = with ] && points=ln1,ln2,resid_post,attn_sinks
        start=$(date +%s%N)
        run "$points" "$work/cost-$side"
        end=$(date +%s%N)
        summary=$(grep -h "tokens through" "$work/cost-$side.log" | tail -1)
        awk -v s="$start" -v e="$end" -v b="$side" -v r="$round" -v l="$summary" \
            'BEGIN { printf "olmoe %s sinks, round %d: %.2f s wall (%s)\n", b, r, (e - s) / 1e9, l }'
    done
done
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
if [ -z "$ncu" ]; then
    echo "no ncu: kernel durations not measured"
    exit 0
fi
kernels='regex:attention|row_top3|magnitude_digit|sink_mass'
for side in without with; do
    points=ln1,ln2,resid_post
    [ "$side" = with ] && points=ln1,ln2,resid_post,attn_sinks
    timeout -s KILL 500 "$ncu" --kernel-name "$kernels" --metrics gpu__time_duration.sum --csv \
        --log-file "$work/ncu-$side.csv" "$bin" analyze --model "$model" --data "$data" \
        --device cuda --vram 8GiB --points "$points" --num-samples 16 --seq-len 2048 \
        --bootstrap 0 --out "$work/ncu-$side" --restart >"$work/ncu-$side.log" 2>&1
    echo "## kernels, $side sinks (ncu exit $?)"
    python3 "$here/benches/scripts/kernel_summary.py" "$work/ncu-$side.csv"
done
