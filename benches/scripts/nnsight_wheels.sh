#!/usr/bin/env bash
# Wheels of nnsight and the packages it needs that the GPU machine's image (Python 3.12,
# torch 2.11, transformers 5.17, accelerate) lacks, into DIR (default .whl, ignored by git),
# for `compare_tools.py --tools ...,nnsight,nnsight-offload` there. On the GPU machine, first:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -eu
dir=${1:-.whl}
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" \
  nnsight==0.8.1 greenlet==3.5.6 zstandard==0.25.0 websocket-client==1.9.2 cloudpickle==2.1.0 \
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
