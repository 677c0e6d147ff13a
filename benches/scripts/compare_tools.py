#!/usr/bin/env python3
"""layerstream against the tools people use today, side by side in one run, on the GPU
machine (issue 8). For each workload it makes a random-init bf16 checkpoint, packs the
workload's tokens once (`layerstream-benches tokens`, the packing `analyze` uses), measures the
pinned host-to-device bandwidth and the disk's sequential read bandwidth (dd, direct I/O), then
runs, with a warm page cache and, with --cold, after evicting the checkpoint from it:

- layerstream: `analyze --vram 8GiB --points ln1,ln2,resid_post` (every layer);
- transformers: the whole model on the GPU, the same captures through forward hooks
  (`hf_capture.py`);
- accelerate: `device_map="auto"` with `max_memory` 8 GiB on the GPU (`hf_capture.py --offload`);
- nnsight (issue 19, goal 4): `LanguageModel(..., device_map="auto")` and `.trace()` saving both
  layernorm outputs per batch of `--nnsight-batch` sequences (`nnsight_capture.py`), the whole
  model (`nnsight`) and with `max_memory` 8 GiB (`nnsight-offload`); its wheels travel to the GPU
  machine (`nnsight_wheels.sh`).

Every run is its own process: wall time is process start to exit (report written); peak
device memory is NVML's used memory sampled every 2 ms from this process, minus the used memory
before the run. Each run's result is appended to OUT_DIR/results.jsonl as it finishes, so a
run cut short keeps what it measured; `render` turns the file into the results table.

Usage:
  compare_tools.py run --layerstream BIN --benches BIN --work DIR --out OUT_DIR
                       --workload olmoe-1b-7b[:LAYERS|:disk] [--workload ...] [--cold [--cold-tools T]]
                       [--tools layerstream,transformers,accelerate,nnsight,nnsight-offload]
                       [--nnsight-batch 4] [--hf-batch 1] [--num-samples 16]
                       [--seq-len 2048] [--vram 8GiB] [--device cuda]
  compare_tools.py render OUT_DIR/results.jsonl [...]   (markdown on stdout)
`:disk` cuts the shape to as many layers as the free disk holds (Qwen3-30B-A3B).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from memory_accuracy import measure_run, pynvml  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(REPO, "cli", "assets", "default-data.txt")
# Bytes per layer and outside the layers of the shapes that can be cut (bf16).
LAYER_BYTES = {"qwen3-30b-a3b": 1.2503e9}
OUTSIDE_LAYER_BYTES = {"qwen3-30b-a3b": 2 * 151936 * 2048 * 2}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def model_bytes(model_dir):
    return sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir)
               if f.endswith(".safetensors"))


def layers_for_disk(shape, work):
    """As many layers as the free disk holds, keeping 6 GB free."""
    free = shutil.disk_usage(work).free
    layers = int((free - 6e9 - OUTSIDE_LAYER_BYTES[shape]) // LAYER_BYTES[shape])
    return max(1, min(layers, 48)), free


def make_model(shape, layers, work):
    model_dir = os.path.join(work, f"{shape}-{layers or 'all'}")
    if os.path.exists(os.path.join(model_dir, "config.json")):
        return model_dir
    command = [sys.executable, os.path.join(HERE, "make_random_model.py"), shape, model_dir]
    if layers:
        command += ["--layers", str(layers)]
    started = time.time()
    subprocess.run(command, check=True)
    log(f"made {model_dir} in {time.time() - started:.0f} s")
    return model_dir


def pinned_bandwidth_gbps():
    """Pinned host-to-device copy bandwidth (GB/s, 10^9), 1 GiB copies, best of 5, in a
    child process (so this process holds no CUDA context)."""
    code = """
import torch
n = 1 << 30
host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
dev = torch.empty(n, dtype=torch.uint8, device="cuda")
dev.copy_(host, non_blocking=True); torch.cuda.synchronize()
best = 0.0
for _ in range(5):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); dev.copy_(host, non_blocking=True); b.record(); torch.cuda.synchronize()
    best = max(best, n / (a.elapsed_time(b) / 1e3) / 1e9)
print(best)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def disk_read_gbps(model_dir):
    """Sequential read bandwidth of the disk holding the checkpoint, by dd over its largest
    file (at most 8 GB of it): with direct I/O (no page cache), and buffered after evicting
    the file from the page cache (the kernel's readahead, as a mapped read sees it)."""
    files = [os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors")]
    largest = max(files, key=os.path.getsize)
    blocks = min(os.path.getsize(largest), 8 << 30) // (64 << 20)
    rates = {}
    for name, flags in [("direct", ["iflag=direct"]), ("buffered", [])]:
        evict(model_dir)
        started = time.time()
        subprocess.run(["dd", f"if={largest}", "of=/dev/null", "bs=64M", f"count={blocks}", *flags],
                       check=True, capture_output=True)
        rates[name] = blocks * (64 << 20) / (time.time() - started) / 1e9
    return rates


def evict(model_dir):
    """Drops the checkpoint's pages from the page cache (POSIX_FADV_DONTNEED)."""
    os.sync()
    for name in os.listdir(model_dir):
        fd = os.open(os.path.join(model_dir, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(model_dir):
    for name in os.listdir(model_dir):
        with open(os.path.join(model_dir, name), "rb") as f:
            while f.read(1 << 26):
                pass


def parse_layerstream(stdout, stderr):
    found = {}
    m = re.search(r"tokens through (\d+) layers in ([\d.]+) s .*; report and plots ([\d.]+) s; ([\d.]+) s in all",
                  stdout)
    if m:
        found.update(pipeline_seconds=float(m[2]), report_seconds=float(m[3]), in_process_seconds=float(m[4]))
    m = re.search(r"weights: ([\d.]+) GB in (\d+) uploads; copy engine busy ([\d.]+) s \(([\d.]+) GB/s host to "
                  r"device\); waited ([\d.]+) s for the reader", stderr)
    if m:
        found.update(uploaded_gb=float(m[1]), uploads=int(m[2]), copy_seconds=float(m[3]), copy_gbps=float(m[4]),
                     reader_wait_seconds=float(m[5]))
    return found


def run_tool(tool, args, model_dir, tokens, out_dir, handle):
    n, t = str(args.num_samples), str(args.seq_len)
    if tool == "layerstream":
        command = [args.layerstream, "analyze", "--model", model_dir, "--data", args.data, "--device", args.device,
                   "--points", "ln1,ln2,resid_post", "--num-samples", n, "--seq-len", t,
                   "--out", os.path.join(args.work, "ls-out"), "--restart"]
        if args.device == "cuda":
            command += ["--vram", args.vram]
    elif tool.startswith("nnsight"):
        command = [sys.executable, os.path.join(HERE, "nnsight_capture.py"), model_dir, tokens, n, t,
                   os.path.join(args.work, f"{tool}.json"), "--batch", str(args.nnsight_batch)]
        if tool == "nnsight-offload":
            command += ["--max-memory", args.vram]
    else:
        command = [sys.executable, os.path.join(HERE, "hf_capture.py"), model_dir, tokens, n, t,
                   os.path.join(args.work, f"{tool}.json")]
        if tool == "accelerate":
            command += ["--offload", args.vram]
        else:
            command += ["--batch", str(args.hf_batch)]
    peak, result, seconds = measure_run(handle, command)
    row = {"tool": tool, "command": " ".join(command), "wall_seconds": seconds, "peak_device_bytes": peak,
           "exit": result.returncode}
    with open(os.path.join(out_dir, f"{tool}.log"), "a") as f:
        f.write(f"== {' '.join(command)}\n{result.stdout}\n{result.stderr}\n")
    if result.returncode != 0:
        row["error"] = result.stderr[-2000:]
    elif tool == "layerstream":
        row.update(parse_layerstream(result.stdout, result.stderr))
        with open(os.path.join(args.work, "ls-out", "progress.json")) as f:
            row["micro_batch"] = json.load(f)["plan"]["micro_batch_sequences"]
    else:
        with open(os.path.join(args.work, f"{tool}.json")) as f:
            row.update({k: v for k, v in json.load(f).items() if k != "tool"})
    return row


def run(args):
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    handle = None
    if pynvml is not None and args.device == "cuda":
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    results = os.path.join(args.out, "results.jsonl")
    for workload in args.workload:
        shape, _, cut = workload.partition(":")
        disk_free = None
        if cut == "disk":
            layers, disk_free = layers_for_disk(shape, args.work)
        else:
            layers = int(cut) if cut else None
        # A folder instead of a shape name: an existing checkpoint (local trials).
        model_dir = shape if os.path.isdir(shape) else make_model(shape, layers, args.work)
        with open(os.path.join(model_dir, "config.json")) as f:
            num_layers = json.load(f)["num_hidden_layers"]
        tokens = os.path.join(args.work, "tokens.u32")
        subprocess.run([args.benches, "tokens", model_dir, args.data, str(args.num_samples), str(args.seq_len), tokens],
                       check=True)
        base = {"shape": shape, "layers": num_layers, "model_bytes": model_bytes(model_dir),
                "num_samples": args.num_samples, "seq_len": args.seq_len, "vram": args.vram,
                "disk_free_bytes": disk_free}
        if args.device == "cuda":
            base["pinned_h2d_gbps"] = pinned_bandwidth_gbps()
            base["gpu"] = pynvml.nvmlDeviceGetName(handle)
        rates = disk_read_gbps(model_dir)
        base["disk_read_gbps"] = max(rates.values())
        base["disk_read_direct_gbps"], base["disk_read_buffered_gbps"] = rates["direct"], rates["buffered"]
        log(f"{shape} ({num_layers} layers, {base['model_bytes'] / 1e9:.2f} GB): "
            f"pinned {base.get('pinned_h2d_gbps', 0):.1f} GB/s, disk {rates}")
        for cache in ["warm", "cold"] if args.cold else ["warm"]:
            tools = args.cold_tools if cache == "cold" and args.cold_tools else args.tools
            for tool in tools.split(","):
                if cache == "cold":
                    evict(model_dir)
                else:
                    warm(model_dir)
                row = dict(base, cache=cache, **run_tool(tool, args, model_dir, tokens, args.out, handle))
                log(f"{shape} {cache} {tool}: {row['wall_seconds']:.2f} s, peak "
                    f"{row['peak_device_bytes'] / 2**30:.2f} GiB, exit {row['exit']}")
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if args.delete_models:
            shutil.rmtree(model_dir)


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def render(paths):
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    out = []
    for (shape, layers), group in groupby_key(rows, lambda r: (r["shape"], r["layers"])):
        first = group[0]
        gb = first["model_bytes"] / 1e9
        bw = first.get("pinned_h2d_gbps")
        out.append(f"### {shape}, {layers} layers, {gb:.2f} GB bf16; {first['num_samples']} x {first['seq_len']} tokens")
        out.append("")
        if bw:
            out.append(f"Pinned host-to-device bandwidth {bw:.1f} GB/s (roofline for the weights {gb / bw:.2f} s); "
                       f"disk sequential read by dd {first['disk_read_gbps']:.2f} GB/s (the better of direct I/O "
                       f"{first.get('disk_read_direct_gbps', 0):.2f} and buffered after eviction "
                       f"{first.get('disk_read_buffered_gbps', 0):.2f}); {first.get('gpu')}.")
        out.append("")
        out.append("| cache | tool | wall (process start to exit) | load | pipeline / forward | report | peak device memory "
                   "| layerstream faster by (wall) |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for cache, by_cache in groupby_key(group, lambda r: r["cache"]):
            ours = next((r for r in by_cache if r["tool"] == "layerstream" and r["exit"] == 0), None)
            for r in by_cache:
                if r["exit"] != 0:
                    out.append(f"| {cache} | {r['tool']} | failed (exit {r['exit']}) | | | | | |")
                    continue
                work = r.get("pipeline_seconds", r.get("forward_seconds"))
                load = r.get("load_seconds")
                faster = ratio(r["wall_seconds"], ours["wall_seconds"]) if ours and r is not ours else ""
                out.append(
                    f"| {cache} | {r['tool']} | {r['wall_seconds']:.2f} s | {fmt(load)} | {fmt(work)} | "
                    f"{fmt(r.get('report_seconds'))} | {r['peak_device_bytes'] / 2**30:.2f} GiB | {faster} |")
        out.append("")
        for r in group:
            if r["tool"] == "layerstream" and r["exit"] == 0 and "uploaded_gb" in r and bw:
                share = r["uploaded_gb"] / r["pipeline_seconds"] / bw if bw else 0
                out.append(f"- layerstream {r['cache']}: micro-batch {r.get('micro_batch')} sequences; "
                           f"{r['uploaded_gb']:.2f} GB uploaded in {r['uploads']} uploads; "
                           f"copy engine {r['copy_gbps']:.1f} GB/s while copying ({r['copy_gbps'] / bw * 100:.0f}% of "
                           f"pinned); weights per pipeline second {share * 100:.0f}% of pinned; waited "
                           f"{r['reader_wait_seconds']:.2f} s for the reader"
                           + (f"; reads {r['uploaded_gb'] / r['pipeline_seconds']:.2f} GB/s = "
                              f"{r['uploaded_gb'] / r['pipeline_seconds'] / r['disk_read_gbps'] * 100:.0f}% of dd"
                              if r["cache"] == "cold" else ""))
        out.append("")
    return "\n".join(out)


def fmt(seconds):
    return f"{seconds:.2f} s" if seconds is not None else "-"


def groupby_key(rows, key):
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return list(groups.items())


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "render":
        print(render(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--layerstream", required=True)
    parser.add_argument("--benches", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workload", action="append", required=True)
    parser.add_argument("--tools", default="layerstream,transformers,accelerate")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--cold-tools", default=None, help="tools for the cold runs (default: --tools)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--nnsight-batch", type=int, default=4)
    parser.add_argument("--data", default=DATA, help="text for the workload (default: the embedded text)")
    parser.add_argument("--hf-batch", type=int, default=1, help="sequences per forward call of transformers")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vram", default="8GiB")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--delete-models", action="store_true")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
