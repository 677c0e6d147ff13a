#!/usr/bin/env python3
"""Makes a random GPT-OSS checkpoint laid out as the hub ships it, for the GPU benchmarks
(no model hub is reachable there): bf16 attention (with biases and sinks), router and
embeddings; routed experts as MXFP4 blocks [E, rows, cols / 32, 16] U8 and E8M0 scales
[E, rows, cols / 32] U8 with bf16 biases; one safetensors shard per layer and an index.
The values are random (bf16 normal * 0.02; E2M1 codes uniform, scales 2^-11..2^-8), written
straight to disk without building the model, so a 13 GB GPT-OSS-20B takes seconds.

Usage: make_gpt_oss_mxfp4.py SHAPE OUT_DIR [--layers N]
  SHAPE: gpt-oss-20b | gpt-oss-120b
The tokenizer is copied from a test fixture (a tiny byte-level BPE; its ids fit the
vocabulary).
"""
import argparse
import json
import os
import shutil
import time

import torch
from safetensors.torch import save_file

SHAPES = {
    "gpt-oss-20b": dict(num_hidden_layers=24, num_local_experts=32),
    "gpt-oss-120b": dict(num_hidden_layers=36, num_local_experts=128),
}
COMMON = dict(
    hidden_size=2880, intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8,
    head_dim=64, vocab_size=201088, num_experts_per_tok=4, sliding_window=128,
    max_position_embeddings=131072, rms_norm_eps=1e-5, swiglu_limit=7.0, attention_bias=True,
    tie_word_embeddings=False, hidden_act="silu", model_type="gpt_oss",
    architectures=["GptOssForCausalLM"], bos_token_id=0, eos_token_id=1, pad_token_id=2,
    rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0,
                         beta_slow=1.0, original_max_position_embeddings=4096, truncate=False),
    quantization_config=dict(quant_method="mxfp4", modules_to_not_convert=[
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]),
)


def normal(generator, *shape):
    return (torch.randn(*shape, generator=generator, device=generator.device) * 0.02).to(torch.bfloat16).cpu()


def layer_tensors(config, layer, generator):
    h, i, e = config["hidden_size"], config["intermediate_size"], config["num_local_experts"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    dev = generator.device
    p = f"model.layers.{layer}."
    t = {
        p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        p + "self_attn.q_proj.weight": normal(generator, q, h),
        p + "self_attn.q_proj.bias": normal(generator, q),
        p + "self_attn.k_proj.weight": normal(generator, kv, h),
        p + "self_attn.k_proj.bias": normal(generator, kv),
        p + "self_attn.v_proj.weight": normal(generator, kv, h),
        p + "self_attn.v_proj.bias": normal(generator, kv),
        p + "self_attn.o_proj.weight": normal(generator, h, q),
        p + "self_attn.o_proj.bias": normal(generator, h),
        p + "self_attn.sinks": normal(generator, config["num_attention_heads"]),
        p + "mlp.router.weight": normal(generator, e, h),
        p + "mlp.router.bias": normal(generator, e),
        p + "mlp.experts.gate_up_proj_bias": normal(generator, e, 2 * i),
        p + "mlp.experts.down_proj_bias": normal(generator, e, h),
    }
    for name, rows, cols in (("gate_up_proj", 2 * i, h), ("down_proj", h, i)):
        t[p + f"mlp.experts.{name}_blocks"] = torch.randint(
            0, 256, (e, rows, cols // 32, 16), generator=generator, device=dev, dtype=torch.uint8).cpu()
        t[p + f"mlp.experts.{name}_scales"] = torch.randint(
            116, 120, (e, rows, cols // 32), generator=generator, device=dev, dtype=torch.uint8).cpu()
    return t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=None)
    args = parser.parse_args()
    config = dict(COMMON, **SHAPES[args.shape])
    if args.layers:
        config["num_hidden_layers"] = args.layers
    layers = config["num_hidden_layers"]
    config["layer_types"] = ["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(layers)]
    started = time.time()
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    weight_map = {}
    total = 0

    def write(shard, tensors):
        nonlocal total
        save_file(tensors, os.path.join(args.out, shard), metadata={"format": "pt"})
        for name, tensor in tensors.items():
            weight_map[name] = shard
            total += tensor.numel() * tensor.element_size()

    h, v = config["hidden_size"], config["vocab_size"]
    write("model-embed.safetensors", {"model.embed_tokens.weight": normal(generator, v, h)})
    for layer in range(layers):
        write(f"model-layer-{layer:03d}.safetensors", layer_tensors(config, layer, generator))
    write("model-head.safetensors", {"model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
                                     "lm_head.weight": normal(generator, v, h)})
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    here = os.path.dirname(os.path.abspath(__file__))
    fixture = os.path.join(here, "..", "..", "tests", "fixtures", "olmoe", "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(fixture, name), os.path.join(args.out, name))
    print(f"{args.shape}: {layers} layers, {total / 1e9:.2f} GB in {time.time() - started:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
