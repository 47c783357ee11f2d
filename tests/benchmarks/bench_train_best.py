"""Benchmark: `tuner probe` + `tuner train-best` against the seed note's hand-picked config.

On the embedded dataset (or, with `--kind thin` or `--kind dense`, 96 train / 32 val images of a kind of
tests/benchmarks/kinds.py, from the shapes base checkpoint pretrained at imgsz 256), with the same memory budget and the same number of full-training epochs:
- tuner: `tuner probe` (default settings), then `tuner train-best` of its best stable config;
- seed:  the hand-picked imgsz 416, batch 2, mosaic 0.75, mixup 0.05, trained the same way
         (`tuner train-best --config seed.yaml`: same model, data, optimizer, lr0, nbs, watchdog;
         if it does not fit the budget it steps down like any run, and the table says so).
Prints a Markdown table: final mAP50-95 (best.pt, validated by Ultralytics at the end), epochs,
step-downs, restarts, peak memory and wall time, the probe's time included for tuner. The seed run is
deterministic: a finished one already in `--workdir` (results/seed-hand-picked/) is reused, with the
wall time it recorded, so that several probe spaces can be compared with one seed run.

    python tests/benchmarks/bench_train_best.py --epochs 40 --memory-budget 3GB   # ~40 min on 2 CPU cores
    python tests/benchmarks/bench_train_best.py --epochs 40 --memory-budget 3GB --probe-args "--imgsz 288,352,416,480,512"
    python tests/benchmarks/bench_train_best.py --epochs 40 --memory-budget 3GB --kind thin --workdir /tmp/ootb-thin
    python tests/benchmarks/bench_train_best.py --nbs --epochs 15                 # the lr0 / nbs experiment
    BENCH_EPOCHS=5 python -m pytest tests/benchmarks/bench_train_best.py -m benchmark -s

`--nbs` answers the README's question for small stable batches: with batch 2 on the embedded
dataset, does relying on Ultralytics' nominal batch (nbs 64: gradients of 32 batches accumulated
per optimizer step) train better than one step per batch (nbs = batch) with lr0 as is, or scaled
linearly or by the square root of batch / 64? Each variant is a real train-best child process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tuner import config as configs
from tuner.data import base_model, shapes

SEED_CONFIG = {"imgsz": 416, "batch": 2, "mosaic": 0.75, "mixup": 0.05}
REPO = Path(__file__).resolve().parents[2]


def _tuner(args: list[str], cwd: Path, log: Path) -> float:
    """Run `python -m tuner ARGS` in `cwd`; return its wall time; stop with its log tail if it fails."""
    started = time.monotonic()
    with open(log, "w") as handle:
        run = subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"tuner {' '.join(args)} failed ({run.returncode}):\n{log.read_text()[-3000:]}")
    return seconds


def _trials_span(db: Path, name: str) -> float:
    """Seconds from the first trial's start to the last trial's end of a study."""
    import optuna

    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def _row(name: str, config: str, summary: dict, seconds: float, probe_s: float | None = None) -> dict:
    metrics = summary.get("metrics") or {}
    return {
        "method": name,
        "config": config,
        "mAP50-95": metrics.get("mAP50-95"),
        "epochs": summary["epochs"],
        "step_downs": len(summary["step_downs"]),
        "restarts": summary["restarts"],
        "peak_mem_mb": summary["peak_mem_mb"],
        "wall_s": round(seconds, 1),
        "probe_s": None if probe_s is None else round(probe_s, 1),
    }


def compare(workdir: Path, epochs: int, budget: str, device: str, n_trials: int | None, probe_extra=()) -> list[dict]:
    """Both methods in `workdir`; returns the table rows."""
    common = ["--device", device, "--memory-budget", budget]
    probe_args = ["probe", *common, *probe_extra] + (["--n-trials", str(n_trials)] if n_trials else [])
    continued = any((workdir / "studies").glob("*.db"))
    probe_s = _tuner(probe_args, workdir, workdir / ("probe-continued.log" if continued else "probe.log"))
    name = next(path.stem for path in (workdir / "studies").glob("*.db"))
    if continued:  # a study an interrupted benchmark left: add the time its trials took
        probe_s += _trials_span(workdir / "studies" / f"{name}.db", name)
    train_s = _tuner(["train-best", "--study-name", name, "--epochs", str(epochs), "--json"], workdir,
                     workdir / "train-best.log")  # fmt: skip
    tuner_summary = json.loads((workdir / "results" / name / "train" / "summary.json").read_text())
    best = yaml.safe_load((workdir / "results" / name / "best.yaml").read_text())

    seed_file = workdir / "results" / "seed-hand-picked" / "train" / "summary.json"
    if seed_file.exists():  # a finished seed run copied in from an earlier benchmark: deterministic, reused
        seed_summary = json.loads(seed_file.read_text())
        if seed_summary["epochs"] != epochs:
            raise SystemExit(f"{seed_file} holds {seed_summary['epochs']} epochs, not {epochs}; remove it.")
        seed_s = seed_summary["wall_s"]
    else:
        seed_yaml = workdir / "seed.yaml"
        seed_yaml.write_text(yaml.safe_dump({**{k: best[k] for k in ("model", "data", "optimizer", "lr0")},
                                             **SEED_CONFIG}))  # fmt: skip
        seed_s = _tuner(["train-best", "--config", str(seed_yaml), "--study-name", "seed-hand-picked",
                         "--epochs", str(epochs), *common], workdir, workdir / "seed.log")  # fmt: skip
        seed_summary = json.loads(seed_file.read_text())
    described = ", ".join(f"{k} {round(best[k], 2):g}" for k in ("imgsz", "batch", "mosaic", "mixup"))
    return [
        _row("tuner probe + train-best", described, tuner_summary, probe_s + train_s, probe_s),
        _row("seed note, hand-picked", ", ".join(f"{k} {v}" for k, v in SEED_CONFIG.items()), seed_summary, seed_s),
    ]


def kind_inputs(kind: str, workdir: Path) -> list[str]:
    """`--data` and `--model` for tuner probe on `kind`'s dataset (built once under `workdir`), from the shapes base
    checkpoint (pretrained at imgsz 256, another resolution than the data's)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import kinds

    data = kinds.build(kind, workdir.resolve() / "data" / f"{kind}-96", 96, 32)
    return ["--data", str(data), "--model", str(base_model.base_checkpoint())]


PROGRESS_DONE = re.compile(r"100% \S+ (\d+)/\1 \S+ ([\d.]+)s\s*$")


def validation_share(train_dir: Path) -> tuple[float, float]:
    """(validation s, training s) of a train-best run, from the finished progress bars in its attempt logs.

    Ultralytics ends each epoch's training bar and each validation bar (the one headed `mAP50-95)`)
    with its elapsed seconds; this sums both kinds over every epoch of every attempt.
    """
    validation = training = 0.0
    for log in sorted(train_dir.glob("attempts/*/log.txt")):
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", log.read_text(errors="replace")).replace("\r", "\n")
        for line in text.splitlines():
            match = PROGRESS_DONE.search(line)
            if match is None or "Scanning" in line:
                continue
            if "mAP50-95)" in line:
                validation += float(match.group(2))
            else:
                training += float(match.group(2))
    return validation, training


def print_validation_shares(workdir: Path) -> None:
    for train_dir in sorted((workdir / "results").glob("*/train")):
        validation, training = validation_share(train_dir)
        if validation + training:
            print(f"validation in {train_dir.parent.name}: {validation:.0f} of {validation + training:.0f} s of epoch "
                  f"time ({validation / (validation + training):.0%})")  # fmt: skip


def base_line() -> str:
    """Which base checkpoint both methods trained from (kinds.base_fingerprint: the build differs between machines)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import kinds

    return kinds.describe_base(base_model.base_checkpoint())


def markdown(rows: list[dict]) -> str:
    head = "| method | config | mAP50-95 | epochs | step-downs | restarts | peak MiB | wall time |"
    lines = [head, "|" + "---|" * 8]
    for row in rows:
        value = "n/a" if row["mAP50-95"] is None else f"{row['mAP50-95']:.4f}"
        probe = "" if row.get("probe_s") is None else f" (probe {row['probe_s'] / 60:.1f})"
        lines.append(
            f"| {row['method']} | {row['config']} | {value} | {row['epochs']} | {row['step_downs']} | "
            f"{row['restarts']} | {row['peak_mem_mb']:.0f} | {row['wall_s'] / 60:.1f} min{probe} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ lr / nbs


def nbs_variants(batch: int, lr0: float) -> list[tuple[str, int, float]]:
    """(label, nbs, lr0): rely on Ultralytics' accumulation, or step every batch with lr0 as is / scaled."""
    ratio = batch / 64
    return [
        ("nbs 64 (accumulate), lr0", 64, lr0),
        ("nbs = batch, lr0", batch, lr0),
        ("nbs = batch, lr0 x batch/64", batch, lr0 * ratio),
        ("nbs = batch, lr0 x sqrt(batch/64)", batch, lr0 * math.sqrt(ratio)),
    ]


def nbs_experiment(epochs: int, imgsz: int, batch: int, optimizer: str, lr0: float) -> list[dict]:
    from tuner.memory import device as devices
    from tuner.params import Params
    from tuner.process.contract import EpochRecord, TrainSpec
    from tuner.process.trial import run_child

    device = devices.resolve("cpu")
    model, data_yaml = base_model.base_checkpoint(), shapes.embedded_dataset()
    params = Params(imgsz, batch, SEED_CONFIG["mosaic"], SEED_CONFIG["mixup"])
    rows = []
    for label, nbs, lr in nbs_variants(batch, lr0):
        with tempfile.TemporaryDirectory(prefix="tuner-bench-nbs-") as folder:
            spec = TrainSpec(
                model=str(model), data=str(data_yaml), device="cpu", device_kind="cpu", budget=device.total_memory,
                params=params, metric="metrics/mAP50-95(B)", save_dir=str(Path(folder) / "run"),
                settings={"epochs": epochs, "optimizer": optimizer, "lr0": lr, "nbs": nbs, "warmup_epochs": 3.0,
                          "close_mosaic": min(10, epochs // 4), "seed": 0, "deterministic": True, "workers": 0,
                          "plots": False},
            )  # fmt: skip
            records: list[EpochRecord] = []

            def on_epoch(record: EpochRecord) -> bool:
                records.append(record)
                return False  # never stop it

            out = run_child("tuner.train.stage_child", spec, Path(folder) / "attempt", device, device.total_memory, math.inf,
                            on_epoch)  # fmt: skip
        if out.outcome != "ok" or out.result is None:
            raise SystemExit(f"{label}: {out.outcome} {out.reason}")
        steps = math.ceil(len(list((Path(data_yaml).parent / "images" / "train").glob("*"))) / max(batch, nbs))
        rows.append({
            "variant": label, "nbs": nbs, "lr0": lr, "steps_per_epoch": steps,
            "final": out.result.final_metrics["mAP50-95"], "last_epoch": records[-1].value,
            "curve": [round(r.value, 4) for r in records], "seconds": out.duration_s,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------------------------- entry


@pytest.mark.benchmark
def test_probe_and_train_best_against_the_seed_config(tmp_path):
    """On demand: BENCH_EPOCHS (default 5), BENCH_BUDGET (3GB), BENCH_TRIALS (default: the probe's)."""
    epochs = int(os.environ.get("BENCH_EPOCHS", "5"))
    trials = int(os.environ["BENCH_TRIALS"]) if os.environ.get("BENCH_TRIALS") else None
    rows = compare(tmp_path, epochs, os.environ.get("BENCH_BUDGET", "3GB"), "cpu", trials)
    print("\n" + markdown(rows))
    print_validation_shares(tmp_path)
    assert [row["epochs"] for row in rows] == [epochs, epochs]
    assert all(row["mAP50-95"] is not None for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="full-training epochs of each method (default: 40)")
    parser.add_argument("--memory-budget", default="3GB", help="the one budget both methods train under")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-trials", type=int, help="probe trials (default: the probe's own default)")
    parser.add_argument("--workdir", type=Path, help="keep studies/ and results/ here (default: a temp folder)")
    parser.add_argument("--probe-args", default="", help="more flags for tuner probe, e.g. '--probe-epochs 2'")
    parser.add_argument("--kind", choices=("shapes", "thin", "dense"), default="shapes",
                        help="the embedded shapes, or a kind of tests/benchmarks/kinds.py (96 train / 32 val images)")
    parser.add_argument("--nbs", action="store_true", help="run the lr0 / nbs experiment instead")
    parser.add_argument("--validation-share", type=Path, metavar="WORKDIR",
                        help="only print how much of each run's epoch time in WORKDIR went to validation")  # fmt: skip
    parser.add_argument("--imgsz", type=int, default=160, help="--nbs: imgsz of the experiment (default: 160)")
    parser.add_argument("--batch", type=int, default=2, help="--nbs: the small stable batch (default: 2)")
    parser.add_argument("--optimizer", default=configs.DEFAULTS["probe"]["optimizer"])
    parser.add_argument("--lr0", type=float, default=configs.DEFAULTS["probe"]["lr0"])
    args = parser.parse_args(argv)
    if args.validation_share:
        print_validation_shares(args.validation_share)
        return 0
    if args.nbs:
        rows = nbs_experiment(args.epochs, args.imgsz, args.batch, args.optimizer, args.lr0)
        print(f"\n{args.optimizer}, imgsz {args.imgsz}, batch {args.batch}, {args.epochs} epochs, embedded dataset\n")
        print("| variant | nbs | lr0 | optimizer steps / epoch | mAP50-95 best.pt | last epoch | time |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['variant']} | {row['nbs']} | {row['lr0']:.2e} | {row['steps_per_epoch']} | "
                  f"{row['final']:.4f} | {row['last_epoch']:.4f} | {row['seconds'] / 60:.1f} min |")  # fmt: skip
        return 0
    extra = shlex.split(args.probe_args)
    if args.kind != "shapes":
        if not args.workdir:
            raise SystemExit("--kind needs --workdir (the dataset is written there)")
        extra += kind_inputs(args.kind, args.workdir)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        rows = compare(args.workdir, args.epochs, args.memory_budget, args.device, args.n_trials, extra)
        print(markdown(rows))
        print(base_line())
        print_validation_shares(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
            rows = compare(Path(folder), args.epochs, args.memory_budget, args.device, args.n_trials, extra)
            print(markdown(rows))
            print(base_line())
            print_validation_shares(Path(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
