#!/usr/bin/env python3
"""How far the DeltaNet layers' attn_in_o of each computation is from the exact value: the
fixture run by transformers in float64 (the exact reference), transformers in float32 (its
chunked form: the committed reference), layerstream's CPU (the recurrent form, f32) and CUDA
in f32 (the chunked form on f32 GEMMs). The gated RMSNorm divides each value head's output by
its RMS, so where that RMS is small, rounding in the delta rule grows by 1/RMS: this prints,
per DeltaNet layer, the largest error of each computation relative to the point's max |x|,
and the element worst for CUDA with the RMS of its head before the norm.

Usage: delta_net_precision.py LAYERSTREAM FIXTURE_DIR DOCS   (on the GPU machine)
"""
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors import safe_open

layerstream, fixture, docs = sys.argv[1:4]
reference = safe_open(os.path.join(fixture, "reference.safetensors"), "pt")
input_ids = reference.get_tensor("input_ids")
sequences, seq_len = input_ids.shape
def capture(dtype, device):
    """attn_in_o of every DeltaNet layer and the RMS of each head before the gated norm."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(fixture, "model"), dtype=dtype, attn_implementation="eager",
        experts_implementation="eager", device_map=device).eval()
    values, rms = {}, {}
    for i, layer in enumerate(model.model.layers):
        if not hasattr(layer, "linear_attn"):
            continue
        attn = layer.linear_attn
        attn.out_proj.register_forward_pre_hook(
            lambda m, args, i=i: values.__setitem__(i, args[0].detach().double().cpu().reshape(sequences * seq_len, -1)))
        # (rows * heads, head_dim): the delta rule's output per head
        attn.norm.register_forward_pre_hook(lambda m, args, i=i: rms.__setitem__(
            i, args[0].detach().double().cpu().pow(2).mean(-1).sqrt().reshape(sequences * seq_len, -1)))
    with torch.no_grad():
        model.model(input_ids=input_ids.to(device))
    return values, rms, model.config


exact, core_rms, config = capture(torch.float64, "cpu")
# transformers in bf16 on the GPU (its PyTorch fallbacks of the conv and the chunked rule).
hf_bf16, _, _ = capture(torch.bfloat16, "cuda")
runs = {}
with tempfile.TemporaryDirectory() as work:
    for device, compute in (("cpu", "f32"), ("cuda", "f32"), ("cuda", "bf16")):
        out = os.path.join(work, device + compute)
        subprocess.run([layerstream, "analyze", "--model", os.path.join(fixture, "model"), "--data", docs,
                        "--num-samples", str(sequences), "--seq-len", str(seq_len), "--device", device,
                        "--compute-dtype", compute, "--points", "attn_in_o", "--save-activations", "attn_in_o",
                        "--out", out], check=True, capture_output=True)
        runs[device if compute == "f32" else "cuda bf16"] = {i: safe_open(os.path.join(out, "activations", f"layer_{i}_attn_in_o.safetensors"), "pt")
                        .get_tensor("activations").double().reshape(sequences * seq_len, -1) for i in exact}
for i, want in exact.items():
    scale = want.abs().max().item()
    torch32 = reference.get_tensor(f"blocks.{i}.attn_in_o").double().reshape(want.shape)
    line = [f"layer {i}: max |x| {scale:.3f}; largest error / max |x|:"]
    for name, got in (("transformers f32", torch32), ("layerstream cpu", runs["cpu"][i]),
                      ("layerstream cuda f32", runs["cuda"][i]), ("transformers bf16", hf_bf16[i]),
                      ("layerstream cuda bf16", runs["cuda bf16"][i])):
        line.append(f"{name} {(got - want).abs().max().item() / scale:.2e}")
    print(" ".join(line))
    error = (runs["cuda"][i] - want).abs()
    flat = error.argmax().item()
    row, col = divmod(flat, want.shape[1])
    head_dim = config.linear_value_head_dim
    rms = core_rms[i][row, col // head_dim].item()
    print(f"  cuda's worst element {flat} (token {row}, value head {col // head_dim}): exact {want[row, col].item():.6f}, "
          f"cuda {runs['cuda'][i][row, col].item():.6f}, transformers f32 {torch32[row, col].item():.6f}; "
          f"the head's RMS before the norm {rms:.2e} (median over heads and tokens {core_rms[i].median().item():.2e})")
