#!/usr/bin/env python3
"""A random Qwen3 model as wide as OLMoE-1B-7B's hidden states (2048) and as deep (16 layers)
but with one 16-wide head and a 16-wide MLP, in f32 safetensors, made with numpy alone: its
statistics and report cost what a real 2048-wide model's do, its layers run on a CPU. For
timing the report (issue 19 goal 2: report and plots under 0.3 s at 128 sequences) on any
machine.

Usage: make_wide_model.py OUT_DIR [--hidden 2048] [--layers 16]
"""
import argparse
import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    fixture = os.path.join(here, "..", "..", "tests", "fixtures", "qwen3", "model")
    with open(os.path.join(fixture, "config.json")) as f:
        config = json.load(f)
    d, head, inter, vocab = args.hidden, 16, 16, config["vocab_size"]
    config.update(
        hidden_size=d, head_dim=head, num_attention_heads=1, num_key_value_heads=1,
        intermediate_size=inter, num_hidden_layers=args.layers,
        layer_types=["full_attention"] * args.layers, max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    rng = np.random.default_rng(0)
    normal = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(np.float32)
    tensors = {"model.embed_tokens.weight": normal(vocab, d), "model.norm.weight": np.ones(d, np.float32)}
    for layer in range(args.layers):
        p = f"model.layers.{layer}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(d, np.float32),
            p + "post_attention_layernorm.weight": np.ones(d, np.float32),
            p + "self_attn.q_proj.weight": normal(head, d),
            p + "self_attn.k_proj.weight": normal(head, d),
            p + "self_attn.v_proj.weight": normal(head, d),
            p + "self_attn.o_proj.weight": normal(d, head),
            p + "self_attn.q_norm.weight": np.ones(head, np.float32),
            p + "self_attn.k_norm.weight": np.ones(head, np.float32),
            p + "mlp.gate_proj.weight": normal(inter, d),
            p + "mlp.up_proj.weight": normal(inter, d),
            p + "mlp.down_proj.weight": normal(d, inter),
        })
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(fixture, name), os.path.join(args.out, name))
    print(f"{args.layers} layers of width {d} -> {args.out}")


if __name__ == "__main__":
    main()
