"""One stage of `tuner train-best`, run inside its own process: `python -m tuner.train_child SPEC.json`.

The parent (tuner.train) writes the spec and supervises; this process trains one stage to its end, or
continues it from the stage's own `weights/last.pt` when the spec names it in `resume`. Like a probe
it appends one JSON line per finished epoch to `progress` and writes `result` atomically at the end
(`status`: ok / oom / error / checkpoint); a process killed from outside writes nothing.

What makes a kill cheap here:
- Ultralytics writes last.pt and best.pt with `Path.write_bytes`, which a kill can leave half-written.
  Both paths are swapped for `AtomicPath` (temp file, fsync, `os.replace`), and the final
  `strip_optimizer` writes through a temp file too, so either file is always a whole checkpoint.
- A progress line for epoch N is written after last.pt holds epoch N (`on_fit_epoch_end` runs after
  the save), so the parent never counts an epoch that a resume would not find.
- Before continuing, results.csv is cut back to the epochs the checkpoint holds: a kill between
  Ultralytics' results row and its save would otherwise leave that epoch twice.
- Resume ignores `epochs`, `mosaic` and `mixup` (they come from the checkpoint); the spec's values are
  set on the trainer before its dataloaders are built, so a step-down or a longer run takes effect.
- `val_every` N > 1 validates every Nth epoch and the last: on the others `args.val` is off and the
  fitness is None, so best.pt and early stopping only ever compare validated epochs (Ultralytics'
  own `val=False` would save unvalidated weights as best.pt under the last fitness), and the epoch's
  metrics are NaN in results.csv and None in its progress line.
- Ultralytics' silent batch halving raises `BatchHalved` (from a callback, which leaves last.pt
  resumable): the parent counts it as an out-of-memory failure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tuner import child
from tuner import device as devices

METRIC_KEYS = {
    "metrics/mAP50-95(B)": "mAP50-95",
    "metrics/mAP50(B)": "mAP50",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}


# What Ultralytics' resume accepts from the caller (BaseTrainer.check_resume), besides data and resume.
RESUME_OVERRIDES = {"data", "imgsz", "batch", "device", "workers", "plots", "patience", "save_period", "val",
                    "close_mosaic", "save_dir"}  # fmt: skip


BatchHalved = child.BatchHalved


class CheckpointUnusable(Exception):
    """The stage's last.pt cannot be loaded; it is left exactly as it is."""


class AtomicPath(type(Path())):
    """A Path whose `write_bytes` never leaves a partial file: a kill keeps the previous version."""

    def write_bytes(self, data) -> int:
        tmp = self.with_name(f".{self.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            written = handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self)
        return written


def train_arguments(spec: dict[str, Any]) -> dict[str, Any]:
    """The Ultralytics `train()` arguments of a stage: its current params plus the stage's settings."""
    params = spec["params"]
    stage = spec["train"]
    save_dir = Path(spec["save_dir"])
    args = {
        "data": spec["data"],
        "imgsz": params["imgsz"],
        "batch": params["batch"],
        "mosaic": params["mosaic"],
        "mixup": params["mixup"],
        **stage,
        "device": spec["device"],
        "amp": spec["device_kind"] == "cuda",
        "project": str(save_dir.parent),
        "name": save_dir.name,
        "exist_ok": True,
        "save_dir": str(save_dir),  # on resume, instead of the folder recorded in the checkpoint
        "patience": 0,  # no early stop: a stage trains exactly its epochs
        "save_period": -1,  # epochN.pt files are not resumable without duplicating results.csv rows
        "val": True,
        "save": True,
        "verbose": False,
    }
    if spec.get("resume"):
        # Resume takes every other argument from the checkpoint (and warns about each that differs);
        # epochs, mosaic and mixup are set on the trainer instead (see on_pretrain_routine_start).
        args = {key: value for key, value in args.items() if key in RESUME_OVERRIDES}
        args["resume"] = spec["resume"]
    return args


def checkpoint_facts(path: Path) -> dict[str, Any]:
    """What a stage's last.pt holds: epochs done, whether it can be resumed, its metrics."""
    from ultralytics.utils.patches import torch_load

    try:
        ckpt = torch_load(path, map_location="cpu")
        if not isinstance(ckpt, dict) or (ckpt.get("ema") or ckpt.get("model")) is None:
            raise ValueError("it holds no model")
    except Exception as exc:  # any failure to read means the same: this file cannot be continued from
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointUnusable(f"{path} cannot be loaded ({first})") from exc
    results = ckpt.get("train_results") or {}
    epochs_done = ckpt.get("epoch", -1) + 1
    resumable = epochs_done > 0 and ckpt.get("optimizer") is not None
    if not resumable:  # stripped by Ultralytics' final evaluation: the stage trained to its end
        epochs_done = len(results.get("epoch") or [])
    return {
        "epochs_done": epochs_done,
        "resumable": resumable,
        "train_metrics": ckpt.get("train_metrics") or {},
        "imgsz": (ckpt.get("train_args") or {}).get("imgsz"),
        "batch": (ckpt.get("train_args") or {}).get("batch"),
    }


def trim_results_csv(path: Path, epochs_done: int) -> int:
    """Keep the header and the complete rows of epochs 1..epochs_done; return the rows dropped."""
    if not path.exists():
        return 0
    lines = path.read_text().split("\n")
    header, rows = lines[0], lines[1:]
    kept, dropped = [], 0
    for row in rows:
        if not row.strip():
            continue
        fields = row.split(",")
        complete = len(fields) == len(header.split(","))
        try:
            epoch = int(float(fields[0]))
        except ValueError:
            epoch = None
        if complete and epoch is not None and epoch <= epochs_done and epoch == len(kept) + 1:
            kept.append(row)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join([header, *kept]) + "\n")
        os.replace(tmp, path)
    return dropped


def _atomic_strip(strip):
    """`strip_optimizer(f)` that writes `f` through a temp file (it rewrites last.pt and best.pt at the end)."""
    if getattr(strip, "atomic", False):
        return strip

    def strip_optimizer(f="best.pt", s="", updates=None):
        if s:
            return strip(f, s, updates)
        target = Path(f)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.strip.tmp")
        out = strip(f, str(tmp), updates)
        if tmp.exists():
            os.replace(tmp, target)
        return out

    strip_optimizer.atomic = True
    return strip_optimizer


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {name: round(float(values[key]), 6) for key, name in METRIC_KEYS.items() if key in values}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["device_kind"]
    reporter = child.DeviceMemoryReporter(kind, Path(spec["device_file"]) if spec.get("device_file") else None)
    reporter.start()
    child.import_ultralytics(kind)
    import ultralytics.engine.trainer as trainer_module

    trainer_module.strip_optimizer = _atomic_strip(trainer_module.strip_optimizer)
    devices.apply_budget(kind, spec["budget"])
    params = spec["params"]
    epochs = spec["train"]["epochs"]
    save_dir = Path(spec["save_dir"])
    progress = Path(spec["progress"])
    started = time.monotonic()
    state: dict[str, Any] = {"final": False, "final_metrics": None, "epochs_done": 0, "batch_used": params["batch"]}

    resume = Path(spec["resume"]) if spec.get("resume") else None
    if resume is not None:
        try:
            facts = checkpoint_facts(resume)
        except CheckpointUnusable as exc:
            return {"status": "checkpoint", "message": str(exc), "batch_used": params["batch"]}
        if not facts["resumable"] and facts["epochs_done"] < epochs:
            message = (f"{resume} holds a finished training of {facts['epochs_done']} epochs without optimizer state, "
                       f"not the {epochs} epochs of this stage, so it cannot be continued")  # fmt: skip
            return {"status": "checkpoint", "message": message, "batch_used": params["batch"]}
        if not facts["resumable"] or facts["epochs_done"] >= epochs:
            # Trained to its end before a kill took the process (or the parent) away: nothing to redo.
            return {
                "status": "ok",
                "already_done": True,
                "epochs_done": facts["epochs_done"],
                "final_metrics": _metrics(facts["train_metrics"]),
                "batch_used": params["batch"],
            }
        trim_results_csv(save_dir / "results.csv", facts["epochs_done"])
        state["epochs_done"] = facts["epochs_done"]

    def on_pretrain_routine_start(trainer) -> None:
        trainer.last, trainer.best = AtomicPath(trainer.last), AtomicPath(trainer.best)
        # Resume takes these from the checkpoint; the spec's values win (step-down, longer run).
        trainer.epochs = trainer.args.epochs = epochs
        trainer.args.mosaic, trainer.args.mixup = params["mosaic"], params["mixup"]
        final_eval = trainer.final_eval

        def final_eval_flagged() -> None:
            state["final"] = True
            final_eval()

        trainer.final_eval = final_eval_flagged
        child.use_all_cores(spec["device_kind"])

    every = int(spec.get("val_every") or 1)

    def on_train_epoch_end(trainer) -> None:
        epoch = trainer.epoch + 1
        trainer.args.val = every == 1 or epoch % every == 0 or epoch >= trainer.epochs
        if not trainer.args.val:
            trainer.fitness = None
            trainer.metrics = {key: float("nan") for key in trainer.metrics or {}}

    def on_train_epoch_start(trainer) -> None:
        if trainer.batch_size != params["batch"]:
            state["batch_used"] = trainer.batch_size
            raise BatchHalved(
                f"Ultralytics halved batch {params['batch']} -> {trainer.batch_size} after an out-of-memory error"
            )

    def on_fit_epoch_end(trainer) -> None:
        if state["final"]:  # the final validation of best.pt re-fires this callback with epoch + 1
            state["final_metrics"] = _metrics(trainer.metrics)
            return
        validated = trainer.fitness is not None
        record = {
            "epoch": trainer.epoch + 1,
            "epochs": trainer.epochs,
            "value": float(trainer.metrics.get(spec["metric"], float("nan"))) if validated else None,
            "metrics": _metrics(trainer.metrics) if validated else None,
            "imgsz": trainer.args.imgsz,
            "batch": trainer.batch_size,
            "accumulate": trainer.accumulate,
            "nbs": trainer.args.nbs,
            "lr0": trainer.args.lr0,
            "seconds": round(time.monotonic() - started, 2),
            "device_peak": max(reporter.peak, reporter.read()),
        }
        state["epochs_done"] = record["epoch"]
        child.append_jsonl(progress, record)

    callbacks = {
        "on_pretrain_routine_start": on_pretrain_routine_start,
        "on_train_epoch_start": on_train_epoch_start,
        "on_train_epoch_end": on_train_epoch_end,
        "on_fit_epoch_end": on_fit_epoch_end,
    }
    result = child.train(str(resume) if resume is not None else spec["model"], callbacks, train_arguments(spec))
    result.update(
        {
            "epochs_done": state["epochs_done"],
            "final_metrics": state["final_metrics"],
            "batch_used": state["batch_used"],
            "imgsz_used": params["imgsz"],
            "device_peak": max(reporter.peak, reporter.read()),
            "seconds": round(time.monotonic() - started, 2),
        }
    )
    if result["status"] == "ok" and state["epochs_done"] < epochs:
        result = {**result, "status": "error", "message": f"training stopped after {state['epochs_done']} epochs"}
    return result


def main(argv: list[str] | None = None) -> int:
    return child.main_for(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
