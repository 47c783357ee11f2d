"""One probe training, run inside its own process: `python -m tuner.study.probe_child SPEC.json`.

The parent writes a `ProbeSpec`; this process trains it (tuner.process.child.Training), appends one
`EpochRecord` per epoch to progress.jsonl (so the parent can report intermediate values to Optuna),
and writes a `ChildResult` atomically at the end (tuner.process.contract).

What a probe measures: a short fine-tune counted in images seen (the same epochs over the same
images for every config) with one optimizer step per batch (`nbs = batch`, no gradient
accumulation, no warmup), scored by the LAST epoch's validation metric. Ultralytics' `best.pt` and
its final re-validation of it are skipped: they would score the best epoch, possibly the untouched
starting weights, instead of the config's training.

With `spec.preflight_batches` N > 0 the process is a pre-flight instead (`Preflight`): the same
training for N batches, then one validation batch, then the end, to measure the config's peak memory
in seconds. Its result is "ok" with no value and what it trained and validated (`ChildResult.preflight`), or
the OOM that ended it.
"""

from __future__ import annotations

import dataclasses
import time
import shutil
from typing import Any, Callable, NoReturn

from tuner.process import child
from tuner.process.contract import ChildResult, PreflightCounts, ProbeSpec


def train_arguments(spec: ProbeSpec) -> dict[str, Any]:
    """The Ultralytics `train()` arguments for a probe: the config under test plus fixed settings."""
    params, settings = spec.params, spec.probe
    return {
        "data": spec.data,
        "imgsz": params.imgsz,
        "batch": params.batch,
        "mosaic": params.mosaic,
        "mixup": params.mixup,
        "epochs": 1 if spec.preflight_batches > 0 else settings.epochs,
        "fraction": settings.fraction,
        "optimizer": settings.optimizer,
        "lr0": settings.lr0,
        "warmup_epochs": 0.0 if settings.anneal else settings.warmup_epochs,  # with anneal, Anneal warms up
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


def skip_final_eval(trainer) -> None:
    """`on_pretrain_routine_start`: no re-validation of best.pt at the end (see the module docstring)."""
    trainer.final_eval = lambda: None


class Preflight:
    """The callbacks of a pre-flight: `batches` training batches, one validation batch, then the end.

    Training stops through Ultralytics' own `trainer.stop`, which it checks after every batch (an
    epoch shorter than `batches` is trained whole), so the epoch ends the way a probe's does: memory
    cleared as the trainer clears it, validation by the trainer's validator (batch x 2 images without
    gradients, the peak of some configs) but over one batch only (`OneBatch`), then the epoch's
    checkpoint. That save is part of a probe's peak too (it imports polars and serializes the model
    and optimizer: +70 MB RSS with yolov8n on CPU), so the pre-flight ends only at `on_train_end`,
    raising `child.EndedEarly`; the checkpoint is deleted first, as nothing reads it. An OOM on the
    way (an exception, the watchdog's kill, Ultralytics' batch halving) ends it as it ends a probe.
    """

    def __init__(self, batches: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.batches = batches
        self.clock = clock
        self.trained = 0
        self.per_epoch = 0  # training batches in an epoch
        self.validated = 0
        self.validation: OneBatch | None = None
        self.batch_ends: list[float] = []  # when each training batch ended (time.monotonic)
        self.val_times: list[float] = []  # when the validation batch started and ended

    def callbacks(self) -> dict[str, Callable]:
        return {
            "on_pretrain_routine_start": skip_final_eval,
            "on_train_batch_end": self.on_train_batch_end,
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_val_batch_start": self.on_val_batch_start,
            "on_val_batch_end": self.on_val_batch_end,
            "on_train_end": self.on_train_end,
        }

    def on_train_batch_end(self, trainer) -> None:
        self.trained += 1
        self.batch_ends.append(self.clock())
        if self.trained >= self.batches:
            trainer.stop = True

    def on_train_epoch_end(self, trainer) -> None:
        self.per_epoch = len(trainer.train_loader)
        self.validation = OneBatch(trainer.test_loader)
        trainer.validator.dataloader = self.validation

    def on_val_batch_start(self, validator) -> None:
        self.val_times = [self.clock()]

    def on_val_batch_end(self, validator) -> None:
        self.validated += 1
        self.val_times.append(self.clock())

    def on_train_end(self, trainer) -> None:
        if not self.validated:
            raise RuntimeError(f"the pre-flight ended without its validation batch ({self.describe()})")
        if trainer.wdir.is_dir():
            shutil.rmtree(trainer.wdir)
        done = self.describe()
        print(done, flush=True)  # for the log, beside Ultralytics' own lines
        raise child.EndedEarly(done)

    def counts(self) -> PreflightCounts:
        """What it trained and validated, for its result (tuner.process.contract.ChildResult.preflight)."""
        images, height, width = self.validation.shape if self.validation else (0, 0, 0)
        ends = self.batch_ends
        train_s = round((ends[-1] - ends[0]) / (len(ends) - 1), 4) if len(ends) > 1 else None
        val_s = round(self.val_times[-1] - self.val_times[0], 4) if len(self.val_times) == 2 else None
        return PreflightCounts(self.trained, self.per_epoch, self.validated, images, height, width, train_s, val_s)

    def describe(self) -> str:
        done = self.counts()
        return (
            f"pre-flight: {done.trained} training batches of {done.per_epoch} in an epoch, "
            f"{done.validated} validation batch of {done.images} images at {done.height}x{done.width}"
        )


class OneBatch:
    """The validator's loader cut to one batch: the largest of the validation loader `loader`.

    Validation batches are not all alike: Ultralytics sorts the images by aspect ratio and pads each
    batch to its own shape (up to imgsz plus half a stride), so the first one is the flattest, not
    the largest. This one is the batch with the most pixels, then the most labels per image (the loss's
    target assignment grows with them). It is loaded with the loader's own workers, kept alive to the
    end as Ultralytics keeps them: a probe's process holds their memory from its first validation
    on. `dataset` stays the whole set: the validator reads it.
    """

    def __init__(self, loader) -> None:
        from torch.utils.data import DataLoader, Subset

        self.dataset = loader.dataset
        self.sampler = loader.sampler
        self.batch_size = loader.batch_size
        self.indices = largest_batch(self.dataset, loader.batch_size)
        self.shape = (len(self.indices), *batch_shape(self.dataset, self.indices[0]))
        self.loader = DataLoader(
            Subset(self.dataset, self.indices),
            batch_size=len(self.indices),
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            collate_fn=loader.collate_fn,
            persistent_workers=loader.num_workers > 0,
        )

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        return iter(self.loader)


def largest_batch(dataset, batch_size: int) -> list[int]:
    """The indices of the largest batch of a validation loader (it does not shuffle: batches are runs)."""
    runs = [list(range(start, min(start + batch_size, len(dataset)))) for start in range(0, len(dataset), batch_size)]

    def size(indices: list[int]) -> tuple[int, int]:
        height, width = batch_shape(dataset, indices[0])
        labels = max(len(dataset.labels[index]["cls"]) for index in indices)
        return len(indices) * height * width, labels

    return max(runs, key=size)


def batch_shape(dataset, index: int) -> tuple[int, int]:
    """Height and width of the batch holding image `index`: its rectangle, or imgsz square."""
    if getattr(dataset, "rect", False):
        height, width = dataset.batch_shapes[dataset.batch[index]]
        return int(height), int(width)
    return dataset.imgsz, dataset.imgsz


class Anneal:
    """`on_train_batch_start`: the probe's learning rate batch by batch, as a full training's schedule runs in
    miniature: up from 0 to lr0 over the first `warmup_epochs` (a fraction of an epoch will do), then down linearly
    to lr0 x lrf at the probe's last batch. Ultralytics steps its own schedule once an epoch (a 3-epoch probe would
    end at a third of lr0) and warms up for at least 100 batches (longer than a probe of few batches), so a probe
    with `anneal` leaves both to this (train_arguments passes Ultralytics no warmup). The probe is then scored where
    a full training is scored, after the rate has come down. Off by default: measured on one kind only (README, the
    fidelity benchmark: on thin, Spearman's rho 0.37 -> 0.66 at three epochs, 0.77 at six)."""

    def __init__(self, warmup_epochs: float = 0.0) -> None:
        self.warmup_epochs = warmup_epochs
        self.seen = 0

    def factor(self, batch: int, per_epoch: int, epochs: int, lrf: float) -> float:
        """The learning rate of batch `batch` (0-based, of `epochs` x `per_epoch`) as a fraction of lr0."""
        total = max(1, epochs * per_epoch)
        warm = min(total // 2, round(self.warmup_epochs * per_epoch))  # at most half: the probe still anneals
        if batch < warm:
            return (batch + 1) / (warm + 1)
        return 1.0 - min(1.0, (batch - warm) / max(1, total - 1 - warm)) * (1.0 - lrf)

    def on_train_batch_start(self, trainer) -> None:
        factor = self.factor(self.seen, len(trainer.train_loader), trainer.epochs, trainer.args.lrf)
        for group in trainer.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        self.seen += 1


class EpochTimer:
    """The callbacks that time each epoch's training and validation, apart, with their batch counts: what a full
    training's time is predicted from (tuner.study.training_time)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.marks: dict[str, float] = {}
        self.train_batches = 0
        self.val_batches = 0

    def callbacks(self) -> dict[str, Callable]:
        return {
            "on_train_epoch_start": lambda trainer: self._mark("train_start"),
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_val_start": lambda validator: self._mark("val_start"),
            "on_val_end": self.on_val_end,
        }

    def _mark(self, name: str) -> None:
        self.marks[name] = self.clock()

    def on_train_epoch_end(self, trainer) -> None:
        self._mark("train_end")
        self.train_batches = len(trainer.train_loader)

    def on_val_end(self, validator) -> None:
        self._mark("val_end")
        self.val_batches = len(validator.dataloader)

    def epoch(self) -> dict[str, Any]:
        """The epoch that just ended, as EpochRecord's timing fields (none that it did not time)."""
        marks, out = self.marks, {}
        if {"train_start", "train_end"} <= marks.keys() and self.train_batches:
            out.update(train_s=round(marks["train_end"] - marks["train_start"], 3), train_batches=self.train_batches)
        if {"val_start", "val_end"} <= marks.keys() and self.val_batches:
            out.update(val_s=round(marks["val_end"] - marks["val_start"], 3), val_batches=self.val_batches)
        self.marks = {}
        return out


def run(spec: ProbeSpec) -> ChildResult:
    training = child.Training(spec)
    if spec.preflight_batches > 0:
        preflight = Preflight(spec.preflight_batches)
        result = training.train(spec.model, train_arguments(spec), preflight.callbacks(), 1)
        return ended_preflight(result, preflight)
    import torch

    timer = EpochTimer()

    def on_fit_epoch_end(trainer) -> None:
        value = float(trainer.metrics.get(spec.metric, float("nan")))
        training.record(trainer, value, threads=torch.get_num_threads(), **timer.epoch())

    callbacks = {**timer.callbacks(), "on_pretrain_routine_start": skip_final_eval, "on_fit_epoch_end": on_fit_epoch_end}
    if spec.probe.anneal:
        callbacks["on_train_batch_start"] = Anneal(spec.probe.warmup_epochs).on_train_batch_start
    result = training.train(spec.model, train_arguments(spec), callbacks, spec.probe.epochs)
    if result.status != "ok":
        return result
    return dataclasses.replace(result, value=training.last_value)


def ended_preflight(result: ChildResult, preflight: Preflight) -> ChildResult:
    """A pre-flight's result: one that ended "ok" carries its counts as fields (the parent reads them), not as
    the message that `child.EndedEarly` left (that text went to the log)."""
    if result.status != "ok":
        return result
    return dataclasses.replace(result, message=None, preflight=preflight.counts())


def main(argv: list[str] | None = None) -> NoReturn:
    child.main_for(ProbeSpec, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
