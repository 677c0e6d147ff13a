#!/usr/bin/env bash
# Issue 19's measurements not yet taken, in one GPU call. BINS_TAR holds `layerstream` (this
# build), `layerstream-base` (the build before) and `layerstream-benches`.
#  1. Goal 5: f16 against f32 with a T4's kernels on a GEMM-bound shape (f16_check_gpu.sh's
#     speed part, SPEED_SHAPES), and the fixtures FIXTURES with bf16, f16 and f32.
#  2. Goal 2: tokenizing on all cores (tokenize_speed.sh, base against this build, COPIES
#     copies of the embedded text), then the full OLMoE-1B-7B at 16 x 2048 (twice) and
#     128 x 2048 with the timeline (startup, tokenizing, report and plots).
#  3. Goal 3: the scale curve's 1024 point, layerstream and transformers (grouped_mm, SDPA,
#     batch HF_BATCH) on the same checkpoint (compare_tools.py).
#  4. Goal 1: QWEN (a cut of Qwen3-30B-A3B) at QWEN_SEQS x 2048, both tools.
#   [SPEED_SHAPES=llama-3.1-8b] [FIXTURES=qwen3_next] [COPIES=60] [HF_BATCH=8]
#   [QWEN=qwen3-30b-a3b:8] [QWEN_SEQS=256] [PARTS="f16 fixed scale qwen"] remaining_gpu.sh BINS_TAR OUT
set -u
tar=$1 out=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib LAYERSTREAM_KERNEL_CACHE=/tmp/ls-kc
b=/tmp/ls-remaining-bins
mkdir -p "$b" "$out" && tar xJf "$tar" -C "$b"
parts=${PARTS:-f16 fixed scale qwen}
has() { [[ " $parts " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name --format=csv,noheader
nproc
if has f16; then
  PARTS="fixtures speed" FIXTURES=${FIXTURES:-qwen3_next} SHAPES=${SPEED_SHAPES:-llama-3.1-8b} \
    bash "$here/benches/scripts/f16_check_gpu.sh" "$tar" "$out/f16" 2>&1 | grep -v "Writing model shards"
fi
data=/tmp/ls-remaining-data.txt
python3 -c "import sys, pathlib; print(pathlib.Path(sys.argv[1]).read_text() * 30)" "$here/cli/assets/default-data.txt" >"$data"
olmoe=/tmp/olmoe-full
if has fixed; then
  timeout 200 bash "$here/benches/scripts/tokenize_speed.sh" "$b/layerstream-base" "$b/layerstream" /tmp/tkw \
    "${COPIES:-60}" cuda 2>&1 | tee "$out/tokenize.txt"
fi
if has fixed || has scale; then
  [ -f "$olmoe/config.json" ] || python3 "$here/benches/scripts/make_random_model.py" olmoe-1b-7b "$olmoe" 2>&1 |
    grep -v "Writing model shards"
fi
if has fixed; then
  for n in 16 16 128; do
    log=$out/olmoe-$n.log
    /usr/bin/time -f "wall %e s" env LAYERSTREAM_TIMELINE=1 "$b/layerstream" analyze --model "$olmoe" --data "$data" \
      --num-samples $n --seq-len 2048 --vram 8GiB --points ln1,ln2,resid_post --device cuda \
      --out /tmp/olmoe-out-$n --restart --progress none >"$log" 2>&1
    echo "== OLMoE-1B-7B $n x 2048: $(grep -E '^wall' "$log")"
    grep -E "tokenized|backend ready|embeddings on|first layer read|layer 0: weights ready|layer 15 done|report.json written|report.md|tokens through" "$log"
  done
fi
if has scale; then
  timeout 330 python3 "$here/benches/scripts/compare_tools.py" run --layerstream "$b/layerstream" \
    --benches "$b/layerstream-benches" --work /tmp/ct --out "$out/scale-1024" --workload "$olmoe" \
    --tools layerstream,transformers --data "$data" --num-samples 1024 --hf-batch "${HF_BATCH:-8}" 2>&1 |
    grep -E "^\[" | tail -6
fi
if has qwen; then
  timeout 330 python3 "$here/benches/scripts/compare_tools.py" run --layerstream "$b/layerstream" \
    --benches "$b/layerstream-benches" --work /tmp/ctq --out "$out/qwen" --workload "${QWEN:-qwen3-30b-a3b:8}" \
    --tools layerstream,transformers --data "$data" --num-samples "${QWEN_SEQS:-256}" \
    --hf-batch "${HF_BATCH:-8}" 2>&1 | grep -E "^\[" | tail -6
fi
