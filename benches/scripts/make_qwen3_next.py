#!/usr/bin/env python3
"""Makes a random Qwen3-Next-80B-A3B-shaped checkpoint laid out as the hub ships it, for the
GPU benchmarks (no model hub is reachable there): hidden 2048, layer i full attention iff
(i + 1) % 4 == 0 (`full_attention_interval`, no `layer_types`), the others Gated DeltaNet
(16 key heads and 32 value heads of 128, conv kernel 4); gated attention of 16 query heads and
2 key/value heads of 256 (q_proj emits [query | gate] per head), partial rotary 0.25; every
layer MoE with 512 experts of 512, 10 per token, and a shared expert of 512 with its sigmoid
gate; zero-centred norms stored as zeros, the DeltaNet's gated norm as ones, dt_bias ones,
A_log as transformers initialises it; a few `mtp.*` tensors (transformers ignores them).
bf16, values random, written straight to disk, one shard per layer.

Usage: make_qwen3_next.py OUT_DIR [--layers N]
The tokenizer is copied from a test fixture (its ids fit the vocabulary).
"""
import argparse
import json
import os
import shutil
import time

import torch
from safetensors.torch import save_file

CONFIG = dict(
    model_type="qwen3_next", architectures=["Qwen3NextForCausalLM"], hidden_size=2048,
    intermediate_size=5120, num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=2,
    head_dim=256, partial_rotary_factor=0.25, rope_theta=10000000.0, full_attention_interval=4,
    linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_conv_kernel_dim=4, num_experts=512, num_experts_per_tok=10,
    moe_intermediate_size=512, shared_expert_intermediate_size=512, norm_topk_prob=True,
    decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6, vocab_size=151936,
    max_position_embeddings=262144, tie_word_embeddings=False, attention_bias=False,
    hidden_act="silu", torch_dtype="bfloat16", bos_token_id=0, eos_token_id=1, pad_token_id=2,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=None)
    args = parser.parse_args()
    c = dict(CONFIG)
    if args.layers:
        c["num_hidden_layers"] = args.layers
    started = time.time()
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    weight_map, total = {}, 0

    def normal(*shape):
        return (torch.randn(*shape, generator=g, device=device) * 0.02).to(torch.bfloat16).cpu()

    def write(shard, tensors):
        nonlocal total
        save_file(tensors, os.path.join(args.out, shard), metadata={"format": "pt"})
        for name, tensor in tensors.items():
            weight_map[name] = shard
            total += tensor.numel() * tensor.element_size()

    h, v = c["hidden_size"], c["vocab_size"]
    kh, vh = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
    heads, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    e, i, s = c["num_experts"], c["moe_intermediate_size"], c["shared_expert_intermediate_size"]
    write("model-embed.safetensors", {"model.embed_tokens.weight": normal(v, h)})
    for l in range(c["num_hidden_layers"]):
        p, t = f"model.layers.{l}.", {}
        t[p + "input_layernorm.weight"] = torch.zeros(h, dtype=torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = torch.zeros(h, dtype=torch.bfloat16)
        if (l + 1) % c["full_attention_interval"] == 0:
            a = p + "self_attn."
            t[a + "q_proj.weight"] = normal(2 * heads * hd, h)
            t[a + "k_proj.weight"] = normal(kv * hd, h)
            t[a + "v_proj.weight"] = normal(kv * hd, h)
            t[a + "o_proj.weight"] = normal(h, heads * hd)
            t[a + "q_norm.weight"] = torch.zeros(hd, dtype=torch.bfloat16)
            t[a + "k_norm.weight"] = torch.zeros(hd, dtype=torch.bfloat16)
        else:
            a = p + "linear_attn."
            t[a + "in_proj_qkvz.weight"] = normal(2 * kh * dk + 2 * vh * dv, h)
            t[a + "in_proj_ba.weight"] = normal(2 * vh, h)
            t[a + "conv1d.weight"] = (normal(2 * kh * dk + vh * dv, 1, 4) * 10).to(torch.bfloat16)
            t[a + "dt_bias"] = torch.ones(vh, dtype=torch.bfloat16)
            t[a + "A_log"] = torch.empty(vh).uniform_(0.01, 16).log().to(torch.bfloat16)
            t[a + "norm.weight"] = torch.ones(dv, dtype=torch.bfloat16)
            t[a + "out_proj.weight"] = normal(h, vh * dv)
        m = p + "mlp."
        t[m + "gate.weight"] = normal(e, h)
        for prefix, width in [(m + "shared_expert.", s)] + [(m + f"experts.{x}.", i) for x in range(e)]:
            t[prefix + "gate_proj.weight"] = normal(width, h)
            t[prefix + "up_proj.weight"] = normal(width, h)
            t[prefix + "down_proj.weight"] = normal(h, width)
        t[m + "shared_expert_gate.weight"] = normal(1, h)
        write(f"model-layer-{l:03d}.safetensors", t)
    write("model-head.safetensors", {
        "model.norm.weight": torch.zeros(h, dtype=torch.bfloat16), "lm_head.weight": normal(v, h),
        "mtp.fc.weight": normal(h, 2 * h), "mtp.norm.weight": torch.zeros(h, dtype=torch.bfloat16),
        "mtp.layers.0.mlp.experts.0.up_proj.weight": normal(i, h)})
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    here = os.path.dirname(os.path.abspath(__file__))
    fixture = os.path.join(here, "..", "..", "tests", "fixtures", "olmoe", "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(fixture, name), os.path.join(args.out, name))
    print(f"Qwen3-Next-80B-A3B shape: {c['num_hidden_layers']} layers, {total / 1e9:.2f} GB in "
          f"{time.time() - started:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
