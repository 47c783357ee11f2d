"""Benchmark: tuner's memory-aware search against a plain Optuna search, under a budget that puts the larger
configs out of reach; and how well tuner's memory model predicts.

- tuner: `tuner probe` (pre-flights map the frontier, the accuracy search stays inside it), no repeats.
- plain: what a careful user would write without tuner: Optuna's TPE sampler (same seed), one
  `python -m tuner.study.probe_child` process per trial under the same psutil watchdog and budget, an OOM becomes a
  PRUNED trial, nothing more (no pre-flights, no inference, no constraints, no pruner).
Both search the same space with the same probe settings and the same number of trials (real processes).

Printed side by side: the share of trial time spent on configs that ran out of memory (pre-flights
included for tuner; goal <= 5%), the median time to an OOM verdict against a full probe's (goal <= 10%),
the best stable metric and the trials it took to reach it; for tuner's memory model, the leave-one-out
error (goal: median <= 5%, max <= 10%) and the share of probes inside the frontier that ran out of memory
or over the stable limit (goal 0). With `--grid`, every config of the space is also probed once (mosaic
and mixup fixed at the middle of their ranges), and each method's number of trials to reach the grid's
best stable metric is printed (goal: tuner >= 2x fewer).

    python tests/benchmarks/bench_search.py --workdir /tmp/bench-search                 # ~25 min on 2 CPU cores
    python tests/benchmarks/bench_search.py --workdir /tmp/bench-grid --grid --imgsz 160,256,352,448 --batch 2,4,8
    # then tuner alone with another pruner or seed, printed beside the rows already there:
    python tests/benchmarks/bench_search.py --workdir /tmp/bench-grid --imgsz 160,256,352,448 --batch 2,4,8 \
        --tuner-only --pruner median --seed 1
    # and the plain search with another seed (--plain-only), the same way
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner import config as configs
from tuner.memory import device as devices
from tuner.memory.budget import parse_budget
from tuner.params import Params
from tuner.process.contract import PROBE_CHILD, Outcome
from tuner.process.trial import run_child
from tuner.study import cost
from tuner.study import inputs as tuner_inputs
from tuner.study.inputs import Inputs
from tuner.study.space import suggest

DEFAULT_IMGSZ = "160,224,288,352,416,480,544,608"
DEFAULT_BATCH = "2,4,8,16"


def _overrides(args: argparse.Namespace) -> dict:
    return {
        "device": "cpu",
        "memory_budget": args.memory_budget,
        "n_trials": args.n_trials,
        "seed": args.seed,
        "space": {"imgsz": configs.parse_list(args.imgsz, "--imgsz", int),
                  "batch": configs.parse_list(args.batch, "--batch", int)},  # fmt: skip
        "probe": {"repeats": 0, "race": 0},
    }


def run_tuner(args: argparse.Namespace, workdir: Path) -> dict:
    """`tuner probe` in its own process; what it spent, found and predicted, from its study."""
    command = [sys.executable, "-m", "tuner", "probe", "--study-name", "tuner", "--device", "cpu",
               "--memory-budget", args.memory_budget, "--n-trials", str(args.n_trials), "--seed", str(args.seed),
               "--imgsz", args.imgsz, "--batch", args.batch, "--repeats", "0", "--race", "0", "--pruner", args.pruner,
               "--quiet"]  # fmt: skip
    started = time.monotonic()
    with open(workdir / "tuner.log", "w") as log:
        subprocess.run(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.monotonic() - started
    study = optuna.load_study(study_name="tuner", storage=f"sqlite:///{workdir / 'studies' / 'tuner.db'}")
    limits = study.user_attrs["limits"]
    limit = study.user_attrs["stable_limit_mb"]
    preflights = limits["preflights"]
    ran = [t for t in study.trials if "duration_s" in t.user_attrs]
    oom_time = sum(p["seconds"] or 0.0 for p in preflights if p["oom"]) + sum(
        t.user_attrs["duration_s"] for t in ran if t.user_attrs.get("outcome") == "oom")
    total = sum(p["seconds"] or 0.0 for p in preflights) + sum(t.user_attrs["duration_s"] for t in ran)
    over = [t for t in ran if t.user_attrs.get("outcome") == "oom" or (t.user_attrs.get("peak_mem_mb") or 0) > limit]
    model = limits.get("model") or {}
    return {
        "method": f"tuner ({args.pruner})", "wall_s": wall, "trial_s": total, "oom_s": oom_time,
        "oom_verdict_s": [p["seconds"] for p in preflights if p["oom"] and p["seconds"]],
        "probe_s": [t.user_attrs["duration_s"] for t in ran if t.state == TrialState.COMPLETE],
        "trials": _values(ran, limit), "processes": len(preflights) + len(ran),
        "model_median_error": model.get("median_error"), "model_max_error": model.get("max_error"),
        "inside_frontier_over": f"{len(over)} of {len(ran)}",
    }  # fmt: skip


def run_plain(args: argparse.Namespace, workdir: Path) -> dict:
    """Optuna TPE over the same space, one watched probe process per trial, OOM -> PRUNED, nothing more."""
    cfg = configs.load(None, _overrides(args))
    device = devices.resolve("cpu")
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    data, model = tuner_inputs.dataset(None), tuner_inputs.model(cfg.model, embedded=True)
    trials = Inputs(cfg, device, budget, data, model, workdir / "plain")
    limit = trials.stable_limit_mb
    durations: list[tuple[float, str]] = []

    def objective(trial: optuna.Trial) -> float:
        params = Params.of(suggest(trial, cfg.space))
        attempt = run_child(PROBE_CHILD, trials.spec(params, cfg.seed + trial.number), workdir / "plain" /
                            f"trial-{trial.number:04d}", device, budget, cost.trial_timeout(cfg.probe.trial_timeout, None))  # fmt: skip
        durations.append((attempt.duration_s, attempt.outcome.value))
        trial.set_user_attr("peak_mem_mb", attempt.peak_mb)
        trial.set_user_attr("outcome", attempt.outcome.value)
        if attempt.outcome == Outcome.OOM:
            raise optuna.TrialPruned(attempt.reason)
        if attempt.outcome != Outcome.OK:
            raise RuntimeError(attempt.reason)
        return attempt.value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                                storage=f"sqlite:///{workdir / 'plain.db'}", study_name="plain", load_if_exists=True)  # fmt: skip
    started = time.monotonic()
    study.optimize(objective, n_trials=cfg.n_trials, catch=(RuntimeError,))
    return {
        "method": "plain TPE", "wall_s": time.monotonic() - started, "trial_s": sum(d for d, _ in durations),
        "oom_s": sum(d for d, outcome in durations if outcome == "oom"),
        "oom_verdict_s": [d for d, outcome in durations if outcome == "oom"],
        "probe_s": [d for d, outcome in durations if outcome == "ok"],
        "trials": _values(study.trials, limit), "processes": len(durations),
        "model_median_error": None, "model_max_error": None, "inside_frontier_over": "-",
    }  # fmt: skip


def _values(trials, limit: float) -> list[float | None]:
    """Each real trial's metric if it was stable (completed under the stable limit), else None, in order."""
    out = []
    for trial in sorted(trials, key=lambda t: t.number):
        stable = trial.state == TrialState.COMPLETE and (trial.user_attrs.get("peak_mem_mb") or 0) <= limit
        out.append(trial.value if stable else None)
    return out


def run_grid(args: argparse.Namespace, workdir: Path) -> float | None:
    """Every imgsz x batch of the space probed once (mosaic, mixup at mid-range): the best stable metric."""
    cfg = configs.load(None, _overrides(args))
    device = devices.resolve("cpu")
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    trials = Inputs(cfg, device, budget, tuner_inputs.dataset(None), tuner_inputs.model(cfg.model, embedded=True),
                    workdir / "grid")  # fmt: skip
    best = None
    for imgsz in cfg.space.imgsz:
        for batch in cfg.space.batch:
            params = Params(imgsz, batch, sum(cfg.space.mosaic) / 2, sum(cfg.space.mixup) / 2)
            attempt = run_child(PROBE_CHILD, trials.spec(params, cfg.seed), workdir / "grid" / f"{imgsz}-{batch}",
                                device, budget, cost.trial_timeout(cfg.probe.trial_timeout, None))  # fmt: skip
            print(f"grid {params}: {attempt.outcome.value} {attempt.value} peak {attempt.peak_mb:.0f} MiB", flush=True)
            if attempt.outcome == Outcome.OK and attempt.peak_mb <= trials.stable_limit_mb:
                best = attempt.value if best is None else max(best, attempt.value)
    return best


def _reached(values: list[float | None], target: float | None) -> str:
    if target is None:
        return "-"
    hit = next((index + 1 for index, value in enumerate(values) if value is not None and value >= target), None)
    return "not reached" if hit is None else str(hit)


def table(rows: list[dict], grid_best: float | None, tolerance: float) -> str:
    lines = ["| | " + " | ".join(row["method"] for row in rows) + " |", "| --- |" + " --- |" * len(rows)]

    def line(name, values):
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    line("processes started", [str(row["processes"]) for row in rows])
    line("trial time, s", [f"{row['trial_s']:.0f}" for row in rows])
    line("share of it on configs that ran out of memory (goal <= 5%)", [f"{row['oom_s'] / max(row['trial_s'], 1e-9):.1%}" for row in rows])
    line("median time to an OOM verdict / median full probe (goal <= 10%)", [_ratio(row) for row in rows])
    line("best stable metric", [_best(row) for row in rows])
    line("trials to reach its own best", [_reached(row["trials"], max((v for v in row["trials"] if v is not None), default=None)) for row in rows])
    if grid_best is not None:
        line(f"trials to reach the grid's best ({grid_best:.4f} - {tolerance})", [_reached(row["trials"], grid_best - tolerance) for row in rows])
    line("memory model leave-one-out error, median / max (goal 5% / 10%)", [_errors(row) for row in rows])
    line("probes inside the frontier that ran out of memory or over the limit (goal 0)", [row["inside_frontier_over"] for row in rows])
    line("wall time, s", [f"{row['wall_s']:.0f}" for row in rows])
    return "\n".join(lines)


def _ratio(row: dict) -> str:
    if not row["oom_verdict_s"] or not row["probe_s"]:
        return "no OOM" if not row["oom_verdict_s"] else "-"
    verdict, probe = statistics.median(row["oom_verdict_s"]), statistics.median(row["probe_s"])
    return f"{verdict:.0f} s / {probe:.0f} s = {verdict / probe:.0%}"


def _best(row: dict) -> str:
    values = [value for value in row["trials"] if value is not None]
    return f"{max(values):.4f}" if values else "none stable"


def _errors(row: dict) -> str:
    if row["model_median_error"] is None:
        return "-"
    return f"{row['model_median_error']:.1%} / {row['model_max_error']:.1%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--memory-budget", default="1.5GB")
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--imgsz", default=DEFAULT_IMGSZ)
    parser.add_argument("--batch", default=DEFAULT_BATCH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", action="store_true", help="also probe every imgsz x batch once")
    parser.add_argument("--tolerance", type=float, default=0.005, help="how close to the grid's best counts as reaching it")
    parser.add_argument("--pruner", default="halving", choices=("halving", "median", "none"), help="tuner's pruner")
    parser.add_argument("--tuner-only", action="store_true",
                        help="run tuner alone (another --pruner or --seed in the same --workdir; the plain search and "
                        "the grid found there are reused)")  # fmt: skip
    parser.add_argument("--plain-only", action="store_true", help="run the plain search alone (another --seed), the same way")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    saved = args.workdir / "bench_search.json"
    alone = args.tuner_only or args.plain_only
    before = json.loads(saved.read_text()) if alone and saved.exists() else {"rows": [], "grid_best": None}
    if alone:  # the earlier rows of other methods and seeds, and this one added
        name = f"tuner ({args.pruner}), seed {args.seed}" if args.tuner_only else f"plain TPE, seed {args.seed}"
        workdir = args.workdir / (f"tuner-{args.pruner}-seed{args.seed}" if args.tuner_only else f"plain-seed{args.seed}")
        workdir.mkdir(exist_ok=True)
        row = run_tuner(args, workdir) if args.tuner_only else run_plain(args, workdir)
        rows = [row for row in before["rows"] if row["method"] != name] + [{**row, "method": name}]
        grid_best = before["grid_best"]
    else:
        rows = [run_tuner(args, args.workdir), run_plain(args, args.workdir)]
        grid_best = run_grid(args, args.workdir) if args.grid else None
    (args.workdir / "bench_search.json").write_text(json.dumps({"rows": rows, "grid_best": grid_best}, indent=2))
    print(f"Embedded dataset, 2 CPU cores, budget {args.memory_budget}, {args.n_trials} trials, "
          f"imgsz {args.imgsz} x batch {args.batch}")  # fmt: skip
    print(table(rows, grid_best, args.tolerance))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
