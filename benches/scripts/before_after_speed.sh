#!/usr/bin/env bash
# Speed before and after a change, in one run on the GPU machine: makes the random-init
# OLMoE-1B-7B and Llama-3.1-8B checkpoints (make_random_model.py), then runs
# `analyze --vram 8GiB --points ln1,ln2,resid_post` (16 x 2048 tokens of the embedded text)
# with each binary in turn (alternating which goes first), ROUNDS rounds, warm page cache (one unmeasured warm-up run per
# model first), and compares report.json of the two binaries byte for byte.
#
#   benches/scripts/before_after_speed.sh BEFORE_BIN AFTER_BIN WORK_DIR [ROUNDS]
#
# Prints one line per run (model, binary, round, wall seconds) and the report comparison.
set -euo pipefail
before=$1 after=$2 work=$3 rounds=${4:-2}
here=$(cd "$(dirname "$0")/../.." && pwd)
data="$here/cli/assets/default-data.txt"
mkdir -p "$work"
status=0
for shape in olmoe-1b-7b llama-3.1-8b; do
    model="$work/$shape"
    [ -f "$model/config.json" ] || python3 "$here/benches/scripts/make_random_model.py" "$shape" "$model" >/dev/null
    run() {
        "$1" analyze --model "$model" --data "$data" --device cuda --vram 8GiB \
            --points ln1,ln2,resid_post --num-samples 16 --seq-len 2048 --out "$2" --restart \
            >"$2.log" 2>&1
    }
    run "$before" "$work/warmup"
    for round in $(seq 1 "$rounds"); do
        # Alternate the order (before first in odd rounds), so neither always runs second.
        order="before after"
        [ $((round % 2)) -eq 0 ] && order="after before"
        for side in $order; do
            bin=$before
            [ "$side" = after ] && bin=$after
            start=$(date +%s%N)
            run "$bin" "$work/$shape-$side"
            end=$(date +%s%N)
            summary=$(grep -h "tokens through" "$work/$shape-$side.log" | tail -1)
            awk -v s="$start" -v e="$end" -v m="$shape" -v b="$side" -v r="$round" -v l="$summary" \
                'BEGIN { printf "%s %s round %d: %.2f s wall (%s)\n", m, b, r, (e - s) / 1e9, l }'

        done
    done
    if cmp -s "$work/$shape-before/report.json" "$work/$shape-after/report.json"; then
        echo "$shape: report.json byte-identical before and after"
    else
        echo "$shape: report.json DIFFERS"
        status=1
    fi
done
exit $status
