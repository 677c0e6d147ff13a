#!/usr/bin/env bash
# Issue 15's checks on the CUDA backend, on the GPU machine:
#   1. a NaN weight: the CUDA run reports the same non_finite places as the CPU run and warns;
#   2. SIGTERM during a CUDA run (random-init OLMoE-1B-7B shape, 16 x 2048): exit 143, the
#      same command continues, report.json identical to an uninterrupted run's;
#   3. two CUDA runs started together into one folder: one is refused by the lock;
#   4. the model file cut during a CUDA run (checked and unchecked): the error names it, the
#      same command continues after the file is back, report.json identical.
#
#   benches/scripts/gpu_reliability.sh BIN WORK_DIR
#
# Prints one line per check, "ok" or "FAILED: why"; exits 1 if any failed.
set -uo pipefail
bin=$1 work=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
fixtures="$here/tests/fixtures"
data="$fixtures/data/docs.jsonl"
small="--num-samples 2 --seq-len 32 --bootstrap 10"
mkdir -p "$work"
failed=0
# Every run but the signalled one ends within 5 minutes or is killed (a hang fails its check).
run() { timeout -s KILL 300 "$bin" "$@"; }
check() { # name, condition result (0 ok), detail
    if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAILED: $1: $3"; failed=1; fi
}

# 1. NaN weight, CUDA against CPU.
nan_model="$work/nan-llama3"
rm -rf "$nan_model" && cp -r "$fixtures/llama3/model" "$nan_model"
python3 - "$nan_model/model.safetensors" <<'EOF'
import sys, torch
from safetensors.torch import load_file, save_file
path = sys.argv[1]
tensors = load_file(path)
tensors["model.layers.1.post_attention_layernorm.weight"][0] = float("nan")
save_file(tensors, path, metadata={"format": "pt"})
EOF
for device in cpu cuda; do
    run analyze --model "$nan_model" --data "$data" $small --device "$device" \
        --out "$work/nan-$device" --restart >"$work/nan-$device.out" 2>"$work/nan-$device.err"
done
python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
cpu = json.load(open(f"{work}/nan-cpu/report.json"))["non_finite"]
cuda = json.load(open(f"{work}/nan-cuda/report.json"))["non_finite"]
places = lambda r: [(p["layer"], p["point"], p["count"]) for p in r["places"]]
print("cpu ", places(cpu)[:4], cpu["total"])
print("cuda", places(cuda)[:4], cuda["total"])
sys.exit(0 if places(cpu) == places(cuda) and cuda["places"][0]["layer"] == 1 else 1)
EOF
check "NaN places on CUDA equal the CPU's" $? "see above"
grep -q "warning: .*first at layer 1 ln2" "$work/nan-cuda.err"
check "CUDA run warns about NaN" $? "$(tail -2 "$work/nan-cuda.err")"
grep -q "NaN/Inf" "$work/nan-cuda.out"
check "CUDA table shows NaN/Inf" $? "$(head -20 "$work/nan-cuda.out")"

# 2. SIGTERM during a CUDA run.
olmoe="$work/olmoe-1b-7b"
[ -f "$olmoe/config.json" ] || python3 "$here/benches/scripts/make_random_model.py" olmoe-1b-7b "$olmoe" >/dev/null
big="--model $olmoe --data $here/cli/assets/default-data.txt --device cuda --vram 8GiB --num-samples 16 --seq-len 2048 --checkpoint-every 0 --bootstrap 10"
run analyze $big --out "$work/sig-reference" --restart >/dev/null 2>"$work/sig-reference.err"
check "uninterrupted OLMoE run" $? "$(tail -2 "$work/sig-reference.err")"
rm -rf "$work/sig"
"$bin" analyze $big --out "$work/sig" >/dev/null 2>"$work/sig.err" &
pid=$!
layers() { python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['layers']))" "$work/sig/progress.json" 2>/dev/null || echo 0; }
for _ in $(seq 1 600); do [ "$(layers)" -ge 1 ] && break; sleep 0.05; done
kill -TERM $pid
# A run that does not stop within 60 s hangs: killed, and the check fails.
( sleep 60; kill -KILL $pid 2>/dev/null ) &
watchdog=$!
wait $pid
rc=$?
kill $watchdog 2>/dev/null
kept=$(layers)
echo "SIGTERM: exit $rc, $kept layers kept; $(grep stopped "$work/sig.err")"
[ $rc -eq 143 ] && [ "$kept" -ge 1 ] && [ "$kept" -lt 16 ]
check "SIGTERM stops the CUDA run with 143 keeping finished layers" $? "exit $rc, kept $kept"
run analyze $big --out "$work/sig" >/dev/null 2>"$work/sig-again.err"
cmp -s "$work/sig/report.json" "$work/sig-reference/report.json"
check "resumed after SIGTERM: report.json identical" $? "$(tail -2 "$work/sig-again.err")"

# 3. Two CUDA runs at once into one folder.
rm -rf "$work/together"
run analyze --model "$fixtures/llama3/model" --data "$data" $small --device cuda --out "$work/together" >/dev/null 2>"$work/together-a.err" &
a=$!
run analyze --model "$fixtures/llama3/model" --data "$data" $small --device cuda --out "$work/together" --threshold 3 >/dev/null 2>"$work/together-b.err" &
b=$!
wait $a; ra=$?
wait $b; rb=$?
echo "together: exits $ra and $rb; $(cat "$work/together-a.err" "$work/together-b.err" | grep -h "in use\|differs" | head -1)"
[ $((ra == 0 ? 1 : 0)) -ne $((rb == 0 ? 1 : 0)) ] && cat "$work/together-a.err" "$work/together-b.err" | grep -q "in use by another layerstream run\|differs"
check "two CUDA runs in one folder: exactly one proceeds" $? "exits $ra $rb"

# 4. Model file cut during a CUDA run.
cut_model="$work/cut-llama3"
rm -rf "$cut_model" && cp -r "$fixtures/llama3/model" "$cut_model"
run analyze --model "$cut_model" --data "$data" $small --device cuda --checkpoint-every 0 --out "$work/cut-reference" --restart >/dev/null 2>&1
for fault in 2 2:unchecked; do
    out="$work/cut-${fault/:/-}"
    rm -rf "$out"
    LAYERSTREAM_FAULT_TRUNCATE=$fault run analyze --model "$cut_model" --data "$data" $small --device cuda --checkpoint-every 0 --out "$out" >/dev/null 2>"$out.err"
    rc=$?
    echo "cut at $fault: exit $rc: $(grep -h "model.safetensors" "$out.err" | head -1)"
    if [ $rc -eq 0 ] && [ "$fault" = 2:unchecked ]; then
        # The reader thread reads up to two layers ahead with pread (no mapping): it can
        # have read the cut layer before the cut. Then the run is right, not silently wrong.
        cmp -s "$out/report.json" "$work/cut-reference/report.json"
        check "model cut ($fault) on CUDA after the reader had the layer: report identical" $? "differs"
    else
        [ $rc -eq 1 ] && grep -q "model.safetensors" "$out.err"
        check "model cut ($fault) on CUDA: exit 1 naming the file" $? "exit $rc"
    fi
    cp "$fixtures/llama3/model/model.safetensors" "$cut_model/model.safetensors"
    run analyze --model "$cut_model" --data "$data" $small --device cuda --checkpoint-every 0 --out "$out" >/dev/null 2>"$out-again.err"
    cmp -s "$out/report.json" "$work/cut-reference/report.json"
    check "model cut ($fault): resumed report identical" $? "$(tail -2 "$out-again.err")"
done
exit $failed
