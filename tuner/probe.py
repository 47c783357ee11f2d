"""One probe training, run inside its own process: `python -m tuner.probe SPEC.json`.

The parent writes the spec; this process trains, appends one line per epoch to the spec's
`progress` file (so the parent can report intermediate values to Optuna), and writes `result`
atomically at the end. The result's `status` is `ok`, `oom` or `error`; a process killed from
outside writes nothing, and the parent classifies that from its exit status.

What a probe measures: a short fine-tune counted in images seen (the same epochs over the same
images for every config) with one optimizer step per batch (`nbs = batch`, no gradient
accumulation, no warmup), scored by the LAST epoch's validation metric. Ultralytics' `best.pt` and
its final re-validation of it are skipped: they would score the best epoch, possibly the untouched
starting weights, instead of the config's training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuner import child
from tuner import device as devices


BatchHalved = child.BatchHalved


def train_arguments(spec: dict[str, Any]) -> dict[str, Any]:
    """The Ultralytics `train()` arguments for a probe: the config under test plus fixed settings."""
    params = spec["params"]
    settings = spec["probe"]
    return {
        "data": spec["data"],
        "imgsz": params["imgsz"],
        "batch": params["batch"],
        "mosaic": params["mosaic"],
        "mixup": params["mixup"],
        "epochs": settings["epochs"],
        "fraction": settings["fraction"],
        "optimizer": settings["optimizer"],
        "lr0": settings["lr0"],
        "warmup_epochs": settings["warmup_epochs"],
        "nbs": params["batch"],  # step every batch: a probe is too short to accumulate to 64
        "close_mosaic": 0,
        "seed": spec["seed"],
        "deterministic": True,
        "device": spec["device"],
        "workers": spec["workers"],
        "plots": False,
        "val": True,
        "save": False,
        "amp": spec["device_kind"] == "cuda",
        "project": spec["project"],
        "name": "run",
        "exist_ok": True,
        "verbose": False,
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["device_kind"]
    reporter = child.DeviceMemoryReporter(kind, _path(spec.get("device_file"))).start()
    child.import_ultralytics(kind)
    import torch

    devices.apply_budget(kind, spec["budget"])
    asked_batch = spec["params"]["batch"]
    progress = Path(spec["progress"])
    state: dict[str, Any] = {"epochs": [], "batch_used": asked_batch, "imgsz_used": spec["params"]["imgsz"]}
    started = time.monotonic()

    def on_pretrain_routine_start(trainer) -> None:
        trainer.final_eval = lambda: None  # see the module docstring
        child.use_all_cores(kind)

    def on_train_epoch_start(trainer) -> None:
        if trainer.batch_size != asked_batch:
            state["batch_used"] = trainer.batch_size
            raise BatchHalved(
                f"Ultralytics halved batch {asked_batch} -> {trainer.batch_size} after an out-of-memory error"
            )

    def on_fit_epoch_end(trainer) -> None:
        value = float(trainer.metrics.get(spec["metric"], float("nan")))
        record = {
            "epoch": trainer.epoch + 1,
            "value": value,
            "batch": trainer.batch_size,
            "imgsz": trainer.args.imgsz,
            "seconds": round(time.monotonic() - started, 2),
            "device_peak": max(reporter.peak, reporter.read()),
            "threads": torch.get_num_threads(),
        }
        state["epochs"].append(record)
        state["batch_used"] = trainer.batch_size
        state["imgsz_used"] = trainer.args.imgsz
        child.append_jsonl(progress, record)

    callbacks = {
        "on_pretrain_routine_start": on_pretrain_routine_start,
        "on_train_epoch_start": on_train_epoch_start,
        "on_fit_epoch_end": on_fit_epoch_end,
    }
    result = child.train(spec["model"], callbacks, train_arguments(spec))
    epochs = state["epochs"]
    result.update(
        {
            "value": epochs[-1]["value"] if epochs and result["status"] == "ok" else None,
            "epochs": epochs,
            "epochs_done": len(epochs),
            "batch_used": state["batch_used"],
            "imgsz_used": state["imgsz_used"],
            "device_peak": max(reporter.peak, reporter.read()),
            "seconds": round(time.monotonic() - started, 2),
        }
    )
    if result["status"] == "ok" and len(epochs) < spec["probe"]["epochs"]:
        result = {**result, "status": "error", "message": f"training stopped after {len(epochs)} epochs"}
    return result


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def main(argv: list[str] | None = None) -> int:
    return child.main_for(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
