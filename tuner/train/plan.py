"""What `tuner train-best` trains: the source (a study or a best.yaml), its stages, and step-downs.

A plan is plain data, saved as the run's config.yaml before the first epoch; a re-run trains with
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
import difflib
from pathlib import Path
from statistics import mean
from typing import Any

from tuner import __version__
from tuner import config as configs
from tuner.config import TrainSettings
from tuner.data import datasets
from tuner.errors import ConfigError, StudyError
from tuner.memory import device as devices
from tuner.params import STRIDE, Params
from tuner.study import inputs, records
from tuner.study.dominance import StableSizes
from tuner.study.records import StudyRecord, TrialRecord

MIN_IMGSZ = 64  # below 2 strides YOLO's BatchNorm runs on single values
BEST_KEYS = ("model", "data", "imgsz", "batch", "mosaic", "mixup")
OPTIONAL_BEST_KEYS = ("device", "workers", "optimizer", "lr0")
# Written by `tuner probe` so that `yolo train cfg=best.yaml` trains as train-best would; train-best itself
# takes these from its settings (configs/train.yaml, flags), so here they are only checked.
TRAINING_BEST_KEYS = {"epochs": int, "nbs": int, "warmup_epochs": float, "close_mosaic": int, "seed": int,
                      "deterministic": bool, "plots": bool}  # fmt: skip
SEED = 0


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A stable config of the study: the step-down ladder, most accurate first."""

    params: Params
    value: float | None
    peak_mb: float | None
    trial: int | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.params.to_dict(), "value": self.value, "peak_mem_mb": self.peak_mb, "trial": self.trial}


@dataclasses.dataclass(frozen=True)
class Source:
    """What to train, resolved from the study or a best.yaml."""

    study: str
    origin: str
    model: str
    data: str
    device: str
    memory_budget: str | float
    optimizer: str
    lr0: float
    metric: str
    best: Params
    candidates: tuple[Candidate, ...]
    frontier: StableSizes | None = None  # the study's memory limit (tuner.study.limits), where it mapped one


def study_name_for(study_name: str | None, storage: str | None, studies_dir: Path, config: Path | None) -> str:
    """The run's name: --study-name, else the folder of --config (results/<study>/best.yaml), else the study."""
    if study_name:
        return study_name
    if config is not None:
        return Path(config).resolve().parent.name
    from tuner.study.storage import resolve_study_name

    return resolve_study_name(None, storage, studies_dir)


def source_from_config(path: Path, name: str, storage: str | None, studies_dir: Path) -> Source:
    """A best.yaml (as `tuner probe` writes it, or by hand); the study of that name, if any, gives step-downs."""
    values = _read_best_yaml(path)
    study = _try_load_study(name, storage, studies_dir)
    record = StudyRecord.of(study) if study is not None else StudyRecord()
    return Source(
        study=name,
        origin=f"config file {path}",
        model=_check_model(str(values["model"]), f"`model` in {path}"),
        data=_check_data(str(values["data"]), f"`data` in {path}"),
        device=str(values.get("device", "auto")),
        memory_budget=_study_budget(record),
        optimizer=values.get("optimizer", configs.DEFAULTS["probe"]["optimizer"]),
        lr0=float(values.get("lr0", configs.DEFAULTS["probe"]["lr0"])),
        metric=record.config.metric if record.config is not None else configs.DEFAULTS["metric"],
        best=Params.of(values),
        candidates=_candidates(study, record) if study is not None else (),
        frontier=StableSizes.of(record),
    )


def source_from_study(name: str, storage: str | None, studies_dir: Path) -> Source:
    from tuner.study.storage import load_study, storage_url

    url = storage_url(storage, studies_dir, name)
    study = load_study(name, url)
    record = StudyRecord.of(study)
    if record.best is None:
        raise StudyError(
            f"Study {name!r} has no stable config: no trial finished within its memory budget's stable limit. "
            "Re-run `tuner probe` with smaller --imgsz/--batch choices or a larger --memory-budget."
        )
    stored = record.config or configs.from_stored({})  # a study without a stored config: today's defaults
    where = f"study {name!r}"
    return Source(
        study=name,
        origin=f"study {name!r} in {url}",
        model=_check_model(str(record.model_path), f"the model of {where}"),
        data=_check_data(str(record.data_path), f"the dataset of {where}"),
        device=str(record.device or "auto"),
        memory_budget=_study_budget(record),
        optimizer=stored.probe.optimizer,
        lr0=float(stored.probe.lr0),
        metric=stored.metric,
        best=record.best.params,
        candidates=_candidates(study, record),
        frontier=StableSizes.of(record),
    )


def _read_best_yaml(path: Path) -> dict[str, Any]:
    fix = "fix it, or run `tuner probe` again to rewrite it"
    try:
        values = configs.read_file(Path(path))
    except ConfigError as exc:
        raise ConfigError(f"{str(exc).rstrip('.')}; {fix}.") from None
    missing = [key for key in BEST_KEYS if key not in values]
    if missing:
        raise ConfigError(f"{path} has no `{'`, `'.join(missing)}`; {fix}.")
    known = BEST_KEYS + OPTIONAL_BEST_KEYS + tuple(TRAINING_BEST_KEYS)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"Did you mean `{close[0]}`?" if close else f"It takes {', '.join(known)}."
            raise ConfigError(f"Unknown setting `{key}` in {path}. {hint}")
    for key in ("imgsz", "batch"):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"The value of `{key}` in {path} is {value!r}, but must be a positive integer; {fix}.")
    if values["imgsz"] % STRIDE:
        raise ConfigError(f"The value of `imgsz` in {path} is {values['imgsz']}, but must be a multiple of {STRIDE}; {fix}.")
    for key in ("mosaic", "mixup"):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"The value of `{key}` in {path} is {value!r}, but must be a number in [0, 1]; {fix}.")
    if "optimizer" in values and values["optimizer"] not in configs.OPTIMIZERS:
        raise ConfigError(f"The value of `optimizer` in {path} is {values['optimizer']!r}, but must be one of: "
                          f"{', '.join(configs.OPTIMIZERS)}.")
    lr0 = values.get("lr0", 1.0)
    if isinstance(lr0, bool) or not isinstance(lr0, (int, float)) or lr0 <= 0:
        raise ConfigError(f"The value of `lr0` in {path} is {lr0!r}, but must be a number greater than 0.")
    for key, kind in TRAINING_BEST_KEYS.items():
        value = values.get(key)
        wrong_kind = isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind)
        if key in values and (wrong_kind or (kind is not bool and value < 0)):
            what = {int: "an integer of 0 or more", float: "a number of 0 or more", bool: "true or false"}[kind]
            raise ConfigError(f"The value of `{key}` in {path} is {value!r}, but must be {what}; {fix}.")
    return values


def _check_model(model: str, what: str) -> str:
    if model.lower().endswith(".pt"):
        if not Path(model).expanduser().is_file():
            raise ConfigError(f"{what} is {model}, which does not exist (tuner never downloads weights); "
                              "restore it, or pass --config with a best.yaml whose `model` exists.")
        return str(Path(model).expanduser().resolve())
    try:
        return str(inputs.model(model, embedded=False))
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _check_data(path: str, what: str) -> str:
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{what} is {path}, which does not exist; restore it, or pass --config with a best.yaml "
                          "whose `data` is a dataset YAML that exists.")
    return str(datasets.check_dataset(path))


def _try_load_study(name: str, storage: str | None, studies_dir: Path):
    from tuner.study.storage import load_study, sqlite_path, storage_url

    url = storage_url(storage, studies_dir, name)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    try:
        return load_study(name, url)
    except StudyError:
        return None


def _study_budget(record: StudyRecord) -> str | float:
    return f"{record.budget_mb}MiB" if record.budget_mb else configs.DEFAULTS["memory_budget"]


def _candidates(study, record: StudyRecord) -> tuple[Candidate, ...]:
    """The study's stable configs, most accurate first (mean over repeats; the largest peak of the runs)."""
    limit = record.stable_limit_mb if record.stable_limit_mb is not None else float("inf")
    groups = records.stable_configs(study.get_trials(deepcopy=False), limit)
    found = [
        Candidate(
            params=Params.of(runs[0].params),
            value=round(mean(t.value for t in runs), 6),
            peak_mb=max(TrialRecord.of(t).peak_mem_mb for t in runs),
            trial=min(t.number for t in runs),
        )
        for runs in groups.values()
    ]
    return tuple(sorted(found, key=lambda c: (-(c.value or 0.0), c.peak_mb or 0.0)))


def plan_stages(source: Source, settings: TrainSettings) -> list[dict[str, Any]]:
    """The stages a strategy spends `settings.epochs` on; the last one trains into the run folder itself."""
    epochs, strategy = settings.epochs, settings.strategy
    if strategy == "single":
        stages = [_stage("best", epochs, source.best, "model", source.lr0, settings.warmup_epochs, settings)]
    elif strategy == "two-stage":
        if epochs < 2:
            raise ConfigError(f"--strategy two-stage needs --epochs 2 or more (it got {epochs}).")
        fine = min(epochs - 1, max(1, round(epochs * settings.fine_tune_share)))
        conservative = dataclasses.replace(
            source.best,
            imgsz=max(MIN_IMGSZ, source.best.imgsz - 2 * STRIDE),
            mosaic=round(source.best.mosaic / 2, 2),
            mixup=0.0,
        )
        fine_lr0 = source.lr0 * settings.fine_tune_lr_factor
        stages = [
            _stage("conservative", epochs - fine, conservative, "model", source.lr0, settings.warmup_epochs, settings),
            _stage("fine-tune", fine, source.best, "previous best.pt", fine_lr0, 0.0, settings),
        ]
    elif strategy == "progressive":
        final = _largest_stable(source)
        blocks = range(settings.progressive_blocks - 1, -1, -1)
        sizes = [size for size in (final.imgsz - STRIDE * k for k in blocks) if size >= MIN_IMGSZ]
        sizes = sizes[-epochs:]  # at least one epoch per block
        shares = [epochs // len(sizes) + (1 if k >= len(sizes) - epochs % len(sizes) else 0) for k in range(len(sizes))]
        stages = [
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
    else:
        raise ConfigError(f"Unknown --strategy {strategy!r}; use one of: {', '.join(configs.STRATEGIES)}.")
    for index, stage in enumerate(stages):
        stage["folder"] = "." if index == len(stages) - 1 else f"stages/{index + 1}-{stage['name']}"
    return stages


def _stage(
    name: str, epochs: int, params: Params, init: str, lr0: float, warmup: float, settings: TrainSettings
) -> dict[str, Any]:
    return {
        "name": name,
        "epochs": epochs,
        "params": params.to_dict(),
        "init": init,
        "lr0": lr0,
        "nbs": params.batch,  # one optimizer step per planned batch, kept after a step-down (see the docstring)
        "warmup_epochs": warmup,
        "close_mosaic": close_mosaic(settings.close_mosaic, epochs),
        "val_every": settings.val_every,
    }


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
    """The config to continue with after `current` ran out of memory twice at the same point: the most
    accurate smaller config the study measured stable; else the memory frontier's next step (a smaller
    imgsz at the same batch, then a smaller batch); else, without a frontier, imgsz - 32, then half the batch."""
    for candidate in candidates:  # most accurate first
        smaller = candidate.params.imgsz <= current.imgsz and candidate.params.batch <= current.batch
        if smaller and (candidate.params.imgsz, candidate.params.batch) != (current.imgsz, current.batch):
            value = f", {candidate.value:.4f}" if candidate.value is not None else ""
            return candidate.params, f"the next most accurate stable config of the study (trial {candidate.trial}{value})"
    if frontier is not None:
        return frontier.step_down(current)
    floor = max(MIN_IMGSZ, min(c.params.imgsz for c in candidates)) if candidates else MIN_IMGSZ
    if current.imgsz - STRIDE >= floor:
        return dataclasses.replace(current, imgsz=current.imgsz - STRIDE), "the next smaller imgsz"
    if current.batch > 1:
        return dataclasses.replace(current, batch=current.batch // 2), "half the batch"
    return None


def train_settings(stage: dict[str, Any], plan: dict[str, Any], device: devices.Device, plots: bool) -> dict[str, Any]:
    """The Ultralytics arguments of a stage besides its params (which change on a step-down)."""
    return {
        "epochs": stage["epochs"],
        "optimizer": plan["optimizer"],
        "lr0": stage["lr0"],
        "nbs": stage["nbs"],
        "warmup_epochs": stage["warmup_epochs"],
        "close_mosaic": stage["close_mosaic"],
        "seed": plan["seed"],
        "deterministic": True,
        "workers": 0 if device.kind == "cpu" else 2,  # Ultralytics forces 0 on cpu and mps anyway
        "plots": plots,
    }


def best_yaml_arguments(
    best: Params, optimizer: str, lr0: float, device: devices.Device, settings: TrainSettings
) -> dict[str, Any]:
    """The Ultralytics arguments train-best would train `best` with in a single stage (for best.yaml)."""
    stage = _stage("best", settings.epochs, best, "model", lr0, settings.warmup_epochs, settings)
    return {**best.to_dict(), **train_settings(stage, {"optimizer": optimizer, "seed": SEED}, device, settings.plots)}


def new_plan(source: Source, settings: TrainSettings, created: str) -> dict[str, Any]:
    """The resolved config of a new run, as saved to config.yaml."""
    return {
        "study": source.study,
        "origin": source.origin,
        "strategy": settings.strategy,
        "epochs": settings.epochs,
        "model": source.model,
        "data": source.data,
        "device": source.device,
        "memory_budget": source.memory_budget,
        "metric": source.metric,
        "optimizer": source.optimizer,
        "lr0": source.lr0,
        "seed": SEED,
        "settings": dataclasses.asdict(settings),
        "best": source.best.to_dict(),
        "candidates": [candidate.to_dict() for candidate in source.candidates],
        "frontier": source.frontier.to_dict() if source.frontier else None,
        "stages": plan_stages(source, settings),
        "tuner_version": __version__,
        "created": created,
    }
