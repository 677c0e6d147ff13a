#!/usr/bin/env bash
# Compiles every CUDA kernel module for sm_75, sm_80 and sm_90 with NVRTC, on a machine with no
# GPU: libnvrtc comes from NVIDIA's PyPI wheel (nvidia-cuda-nvrtc, CUDA 13), unpacked under
# target/ and found through LD_LIBRARY_PATH for this one test only.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/nvrtc
if [ ! -e "$dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  rm -rf "$dir" && mkdir -p "$dir/wheel"
  python3 -m pip download --no-deps --quiet --disable-pip-version-check \
    "nvidia-cuda-nvrtc>=13,<14" -d "$dir/wheel"
  python3 -m zipfile -e "$dir"/wheel/*.whl "$dir"
fi
LD_LIBRARY_PATH="$PWD/$dir/nvidia/cu13/lib" LAYERSTREAM_REQUIRE_GPU=1 \
  cargo test -p layerstream-kernels --test nvrtc_compile
