#!/usr/bin/env python3
"""Makes a random-init model of a realistic shape, in bf16 safetensors as transformers saves
it, for the speed checks on the GPU machine (no model hub is reachable there).

Usage: make_random_model.py SHAPE OUT_DIR [--layers N]
  SHAPE: olmoe-1b-7b | qwen3-30b-a3b | llama-3.1-8b
The tokenizer is copied from a test fixture (a tiny byte-level BPE; its ids fit any of
these vocabularies).
"""
import argparse
import os
import shutil
import time

import torch
import transformers

SHAPES = {
    "olmoe-1b-7b": ("OlmoeConfig", dict(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
        max_position_embeddings=4096, rms_norm_eps=1e-5, norm_topk_prob=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    "qwen3-30b-a3b": ("Qwen3MoeConfig", dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1000000.0))),
    "llama-3.1-8b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
        low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192))),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=None)
    args = parser.parse_args()
    config_class, kwargs = SHAPES[args.shape]
    if args.layers:
        kwargs = dict(kwargs, num_hidden_layers=args.layers)
    config = getattr(transformers, config_class)(**kwargs, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    here = os.path.dirname(os.path.abspath(__file__))
    fixture = os.path.join(here, "..", "..", "tests", "fixtures", "olmoe", "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(fixture, name), os.path.join(args.out, name))
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"{args.shape}: {config.num_hidden_layers} layers, {size / 1e9:.2f} GB in {time.time() - started:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
