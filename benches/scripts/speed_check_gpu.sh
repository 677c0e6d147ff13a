#!/usr/bin/env bash
# Issue 19's checks on the GPU machine in one call. BINS_TAR holds `layerstream` (this build),
# `layerstream-base` (the build before) and gpu_* test binaries. Runs the test binaries
# (LAYERSTREAM_REQUIRE_GPU=1), CUDA reports of every fixture before and after
# (same_reports.sh --device cuda), then profile_layers.sh: Nsight Compute per-kernel totals of
# this build at SEQS x 2048 and BIG x 2048 wall times of both builds, report.json compared.
#   [TESTS="gpu_kernels ..."] [SEQS=16] [BIG=256] [LAYERS=2] speed_check_gpu.sh BINS_TAR OUT
set -u
tar=$1 out=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib LAYERSTREAM_KERNEL_CACHE=/tmp/ls-kc
b=/tmp/ls-bins
mkdir -p "$b" "$out" && tar xJf "$tar" -C "$b"
nvidia-smi --query-gpu=name --format=csv,noheader
for t in ${TESTS:-$(cd "$b" && ls gpu_* 2>/dev/null)}; do
  LAYERSTREAM_REQUIRE_GPU=1 LAYERSTREAM_FIXTURES=$here/tests/fixtures timeout 200 "$b/$t" --test-threads 1 >"$out/$t.log" 2>&1
  echo "$t exit $? $(grep -E '^test result' "$out/$t.log" | tail -1)"
done
timeout "${SAME_TIMEOUT:-150}" bash "$here/benches/scripts/same_reports.sh" "$b/layerstream-base" "$b/layerstream" /tmp/ls-same --device cuda \
  >"$out/same_reports.log" 2>&1
echo "same_reports (cuda) exit $?: $(tail -1 "$out/same_reports.log")"
BIG=${BIG:-256} BIG_BINS="base:$b/layerstream-base new:$b/layerstream" LAYERS=${LAYERS:-2} SEQS=${SEQS:-16} \
  NCU_TIMEOUT=${NCU_TIMEOUT:-100} timeout "${PROFILE_TIMEOUT:-330}" bash "$here/benches/scripts/profile_layers.sh" \
  "$b/layerstream" /tmp/ls-prof >"$out/profile.txt" 2>&1
echo "profile exit $?"
tar czf "$out/prof.tgz" /tmp/ls-prof/*.csv /tmp/ls-prof/*.log /tmp/ls-prof/big-*/progress.json 2>/dev/null
