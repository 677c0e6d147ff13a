#!/usr/bin/env python3
"""Issue 19 goal 5: `--compute-dtype f16` finds the same outlier features and massive
activations as bf16. WORK holds `<fixture>-bf16`, `<fixture>-f16` and `<fixture>-f16-sm75`
analyze folders (f16_check_gpu.sh). Per fixture and f16 run, compares with the bf16 run: every
outlier group's dimensions per reading, the massive activations' total, layers and
dimensions, and prints what f16's overflow guard recomputed (from the run's log line).
Exit 1 when any differ.

    f16_reports.py WORK
"""
import json
import pathlib
import sys


def findings(report):
    groups = [
        (
            tuple(g["points"]),
            [
                (r["layer_reading"], r["position_reading"], [d["dim"] for d in r["dims"]])
                for r in g["readings"]
            ],
        )
        for g in report["outlier_features"]
    ]
    m = report["massive_activations"]
    massive = (m["total"], m["layers_with"], m["dims"], m["per_token_median_total"])
    return groups, massive


def main():
    work = pathlib.Path(sys.argv[1])
    same = differ = 0
    for bf16_dir in sorted(work.glob("*-bf16")):
        name = bf16_dir.name[: -len("-bf16")]
        expected = findings(json.loads((bf16_dir / "report.json").read_text()))
        for mode in ("f16", "f16-sm75"):
            path = work / f"{name}-{mode}" / "report.json"
            if not path.exists():
                print(f"MISSING {name} {mode}")
                differ += 1
                continue
            got = findings(json.loads(path.read_text()))
            outliers = sum(len(r[2]) for _, readings in expected[0] for r in readings)
            if got == expected:
                same += 1
                print(f"same    {name} {mode}: {outliers} outlier dims, {expected[1][0]} massive")
            else:
                differ += 1
                print(f"DIFFERS {name} {mode}:\n  bf16 {expected}\n  f16  {got}")
    print(f"{same} same, {differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
