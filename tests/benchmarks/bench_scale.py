"""Benchmark: does the default probe's cost stay put when the dataset grows tenfold? (issue 18, "Scale")

On a kind of tests/benchmarks/kinds.py (with the shapes base checkpoint, pretrained at imgsz 256), the default
`tuner probe` (no space flags, the default probe budget and sample) runs on a small dataset and on one ten times
larger, one after the other, each in a fresh study. Printed side by side: the probe's wall time, its cost against
the predicted 40-epoch training of the config it picks (the summary's `cost`), the plan line, the trials by outcome,
and any trial that ended at its timeout. Goals: the large dataset's wall time within 1.5x of the small one's, at
most 15% of the training it picks, no trial ending in a timeout.

    python tests/benchmarks/bench_scale.py --workdir /tmp/bench-scale                  # ~30-40 min on 2 CPU cores
    python tests/benchmarks/bench_scale.py --workdir /tmp/bench-scale --kind dense --small 64 --factor 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).parent))

import kinds  # noqa: E402

from tuner import config as configs  # noqa: E402
from tuner.study import inputs as tuner_inputs  # noqa: E402

GOAL_GROWTH, GOAL_SHARE = 1.5, 0.15


def run_probe(kind: str, n_train: int, workdir: Path, budget: str) -> dict:
    """The default probe on `n_train` train images (a third as many val images), in a study of its own; reused when
    the workdir holds its result."""
    name = f"{kind}-{n_train}"
    cached = workdir / f"{name}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    data = kinds.build(kind, workdir / "data" / name, n_train, max(16, n_train // 3))
    model = tuner_inputs.model(configs.load(None, {}).model, embedded=True)  # the shapes base checkpoint
    command = [sys.executable, "-m", "tuner", "probe", "--data", str(data), "--model", str(model), "--device", "cpu",
               "--memory-budget", budget, "--study-name", name, "--studies-dir", str(workdir / "studies"),
               "--results-dir", str(workdir / "results"), "--json"]  # fmt: skip
    started = time.monotonic()
    with open(workdir / f"{name}.log", "w") as log:
        done = subprocess.run(command, cwd=workdir, stdout=subprocess.PIPE, stderr=log, text=True)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{name}: tuner probe exited {done.returncode}; see {workdir / f'{name}.log'}")
    summary = json.loads(done.stdout)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / f'{name}.db'}")
    timeouts = [t.number for t in study.trials  # the trial's error (or pruned reason) names its timeout
                if any("timeout (probe.trial_timeout)" in str(t.user_attrs.get(key, "")) for key in ("error", "pruned_reason"))]
    plan = next((line for line in (workdir / f"{name}.log").read_text().splitlines() if line.startswith("Plan: ")), "")
    result = {"n_train": n_train, "wall_s": round(wall, 1), "summary": summary, "timeouts": timeouts, "plan": plan}
    cached.write_text(json.dumps(result, indent=2))
    return result


def probe_times(workdir: Path, name: str) -> tuple[list[float], float]:
    """The seconds of each probe that ran (a process: inferred trials took none), and of the floor's probes with the
    pre-flights (the startup design and the first repeat: what a run takes whatever its budget)."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / f'{name}.db'}")
    ran = [t for t in study.trials if t.user_attrs.get("duration_s") and not t.user_attrs.get("inferred_from")]
    design = [t for t in ran if str(t.user_attrs.get("slot", "")).startswith("startup:")]
    repeat = [t for t in ran if t.user_attrs.get("repeat_of") is not None][:1]
    preflights = float((study.user_attrs.get("limits") or {}).get("seconds") or 0.0)
    return [t.user_attrs["duration_s"] for t in ran], preflights + sum(t.user_attrs["duration_s"] for t in design + repeat)


def budget_lines(workdir: Path, result: dict) -> list[str]:
    """What the run said of its budget once the best config moved it."""
    log = workdir / f"{result['summary']['study']}.log"
    return [line for line in log.read_text().splitlines() if line.startswith("Budget: ")] if log.exists() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kind", choices=tuple(kinds.KINDS), default="thin")
    parser.add_argument("--small", type=int, default=96, help="train images of the small dataset")
    parser.add_argument("--factor", type=int, default=10, help="how many times larger the large dataset is")
    parser.add_argument("--memory-budget", default="3GB")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    small = run_probe(args.kind, args.small, args.workdir, args.memory_budget)
    large = run_probe(args.kind, args.small * args.factor, args.workdir, args.memory_budget)

    print(f"\n{args.kind}, default tuner probe, memory budget {args.memory_budget}, 2 CPU cores\n")
    print("| train images | probe wall | probes run, mean | floor (design + 1 repeat) | probe / predicted training "
          "of the pick | pick | outcomes | timeouts |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for result in (small, large):
        summary = result["summary"]
        cost = summary.get("cost") or {}
        share = f"{cost['probe_s'] / cost['training_s']:.0%}" if cost.get("training_s") else "-"
        best = summary.get("best")
        pick = "none" if not best else "{imgsz}/{batch}/{mosaic:g}/{mixup:g}".format(**best["params"])
        outcomes = ", ".join(f"{count} {outcome}" for outcome, count in summary["counts"].items() if count)
        runs, floor_s = probe_times(args.workdir, result["summary"]["study"])
        print(f"| {result['n_train']} | {result['wall_s'] / 60:.1f} min | {len(runs)}, {sum(runs) / max(1, len(runs)):.0f} s "
              f"| {floor_s / 60:.1f} min | {share} | {pick} | {outcomes} | {len(result['timeouts'])} |")  # fmt: skip
    for result in (small, large):
        print(f"{result['n_train']} images: {result['plan']}")
        print(f"{result['n_train']} images: " + " ".join(budget_lines(args.workdir, result)))
    growth = large["wall_s"] / small["wall_s"]
    cost = large["summary"].get("cost") or {}
    share = cost["probe_s"] / cost["training_s"] if cost.get("training_s") else None
    print(f"\nwall time x{growth:.2f} for x{args.factor} the images (goal <= x{GOAL_GROWTH}); the large probe is "
          + (f"{share:.0%}" if share is not None else "-") + f" of its pick's training (goal <= {GOAL_SHARE:.0%}); "
          f"timeouts: {len(small['timeouts']) + len(large['timeouts'])} (goal 0)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
