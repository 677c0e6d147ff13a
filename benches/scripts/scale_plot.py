#!/usr/bin/env python3
"""Draws the scale curve (issue 19, goal 3) from scale_curve.sh's results: wall seconds per
sequence (process start to exit) against the workload's sequences, one line per tool and
shape, log-scaled x. Writes an SVG (no plotting library needed) and prints a markdown table
with each size's ratio transformers / layerstream.

Usage: scale_plot.py OUT_DIR SVG_PATH   (reads OUT_DIR/*/results.jsonl)
"""
import glob
import json
import math
import os
import sys

COLOURS = {"layerstream": "#1f77b4", "transformers": "#d62728"}
DASHES = ["", "6,3", "2,2", "8,2,2,2"]


def load(out_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, "*", "results.jsonl"))):
        rows += [json.loads(line) for line in open(path) if line.strip()]
    return [r for r in rows if r.get("exit") == 0]


def table(rows):
    lines = ["| shape | sequences | layerstream | transformers | transformers / layerstream |",
             "| --- | --- | --- | --- | --- |"]
    keys = sorted({(r["shape"], r["num_samples"]) for r in rows})
    for shape, n in keys:
        by_tool = {r["tool"]: r["wall_seconds"] for r in rows if (r["shape"], r["num_samples"]) == (shape, n)}
        ours, theirs = by_tool.get("layerstream"), by_tool.get("transformers")
        ratio = f"{theirs / ours:.2f}x" if ours and theirs else "-"
        cell = lambda s: f"{s:.1f} s ({s / n:.3f} s/seq)" if s else "-"
        lines.append(f"| {shape} | {n} | {cell(ours)} | {cell(theirs)} | {ratio} |")
    return "\n".join(lines)


def svg(rows, path):
    width, height, left, bottom, top, right = 720, 420, 70, 50, 30, 190
    sizes = sorted({r["num_samples"] for r in rows})
    per_seq = [r["wall_seconds"] / r["num_samples"] for r in rows]
    x0, x1 = math.log2(min(sizes)), math.log2(max(sizes))
    y0, y1 = math.log10(min(per_seq)) - 0.05, math.log10(max(per_seq)) + 0.05
    px = lambda n: left + (math.log2(n) - x0) / max(x1 - x0, 1e-9) * (width - left - right)
    py = lambda s: height - bottom - (math.log10(s) - y0) / (y1 - y0) * (height - bottom - top)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="18" font-size="14">Wall seconds per 2048-token sequence (log), process start to exit</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>']
    for n in sizes:
        parts.append(f'<text x="{px(n):.1f}" y="{height - bottom + 16}" text-anchor="middle">{n}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">sequences in the workload</text>')
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if y0 <= math.log10(v) <= y1:
                parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
                parts.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{width - right}" y2="{py(v):.1f}" stroke="#ddd"/>')
    shapes = sorted({r["shape"] for r in rows})
    legend_y = top + 10
    for si, shape in enumerate(shapes):
        for tool in ("layerstream", "transformers"):
            points = sorted((r["num_samples"], r["wall_seconds"] / r["num_samples"]) for r in rows
                            if r["shape"] == shape and r["tool"] == tool)
            if not points:
                continue
            path_d = " ".join(f"{'M' if i == 0 else 'L'}{px(n):.1f},{py(s):.1f}" for i, (n, s) in enumerate(points))
            dash = DASHES[si % len(DASHES)]
            parts.append(f'<path d="{path_d}" fill="none" stroke="{COLOURS[tool]}" stroke-width="2" stroke-dasharray="{dash}"/>')
            for n, s in points:
                parts.append(f'<circle cx="{px(n):.1f}" cy="{py(s):.1f}" r="3" fill="{COLOURS[tool]}"/>')
            lx = width - right + 10
            parts.append(f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 24}" y2="{legend_y}" stroke="{COLOURS[tool]}" stroke-width="2" stroke-dasharray="{dash}"/>')
            parts.append(f'<text x="{lx + 30}" y="{legend_y + 4}">{tool}, {shape}</text>')
            legend_y += 18
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    rows = load(sys.argv[1])
    if not rows:
        sys.exit(f"no finished runs under {sys.argv[1]}")
    print(table(rows))
    svg(rows, sys.argv[2])
    print(f"\nplot: {sys.argv[2]}")


if __name__ == "__main__":
    main()
