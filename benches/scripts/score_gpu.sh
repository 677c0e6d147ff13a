#!/usr/bin/env bash
# Issues 22 and 23 on the GPU machine, in few device calls:
#   score_gpu.sh tests BINS_TAR OUT   every gpu_* test binary (the ragged RoPE and attention
#                                     kernels, per-record fidelity on CUDA among them); CUDA
#                                     reports of the embedded default and every fixture
#                                     byte-identical before and after (same_reports.sh, BEFORE
#                                     binary in the tar); per-record scores on CUDA in f32
#                                     against transformers' (tests/fixtures/chat); README's
#                                     PyTorch loader on bf16 activation shards
#   score_gpu.sh bench BINS_TAR OUT   score_bench.py: N prompts of 50-512 tokens through a
#                                     Llama-3.1-8B shape, layerstream at --vram 4GiB beside
#                                     transformers on the GPU (whole model) and on the CPU;
#                                     STAGE=layerstream|transformers runs one side (PROMPTS: an
#                                     earlier stage's prompts.jsonl; EXTRA: layerstream flags)
# BINS_TAR holds layerstream, layerstream-before and the gpu_* test binaries.
set -u
step=$1 tar=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
export LAYERSTREAM_KERNEL_CACHE=/tmp/ls-kernels
bins=/tmp/ls-bins
mkdir -p "$bins" "$out"
[ -x "$bins/layerstream" ] || tar xJf "$tar" -C "$bins"
case $step in
  tests)
    export LAYERSTREAM_REQUIRE_GPU=1 LAYERSTREAM_FIXTURES=$repo/tests/fixtures
    all_tests="gpu_attention_kernels gpu_per_record gpu_kernels gpu_delta_net_kernels
      gpu_analysis_kernels gpu_gpt_oss_kernels gpu_glm_kernels gpu_fidelity"
    for t in ${TESTS:-$all_tests}; do
      timeout 300 "$bins/$t" --test-threads 1 >"$out/$t.log" 2>&1
      echo "$t exit $? $(grep -E '^test result' "$out/$t.log" | tail -1)"
    done
    chat=$repo/tests/fixtures/chat
    for fixture in llama3 qwen3_moe gpt_oss qwen3_next; do
      "$bins/layerstream" score --per-record --model "$repo/tests/fixtures/$fixture/model" \
        --data "$chat/plain.jsonl" --prompt-field prompt --completion-field completion \
        --chat-template none --top-logprobs 3 --device cuda --compute-dtype f32 \
        --micro-batch-tokens 96 --out "/tmp/ls-score-$fixture" --progress none >/dev/null 2>>"$out/score.log"
      python3 - "$chat/reference.json" "$fixture" "/tmp/ls-score-$fixture/scores.jsonl" <<'EOF'
import json, sys
reference = json.load(open(sys.argv[1]))[sys.argv[2]]["plain"]
got = [json.loads(line) for line in open(sys.argv[3])]
worst = max(abs(g["mean_nll"] - w["mean_nll"]) / abs(w["mean_nll"]) for g, w in zip(got, reference))
tokens = all(g["tokens"] == w["tokens"] and g["scored_tokens"] == w["scored_tokens"] for g, w in zip(got, reference))
top = max(abs(a["logprob"] - b["logprob"]) for g, w in zip(got, reference)
          for a, b in zip(g["top_logprobs"], w["top_logprobs"]))
print(f"cuda per-record {sys.argv[2]}: tokens equal {tokens}, worst relative mean-NLL difference {worst:.2e}, worst top-k log-probability difference {top:.2e}")
EOF
    done
    for dtype in f32 bf16; do
      extra=()
      [ $dtype = bf16 ] && extra=(--activation-dtype bf16 --shard-bytes 100KiB)
      "$bins/layerstream" analyze --device cuda --num-samples 4 --seq-len 512 --layers 0-1 \
        --save-activations resid_post "${extra[@]}" --out "/tmp/ls-act-$dtype" --progress none \
        >/dev/null 2>>"$out/activations.log"
    done
    python3 "$here/check_activation_loader.py" "$repo/README.md" /tmp/ls-act-bf16 /tmp/ls-act-f32 1 resid_post
    echo "loader exit $?"
    [ "${SAME_TIMEOUT:-200}" -gt 0 ] && timeout "${SAME_TIMEOUT:-200}" bash "$here/same_reports.sh" "$bins/layerstream-before" \
      "$bins/layerstream" /tmp/ls-same --device cuda >"$out/same_reports.log" 2>&1
    echo "same_reports (cuda) exit $?: $(grep -c '^same' "$out/same_reports.log") same, $(grep -c -E '^(DIFFERS|FAILED)' "$out/same_reports.log") differ or failed"
    ;;
  bench)
    model=/tmp/ls-work/llama-3.1-8b
    mkdir -p /tmp/ls-work
    [ -f "$model/config.json" ] || python3 "$here/make_random_model.py" llama-3.1-8b "$model" 2>&1 | tail -1
    prompts=()
    [ -n "${PROMPTS:-}" ] && prompts=(--prompts "$PROMPTS")
    python3 "$here/score_bench.py" "$bins/layerstream" "$model" "$out" --records "${RECORDS:-10000}" \
      --vram 4GiB --cpu-records "${CPU_RECORDS:-8}" --stage "${STAGE:-all}" "${prompts[@]}" \
      --gpu-batches "${GPU_BATCHES:-16,64}" --extra "${EXTRA:-}" 2>&1 | tail -40
    ;;
esac
