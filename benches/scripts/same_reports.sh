#!/usr/bin/env bash
# Refactors change no result: runs the same analyses with two layerstream binaries and
# compares their report.json byte for byte (cmp). Cases: the embedded default, and every
# fixture under tests/fixtures with the default settings and with a low threshold and one
# sequence per micro-batch (more outlier values, more micro-batches).
#
#   benches/scripts/same_reports.sh BEFORE_BIN AFTER_BIN WORK_DIR [extra analyze flags...]
#
# Extra flags (e.g. `--device cuda`) go to every run. Exit 1 when any pair differs.
set -euo pipefail
before=$1 after=$2 work=$3
shift 3
here=$(cd "$(dirname "$0")/../.." && pwd)
fixtures="$here/tests/fixtures"
mkdir -p "$work"
differ=0 same=0

run_pair() {
    local name=$1
    shift
    for side in before after; do
        local bin=$before
        [ "$side" = after ] && bin=$after
        rm -rf "$work/$side/$name"
        "$bin" analyze "$@" "${extra[@]}" --out "$work/$side/$name" >"$work/$side-$name.log" 2>&1 || {
            echo "FAILED $side $name (see $work/$side-$name.log)"
            tail -5 "$work/$side-$name.log"
            differ=$((differ + 1))
            return
        }
    done
    if cmp -s "$work/before/$name/report.json" "$work/after/$name/report.json"; then
        echo "same    $name"
        same=$((same + 1))
    else
        echo "DIFFERS $name"
        differ=$((differ + 1))
    fi
}

extra=("$@")
mkdir -p "$work/before" "$work/after"
run_pair default
run_pair default-small --num-samples 4 --seq-len 256 --threshold 2 --micro-batch-tokens 256
for dir in "$fixtures"/*/model; do
    fixture=$(basename "$(dirname "$dir")")
    run_pair "$fixture" --model "$dir" --num-samples 4 --seq-len 64
    run_pair "$fixture-low" --model "$dir" --num-samples 4 --seq-len 64 --threshold 0.5 \
        --micro-batch-tokens 64
done
echo "$same same, $differ differ"
[ "$differ" -eq 0 ]
