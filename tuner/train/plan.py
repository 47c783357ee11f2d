"""What `tuner train-best` trains: the stages of a strategy, and step-downs (the source, a study or a
best.yaml, is resolved in tuner.train.source).

A plan (tuner.train.records.RunPlan) is saved as the run's config.yaml before the first epoch; a re-run trains with
that file (changed only by the flags passed to it), not with whatever the study, configs/train.yaml
or the defaults say by then.

Learning rate and batch: a stage trains the way the probes measured its config: one optimizer step per
batch (`nbs` = the planned batch) at the study's lr0, unscaled. Ultralytics' default nbs 64 would
accumulate 32 batches of 2 into each step; on a small dataset that leaves a handful of steps per epoch,
and scaling lr0 down for small batches slows training further (tests/benchmarks/bench_train_best.py
--nbs measures both). `nbs` stays the planned batch after a step-down to a smaller batch (a resume
keeps the checkpoint's nbs anyway), so Ultralytics accumulates back to the same images per step and
the optimizer state stays valid.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tuner import __version__
from tuner import config as configs
from tuner.config import TrainSettings
from tuner.errors import ConfigError
from tuner.memory import device as devices
from tuner.params import STRIDE, Params
from tuner.study.dominance import StableSizes
from tuner.train.records import RunPlan, Stage
from tuner.train.source import Candidate, Source

MIN_IMGSZ = 64  # below 2 strides YOLO's BatchNorm runs on single values


def plan_stages(source: Source, settings: TrainSettings) -> tuple[Stage, ...]:
    """The stages a strategy spends `settings.epochs` on; the last one trains into the run folder itself."""
    strategy = settings.strategy
    if strategy == "single":
        stages = [_stage("best", settings.epochs, source.best, "model", source.lr0, settings.warmup_epochs, settings)]
    elif strategy == "two-stage":
        stages = _two_stage(source, settings)
    elif strategy == "progressive":
        stages = _progressive(source, settings)
    else:
        raise ConfigError(f"Unknown --strategy {strategy!r}; use one of: {', '.join(configs.STRATEGIES)}.")
    return tuple(
        dataclasses.replace(stage, folder="." if index == len(stages) - 1 else f"stages/{index + 1}-{stage.name}")
        for index, stage in enumerate(stages)
    )


def _two_stage(source: Source, settings: TrainSettings) -> list[Stage]:
    """A conservative stage, then a fine-tune of its best.pt with the best config at a fraction of lr0."""
    epochs = settings.epochs
    if epochs < 2:
        raise ConfigError(f"--strategy two-stage needs --epochs 2 or more (it got {epochs}).")
    fine = min(epochs - 1, max(1, round(epochs * settings.fine_tune_share)))
    fine_lr0 = source.lr0 * settings.fine_tune_lr_factor
    return [
        _stage("conservative", epochs - fine, _conservative(source), "model", source.lr0, settings.warmup_epochs, settings),
        _stage("fine-tune", fine, source.best, "previous best.pt", fine_lr0, 0.0, settings),
    ]


def _conservative(source: Source) -> Params:
    """Two-stage's first stage: the stable config `tuner probe` would pick among the study's smaller than the best
    (measured, with memory to spare), with the mosaic and mixup it was measured with. Where the study has none,
    the best's own size (measured too) with lighter augmentation: mosaic halved, no mixup. Only a best.yaml
    without a study, where nothing was measured, also goes 64 smaller in imgsz (not below 64): arithmetic there
    could fall below the space's smallest imgsz, to a size no probe ran."""
    smaller = _smaller_candidate(source.best, source.candidates)
    if smaller is not None:
        return smaller.params
    lighter = dataclasses.replace(source.best, mosaic=round(source.best.mosaic / 2, 2), mixup=0.0)
    if source.candidates:
        return lighter
    return dataclasses.replace(lighter, imgsz=max(MIN_IMGSZ, source.best.imgsz - 2 * STRIDE))


def _progressive(source: Source, settings: TrainSettings) -> list[Stage]:
    """imgsz grows in blocks, STRIDE apart, up to the largest the study allows; each block starts from the last."""
    epochs, final = settings.epochs, _largest_stable(source)
    blocks = range(settings.progressive_blocks - 1, -1, -1)
    sizes = [size for size in (final.imgsz - STRIDE * k for k in blocks) if size >= MIN_IMGSZ]
    sizes = sizes[-epochs:]  # at least one epoch per block
    shares = [epochs // len(sizes) + (1 if k >= len(sizes) - epochs % len(sizes) else 0) for k in range(len(sizes))]
    return [
        _stage(
            f"imgsz-{size}",
            share,
            dataclasses.replace(final, imgsz=size),
            "model" if k == 0 else "previous last.pt",
            source.lr0,
            settings.warmup_epochs if k == 0 else 0.0,
            settings,
        )
        for k, (size, share) in enumerate(zip(sizes, shares))
    ]


def _stage(
    name: str, epochs: int, params: Params, init: str, lr0: float, warmup: float, settings: TrainSettings
) -> Stage:
    return Stage(
        name=name,
        epochs=epochs,
        params=params,
        init=init,
        lr0=lr0,
        nbs=params.batch,  # one optimizer step per planned batch, kept after a step-down (see the docstring)
        warmup_epochs=warmup,
        close_mosaic=close_mosaic(settings.close_mosaic, epochs),
        val_every=settings.val_every,
        folder=".",  # plan_stages sets it, knowing which stage is the last
    )


def close_mosaic(setting: int, epochs: int) -> int:
    """Mosaic off for the last `setting` epochs of a stage, at most a quarter of it."""
    return min(setting, epochs // 4)


def _largest_stable(source: Source) -> Params:
    """Progressive ends at the largest imgsz the study's memory frontier allows at the best config's batch;
    without a frontier, at the largest stable imgsz of the study, with its most accurate config there."""
    allowed = source.frontier.largest.get(source.best.batch) if source.frontier else None
    if allowed is not None:
        return dataclasses.replace(source.best, imgsz=max(allowed, source.best.imgsz))
    if not source.candidates:
        return source.best
    largest = max(candidate.params.imgsz for candidate in source.candidates)
    if largest <= source.best.imgsz:
        return source.best
    return next(c.params for c in source.candidates if c.params.imgsz == largest)


def step_down(
    current: Params, candidates: tuple[Candidate, ...], frontier: StableSizes | None = None
) -> tuple[Params, str] | None:
    """The config to continue with after `current` ran out of memory twice at the same point: the first smaller
    config of the study's ladder (the stable configs in the order the probe picks); else the memory frontier's
    next step (a smaller imgsz at the same batch, then a smaller batch); else, without a frontier, imgsz - 32,
    then half the batch."""
    candidate = _smaller_candidate(current, candidates)
    if candidate is not None:
        value = f", {candidate.value:.4f}" if candidate.value is not None else ""
        return candidate.params, f"the next stable config of the study the probe would pick (trial {candidate.trial}{value})"
    if frontier is not None:
        return frontier.step_down(current)
    floor = max(MIN_IMGSZ, min(c.params.imgsz for c in candidates)) if candidates else MIN_IMGSZ
    if current.imgsz - STRIDE >= floor:
        return dataclasses.replace(current, imgsz=current.imgsz - STRIDE), "the next smaller imgsz"
    if current.batch > 1:
        return dataclasses.replace(current, batch=current.batch // 2), "half the batch"
    return None


def _smaller_candidate(current: Params, candidates: tuple[Candidate, ...]) -> Candidate | None:
    """The first config of the ladder no larger than `current` in imgsz and batch, and not its size."""
    for candidate in candidates:
        if candidate.params.within(current) and candidate.params.size != current.size:
            return candidate
    return None


def capped_at(params: Params, reached: Params) -> Params:
    """`params` no larger in imgsz and batch than `reached`, the config a step-down went to (the memory is in
    the sizes; mosaic and mixup, which change only pixels, stay the stage's own)."""
    return dataclasses.replace(params, imgsz=min(params.imgsz, reached.imgsz), batch=min(params.batch, reached.batch))


def train_settings(stage: Stage, optimizer: str, seed: int, device: devices.Device, plots: bool) -> dict[str, Any]:
    """The Ultralytics arguments of a stage besides its params (which change on a step-down), with the plan's
    optimizer and seed."""
    return {
        "epochs": stage.epochs,
        "optimizer": optimizer,
        "lr0": stage.lr0,
        "nbs": stage.nbs,
        "warmup_epochs": stage.warmup_epochs,
        "close_mosaic": stage.close_mosaic,
        "seed": seed,
        "deterministic": True,
        "workers": 0 if device.kind == "cpu" else 2,  # Ultralytics forces 0 on cpu and mps anyway
        "plots": plots,
    }


def best_yaml_arguments(
    best: Params, optimizer: str, lr0: float, device: devices.Device, settings: TrainSettings
) -> dict[str, Any]:
    """The Ultralytics arguments train-best would train `best` with in a single stage (for best.yaml)."""
    stage = _stage("best", settings.epochs, best, "model", lr0, settings.warmup_epochs, settings)
    return {**best.to_dict(), **train_settings(stage, optimizer, settings.seed, device, settings.plots)}


def new_plan(source: Source, settings: TrainSettings, created: str, train_time_s: float | None = None) -> RunPlan:
    """The resolved config of a new run, as saved to config.yaml; `train_time_s` the --train-time it was fitted to."""
    return RunPlan(
        study=source.study,
        origin=source.origin,
        strategy=settings.strategy,
        epochs=settings.epochs,
        model=source.model,
        data=source.data,
        device=source.device,
        memory_budget=source.memory_budget,
        usable_memory_mb=source.usable_memory_mb,  # the study's machine's: train_best fits the budget to this one
        metric=source.metric,
        optimizer=source.optimizer,
        lr0=source.lr0,
        seed=settings.seed,
        settings=settings,
        best=source.best,
        candidates=source.candidates,
        frontier=source.frontier,
        stages=plan_stages(source, settings),
        tuner_version=__version__,
        created=created,
        prediction=source.prediction.for_epochs(settings.epochs) if source.prediction else None,
        train_time_s=train_time_s,
    )
