#!/usr/bin/env python3
"""Issue 19 goal 5: `--compute-dtype f16` finds the same outlier features and massive
activations as bf16. WORK holds `<fixture>-bf16`, `<fixture>-f16`, `<fixture>-f16-sm75` and
`<fixture>-f32` analyze folders (f16_check_gpu.sh). Per fixture and f16 run, compares with the
bf16 run: every outlier group's dimensions per reading, the massive activations' total, layers
and dimensions. Where they differ, says for each differing dimension which of bf16 and f16
agrees with the f32 run (a borderline dimension can fall either side of the threshold with
bf16's 8 bits or f16's 11). Exit 1 when any differ.

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


def explain(bf16, f16, f32):
    """Prints each reading whose dimensions differ, and which run the f32 one agrees with."""
    for index, ((points, readings_b), (_, readings_h)) in enumerate(zip(bf16[0], f16[0])):
        for reading, (b, h) in enumerate(zip(readings_b, readings_h)):
            if b == h:
                continue
            only_b, only_h = sorted(set(b[2]) - set(h[2])), sorted(set(h[2]) - set(b[2]))
            verdict = ""
            if f32 is not None:
                ref = set(f32[0][index][1][reading][2])
                verdict = (
                    f"; f32 has {sorted(ref & set(only_b + only_h))} of them"
                    f" (f16 agrees with f32: {ref & set(only_b + only_h) == set(only_h)})"
                )
            print(f"  group {index} {points} {b[0]} {b[1]}: bf16 only {only_b}, f16 only {only_h}{verdict}")
    if bf16[1] != f16[1]:
        print(f"  massive activations: bf16 {bf16[1]}, f16 {f16[1]}, f32 {f32[1] if f32 else '-'}")


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
                print(f"DIFFERS {name} {mode}")
                reference = work / f"{name}-f32" / "report.json"
                f32 = findings(json.loads(reference.read_text())) if reference.exists() else None
                explain(expected, got, f32)
    print(f"{same} same, {differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
