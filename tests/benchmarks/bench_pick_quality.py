"""Benchmark: is tuner's pick the config a full grid would have found, at a fraction of its compute? (issue 18)

On one small space (default imgsz 256, 320, 416 x batch 2, 4) of a kind of tests/benchmarks/kinds.py (96 train /
32 val images; the shapes base checkpoint, pretrained at imgsz 256) or the embedded shapes:
- tuner: the default `tuner probe` over that space (`--imgsz`, `--batch`; mosaic and mixup searched as usual);
- the grid: every imgsz x batch of the space trained in full (`tuner train-best --config`, `--epochs`), at one
  mosaic and mixup (`--grid-aug`, default 0.6,0.15: the middle of the default ranges), so that a new probe of the same
  space reuses it; the pick trained the same way at its own mosaic and mixup (its grid cell where they are the grid's);
- the noise of a full training: the grid's best and the runner-up (or the pick's cell) trained again with `--seed 1`.

Prints the grid's cells side by side (mAP50-95 after the full training, wall time), where the pick ranks, its gap to
the grid's best against the full training's seed noise (goal: within it), and the probe's wall time against the
grid's (goal: at most a quarter). Finished runs in `--workdir` are reused, so an interrupted run continues.

    python tests/benchmarks/bench_pick_quality.py --kind dense --workdir /tmp/pick-dense --epochs 30   # ~50 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

from bench_train_best import kind_inputs  # noqa: E402

STUDY = "pick"


def tuner(args: list[str], cwd: Path, log: Path) -> float:
    """Run `python -m tuner ARGS` in `cwd`; its wall seconds; stop with its log's tail if it fails."""
    started = time.monotonic()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"tuner {' '.join(args)} exited {done.returncode}; see {log}\n{log.read_text()[-2000:]}")
    return time.monotonic() - started


def probe(workdir: Path, space: list[str], budget: str, extra: list[str]) -> tuple[dict, float]:
    """The default probe over `space` (reused when its best.yaml is there): best.yaml's values and the probe's wall s."""
    best_yaml = workdir / "results" / STUDY / "best.yaml"
    timing = workdir / "probe-seconds.json"
    if not best_yaml.exists():
        seconds = tuner(["probe", "--study-name", STUDY, "--device", "cpu", "--memory-budget", budget, *space, *extra],
                        workdir, workdir / "probe.log")  # fmt: skip
        timing.write_text(json.dumps(seconds))
    return yaml.safe_load(best_yaml.read_text()), json.loads(timing.read_text())


def full(workdir: Path, best: dict, imgsz: int, batch: int, aug: tuple[float, float], epochs: int, budget: str,
         seed: int = 0) -> dict:  # fmt: skip
    """train-best of imgsz x batch at mosaic, mixup `aug` (reused when done): mAP50-95, wall s, step-downs."""
    name = "full-%d-%d-%g-%g" % (imgsz, batch, *aug) + (f"-seed{seed}" if seed else "")
    summary_file = workdir / "results" / name / "train" / "summary.json"
    if not summary_file.exists():
        config = workdir / f"{name}.yaml"
        recipe = {key: best[key] for key in ("model", "data", "optimizer", "lr0")}
        config.write_text(yaml.safe_dump({**recipe, "imgsz": imgsz, "batch": batch, "mosaic": aug[0], "mixup": aug[1]}))
        tuner(["train-best", "--config", str(config), "--study-name", name, "--epochs", str(epochs), "--seed", str(seed),
               "--device", "cpu", "--memory-budget", budget, "--no-plots", "--quiet"], workdir, workdir / f"{name}.log")  # fmt: skip
    summary = json.loads(summary_file.read_text())
    if summary["epochs"] != epochs:
        raise SystemExit(f"{summary_file} holds {summary['epochs']} epochs, not {epochs}; pass another --workdir.")
    return {"map": (summary.get("metrics") or {}).get("mAP50-95"), "seconds": summary.get("wall_s") or 0.0,
            "step_downs": len(summary.get("step_downs") or [])}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kind", choices=("shapes", "thin", "dense"), default="dense")
    parser.add_argument("--epochs", type=int, default=30, help="the full trainings' epochs (default: 30)")
    parser.add_argument("--imgsz", default="256,320,416")
    parser.add_argument("--batch", default="2,4")
    parser.add_argument("--memory-budget", default="3GB")
    parser.add_argument("--grid-aug", default="0.6,0.15", help="MOSAIC,MIXUP of every grid cell (default: 0.6,0.15)")
    parser.add_argument("--probe-args", default="", help="more flags for tuner probe, e.g. '--probe-epochs 6'")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    extra = (kind_inputs(args.kind, workdir) if args.kind != "shapes" else []) + args.probe_args.split()
    best, probe_s = probe(workdir, ["--imgsz", args.imgsz, "--batch", args.batch], args.memory_budget, extra)
    pick = (int(best["imgsz"]), int(best["batch"]))
    pick_aug = (float(best["mosaic"]), float(best["mixup"]))  # exact: only the run's name rounds them (%g)
    aug = tuple(float(v) for v in args.grid_aug.split(","))
    print(f"pick: {pick[0]} / {pick[1]} / {pick_aug[0]:g} / {pick_aug[1]:g}, probe {probe_s / 60:.1f} min", flush=True)
    cells = [(int(i), int(b)) for i in args.imgsz.split(",") for b in args.batch.split(",")]
    grid = {}
    for imgsz, batch in cells:
        grid[(imgsz, batch)] = full(workdir, best, imgsz, batch, aug, args.epochs, args.memory_budget)
        print(f"{imgsz} / {batch}: {grid[(imgsz, batch)]}", flush=True)
    picked = full(workdir, best, *pick, pick_aug, args.epochs, args.memory_budget)
    order = sorted((cell for cell in cells if grid[cell]["map"] is not None), key=lambda cell: -grid[cell]["map"])
    if len(order) < 2 or pick not in order or picked["map"] is None:
        raise SystemExit("the pick's training or too many grid cells have no mAP50-95: see the logs in --workdir")
    top = order[0]
    again = [top, pick if pick != top else order[1]]
    noise = {cell: full(workdir, best, *cell, aug, args.epochs, args.memory_budget, seed=1) for cell in again}
    gaps = [abs(noise[cell]["map"] - grid[cell]["map"]) for cell in again]
    spread = sum(gaps) / len(gaps)
    grid_s = sum(row["seconds"] for row in grid.values())

    print(f"\n{args.kind} dataset, 2 CPU cores, {args.memory_budget}; grid: train-best {args.epochs} epochs at mosaic "
          f"{aug[0]:g} / mixup {aug[1]:g}\n")  # fmt: skip
    print("| imgsz / batch | mAP50-95 (seed 0) | seed 1 | rank | wall |")
    print("|---|---|---|---|---|")
    for cell in cells:
        row = grid[cell]
        seeded = f"{noise[cell]['map']:.3f}" if cell in noise else ""
        mark = " (pick)" if cell == pick else ""
        value = "-" if row["map"] is None else f"{row['map']:.3f}"
        rank = order.index(cell) + 1 if cell in order else "-"
        downs = f", {row['step_downs']} step-down(s)" if row["step_downs"] else ""
        print(f"| {cell[0]} / {cell[1]}{mark} | {value} | {seeded} | {rank} | {row['seconds'] / 60:.1f} min{downs} |")
    gap = grid[top]["map"] - picked["map"]
    print(f"\npick {pick[0]} / {pick[1]} / {pick_aug[0]:g} / {pick_aug[1]:g}: {picked['map']:.3f} after {args.epochs} "
          f"epochs ({picked['seconds'] / 60:.1f} min); its cell ranks {order.index(pick) + 1} of {len(order)} in the grid")
    print(f"the pick is {gap:.3f} below the grid's best "
          f"{top[0]} / {top[1]}; a full training's seed noise (mean |seed 0 - seed 1| over {len(again)}): {spread:.3f} "
          f"-> {'within' if gap <= spread else 'outside'} the noise")  # fmt: skip
    print(f"compute: probe {probe_s / 60:.1f} min against the grid's {grid_s / 60:.1f} min ({probe_s / grid_s:.0%}; goal "
          "at most 25%)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
