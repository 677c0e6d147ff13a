#!/usr/bin/env python3
"""nnsight as a peer (issue 19, goal 4), the way an outlier-features pipeline uses it:
`LanguageModel(..., device_map="auto")` and one `.trace()` per batch, saving both layernorm
outputs (ln1 = input_layernorm, ln2 = post_attention_layernorm) of every layer; after each
trace the saved outputs are reduced on the GPU to what layerstream keeps (per layer, point and
dimension the max |x| and the count of |x| >= 6), copied to the host once at the end.

Usage: nnsight_capture.py MODEL_DIR TOKENS_FILE NUM_SAMPLES SEQ_LEN OUT_JSON
         [--batch B] [--max-memory GIB]   (max_memory={0: GIB, "cpu": 100GiB}, offloading)
TOKENS_FILE: (NUM_SAMPLES, SEQ_LEN) little-endian u32, from `layerstream-benches tokens`.
Writes OUT_JSON with the load and trace seconds and a checksum of the statistics (the same
keys as hf_capture.py's, over ln1 and ln2).

On the GPU machine nnsight and the packages it needs that the image lacks travel as wheels
(`nnsight_wheels.sh`).
"""
import argparse
import json
import os
import sys
import time

STARTED = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_capture import Statistics  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("tokens")
    parser.add_argument("num_samples", type=int)
    parser.add_argument("seq_len", type=int)
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--max-memory", default=None, help="GPU memory for offloading, e.g. 8GiB")
    args = parser.parse_args()
    import nnsight
    from nnsight import LanguageModel

    cuda = torch.cuda.is_available()
    ids = np.fromfile(args.tokens, dtype="<u4").reshape(args.num_samples, args.seq_len)
    load_started = time.time()
    kwargs = dict(device_map="auto" if cuda else "cpu", dispatch=True, dtype=torch.bfloat16)
    if args.max_memory and cuda:
        kwargs["max_memory"] = {0: args.max_memory, "cpu": "100GiB"}
    model = LanguageModel(args.model, **kwargs)
    model.eval()
    if cuda:
        torch.cuda.synchronize()
    load_seconds = time.time() - load_started

    layers = model.model.layers
    stats = Statistics()
    trace_started = time.time()
    with torch.no_grad():
        for first in range(0, args.num_samples, args.batch):
            batch = torch.from_numpy(ids[first:first + args.batch].astype(np.int64))
            saved = []
            with model.trace(batch):
                for index, layer in enumerate(layers):
                    saved.append(((index, "ln1"), layer.input_layernorm.output.save()))
                    saved.append(((index, "ln2"), layer.post_attention_layernorm.output.save()))
            for key, value in saved:
                stats.add(key, value)
    if cuda:
        torch.cuda.synchronize()
    trace_seconds = time.time() - trace_started
    result = {
        "tool": "nnsight-offload" if args.max_memory else "nnsight",
        "max_memory": args.max_memory,
        "batch": args.batch,
        "load_seconds": load_seconds,
        "forward_seconds": trace_seconds,
        "seconds_per_sequence": trace_seconds / args.num_samples,
        "in_process_seconds": time.time() - STARTED,
        "torch_peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
        "checksum": stats.checksum(),
        "nnsight": nnsight.__version__,
        "torch": torch.__version__,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
