"""Benchmark: does the memory model predict the peaks of configs it never saw, on data of other kinds?

For each kind (the embedded shapes; `thin` cracks at 480 px and `dense` small objects at 640 px from
tests/benchmarks/kinds.py, with the shapes base checkpoint pretrained at imgsz 256), under one memory budget:
1. the mapping `tuner probe` runs first (tuner.study.limits.map_limits, the derived space): its pre-flights,
   the model fitted to them and the leave-one-out error the study reports;
2. then pre-flights of configs the mapping never measured, inside the frontier (imgsz between measured sizes,
   at every batch), each compared with the model's prediction and with its upper bound (the prediction plus the
   model's own margin, what "predicted stable" decisions use).

Prints, per kind and side by side with the goal (held-out error median 5%, max 10%): the leave-one-out error,
the error on the unseen configs, and how many unseen peaks stayed under the upper bound. Each row of step 2 is
printed too, so a miss shows where the law fails (dense boxes, large batches at small imgsz).

    python tests/benchmarks/bench_memory_model.py --workdir /tmp/bench-memory              # ~10 min on 2 CPU cores
    python tests/benchmarks/bench_memory_model.py --workdir /tmp/bench-memory --kinds dense --unseen 8
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_fidelity import inputs_of  # noqa: E402

from tuner import config as configs  # noqa: E402
from tuner.data import datasets  # noqa: E402
from tuner.memory import device as devices  # noqa: E402
from tuner.memory.budget import parse_budget  # noqa: E402
from tuner.memory.model import Measurement, MemoryModel  # noqa: E402
from tuner.study import derive, limits  # noqa: E402
from tuner.study.inputs import Inputs  # noqa: E402
from tuner.study.progress import Progress  # noqa: E402

GOAL_MEDIAN, GOAL_MAX = 0.05, 0.10


def unseen_configs(found: limits.Limits, sizes: tuple[int, ...], count: int) -> list[tuple[int, int]]:
    """Up to `count` (imgsz, batch) inside the frontier that no pre-flight measured, spread over the batches and
    over each batch's fitting sizes (the middle first, then the ends)."""
    measured = {(taken.imgsz, taken.batch) for taken in found.frontier.measurements}
    per_batch = []
    for entry in found.frontier.entries:
        if entry.imgsz is None:
            continue
        fitting = [size for size in sizes if size <= entry.imgsz and (size, entry.batch) not in measured]
        middle = len(fitting) // 2
        per_batch.append([(fitting[index], entry.batch) for index in sorted(range(len(fitting)), key=lambda i: abs(i - middle))])
    chosen: list[tuple[int, int]] = []
    while len(chosen) < count and any(per_batch):
        for configs_of_batch in per_batch:
            if configs_of_batch and len(chosen) < count:
                chosen.append(configs_of_batch.pop(0))
    return chosen


def run_kind(kind: str, workdir: Path, budget_text: str, count: int) -> dict:
    cfg = configs.load(None, {"memory_budget": budget_text})
    data, model = inputs_of(kind, workdir / kind)  # a kind's data in a folder of its own
    data = datasets.check_dataset(data, out_dir=workdir / kind / "resolved")
    space, notes = derive.resolve(cfg.space, data)
    cfg = dataclasses.replace(cfg, space=space)
    device = devices.resolve("cpu")
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    inputs = Inputs(cfg, device, budget, data, model, workdir / kind / "trials")
    progress = Progress(0, budget, cfg.metric_name)
    for note in notes:
        progress.say(note)
    found = limits.map_limits(inputs, progress)
    if found.model is None:
        raise SystemExit(f"{kind}: the pre-flights fitted no memory model ({len(found.frontier.measurements)} measured)")
    progress.say(f"{kind}: {found.model.describe()}")
    preflight = limits.Preflight(inputs, progress)
    rows = []
    for imgsz, batch in unseen_configs(found, space.imgsz, count):
        taken: Measurement = preflight(imgsz, batch)
        if taken.oom:
            rows.append((imgsz, batch, None, found.model.predict(imgsz, batch, space.mosaic[1], space.mixup[1]), False))
            continue
        rows.append((imgsz, batch, taken.peak_mb, found.model.predict(imgsz, batch, space.mosaic[1], space.mixup[1]),
                     taken.peak_mb <= found.model.upper(imgsz, batch, space.mosaic[1], space.mixup[1])))  # fmt: skip
    return {"found": found, "rows": rows, "model": found.model}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kinds", default="shapes,thin,dense", help="comma-separated: shapes, thin, dense")
    parser.add_argument("--memory-budget", default="3GB")
    parser.add_argument("--unseen", type=int, default=6, help="unseen configs pre-flighted per kind")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {kind: run_kind(kind, args.workdir, args.memory_budget, args.unseen) for kind in args.kinds.split(",")}

    print(f"\nmemory budget {args.memory_budget}, 2 CPU cores; goal: held-out error median {GOAL_MEDIAN:.0%}, max {GOAL_MAX:.0%}\n")
    for kind, result in results.items():
        print(f"{kind}: {len(result['found'].frontier.measurements)} pre-flights in {result['found'].seconds:.0f} s; "
              f"{result['model'].describe()}")  # fmt: skip
        print("  imgsz  batch  peak MiB  predicted  error   under the upper bound")
        for imgsz, batch, peak, predicted, covered in result["rows"]:
            error = "" if peak is None else f"{(predicted - peak) / peak:+.1%}"
            shown = "OOM" if peak is None else f"{peak:.0f}"
            print(f"  {imgsz:5d}  {batch:5d}  {shown:>8}  {predicted:9.0f}  {error:>6}   {'yes' if covered else 'NO'}")
    print("\n| kind | pre-flights | leave-one-out median / max | unseen configs median / max | unseen under the bound | goal |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, result in results.items():
        model: MemoryModel = result["model"]
        errors = [abs(predicted - peak) / peak for _, _, peak, predicted, _ in result["rows"] if peak is not None]
        unseen = f"{statistics.median(errors):.1%} / {max(errors):.1%}" if errors else "-"
        loo = f"{model.median_error:.1%} / {model.max_error:.1%}" if model.median_error is not None else "-"
        covered = sum(1 for row in result["rows"] if row[4])
        print(f"| {kind} | {len(result['found'].frontier.measurements)} | {loo} | {unseen} | {covered} of "
              f"{len(result['rows'])} | {GOAL_MEDIAN:.0%} / {GOAL_MAX:.0%} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
