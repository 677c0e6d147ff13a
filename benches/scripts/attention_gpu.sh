#!/usr/bin/env bash
# The attention kernel's work (issue 19, goal 1) on the GPU machine in one call. BINS_TAR holds
# `layerstream` (this build), optionally `layerstream-base` (the build before) and gpu_* test
# binaries.
#  tests:   every gpu_* test binary in the tar natively, and the attention and f16 ones with a
#           T4's kernels (LAYERSTREAM_KERNEL_ARCH=75).
#  detail:  Nsight Compute's detailed sections for one launch of the bf16 attention kernel on
#           the Llama-3.1-8B cut (16 x 2048): throughput, shared-memory traffic, stalls,
#           registers and occupancy.
#  profile: profile_layers.sh (per-kernel time of the 2-layer cuts, 16 x 2048) with this build.
#  speed:   the cuts at 256 x 2048 with each build in turn (profile_layers.sh's BIG part),
#           report.json compared.
#  scale:   the OLMoE-1B-7B cut to SCALE_LAYERS (6) layers at 256 and 1024 x 2048 with
#           LAYERSTREAM_TIMELINE=sync: where each layer's time goes as the workload grows
#           (micro-batches, statistics download, the layer's files).
#  same:    same_reports.sh, the build before against this one, `--device cuda` (bf16) and
#           `--device cuda --compute-dtype f16`.
#   [PARTS="tests detail profile speed same"] [SHAPES=...] attention_gpu.sh BINS_TAR OUT
set -u
tar=$1 out=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
export LAYERSTREAM_KERNEL_CACHE=/tmp/ls-kc
b=/tmp/ls-attn-bins
mkdir -p "$b" "$out" && tar xJf "$tar" -C "$b"
parts=${PARTS:-tests detail profile speed scale same}
has() { [[ " $parts " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
work=/tmp/ls-attn-work
mkdir -p "$work"
if has tests; then
  for t in $(cd "$b" && ls gpu_* 2>/dev/null); do
    LAYERSTREAM_REQUIRE_GPU=1 LAYERSTREAM_FIXTURES="$here/tests/fixtures" \
      timeout 300 "$b/$t" --test-threads 1 >"$out/$t-native.log" 2>&1
    echo "native $t exit $? $(grep -E '^test result' "$out/$t-native.log" | tail -1)"
  done
  for t in gpu_attention_kernels gpu_f16_kernels gpu_f16_expert_kernels gpu_f16_fidelity; do
    [ -x "$b/$t" ] || continue
    LAYERSTREAM_KERNEL_ARCH=75 LAYERSTREAM_KERNEL_CACHE=/tmp/ls-kc75 LAYERSTREAM_REQUIRE_GPU=1 \
      LAYERSTREAM_FIXTURES="$here/tests/fixtures" timeout 300 "$b/$t" --test-threads 1 >"$out/$t-sm75.log" 2>&1
    echo "sm75 $t exit $? $(grep -E '^test result' "$out/$t-sm75.log" | tail -1)"
  done
fi
data="$here/cli/assets/default-data.txt"
model_for() {  # $1: shape; a 2-layer random-init cut
  local model="$work/$1"
  [ -f "$model/config.json" ] || python3 "$here/benches/scripts/make_random_model.py" "$1" "$model" --layers 2 >/dev/null
  echo "$model"
}
if has speed; then
  bins="new:$b/layerstream"
  [ -x "$b/layerstream-base" ] && bins="base:$b/layerstream-base $bins"
  for shape in ${SHAPES:-llama-3.1-8b olmoe-1b-7b}; do
    model_for "$shape" >/dev/null
  done
  # Startup: process start to the first layer, 16 x 2048 on the OLMoE cut, each build twice.
  for round in 1 2; do
    for entry in $bins; do
      name=${entry%%:*} path=${entry#*:}
      LAYERSTREAM_TIMELINE=1 "$path" analyze --model "$work/olmoe-1b-7b" --data "$data" --device cuda \
        --vram 8GiB --points ln1,ln2,resid_post --num-samples 16 --seq-len 2048 --out "$work/start-$name" \
        --restart --progress none >"$out/start-$name-$round.log" 2>&1
      echo "== startup $name round $round: $(grep -E "timeline" "$out/start-$name-$round.log" |
        grep -E "backend ready|embeddings on|first layer read|layer 1 done" | sed 's/timeline //' | tr '\n' '|')"
    done
  done
  # profile_layers.sh's BIG part alone: its ncu part is skipped by a zero timeout.
  LAYERS=2 SEQS=16 BIG=${BIG:-256} BIG_BINS="$bins" NCU_TIMEOUT=1 SHAPES="${SHAPES:-llama-3.1-8b olmoe-1b-7b}" \
    bash "$here/benches/scripts/profile_layers.sh" "$b/layerstream" "$work" 2>&1 |
    grep -E "^== .*(base|new):|timeline|identical|hidden_placement|micro_batch" | head -60
fi
if has same && [ -x "$b/layerstream-base" ]; then
  timeout 150 bash "$here/benches/scripts/same_reports.sh" "$b/layerstream-base" "$b/layerstream" /tmp/ls-same-bf16 \
    --device cuda 2>&1 | tail -3
  timeout 150 bash "$here/benches/scripts/same_reports.sh" "$b/layerstream-base" "$b/layerstream" /tmp/ls-same-f16 \
    --device cuda --compute-dtype f16 2>&1 | tail -3
fi
if has scale; then
  model="$work/olmoe-scale"
  [ -f "$model/config.json" ] || python3 "$here/benches/scripts/make_random_model.py" olmoe-1b-7b "$model" \
    --layers "${SCALE_LAYERS:-6}" >/dev/null
  [ -f "$work/big.txt" ] || for i in $(seq 30); do cat "$data"; done >"$work/big.txt"
  for n in ${SCALE_SEQS:-256 1024}; do
    start=$(date +%s%N)
    LAYERSTREAM_TIMELINE=sync timeout 400 "$b/layerstream" analyze --model "$model" --data "$work/big.txt" \
      --device cuda --vram 8GiB --points ln1,ln2,resid_post --num-samples "$n" --seq-len 2048 \
      --out "$work/scale-$n" --restart --progress none >"$out/scale-$n.log" 2>&1
    rc=$? end=$(date +%s%N)
    echo "== olmoe ${SCALE_LAYERS:-6} layers, $n x 2048: exit $rc, wall $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", (e - s) / 1e9 }') s"
    grep -E "timeline" "$out/scale-$n.log" | grep -vE "sequences from" | tail -40
    du -sh "$work/scale-$n/layers" 2>/dev/null
  done
fi
if has detail; then
  ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for entry in ${DETAIL_BINS:-layerstream}; do
    model=$(model_for llama-3.1-8b)
    timeout 300 "$ncu" --kernel-name regex:attention_mma --launch-skip 1 --launch-count 1 --set detailed \
      "$b/$entry" analyze --model "$model" --data "$data" --device cuda --vram 8GiB --points ln1,ln2,resid_post \
      --num-samples 16 --seq-len 2048 --out "$work/detail-$entry" --restart --progress none >"$out/detail-$entry.txt" 2>&1
    echo "== ncu detail $entry exit $?"
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Shared Memory Configuration Size|Block Limit|Local Memory|Issue Slots Busy|Executed Ipc A|L1/TEX Hit|Bank" \
      "$out/detail-$entry.txt" | head -30
  done
fi
if has profile; then
  LAYERS=2 SEQS=16 SHAPES="${SHAPES:-llama-3.1-8b olmoe-1b-7b}" NCU_TIMEOUT=240 \
    bash "$here/benches/scripts/profile_layers.sh" "$b/layerstream" "$work" 2>&1 | head -80
fi
