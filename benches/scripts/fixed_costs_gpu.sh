#!/usr/bin/env bash
# Issue 19's fixed costs on the GPU machine, side by side: BINS_TAR holds `layerstream` (this
# build) and `layerstream-tokseq` (the build before tokenizing on all cores and the parallel
# report). Runs tokenize_speed.sh, then OLMoE-1B-7B-shaped `analyze --vram 8GiB` at 128 x 2048
# (ln1, ln2, resid_post) with both, alternating, printing the timeline marks (tokenized,
# report written) and wall time; report.json must be identical.
#   [COPIES=20] [ROUNDS=2] fixed_costs_gpu.sh BINS_TAR
mkdir -p /tmp/tb && tar xJf "$1" -C /tmp/tb
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib LAYERSTREAM_KERNEL_CACHE=/tmp/kc
nproc
timeout 150 bash benches/scripts/tokenize_speed.sh /tmp/tb/layerstream-tokseq /tmp/tb/layerstream /tmp/tkw "${COPIES:-20}" cuda
(time python3 benches/scripts/make_random_model.py olmoe-1b-7b /tmp/olmoe) 2>&1 | tail -4
for round in $(seq "${ROUNDS:-2}"); do for name in tokseq new; do
  bin=/tmp/tb/layerstream; [ $name = tokseq ] && bin=/tmp/tb/layerstream-tokseq
  /usr/bin/time -f "$name wall %e s" env LAYERSTREAM_TIMELINE=1 $bin analyze --model /tmp/olmoe --data /tmp/tkw/data.txt --num-samples 128 --seq-len 2048 --vram 8GiB --points ln1,ln2,resid_post --out /tmp/ol-$name --restart --progress none > /tmp/ol-$name.txt 2>&1
  echo "round $round $name: $(grep -E 'tokenized|report.json written|report.md' /tmp/ol-$name.txt | tr '\n' ' ')"
  grep -E "report and plots|wall" /tmp/ol-$name.txt
done; done
cmp /tmp/ol-tokseq/report.json /tmp/ol-new/report.json && echo "olmoe report.json identical"
