"""Calibrate the probe defaults on the embedded dataset: does a short probe tell configs apart?

Runs each (imgsz, batch, mosaic, mixup) config and seed as a probe would: a fresh process that fine-tunes the base
checkpoint with the exact `model.train(...)` call of a probe trial, reads the last epoch's mAP50-95 in an
`on_fit_epoch_end` callback, and skips the final re-validation of best.pt. Wall seconds include the process start.
The base checkpoint's own mAP50-95 at each imgsz is printed first (as "base", no training).

    python tests/benchmarks/calibrate_probe.py                      # the default grid, about 8-10 minutes
    python tests/benchmarks/calibrate_probe.py --epochs 2 --lr0 0.001 --optimizer AdamW --only imgsz
    TUNER_CACHE_DIR=/tmp/cache python tests/benchmarks/calibrate_probe.py --threads 0   # Ultralytics' own threads

Read the table for: imgsz effect (160 vs 352) >> seed spread (same config, other seed), and mosaic / batch
changes that move the metric at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tuner import config, files, offline
from tuner.data import base_model, shapes


@dataclass(frozen=True)
class ProbeSpec:
    imgsz: int
    batch: int
    mosaic: float
    mixup: float
    seed: int
    epochs: int
    fraction: float
    optimizer: str
    lr0: float
    lrf: float
    threads: int  # torch threads inside the probe; 0 leaves Ultralytics' choice (cpu_count - 1)
    n_train: int  # embedded dataset size (other sizes are generated into their own cache folder)
    n_val: int


def _grid(group: str) -> list[tuple[int, int, float, float, int]]:
    """(imgsz, batch, mosaic, mixup, seed) rows of each question the calibration answers."""
    rows = {
        "imgsz": [(size, 8, 1.0, 0.0, 0) for size in (160, 224, 288, 352)],
        "seed": [(288, 8, 1.0, 0.0, seed) for seed in (1, 2)] + [(160, 8, 1.0, 0.0, 1), (352, 8, 1.0, 0.0, 1)],
        "mosaic": [(288, 8, 0.0, 0.0, 0)],
        "batch": [(288, 2, 1.0, 0.0, 0)],
        "mixup": [(288, 8, 1.0, 0.3, 0)],
    }
    return rows[group] if group != "all" else [row for name in rows for row in rows[name]]


def _child(spec_path: Path, result_path: Path) -> None:
    """The probe trial, as tuner runs it (plus an optional torch thread count)."""
    spec = ProbeSpec(**json.loads(spec_path.read_text()))
    shapes.EMBEDDED = dataclasses.replace(shapes.EMBEDDED, n_train=spec.n_train, n_val=spec.n_val)
    base_pt, data_yaml = base_model.base_checkpoint(), shapes.embedded_dataset()
    import torch
    from ultralytics import YOLO

    offline.settle()
    epochs: list[float] = []
    model = YOLO(str(base_pt))

    def on_pretrain_routine_start(trainer) -> None:
        trainer.final_eval = lambda: None  # skip re-validating best.pt
        if spec.threads:
            torch.set_num_threads(spec.threads)  # select_device() has just set cpu_count - 1

    model.add_callback("on_pretrain_routine_start", on_pretrain_routine_start)
    model.add_callback("on_fit_epoch_end", lambda tr: epochs.append(float(tr.metrics["metrics/mAP50-95(B)"])))
    with tempfile.TemporaryDirectory(prefix="tuner-calibrate-") as project:
        model.train(
            data=str(data_yaml), imgsz=spec.imgsz, batch=spec.batch, mosaic=spec.mosaic, mixup=spec.mixup,
            epochs=spec.epochs, fraction=spec.fraction, nbs=spec.batch, warmup_epochs=0, optimizer=spec.optimizer,
            lr0=spec.lr0, lrf=spec.lrf, seed=spec.seed, deterministic=True, close_mosaic=0, plots=False, val=True,
            save=False, workers=0, device="cpu", amp=False, project=project, name="run", exist_ok=True,
            verbose=False,
        )  # fmt: skip
    files.write_json(result_path, {"metric": epochs[-1], "epochs": epochs})


def _base_metrics(data_yaml: Path, sizes: list[int], threads: int) -> dict[int, float]:
    """mAP50-95 of the base checkpoint itself on the embedded val split, per imgsz (one process)."""
    code = (
        "import json, sys, torch\n"
        "from ultralytics import YOLO\n"
        "from tuner import offline\n"
        "from tuner.data import base_model\n"
        "offline.settle()\n"
        f"torch.set_num_threads({threads or 1})\n"
        "model = YOLO(str(base_model.base_checkpoint()))\n"
        f"out = {{size: model.val(data={str(data_yaml)!r}, imgsz=size, batch=16, device='cpu', workers=0,"
        " plots=False, verbose=False).box.map for size in " + repr(sizes) + "}\n"
        "print('RESULT', json.dumps(out))\n"
    )
    with tempfile.TemporaryDirectory(prefix="tuner-calibrate-") as folder:
        run = subprocess.run(
            [sys.executable, "-c", code], env=offline.child_env(), cwd=folder, capture_output=True, text=True
        )
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"validating the base checkpoint failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return {int(size): value for size, value in json.loads(line[len("RESULT ") :]).items()}


def _run_probe(spec: ProbeSpec, folder: Path) -> tuple[dict, float]:
    spec_path, result_path = folder / "spec.json", folder / "result.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    started = time.monotonic()
    with open(folder / "probe.log", "w") as log:
        run = subprocess.run(
            [sys.executable, __file__, "--child", str(spec_path), str(result_path)],
            env=offline.child_env(), cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    seconds = time.monotonic() - started
    if run.returncode != 0 or not result_path.exists():
        tail = (folder / "probe.log").read_text()[-3000:]
        raise SystemExit(f"probe {spec} failed with exit status {run.returncode}:\n{tail}")
    return json.loads(result_path.read_text()), seconds


def _run_probe_in_temp(spec: ProbeSpec) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory(prefix="tuner-calibrate-") as folder:
        return _run_probe(spec, Path(folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    probe = config.DEFAULTS["probe"]
    parser.add_argument("--epochs", type=int, default=probe["epochs"])
    parser.add_argument("--fraction", type=float, default=probe["fraction"])
    parser.add_argument("--optimizer", default=probe["optimizer"])
    parser.add_argument("--lr0", type=float, default=probe["lr0"])
    parser.add_argument("--lrf", type=float, default=0.01)  # Ultralytics' default, as in a probe
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in each probe (0: leave)")
    parser.add_argument("--only", default="all", choices=("all", "imgsz", "seed", "mosaic", "batch", "mixup"))
    parser.add_argument("--configs", help="rows IMGSZ,BATCH,MOSAIC,MIXUP,SEED separated by ';' (overrides --only)")
    parser.add_argument("--n-train", type=int, default=shapes.EMBEDDED.n_train, help="embedded train images")
    parser.add_argument("--n-val", type=int, default=shapes.EMBEDDED.n_val, help="embedded val images")
    parser.add_argument("--jobs", type=int, default=1, help="probes run at once (seconds then mean little)")
    parser.add_argument("--no-base", action="store_true", help="skip validating the base checkpoint per imgsz")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    started = time.monotonic()
    shapes.EMBEDDED = dataclasses.replace(shapes.EMBEDDED, n_train=args.n_train, n_val=args.n_val)
    data_yaml = shapes.embedded_dataset()
    base_model.base_checkpoint()
    print(f"dataset and base checkpoint ready in {time.monotonic() - started:.0f} s", flush=True)
    rows = _grid(args.only)
    if args.configs:
        rows = [tuple(int(v) if i in (0, 1, 4) else float(v) for i, v in enumerate(row.split(","))) for row in
                args.configs.split(";")]  # fmt: skip
    print(
        f"epochs={args.epochs} fraction={args.fraction} optimizer={args.optimizer} lr0={args.lr0} lrf={args.lrf} "
        f"threads={args.threads or 'ultralytics'} dataset={shapes.EMBEDDED.key}"
    )
    print(f"{'config':<40} {'seed':>4} {'mAP50-95':>9} {'seconds':>8}  per-epoch")
    if not args.no_base:
        for size, value in _base_metrics(data_yaml, sorted({row[0] for row in rows}), args.threads).items():
            print(f"{f'base imgsz={size}':<40} {'-':>4} {value:>9.5f} {'-':>8}", flush=True)
    specs = [
        ProbeSpec(imgsz, batch, mosaic, mixup, seed, args.epochs, args.fraction, args.optimizer, args.lr0, args.lrf,
                  args.threads, args.n_train, args.n_val)  # fmt: skip
        for imgsz, batch, mosaic, mixup, seed in rows
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for spec, (result, seconds) in zip(specs, pool.map(_run_probe_in_temp, specs)):
            label = f"imgsz={spec.imgsz} batch={spec.batch} mosaic={spec.mosaic:g} mixup={spec.mixup:g}"
            per_epoch = " ".join(f"{value:.4f}" for value in result["epochs"])
            print(f"{label:<40} {spec.seed:>4} {result['metric']:>9.5f} {seconds:>8.1f}  {per_epoch}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
