#!/usr/bin/env python3
"""Builds cli/assets/default-model: the small model `layerstream analyze` runs when no
--model is given.

A Llama-architecture model (4 layers, hidden 128, GQA 4/2 heads, 2048-token byte-level BPE
vocabulary with a BOS prefix, max 2048 positions), trained for a few minutes on
cli/assets/default-data.txt so that its perplexity means something, saved in bfloat16 as
transformers saves models. It is a demonstration model, not a language model to study.

Usage: python3 cli/assets/make_default_model.py [--steps 400]   (torch, transformers, tokenizers)
"""
import argparse
import json
import math
import os
import shutil

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "default-model")
CORPUS = os.path.join(HERE, "default-data.txt")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


def train_tokenizer(text):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.split("\n\n"), trainer)
    bos = tokenizer.token_to_id(SPECIALS[0])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[0]} $A", pair=f"{SPECIALS[0]} $A {SPECIALS[0]} $B",
        special_tokens=[(SPECIALS[0], bos)],
    )
    return tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    tokenizer = train_tokenizer(text)
    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)
    bos = tokenizer.token_to_id(SPECIALS[0])
    eos = tokenizer.token_to_id(SPECIALS[1])
    print(f"corpus: {len(text)} chars, {len(ids)} tokens")

    config = transformers.LlamaConfig(
        vocab_size=2048, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = transformers.AutoModelForCausalLM.from_config(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    for step in range(args.steps):
        lr = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(ids) - args.seq_len, (args.batch,))
        batch = torch.stack([torch.cat([torch.tensor([bos]), ids[s:s + args.seq_len - 1]]) for s in starts]).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)

    shutil.rmtree(OUT, ignore_errors=True)
    model.to(torch.bfloat16).cpu().save_pretrained(OUT)
    gen = os.path.join(OUT, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    tokenizer.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "add_bos_token": True,
                   "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    print(f"saved {OUT} (torch {torch.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
