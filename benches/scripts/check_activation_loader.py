#!/usr/bin/env python3
"""Runs README's PyTorch loader (the python block of its "Activation dumps" section) on an
analysis folder whose activations were saved in bf16 shards, and checks what it yields
against the f32 dump of the same run rounded to bf16 (torch's rounding).

    check_activation_loader.py README.md BF16_OUT F32_OUT LAYER POINT
"""

import json
import os
import re
import sys

import torch
from safetensors.torch import load_file


def loader_source(readme):
    text = open(readme).read()
    start = text.index("## Activation dumps") if "## Activation dumps" in text else text.index("### Activation dumps")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    # The README's last line builds a DataLoader over "layerstream-out"; keep the class.
    return block.split("\nloader =")[0]


def main():
    readme, bf16_out, f32_out, layer, point = sys.argv[1:6]
    namespace = {}
    exec(loader_source(readme), namespace)
    dataset = namespace["Activations"](bf16_out, int(layer), point)
    rows = torch.stack(list(dataset))
    f32_dir = os.path.join(f32_out, "activations")
    index = json.load(open(os.path.join(f32_dir, "index.json")))
    full = torch.cat([
        load_file(os.path.join(f32_dir, s["path"]))["activations"]
        for s in index["shards"] if s["layer"] == int(layer) and s["point"] == point
    ])
    rounded = full.to(torch.bfloat16).float()
    shards = len([s for s in json.load(open(os.path.join(bf16_out, "activations", "index.json")))["shards"]
                  if s["layer"] == int(layer) and s["point"] == point])
    same = torch.equal(rows, rounded)
    print(f"README loader: {rows.shape[0]} rows x {rows.shape[1]} from {shards} bf16 shards; "
          f"equal to the f32 dump rounded by torch: {same}")
    sys.exit(0 if same and shards > 1 else 1)


if __name__ == "__main__":
    main()
