#!/usr/bin/env python3
"""Sums Nsight Compute's per-kernel durations by kernel name.

Usage: kernel_summary.py NCU_CSV [WALL_SECONDS]
NCU_CSV from `ncu --metrics gpu__time_duration.sum --csv --log-file NCU_CSV <command>`.
Prints a markdown table (kernel, launches, total, share, mean) and, given the pipeline's
wall seconds (measured without ncu), the share of it the kernels account for.
"""
import csv
import sys

UNITS = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0, "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def short(name):
    name = name.split("(")[0]
    return name if len(name) <= 70 else name[:67] + "..."


def main():
    rows = []
    with open(sys.argv[1]) as f:
        lines = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", "")) * UNITS[row["Metric Unit"]]
        rows.append((short(row["Kernel Name"]), value))
    by_name = {}
    for name, seconds in rows:
        count, total = by_name.get(name, (0, 0.0))
        by_name[name] = (count + 1, total + seconds)
    total = sum(t for _, t in by_name.values())
    print("| kernel | launches | total | share | mean |")
    print("| --- | --- | --- | --- | --- |")
    for name, (count, seconds) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:30]:
        print(f"| `{name}` | {count} | {seconds * 1e3:.1f} ms | {seconds / total * 100:.1f}% | "
              f"{seconds / count * 1e6:.1f} us |")
    print(f"\n{len(rows)} kernels, {total:.3f} s of kernel time")
    if len(sys.argv) > 2:
        wall = float(sys.argv[2])
        print(f"pipeline {wall:.3f} s without the profiler: kernels {total / wall * 100:.0f}% of it, "
              f"{wall - total:.3f} s elsewhere (host work, synchronisation, gaps)")


if __name__ == "__main__":
    main()
