#!/usr/bin/env python3
"""Makes a random GLM-4.5-Air-shaped checkpoint laid out as the hub ships it, for the GPU
benchmarks (no model hub is reachable there): hidden 4096, 96 query heads and 8 key/value
heads of 128 (q/k/v biased, o not), the first layer dense (10944), then MoE layers of 128
experts of 1408 plus one shared expert, the sigmoid router with its `e_score_correction_bias`
(F32), and the multi-token-prediction layer after the last one (its own embedding, enorm,
hnorm, eh_proj, shared_head.norm). bf16, or FP8 as GLM-4.5-Air-FP8 (`--fp8`: linear weights
F8_E4M3 with F32 `weight_scale_inv` per 128 x 128 block; the router, the LM head and the
dense layer's MLP left in bf16: its 10944 rows are not whole blocks, which transformers'
dequantizer refuses). Values are random, written straight to disk, one shard per layer.

Usage: make_glm_air.py OUT_DIR [--layers N] [--fp8]
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
    model_type="glm4_moe", architectures=["Glm4MoeForCausalLM"], hidden_size=4096,
    intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=46,
    num_attention_heads=96, num_key_value_heads=8, head_dim=128, n_routed_experts=128,
    num_experts_per_tok=8, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
    norm_topk_prob=True, routed_scaling_factor=1.0, use_qk_norm=False, attention_bias=True,
    partial_rotary_factor=0.5, rope_theta=1000000.0, rms_norm_eps=1e-5, vocab_size=151552,
    max_position_embeddings=131072, tie_word_embeddings=False, num_nextn_predict_layers=1,
    hidden_act="silu", torch_dtype="bfloat16", bos_token_id=0, eos_token_id=1, pad_token_id=2,
)
BLOCK = 128


class Writer:
    def __init__(self, generator, fp8):
        self.generator, self.fp8, self.tensors = generator, fp8, {}

    def normal(self, *shape):
        g = self.generator
        return (torch.randn(*shape, generator=g, device=g.device) * 0.02).to(torch.bfloat16).cpu()

    def vector(self, name, n, ones=False):
        self.tensors[name] = torch.ones(n, dtype=torch.bfloat16) if ones else self.normal(n)

    def matrix(self, name, rows, cols, quantize=True):
        if not (self.fp8 and quantize):
            self.tensors[name] = self.normal(rows, cols)
            return
        g = self.generator
        codes = torch.randint(0, 256, (rows, cols), generator=g, device=g.device, dtype=torch.uint8)
        codes[(codes & 0x7F) == 0x7F] = 0  # no NaN codes
        self.tensors[name] = codes.view(torch.float8_e4m3fn).cpu()
        scales = torch.rand(-(-rows // BLOCK), -(-cols // BLOCK), generator=g, device=g.device)
        self.tensors[name + "_scale_inv"] = (scales * 1e-4 + 1e-5).float().cpu()


def layer(w, c, l, mtp=False):
    h, q, kv = c["hidden_size"], c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    p = f"model.layers.{l}."
    w.vector(p + "input_layernorm.weight", h, ones=True)
    w.vector(p + "post_attention_layernorm.weight", h, ones=True)
    for name, rows, cols in (("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)):
        w.matrix(p + f"self_attn.{name}.weight", rows, cols)
    for name, n in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
        w.vector(p + f"self_attn.{name}.bias", n)

    def mlp(prefix, inter, quantize=True):
        for name, rows, cols in (("gate_proj", inter, h), ("up_proj", inter, h), ("down_proj", h, inter)):
            w.matrix(prefix + f"{name}.weight", rows, cols, quantize)

    if l < c["first_k_dense_replace"]:
        mlp(p + "mlp.", c["intermediate_size"], quantize=False)
        return
    e, i = c["n_routed_experts"], c["moe_intermediate_size"]
    w.matrix(p + "mlp.gate.weight", e, h, quantize=False)
    g = w.generator
    w.tensors[p + "mlp.gate.e_score_correction_bias"] = (
        torch.randn(e, generator=g, device=g.device) * 0.05).float().cpu()
    mlp(p + "mlp.shared_experts.", i)
    for expert in range(e):
        mlp(p + f"mlp.experts.{expert}.", i)
    if mtp:
        for name in ("enorm.weight", "hnorm.weight", "shared_head.norm.weight"):
            w.vector(p + name, h, ones=True)
        w.matrix(p + "eh_proj.weight", h, 2 * h, quantize=False)
        w.tensors[p + "embed_tokens.weight"] = w.normal(c["vocab_size"], h)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--fp8", action="store_true")
    args = parser.parse_args()
    config = dict(CONFIG)
    if args.layers:
        config["num_hidden_layers"] = args.layers
    if args.fp8:
        config["quantization_config"] = {
            "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK],
            "modules_to_not_convert": ["lm_head", "model.layers.*.mlp.gate", "model.layers.0.mlp"],
        }
    started = time.time()
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    weight_map, total = {}, 0

    def write(shard, fill):
        nonlocal total
        w = Writer(generator, args.fp8)
        fill(w)
        save_file(w.tensors, os.path.join(args.out, shard), metadata={"format": "pt"})
        for name, tensor in w.tensors.items():
            weight_map[name] = shard
            total += tensor.numel() * tensor.element_size()

    c = config
    h, v, layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    write("model-embed.safetensors", lambda w: w.tensors.update({"model.embed_tokens.weight": w.normal(v, h)}))
    for l in range(layers + 1):  # the last one is the MTP layer
        write(f"model-layer-{l:03d}.safetensors", lambda w, l=l: layer(w, c, l, mtp=l == layers))
    write("model-head.safetensors", lambda w: w.tensors.update(
        {"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": w.normal(v, h)}))
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    here = os.path.dirname(os.path.abspath(__file__))
    fixture = os.path.join(here, "..", "..", "tests", "fixtures", "olmoe", "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(fixture, name), os.path.join(args.out, name))
    kind = "FP8" if args.fp8 else "bf16"
    print(f"GLM-4.5-Air shape, {kind}: {layers} layers + MTP, {total / 1e9:.2f} GB in "
          f"{time.time() - started:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
