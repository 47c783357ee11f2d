"""Benchmark: does `tuner probe --workers 2` pay on this machine? One worker against two, same study settings.

On the embedded dataset, the same space, budget and number of trials, each in a fresh folder: `tuner probe
--workers 1`, then `--workers 2` (the budget then split between them). Printed side by side: the wall time of
the whole probe (pre-flights included), the trial time (first trial start to last trial end), the mean
duration of one probe, and the best stable metric. Run it alone: two trainings at once are what it measures.

    python tests/benchmarks/bench_workers.py --workdir /tmp/bench-workers       # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna

NAME = "workers"


def run(workdir: Path, workers: int, args: argparse.Namespace) -> dict:
    folder = workdir / f"workers-{workers}"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tuner", "probe", "--study-name", NAME, "--device", "cpu",
               "--memory-budget", args.memory_budget, "--n-trials", str(args.n_trials), "--imgsz", args.imgsz,
               "--batch", args.batch, "--repeats", "0", "--race", "0", "--workers", str(workers), "--quiet"]  # fmt: skip
    started = time.monotonic()
    with open(folder / "tuner.log", "w") as log:
        done = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"--workers {workers} failed ({done.returncode}); see {folder / 'tuner.log'}")
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{folder / 'studies' / f'{NAME}.db'}")
    ran = [t for t in study.get_trials() if "duration_s" in t.user_attrs]
    starts = [t.datetime_start for t in ran]
    ends = [t.datetime_complete for t in ran]
    best = study.user_attrs.get("best") or {}
    return {
        "workers": workers,
        "wall_s": wall,
        "trial_span_s": (max(ends) - min(starts)).total_seconds() if ran else 0.0,
        "probe_s": statistics.mean(t.user_attrs["duration_s"] for t in ran) if ran else 0.0,
        "trials": len(ran),
        "best": best.get("value"),
        "budget_mb": study.user_attrs.get("budget_mb"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--memory-budget", default="8GB")
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--imgsz", default="160,224")
    parser.add_argument("--batch", default="2,4")
    args = parser.parse_args(argv)
    rows = [run(args.workdir, workers, args) for workers in (1, 2)]
    print(f"\nEmbedded dataset, CPU, budget {args.memory_budget}, {args.n_trials} trials, imgsz {args.imgsz} x batch {args.batch}\n")
    print("| | --workers 1 | --workers 2 |")
    print("|---|---|---|")
    lines = [
        ("budget of each trial, MiB", lambda r: f"{r['budget_mb']:.0f}"),
        ("probe wall time (pre-flights included), s", lambda r: f"{r['wall_s']:.0f}"),
        ("first trial start to last trial end, s", lambda r: f"{r['trial_span_s']:.0f}"),
        ("mean duration of one probe, s", lambda r: f"{r['probe_s']:.0f}"),
        ("trials run", lambda r: str(r["trials"])),
        ("best stable mAP50-95", lambda r: "-" if r["best"] is None else f"{r['best']:.3f}"),
    ]
    for name, cell in lines:
        print(f"| {name} | {cell(rows[0])} | {cell(rows[1])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
