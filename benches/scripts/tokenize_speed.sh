#!/usr/bin/env bash
# Tokenizing speed (issue 19, goal 2), side by side: BEFORE and AFTER binaries pack the same
# data for `analyze` with the embedded default model's tokenizer, and the seconds between
# "model opened" and "workload tokenized and packed" (LAYERSTREAM_TIMELINE) are reported
# with the text's megabytes per second. Two data shapes: one .txt document of COPIES copies
# of the default text, and a .jsonl of its paragraphs (many documents). The workload takes
# about 90% of the data's tokens; report.json must be byte-identical between the binaries.
#   tokenize_speed.sh BEFORE AFTER WORK [COPIES] [DEVICE]
set -u
before=$1 after=$2 work=$3 copies=${4:-60} device=${5:-cpu}
here=$(cd "$(dirname "$0")" && pwd)
text=$here/../../cli/assets/default-data.txt
mkdir -p "$work"
for i in $(seq "$copies"); do cat "$text"; done >"$work/data.txt"
python3 - "$work/data.txt" "$work/data.jsonl" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
with open(sys.argv[2], "w") as f:
    for p in text.split("\n\n"):
        if p.strip():
            f.write(json.dumps({"text": p}) + "\n")
PY
for data in data.txt data.jsonl; do
  total=$("$after" analyze --device cpu --data "$work/$data" --num-samples 10000000 --seq-len 2048 \
    --out "$work/probe" --restart --progress none 2>&1 | sed -n 's/.*gave \([0-9]*\) tokens.*/\1/p')
  samples=$((total * 9 / 10 / 2048))
  bytes=$(stat -c %s "$work/$data")
  for round in 1 2; do
    for name in before after; do
      bin=$before; [ $name = after ] && bin=$after
      out="$work/out-$name-$data"
      LAYERSTREAM_TIMELINE=1 "$bin" analyze --device "$device" --data "$work/$data" \
        --num-samples "$samples" --seq-len 2048 --layers 0 --points ln1 --bootstrap 0 \
        --out "$out" --restart --progress none >/dev/null 2>"$work/log-$name"
      python3 - "$work/log-$name" "$name" "$data" "$bytes" "$total" "$samples" "$round" <<'PY'
import re, sys
log, name, data, size, total, samples, round_ = sys.argv[1:]
marks = {m.group(2): float(m.group(1)) for m in re.finditer(r"timeline \+([0-9.]+) s  (.*)", open(log).read())}
seconds = marks["workload tokenized and packed"] - marks["model opened (headers checked)"]
used = int(size) * int(samples) * 2048 / int(total)
print(f"round {round_} {name:6s} {data:10s} {int(samples)} x 2048 tokens: tokenized in {seconds:.3f} s, {used / seconds / 1e6:.1f} MB of text per second")
PY
    done
  done
  cmp -s "$work/out-before-$data/report.json" "$work/out-after-$data/report.json" \
    && echo "$data: report.json identical" || echo "$data: report.json DIFFERS"
done
