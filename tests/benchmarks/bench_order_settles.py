"""Benchmark: how early does a full training's own order settle? (the ceiling of any short probe)

Reads the 40-epoch trainings a `bench_fidelity.py` run left in `--workdir` (results/full-*/train/results.csv,
Ultralytics' per-epoch validation) and ranks the configs at each epoch k of their own trainings against their
final metric. A probe that trained exactly the first k epochs of the full training, schedule and all, would rank
them like that; a probe of k epochs with its own schedule has no more to go on. Printed beside it: the rank of
each training's first k epochs extrapolated to the last epoch by a least-squares fit (linear in log k, in √k and
in k), the "learning-curve" reading of the same epochs. No training runs: it takes seconds.

    python tests/benchmarks/bench_order_settles.py --workdir /tmp/fidelity-thin
    python tests/benchmarks/bench_order_settles.py --workdir /tmp/fidelity-thin --epochs 3,6,10,20,30
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fidelity import spearman  # noqa: E402

FITS: dict[str, Callable[[float], float]] = {"log k": math.log, "√k": math.sqrt, "k": lambda k: k}


def curves(workdir: Path) -> dict[str, list[float]]:
    """mAP50-95 per epoch of each full training in `workdir`, by its folder's name (`full-IMGSZ-BATCH-...`)."""
    found = {}
    for path in sorted(workdir.glob("results/full-*/train/results.csv")):
        rows = list(csv.DictReader(path.open()))
        column = next(key for key in rows[0] if "mAP50-95" in key)
        found[path.parents[1].name.removeprefix("full-")] = [float(row[column]) for row in rows]
    return found


def extrapolated(values: list[float], to_epoch: int, f: Callable[[float], float]) -> float:
    """`values` (epochs 1..k) fitted as a + b·f(epoch) by least squares, read at `to_epoch`."""
    xs = [f(epoch) for epoch in range(1, len(values) + 1)]
    mean_x, mean_y = sum(xs) / len(xs), sum(values) / len(values)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values)) / spread if spread else 0.0
    return mean_y + slope * (f(to_epoch) - mean_x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a bench_fidelity.py --workdir with its full trainings")
    parser.add_argument("--epochs", default="3,6,10,15,20,25,30", help="the epochs k to rank at (default: %(default)s)")
    args = parser.parse_args(argv)
    found = curves(args.workdir)
    if len(found) < 3:
        print(f"{args.workdir} holds {len(found)} full trainings (results/full-*/train/results.csv); run "
              "bench_fidelity.py there first.", file=sys.stderr)  # fmt: skip
        return 2
    names, last = list(found), min(len(curve) for curve in found.values())
    final = [found[name][last - 1] for name in names]
    ks = [k for k in (int(text) for text in args.epochs.split(",")) if 2 <= k < last]
    print(f"{len(names)} full trainings of {last} epochs in {args.workdir}; mAP50-95 at epoch k:\n")
    print("| config | " + " | ".join(f"epoch {k}" for k in ks) + f" | epoch {last} |")
    print("|---" * (len(ks) + 2) + "|")
    for name in names:
        print(f"| {name} | " + " | ".join(f"{found[name][k - 1]:.3f}" for k in ks) + f" | {found[name][last - 1]:.3f} |")
    print(f"\nSpearman's ρ with the epoch-{last} order (goal of a probe: >= 0.8):\n")
    print("| ranked by | " + " | ".join(f"k = {k}" for k in ks) + " |")
    print("|---" * (len(ks) + 1) + "|")
    rows = {"epoch k": lambda curve, k: curve[k - 1], "mean of epochs k-2..k": lambda curve, k: sum(curve[k - 3 : k]) / 3}
    rows |= {f"epochs 1..k fitted in {label}, read at {last}": (lambda f: lambda curve, k: extrapolated(curve[:k], last, f))(f)
             for label, f in FITS.items()}  # fmt: skip
    for label, read in rows.items():
        print(f"| {label} | " + " | ".join(f"{spearman([read(found[n], k) for n in names], final):.2f}" for k in ks) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
