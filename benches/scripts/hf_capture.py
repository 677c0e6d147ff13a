#!/usr/bin/env python3
"""The peer side of the speed comparison: HF transformers with forward hooks on both
layernorms and on every decoder layer's output (ln1, ln2, resid_post), one sequence per
forward call, the way hook-based analyses run. The hooks keep what layerstream's statistics
keep, on the GPU: per dimension the max |x| and the count of |x| >= 6, and per token the max
|x| of resid_post (massive activations); they are copied to the host once at the end.

Usage: hf_capture.py MODEL_DIR TOKENS_FILE NUM_SAMPLES SEQ_LEN OUT_JSON
         [--offload GIB]   accelerate: device_map="auto", max_memory={0: GIB, "cpu": 100GiB}
TOKENS_FILE: (NUM_SAMPLES, SEQ_LEN) little-endian u32, from `layerstream-benches tokens`.
Writes OUT_JSON with the load and forward seconds and a checksum of the statistics.
"""
import argparse
import json
import os
import sys
import time

STARTED = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

THRESHOLD = 6.0


class Statistics:
    """Per capture point of every layer: max |x| per dim, count >= threshold per dim."""

    def __init__(self):
        self.max_abs = {}
        self.count_ge = {}
        self.row_max = []

    def add(self, key, x):
        x = x.detach().float().reshape(-1, x.shape[-1]).abs()
        m = x.amax(dim=0)
        c = (x >= THRESHOLD).sum(dim=0)
        if key in self.max_abs:
            torch.maximum(self.max_abs[key], m, out=self.max_abs[key])
            self.count_ge[key] += c
        else:
            self.max_abs[key] = m
            self.count_ge[key] = c
        if key[1] == "resid_post":
            self.row_max.append(x.amax(dim=1))

    def checksum(self):
        total = sum(float(v.sum()) for v in self.max_abs.values())
        count = sum(int(v.sum()) for v in self.count_ge.values())
        return {"sum_of_max_abs": total, "count_ge_threshold": count, "points": len(self.max_abs)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("tokens")
    parser.add_argument("num_samples", type=int)
    parser.add_argument("seq_len", type=int)
    parser.add_argument("out")
    parser.add_argument("--offload", default=None, help="GPU memory for accelerate, e.g. 8GiB")
    parser.add_argument("--batch", type=int, default=1, help="sequences per forward call")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ids = np.fromfile(args.tokens, dtype="<u4").reshape(args.num_samples, args.seq_len)

    load_started = time.time()
    if args.offload:
        kwargs = dict(device_map="auto", max_memory={0: args.offload, "cpu": "100GiB"})
    else:
        kwargs = dict(device_map=device)
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    method = config.get("quantization_config", {}).get("quant_method")
    if method == "mxfp4":
        # What a user without the hub's triton kernels gets: experts dequantized to bf16.
        kwargs["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
    if method == "fp8":
        # transformers' FP8 matmuls come from the hub's `kernels-community/finegrained-fp8`,
        # which cannot be fetched here (nor on an offline cluster): dequantized to bf16 at load.
        kwargs["quantization_config"] = transformers.FineGrainedFP8Config(
            dequantize=True, weight_block_size=tuple(config["quantization_config"]["weight_block_size"]))
    experts_implementation = None
    if any(k in config for k in ("num_local_experts", "num_experts", "n_routed_experts")):
        experts_implementation = "grouped_mm"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.model, dtype=torch.bfloat16, experts_implementation=experts_implementation, **kwargs)
    except (TypeError, ValueError) as error:
        print(f"experts_implementation={experts_implementation} refused ({error}); default", file=sys.stderr)
        experts_implementation = None
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, **kwargs)
    model.eval()
    if device == "cuda":
        torch.cuda.synchronize()
    load_seconds = time.time() - load_started

    stats = Statistics()
    layers = model.model.layers
    for index, layer in enumerate(layers):
        layer.input_layernorm.register_forward_hook(lambda m, i, o, k=(index, "ln1"): stats.add(k, o))
        layer.post_attention_layernorm.register_forward_hook(lambda m, i, o, k=(index, "ln2"): stats.add(k, o))
        layer.register_forward_hook(
            lambda m, i, o, k=(index, "resid_post"): stats.add(k, o[0] if isinstance(o, tuple) else o))

    first_device = "cuda" if device == "cuda" else "cpu"
    forward_started = time.time()
    with torch.no_grad():
        for first in range(0, args.num_samples, args.batch):
            rows = ids[first:first + args.batch]
            input_ids = torch.from_numpy(rows.astype(np.int64)).to(first_device)
            # Only the hidden states are needed: stop before the LM head (every peer hooks
            # the layers; the logits are not part of the analysis).
            model.model(input_ids=input_ids, use_cache=False)
    if device == "cuda":
        torch.cuda.synchronize()
    forward_seconds = time.time() - forward_started
    checksum = stats.checksum()
    result = {
        "tool": "accelerate" if args.offload else "transformers",
        "offload": args.offload,
        "batch": args.batch,
        "load_seconds": load_seconds,
        "forward_seconds": forward_seconds,
        "seconds_per_sequence": forward_seconds / args.num_samples,
        "in_process_seconds": time.time() - STARTED,
        "torch_peak_allocated_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else 0,
        "checksum": checksum,
        "experts_implementation": experts_implementation,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
