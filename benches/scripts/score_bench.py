#!/usr/bin/env python3
"""Scoring many short prompts (issue 22), side by side in one run on the GPU machine:

  - layerstream `score --per-record` at `--vram` (default 4GiB): records of their own lengths,
    layer-major, the whole model never on the GPU at once;
  - transformers with the whole model on the GPU (bf16, SDPA), prompts sorted by length and
    batched with right padding, NLL per record from the logits (the fastest of the batch sizes
    tried);
  - transformers on the CPU in float32 (the fallback a pipeline uses when the GPU is full):
    a subset of the prompts, its per-token time extrapolated to all of them (said so).

Prompts: N records (default 10,000) of 50-512 tokens cut from the default text, as .jsonl.
Every tool's per-record mean NLL is compared with layerstream's (the largest difference is
reported). Wall time from process start to exit for layerstream; for transformers the load
and the scoring separately.

    score_bench.py LAYERSTREAM MODEL_DIR OUT_DIR [--records 10000] [--vram 4GiB] [--cpu-records 16]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MAX_LENGTH = 512
TEXT = os.path.join(REPO, "cli", "assets", "default-data.txt")


def make_records(tokenizer, count, path, seed=0):
    """`count` records of 50-512 tokens (the tokenizer's count, with its prefix)."""
    words = open(TEXT).read().split()
    rng = random.Random(seed)
    lengths = []
    with open(path, "w") as f:
        for i in range(count):
            target = rng.randint(50, 512)
            start = rng.randrange(0, len(words) - 2000)
            n = target // 2
            text = " ".join(words[start:start + n])
            ids = tokenizer(text).input_ids
            while len(ids) < target and n < 2000:
                n += max(1, (target - len(ids)) // 2)
                text = " ".join(words[start:start + n])
                ids = tokenizer(text).input_ids
            ids = ids[:target]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            f.write(json.dumps({"id": i, "text": text}) + "\n")
            lengths.append(len(ids))
    return lengths


def run_layerstream(args, data, out):
    command = [args.layerstream, "score", "--per-record", "--model", args.model, "--data", data,
               "--device", args.device, "--vram", args.vram, "--max-length", str(args.max_length), "--out", out,
               "--restart", "--progress", "none", "--id-field", "id"] + args.extra.split()
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.time() - started
    if result.returncode != 0:
        raise SystemExit(f"layerstream failed:\n{result.stderr[-3000:]}")
    scores = [json.loads(line) for line in open(os.path.join(out, "scores.jsonl"))]
    return {"tool": "layerstream", "command": " ".join(command), "wall_seconds": seconds,
            "stderr_tail": result.stderr[-1500:]}, scores


def hf_scores(model, tokenizer, records, device, batch, dtype):
    """Per-record mean NLL: sorted by length, right-padded batches."""
    import torch
    encoded = [tokenizer(r["text"], truncation=True, max_length=MAX_LENGTH).input_ids for r in records]
    order = sorted(range(len(records)), key=lambda i: len(encoded[i]))
    means = [None] * len(records)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for first in range(0, len(order), batch):
            chunk = order[first:first + batch]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, :len(encoded[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -logprobs.gather(2, ids[:, 1:, None])[..., 0]
            valid = mask[:, 1:].float()
            sums = (nll * valid).sum(1) / valid.sum(1)
            for row, i in enumerate(chunk):
                means[i] = sums[row].item()
    return means


def run_transformers(args, records, device, batches, dtype_name):
    import torch
    import transformers
    dtype = getattr(torch, dtype_name)
    started = time.time()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    load = time.time() - started
    best = None
    for batch in batches:
        try:
            if device == "cuda":
                torch.cuda.synchronize()
            began = time.time()
            means = hf_scores(model, tokenizer, records, device, batch, dtype)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.time() - began
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        if best is None or seconds < best["score_seconds"]:
            best = {"batch": batch, "score_seconds": seconds, "means": means}
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"load_seconds": load, "peak_device_bytes": peak, **best}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("layerstream")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--vram", default="4GiB")
    parser.add_argument("--cpu-records", type=int, default=16)
    parser.add_argument("--gpu-batches", default="16,64")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of the script")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stage", choices=["layerstream", "transformers", "all"], default="all",
                        help="run one side (its results kept in OUT) so the two fit device calls")
    parser.add_argument("--prompts", help="an earlier stage's prompts.jsonl to score again")
    parser.add_argument("--extra", default="", help="more layerstream flags, space-separated")
    args = parser.parse_args()
    global MAX_LENGTH
    MAX_LENGTH = args.max_length
    import transformers
    os.makedirs(args.out, exist_ok=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    data = os.path.join(args.out, "prompts.jsonl")
    if args.prompts:
        if os.path.abspath(args.prompts) != os.path.abspath(data):
            with open(args.prompts) as src, open(data, "w") as dst:
                dst.write(src.read())
    else:
        make_records(tokenizer, args.records, data)
    records = [json.loads(line) for line in open(data)]
    lengths = [min(args.max_length, len(tokenizer(r["text"]).input_ids)) for r in records]
    tokens = sum(lengths)
    print(f"{len(records)} records, {tokens} tokens ({min(lengths)}-{max(lengths)})", flush=True)

    ls_path = os.path.join(args.out, "layerstream.json")
    hf_path = os.path.join(args.out, "transformers.json")
    if args.stage in ("layerstream", "all"):
        ls, scores = run_layerstream(args, data, os.path.join(args.out, "ls-out"))
        ls["means"] = [s["mean_nll"] for s in scores]
        ls["score_summary"] = json.load(open(os.path.join(args.out, "ls-out", "score.json")))
        json.dump(ls, open(ls_path, "w"))
        print(f"layerstream: {ls['wall_seconds']:.1f} s", flush=True)
    if args.stage in ("transformers", "all"):
        batches = [int(b) for b in args.gpu_batches.split(",")]
        gpu = run_transformers(args, records, args.device, batches, "bfloat16")
        print(f"transformers GPU: load {gpu['load_seconds']:.1f} s, score "
              f"{gpu['score_seconds']:.1f} s (batch {gpu['batch']})", flush=True)
        subset = records[:args.cpu_records]
        cpu = run_transformers(args, subset, "cpu", [1], "float32")
        subset_tokens = sum(lengths[:args.cpu_records])
        cpu["tokens"] = subset_tokens
        cpu["extrapolated_seconds"] = cpu["score_seconds"] * tokens / subset_tokens
        print(f"transformers CPU f32: {cpu['score_seconds']:.1f} s for {len(subset)} records "
              f"({subset_tokens} tokens); extrapolated {cpu['extrapolated_seconds']:.0f} s",
              flush=True)
        json.dump({"gpu": gpu, "cpu": cpu}, open(hf_path, "w"))
    if not (os.path.exists(ls_path) and os.path.exists(hf_path)):
        return 0
    ls = json.load(open(ls_path))
    hf = json.load(open(hf_path))
    gpu, cpu = hf["gpu"], hf["cpu"]
    diff_gpu = max(abs(a - b) for a, b in zip(ls["means"], gpu["means"]))
    diff_cpu = max(abs(a - b) for a, b in zip(ls["means"], cpu["means"]))
    summary = {
        "records": len(records), "tokens": tokens, "min_len": min(lengths), "max_len": max(lengths),
        "layerstream": {k: v for k, v in ls.items() if k != "means"},
        "transformers_gpu": {k: v for k, v in gpu.items() if k != "means"},
        "transformers_cpu_f32": {k: v for k, v in cpu.items() if k != "means"},
        "max_abs_mean_nll_diff_vs_gpu_bf16": diff_gpu,
        "max_abs_mean_nll_diff_vs_cpu_f32": diff_cpu,
    }
    with open(os.path.join(args.out, "score_bench.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "layerstream"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
