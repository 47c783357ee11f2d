"""Benchmark: a training-time budget that excludes the most accurate config (issue 19, §2).

From a finished study (the default `tuner probe` of `--kind`, run here unless `--workdir` already holds one, e.g. the
workdir bench_train_best.py left), with a time limit between the fastest stable config's predicted 40-epoch training
and the unbounded pick's:
- `tuner probe --train-time LIMIT` on the same study: the pick changes to the most accurate stable config predicted to
  fit (no new probe runs: the study is finished);
- `tuner train-best --train-time LIMIT` of that pick, into a results folder of its own: does it finish within LIMIT?

Printed side by side: each pick's config, probe metric and predicted training, and train-best's wall time and
mAP50-95 against the limit.

    python tests/benchmarks/bench_train_time.py --workdir /tmp/ootb-thin --kind thin     # 2 min there on 2 CPU cores
    python tests/benchmarks/bench_train_time.py --workdir /tmp/bench-time                # the embedded data: ~25 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).parent))

from bench_train_best import kind_inputs  # noqa: E402

from tuner.review import findings  # noqa: E402
from tuner.study.storage import storage_url  # noqa: E402


def tuner(args: list[str], cwd: Path, log: Path) -> tuple[float, str]:
    """Run `python -m tuner ARGS` in `cwd`: its wall seconds and stdout; stop with its log if it fails."""
    started = time.monotonic()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=handle,
                              text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"tuner {' '.join(args)} exited {done.returncode}; see {log}\n{done.stdout[-2000:]}")
    return time.monotonic() - started, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="holds (or gets) studies/ with one study")
    parser.add_argument("--kind", choices=("shapes", "thin", "dense"), default="shapes")
    parser.add_argument("--memory-budget", default="3GB")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    extra = kind_inputs(args.kind, workdir) if args.kind != "shapes" else []
    if not list((workdir / "studies").glob("*.db")):
        tuner(["probe", "--device", "cpu", "--memory-budget", args.memory_budget, *extra], workdir, workdir / "probe.log")
    name = next(path.stem for path in (workdir / "studies").glob("*.db"))
    url = storage_url(None, workdir / "studies", name)
    study = optuna.load_study(study_name=name, storage=url)
    trades = findings.read(study, workdir / "results", url).trades(count=100)
    timed = [trade for trade in trades if trade.train_s]
    if len(timed) < 2:
        raise SystemExit(f"{name} has {len(timed)} stable config(s) with a predicted training: nothing to trade")
    best, fastest = timed[0], min(timed, key=lambda trade: trade.train_s)
    if fastest.train_s >= best.train_s:
        raise SystemExit(f"the most accurate config ({best.params}) is also the fastest: no limit excludes it alone")
    limit_s = math.ceil(math.sqrt(best.train_s * fastest.train_s))  # between the two, on a log scale

    out = workdir / "train-time"  # results of its own: the workdir's results/ may hold a train-best run already
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    common = ["--study-name", name, "--studies-dir", str(workdir / "studies"), "--results-dir", str(out), "--json"]
    _, text = tuner(["probe", *common, "--train-time", f"{limit_s}s", "--device", "cpu",
                     "--memory-budget", args.memory_budget, *extra], workdir, out / "probe.log")  # fmt: skip
    pick = json.loads(text)["best"]
    train_s, text = tuner(["train-best", *common, "--train-time", f"{limit_s}s"], workdir, out / "train-best.log")
    summary = json.loads((out / name / "train" / "summary.json").read_text())

    def described(params: dict) -> str:
        return "{imgsz}/{batch}/{mosaic:g}/{mixup:g}".format(**params)

    print(f"\n{args.kind}, study {name}, 40-epoch trainings, limit {limit_s / 60:.1f} min, 2 CPU cores\n")
    print("| pick | config | probe mAP50-95 | predicted training | trained | wall | mAP50-95 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| unbounded | {described(dataclasses.asdict(best.params))} | {best.value:.4f} | {best.train_s / 60:.1f} min | - | - | - |")
    print(f"| `--train-time {limit_s}s` | {described(pick['params'])} | {pick['value']:.4f} | "
          f"{pick['train_predicted']['seconds'] / 60:.1f} min | {summary['epochs']} epochs | {train_s / 60:.1f} min | "
          f"{(summary.get('metrics') or {}).get('mAP50-95', float('nan')):.4f} |")  # fmt: skip
    verdict = "within" if train_s <= limit_s else "OVER"
    print(f"\ntrain-best took {train_s:.0f} s against the {limit_s} s limit ({verdict}; the process's start included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
