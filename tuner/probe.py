"""One probe training, run inside its own process: `python -m tuner.probe SPEC.json`.

The parent writes a `ProbeSpec`; this process trains it (tuner.child.Training), appends one
`EpochRecord` per epoch to progress.jsonl (so the parent can report intermediate values to Optuna),
and writes a `ChildResult` atomically at the end (tuner.contract).

What a probe measures: a short fine-tune counted in images seen (the same epochs over the same
images for every config) with one optimizer step per batch (`nbs = batch`, no gradient
accumulation, no warmup), scored by the LAST epoch's validation metric. Ultralytics' `best.pt` and
its final re-validation of it are skipped: they would score the best epoch, possibly the untouched
starting weights, instead of the config's training.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tuner import child
from tuner.contract import ChildResult, ProbeSpec


def train_arguments(spec: ProbeSpec) -> dict[str, Any]:
    """The Ultralytics `train()` arguments for a probe: the config under test plus fixed settings."""
    params, settings = spec.params, spec.probe
    return {
        "data": spec.data,
        "imgsz": params.imgsz,
        "batch": params.batch,
        "mosaic": params.mosaic,
        "mixup": params.mixup,
        "epochs": settings.epochs,
        "fraction": settings.fraction,
        "optimizer": settings.optimizer,
        "lr0": settings.lr0,
        "warmup_epochs": settings.warmup_epochs,
        "nbs": params.batch,  # step every batch: a probe is too short to accumulate to 64
        "close_mosaic": 0,
        "seed": spec.seed,
        "deterministic": True,
        "device": spec.device,
        "workers": spec.workers,
        "plots": False,
        "val": True,
        "save": False,
        "amp": spec.device_kind == "cuda",
        "project": spec.folder,
        "name": "run",
        "exist_ok": True,
        "verbose": False,
    }


def run(spec: ProbeSpec) -> ChildResult:
    training = child.Training(spec)
    import torch

    def on_pretrain_routine_start(trainer) -> None:
        trainer.final_eval = lambda: None  # see the module docstring

    def on_fit_epoch_end(trainer) -> None:
        value = float(trainer.metrics.get(spec.metric, float("nan")))
        training.record(trainer, value, threads=torch.get_num_threads())

    callbacks = {"on_pretrain_routine_start": on_pretrain_routine_start, "on_fit_epoch_end": on_fit_epoch_end}
    result = training.train(spec.model, train_arguments(spec), callbacks, spec.probe.epochs)
    if result.status != "ok":
        return result
    return dataclasses.replace(result, value=training.last_value)


def main(argv: list[str] | None = None) -> int:
    return child.main_for(ProbeSpec, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
