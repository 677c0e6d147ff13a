#!/usr/bin/env python3
"""Predicted vs measured peak device memory of `layerstream analyze --vram B --device cuda`.

The measured peak is read from outside the process: NVML's used memory of GPU 0, sampled
every 2 ms while the run lasts, minus the used memory before it started. The predicted peak
is `layerstream estimate --json`'s plan.peak_bytes for the same command. The context
overhead (CUDA context, cuBLAS, modules) is calibrated first from a run of a tiny model:
measured peak minus the plan's regions.

Usage: memory_accuracy.py LAYERSTREAM DATA_FILE TINY_MODEL MODEL_DIR:BUDGET[,BUDGET...] ...
A budget may carry a host budget, `1.4GiB/ram=100MiB` (passed as --ram to both commands; one
that cannot hold the hidden states puts them on disk). A budget of `binding` stands for three budgets 2% above the plan's peak with 1, 2 and 4
sequences per micro-batch, so that the budget decides the micro-batch.
ACCURACY_LOG=FILE appends each run's stderr to FILE.
Prints a markdown table (parts per layer: 1 when layers stream whole, more when the plan
splits them); exit status 1 if a row misses 5% or exceeds its budget.
"""
import json
import os
import subprocess
import sys
import threading
import time

try:
    import pynvml
except ImportError:  # only the comparison harness imports this file without a GPU
    pynvml = None


def used_bytes(handle):
    return pynvml.nvmlDeviceGetMemoryInfo(handle).used


def measure_run(handle, command):
    """Runs `command`; returns (peak device bytes above the used memory before it started,
    the completed process, wall seconds from start to exit). `handle` None: no sampling."""
    baseline = used_bytes(handle) if handle else 0
    peak = baseline
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, used_bytes(handle))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    if handle:
        sampler.start()
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.time() - started
    done.set()
    if handle:
        sampler.join()
    return peak - baseline, result, seconds


def measure(handle, command):
    peak, result, _ = measure_run(handle, command)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return peak, result.stderr


def estimate(layerstream, model, budget, overhead, extra=()):
    out = subprocess.run(
        [layerstream, "estimate", "--model", model, "--vram", budget, "--overhead", str(overhead), "--json", *extra],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)


def binding_budgets(layerstream, model, overhead):
    budgets = []
    for sequences in (1, 2, 4):
        e = estimate(layerstream, model, "1TiB", overhead, ["--micro-batch-tokens", str(sequences * 2048)])
        budgets.append(str(int(e["plan"]["peak_bytes"] * 1.02)))
    # Just below one sequence with the hidden states on the device: they go to the host.
    one = int(budgets[0]) / 1.02
    e = estimate(layerstream, model, str(int(one) - 1), overhead, ["--micro-batch-tokens", "2048"])
    if e["plan"]["hidden_placement"] == "pinned_host":
        budgets.insert(0, str(int(e["plan"]["peak_bytes"] * 1.02)))
    return budgets


def gib(b):
    return f"{b / 2**30:.2f} GiB"


def main():
    layerstream, data = sys.argv[1], sys.argv[2]
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    tiny = sys.argv[3].split(":")[0]
    plan = estimate(layerstream, tiny, "80GiB", 0)["plan"]
    measured, _ = measure(handle, [layerstream, "analyze", "--model", tiny, "--data", data, "--device", "cuda",
                                   "--out", "/tmp/acc-tiny", "--restart"])
    overhead = max(measured - plan["peak_bytes"], 0)
    print(f"calibration: {tiny}: measured {gib(measured)}, regions {gib(plan['peak_bytes'])} -> overhead {gib(overhead)}\n")
    rows, failed = [], False
    for spec in sys.argv[4:]:
        model, budgets = spec.split(":")
        budgets = [b for item in budgets.split(",") for b in (binding_budgets(layerstream, model, overhead) if item == "binding" else [item])]
        for item in budgets:
            budget, _, ram = item.partition("/ram=")
            extra = ["--ram", ram] if ram else []
            e = estimate(layerstream, model, budget, overhead, extra)
            predicted = e["plan"]["peak_bytes"]
            out = f"/tmp/acc-{len(rows)}"
            measured, stderr = measure(handle, [layerstream, "analyze", "--model", model, "--data", data, "--device", "cuda",
                                               "--vram", budget, "--overhead", str(overhead), "--out", out, "--restart", *extra])
            if os.environ.get("ACCURACY_LOG"):
                with open(os.environ["ACCURACY_LOG"], "a") as log:
                    log.write(f"== {model} --vram {budget}: predicted {predicted}, measured {measured}\n{stderr}\n")
            error = (predicted - measured) / measured
            budget_bytes = e["budget_bytes"]
            ok = abs(error) <= 0.05 and measured <= budget_bytes
            failed |= not ok
            halved = "yes" if "micro-batch" in stderr and "->" in stderr else "no"
            shown = (budget if not budget.isdigit() else gib(int(budget))) + (f" (--ram {ram})" if ram else "")
            parts = len(e["plan"]["layers"][0]["parts"])
            rows.append(f"| {e['model_type']} ({e['num_layers']} layers) | {shown} | {e['plan']['micro_batch_sequences']} | "
                        f"{e['plan']['hidden_placement']} | {parts} | {gib(predicted)} | {gib(measured)} | {error * 100:+.1f}% | "
                        f"{'yes' if measured <= budget_bytes else 'NO'} | {halved} |")
    print("| model | --vram | micro-batch | hidden states | parts per layer | predicted peak | measured peak | error | within budget | halved |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
