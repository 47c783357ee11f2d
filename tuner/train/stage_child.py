"""One stage of `tuner train-best`, run inside its own process: `python -m tuner.train.stage_child SPEC.json`.

The parent (tuner.train.supervisor) writes a `TrainSpec` and supervises; this process trains one stage to
its end (tuner.process.child.Training), or continues it from the stage's own `weights/last.pt` when the spec
names it in `resume`. Like a probe it appends one `EpochRecord` per finished epoch to progress.jsonl
and writes a `ChildResult` atomically at the end (status ok / oom / error / checkpoint); a process
killed from outside writes nothing.

What makes a kill cheap here:
- Ultralytics writes last.pt and best.pt with `Path.write_bytes`, which a kill can leave half-written.
  Both paths are swapped for `AtomicPath` (temp file, fsync, `os.replace`), and the final
  `strip_optimizer` writes through a temp file too (tuner.train.checkpoints), so either file is always a
  whole checkpoint.
- A progress line for epoch N is written after last.pt holds epoch N (`on_fit_epoch_end` runs after
  the save), so the parent never counts an epoch that a resume would not find.
- Before continuing, results.csv is cut back to the epochs the checkpoint holds: a kill between
  Ultralytics' results row and its save would otherwise leave that epoch twice.
- A checkpoint that cannot be loaded, or a stripped one of fewer epochs than the stage's, ends the
  process with status `checkpoint` and leaves the file as it is. A stripped one of all the stage's
  epochs (the process or the parent was killed after Ultralytics' final evaluation) is a stage
  already done: status ok, `already_done`, nothing trained again.
- Resume ignores `epochs`, `mosaic` and `mixup` (they come from the checkpoint); the spec's values are
  set on the trainer before its dataloaders are built, so a step-down or a longer run takes effect.
- `val_every` N > 1 validates every Nth epoch and the last: on the others `args.val` is off and the
  fitness is None, so best.pt and early stopping only ever compare validated epochs (Ultralytics'
  own `val=False` would save unvalidated weights as best.pt under the last fitness), and the epoch's
  metrics are NaN in results.csv and None in its progress line.
- Ultralytics' final evaluation of best.pt re-fires `on_fit_epoch_end`; it is flagged, so its
  metrics become the result's `final_metrics` instead of a progress line.
- Ultralytics' silent batch halving raises `BatchHalved` (tuner.process.child, from a callback, which leaves
  last.pt resumable): the parent counts it as an out-of-memory failure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, NoReturn

from tuner.config import METRIC_NAMES
from tuner.process import child
from tuner.process.contract import ChildResult, TrainSpec
from tuner.train.checkpoints import AtomicPath, CheckpointUnusable, atomic_strip, checkpoint_facts, trim_results_csv

# What Ultralytics' resume accepts from the caller (BaseTrainer.check_resume), besides data and resume.
RESUME_OVERRIDES = {"data", "imgsz", "batch", "device", "workers", "plots", "patience", "save_period", "val",
                    "close_mosaic", "save_dir"}  # fmt: skip


def train_arguments(spec: TrainSpec) -> dict[str, Any]:
    """The Ultralytics `train()` arguments of a stage: its current params plus the stage's settings."""
    params = spec.params
    save_dir = Path(spec.save_dir)
    args = {
        "data": spec.data,
        "imgsz": params.imgsz,
        "batch": params.batch,
        "mosaic": params.mosaic,
        "mixup": params.mixup,
        **spec.settings,
        "device": spec.device,
        "amp": spec.device_kind == "cuda",
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
    if spec.resume:
        # Resume takes every other argument from the checkpoint (and warns about each that differs);
        # epochs, mosaic and mixup are set on the trainer instead (see on_pretrain_routine_start).
        args = {key: value for key, value in args.items() if key in RESUME_OVERRIDES}
        args["resume"] = spec.resume
    return args


def metrics_by_name(values: dict[str, Any]) -> dict[str, float]:
    return {name: round(float(values[key]), 6) for key, name in METRIC_NAMES.items() if key in values}


def check_resume(spec: TrainSpec, training: child.Training) -> ChildResult | None:
    """Before continuing from `spec.resume`: the result to end with at once, or None to train on.

    On None, results.csv is cut back to the checkpoint and `training` counts its epochs as done.
    """
    batch = spec.params.batch
    try:
        facts = checkpoint_facts(Path(spec.resume))
    except CheckpointUnusable as exc:
        return ChildResult(status="checkpoint", message=str(exc), batch_used=batch)
    if not facts.resumable and facts.epochs_done < spec.epochs:
        message = (f"{spec.resume} holds a finished training of {facts.epochs_done} epochs without optimizer state, "
                   f"not the {spec.epochs} epochs of this stage, so it cannot be continued")  # fmt: skip
        return ChildResult(status="checkpoint", message=message, batch_used=batch)
    if not facts.resumable or facts.epochs_done >= spec.epochs:
        # Trained to its end before a kill took the process (or the parent) away: nothing to redo.
        return ChildResult(
            status="ok",
            already_done=True,
            epochs_done=facts.epochs_done,
            final_metrics=metrics_by_name(facts.train_metrics),
            batch_used=batch,
            imgsz_used=spec.params.imgsz,
            seconds=training.seconds(),
        )
    trim_results_csv(Path(spec.save_dir) / "results.csv", facts.epochs_done)
    training.epochs_done = facts.epochs_done
    return None


@dataclasses.dataclass
class _FinalEval:
    """Whether Ultralytics' final evaluation of best.pt has begun, and the metrics it found."""

    running: bool = False
    metrics: dict[str, float] | None = None


def callbacks(spec: TrainSpec, training: child.Training, final: _FinalEval) -> dict[str, Callable]:
    """The Ultralytics callbacks of a stage (besides tuner.process.child's own); see the module docstring."""
    every = spec.val_every

    def on_pretrain_routine_start(trainer) -> None:
        trainer.last, trainer.best = AtomicPath(trainer.last), AtomicPath(trainer.best)
        # Resume takes these from the checkpoint; the spec's values win (step-down, longer run).
        trainer.epochs = trainer.args.epochs = spec.epochs
        trainer.args.mosaic, trainer.args.mixup = spec.params.mosaic, spec.params.mixup
        final_eval = trainer.final_eval

        def final_eval_flagged() -> None:
            final.running = True
            final_eval()

        trainer.final_eval = final_eval_flagged

    def on_train_epoch_end(trainer) -> None:
        epoch = trainer.epoch + 1
        trainer.args.val = every == 1 or epoch % every == 0 or epoch >= trainer.epochs
        if not trainer.args.val:
            trainer.fitness = None
            trainer.metrics = {key: float("nan") for key in trainer.metrics or {}}

    def on_fit_epoch_end(trainer) -> None:
        if final.running:  # the final validation of best.pt re-fires this callback with epoch + 1
            final.metrics = metrics_by_name(trainer.metrics)
            return
        validated = trainer.fitness is not None
        training.record(
            trainer,
            float(trainer.metrics.get(spec.metric, float("nan"))) if validated else None,
            epochs=trainer.epochs,
            metrics=metrics_by_name(trainer.metrics) if validated else None,
            accumulate=trainer.accumulate,
            nbs=trainer.args.nbs,
            lr0=trainer.args.lr0,
        )

    return {
        "on_pretrain_routine_start": on_pretrain_routine_start,
        "on_train_epoch_end": on_train_epoch_end,
        "on_fit_epoch_end": on_fit_epoch_end,
    }


def run(spec: TrainSpec) -> ChildResult:
    training = child.Training(spec)
    import ultralytics.engine.trainer as trainer_module

    trainer_module.strip_optimizer = atomic_strip(trainer_module.strip_optimizer)
    if spec.resume:
        ended = check_resume(spec, training)
        if ended is not None:
            return ended
    final = _FinalEval()
    result = training.train(spec.resume or spec.model, train_arguments(spec), callbacks(spec, training, final), spec.epochs)
    return dataclasses.replace(result, final_metrics=final.metrics)


def main(argv: list[str] | None = None) -> NoReturn:
    child.main_for(TrainSpec, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
