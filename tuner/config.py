"""The resolved settings of `tuner probe` and `tuner train-best`: defaults, then a file, then flags.

`DEFAULTS` and `TRAIN_DEFAULTS` are the single sources of the defaults; `configs/probe.yaml` and
`configs/train.yaml` are commented copies of them for users to edit (a test keeps them equal). The
results are frozen `ProbeConfig` and `TrainSettings`, validated here so that every later step can
trust them; bad values raise `ConfigError` with one line naming the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path
from typing import Any, Callable

import yaml

from tuner import checks
from tuner.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("configs") / "probe.yaml"
DEFAULT_TRAIN_FILE = Path("configs") / "train.yaml"

DEFAULTS: dict[str, Any] = {
    "model": "yolov8n.yaml",
    "data": None,
    "device": "auto",
    "memory_budget": 0.7,
    "safety_margin": 0.1,
    "n_trials": 8,
    "timeout": None,
    "metric": "metrics/mAP50-95(B)",
    "sampler": "tpe",
    "pruner": "halving",
    "seed": 0,
    "train_time": None,  # the pick: the most accurate stable config whose predicted full training fits in it
    "space": {
        "imgsz": "auto",  # tuner.study.derive: 160 (or where small objects reach 8 px) up to max(640, image size), step 32
        "batch": "auto",  # tuner.study.derive: powers of 2 up to 64 or the train split's size
        "mosaic": [0.0, 1.0],
        "mixup": [0.0, 0.3],
    },
    "probe": {
        "epochs": 3,
        "fraction": 1.0,
        "train_images": 128,  # tuner.data.sample: a probe trains on at most this many train images (0: all)
        "val_images": 64,  # and validates on at most this many val images (0: all)
        "optimizer": "AdamW",
        "lr0": 0.0003,
        "warmup_epochs": 0.0,
        "anneal": True,  # tuner.study.probe_child.Anneal: the learning rate falls batch by batch to lr0 x lrf
        "trial_timeout": "auto",  # tuner.study.cost: a multiple of the probe's time as the pre-flights predict it
        "repeats": 2,
        "race": 2,
        "budget": "15%",  # tuner.study.probe_budget: a duration, a share of the full training, or none
    },
    "heartbeat_interval": 10,
    "grace_period": 30,
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 40,
    "strategy": "single",
    "max_restarts": 5,
    "val_every": 1,
    "plots": True,
    "warmup_epochs": 3.0,
    "close_mosaic": 10,
    "seed": 0,
    "two_stage": {
        "fine_tune_share": 0.25,
        "lr_factor": 0.1,
    },
    "progressive": {
        "blocks": 4,
    },
}

AUTO = "auto"  # a space choice derived from the data
STRATEGIES = ("single", "two-stage", "progressive")
OPTIMIZERS = ("SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")
METRIC_NAMES = {
    "metrics/mAP50-95(B)": "mAP50-95",
    "metrics/mAP50(B)": "mAP50",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}


@dataclasses.dataclass(frozen=True)
class Space:
    """The search space: imgsz and batch are choices (None: derived from the data, see tuner.study.derive),
    mosaic and mixup are [low, high] ranges. Evenly spaced imgsz are searched as an ordered grid (tuner.study.space)."""

    imgsz: tuple[int, ...] | None
    batch: tuple[int, ...] | None
    mosaic: tuple[float, float]
    mixup: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """How long and how each probe trains."""

    epochs: int
    fraction: float
    train_images: int  # the size of the study's sample of the train split; 0 for the whole split
    val_images: int
    optimizer: str
    lr0: float
    warmup_epochs: float
    trial_timeout: float | str  # seconds, or "auto"
    repeats: int
    race: int  # more seeds for the top configs while they tie within the noise, at most this many runs
    budget: float | str = "15%"  # seconds, a share of the full training ("15%"), or "none" (tuner.study.probe_budget)
    anneal: bool = True  # the learning rate falls batch by batch to lr0 x lrf by the last batch (probe_child.Anneal)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    model: str
    data: str | None
    device: str
    memory_budget: str | float
    safety_margin: float
    n_trials: int
    timeout: float | None
    metric: str
    sampler: str
    pruner: str
    seed: int
    space: Space
    probe: ProbeSettings
    heartbeat_interval: int
    grace_period: int
    train_time: float | None = None  # seconds the full training may take (tuner.study.selection.too_slow); None: any

    @property
    def metric_name(self) -> str:
        return METRIC_NAMES[self.metric]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as stored in the study's user attrs."""
        out = dataclasses.asdict(self)
        out["space"] = {key: AUTO if value is None else list(value) for key, value in out["space"].items()}
        out["metric_name"] = self.metric_name
        return out


# Settings that define what the study measures; a resumed study may not change them. The safety margin sets the
# stable limit its frontier was mapped under (tuner.study.limits).
IDENTITY_KEYS = ("model", "data", "metric", "space", "safety_margin")
IDENTITY_PROBE_KEYS = ("epochs", "fraction", "train_images", "val_images", "optimizer", "lr0", "warmup_epochs", "anneal")


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored or new config that must match for a study to be continued."""
    out = {key: config.get(key) for key in IDENTITY_KEYS}
    out["probe"] = {key: config.get("probe", {}).get(key) for key in IDENTITY_PROBE_KEYS}
    return out


def load(config_file: Path | None, overrides: dict[str, Any]) -> ProbeConfig:
    """Defaults, then `config_file` (or configs/probe.yaml here, if present), then `overrides`.

    `overrides` is nested like the file, holding only what the user passed on the command line.
    """
    merged = copy.deepcopy(DEFAULTS)
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    if config_file is not None:
        _merge(merged, read_file(config_file), source=str(config_file))
    _merge(merged, overrides, source="the command line")
    given = _paths(overrides)
    return _build(merged, lambda name: FLAGS[name][1] if name in FLAGS and FLAGS[name][0] in given else name)


# The `tuner probe` flag of each setting (as `_build` names it: its path in the file, the flag): a value that the
# flag gave is named by the flag in an error, one that a config file gave by its key there.
FLAGS = {
    "model": ("model", "--model"), "data": ("data", "--data"), "n_trials": ("n_trials", "--n-trials"),
    "timeout": ("timeout", "--timeout"), "safety_margin": ("safety_margin", "--safety-margin"),
    "seed": ("seed", "--seed"), "pruner": ("pruner", "--pruner"), "train_time": ("train_time", "--train-time"),
    "imgsz": ("space.imgsz", "--imgsz"), "batch": ("space.batch", "--batch"),
    "mosaic": ("space.mosaic", "--mosaic"), "mixup": ("space.mixup", "--mixup"),
    "probe.epochs": ("probe.epochs", "--probe-epochs"), "probe.fraction": ("probe.fraction", "--probe-fraction"),
    "probe.train_images": ("probe.train_images", "--probe-images"),
    "probe.val_images": ("probe.val_images", "--probe-images"),
    "probe.trial_timeout": ("probe.trial_timeout", "--trial-timeout"), "probe.repeats": ("probe.repeats", "--repeats"),
    "probe.race": ("probe.race", "--race"), "probe.budget": ("probe.budget", "--probe-budget"),
}  # fmt: skip


def _paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted paths of the settings in `values` (nested like the config file)."""
    out = set()
    for key, value in values.items():
        out |= _paths(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return out


def from_stored(stored: dict[str, Any]) -> ProbeConfig:
    """The config a study stored (`ProbeConfig.to_dict()`), on top of today's defaults for keys it lacks, except
    where a missing key meant something else: a study stored before probes trained on a sample of the splits
    trained on the whole splits (0), so a run with today's sample is another study, not more trials of it."""
    merged = copy.deepcopy(DEFAULTS)
    before = {"train_images": 0, "val_images": 0, "anneal": False}  # what a study stored without the key probed with
    merged["probe"].update({key: value for key, value in before.items() if key not in stored.get("probe", {})})
    _merge(merged, _known(stored, DEFAULTS), source="the study's stored config")
    return _build(merged)


def _known(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The keys of `values` that `defaults` has, at every level (a stored config may hold derived keys)."""
    out = {}
    for key, value in values.items():
        if key in defaults:
            out[key] = _known(value, defaults[key]) if isinstance(defaults[key], dict) and isinstance(value, dict) else value
    return out


def read_file(path: Path, flag: str = "--config") -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass {flag} with an existing YAML file.")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"Config file {path} is not valid YAML{where}; fix the syntax there.") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"Config file {path} must be a mapping of settings (key: value), not a {type(loaded).__name__}.")
    return loaded


def _merge(
    base: dict[str, Any], update: dict[str, Any], *, source: str, prefix: str = "", root: dict[str, Any] | None = None
) -> None:
    root = base if root is None else root
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"Unknown setting `{prefix}{key}` in {source}.{_suggest(key, base, root)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"`{prefix}{key}` in {source} must be a mapping with keys {', '.join(base[key])}.")
            _merge(base[key], value, source=source, prefix=f"{prefix}{key}.", root=root)
        else:
            base[key] = value


def _suggest(key: str, known: dict[str, Any], root: dict[str, Any]) -> str:
    """The closest known setting: at this level first, else anywhere (`imgsz` lives under `space`)."""
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    if close:
        return f" Did you mean `{close[0]}`?"
    everywhere = {f"{section}.{name}": name for section, value in root.items() if isinstance(value, dict) for name in value}
    everywhere.update({name: name for name in root})
    close = difflib.get_close_matches(str(key), list(everywhere.values()), n=1, cutoff=0.6)
    if close:
        dotted = next(path for path, name in everywhere.items() if name == close[0])
        return f" Did you mean `{dotted}`?"
    return f" Known settings here: {', '.join(known)}."


def _model(value: Any, name: str = "model") -> str:
    """`model`: one model, or several as a list or comma-separated (each its own study: tuner.commands.probe_models)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"The value of `{name}` is an empty list, but must name at least one model.")
        return ",".join(checks.text(item, name) for item in value)
    return checks.text(value, name)


def _build(raw: dict[str, Any], named: Callable[[str], str] = str) -> ProbeConfig:
    """The checked config of the merged settings `raw`; `named` gives what an error calls a setting (load: the flag,
    where the flag gave its value)."""
    space = raw["space"]
    probe = raw["probe"]
    if raw["metric"] not in METRIC_NAMES:
        raise ConfigError(f"The value of `metric` is {raw['metric']!r}, but must be one of: {', '.join(METRIC_NAMES)}.")
    return ProbeConfig(
        model=_model(raw["model"], named("model")),
        data=None if raw["data"] is None else checks.text(raw["data"], named("data")),
        device=str(raw["device"]),
        memory_budget=raw["memory_budget"],
        safety_margin=checks.fraction(raw["safety_margin"], named("safety_margin"), low=0.0, high=0.9, high_open=True),
        n_trials=checks.positive_int(raw["n_trials"], named("n_trials")),
        timeout=None if raw["timeout"] is None else checks.positive_float(raw["timeout"], named("timeout")),
        metric=raw["metric"],
        sampler=checks.choice(raw["sampler"], named("sampler"), SAMPLERS),
        pruner=checks.choice(raw["pruner"], named("pruner"), PRUNERS),
        seed=checks.integer(raw["seed"], named("seed")),
        space=Space(
            imgsz=None if _auto(space["imgsz"]) else checks.imgsz_choices(space["imgsz"], named("imgsz")),
            batch=None if _auto(space["batch"]) else checks.batch_choices(space["batch"], named("batch")),
            mosaic=checks.range(space["mosaic"], named("mosaic")),
            mixup=checks.range(space["mixup"], named("mixup")),
        ),
        probe=ProbeSettings(
            epochs=checks.positive_int(probe["epochs"], named("probe.epochs")),
            fraction=checks.fraction(probe["fraction"], named("probe.fraction"), low=0.0, high=1.0, low_open=True),
            train_images=checks.non_negative_int(probe["train_images"], named("probe.train_images")),
            val_images=checks.non_negative_int(probe["val_images"], named("probe.val_images")),
            optimizer=checks.choice(probe["optimizer"], named("probe.optimizer"), OPTIMIZERS),
            lr0=checks.positive_float(probe["lr0"], named("probe.lr0")),
            warmup_epochs=checks.fraction(probe["warmup_epochs"], named("probe.warmup_epochs"), low=0.0, high=1e9),
            trial_timeout=checks.seconds_or_auto(probe["trial_timeout"], named("probe.trial_timeout")),
            anneal=checks.boolean(probe["anneal"], named("probe.anneal")),
            repeats=checks.non_negative_int(probe["repeats"], named("probe.repeats")),
            race=checks.non_negative_int(probe["race"], named("probe.race")),
            budget=checks.probe_budget(probe["budget"], named("probe.budget")),
        ),
        train_time=checks.duration_or_none(raw["train_time"], named("train_time")),
        heartbeat_interval=checks.positive_int(raw["heartbeat_interval"], named("heartbeat_interval")),
        grace_period=checks.positive_int(raw["grace_period"], named("grace_period")),
    )


def _auto(value: Any) -> bool:
    return value is None or value == AUTO


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How `tuner train-best` spends its epochs (see tuner.commands.train_best)."""

    epochs: int
    strategy: str
    max_restarts: int
    val_every: int
    plots: bool
    warmup_epochs: float
    close_mosaic: int
    fine_tune_share: float
    fine_tune_lr_factor: float
    progressive_blocks: int
    seed: int = 0  # Ultralytics' seed (deterministic): another seed, another draw of the same config's training


def load_train(settings_file: Path | None, overrides: dict[str, Any]) -> TrainSettings:
    """Defaults, then `settings_file` (or configs/train.yaml here, if present), then `overrides`.

    `overrides` holds the flags, None where a flag was not given.
    """
    merged = copy.deepcopy(TRAIN_DEFAULTS)
    if settings_file is None and DEFAULT_TRAIN_FILE.is_file():
        settings_file = DEFAULT_TRAIN_FILE
    if settings_file is not None:
        _merge(merged, read_file(settings_file, "--settings"), source=str(settings_file))
    overrides = {key: value for key, value in overrides.items() if value is not None}
    _merge(merged, overrides, source="the command line")
    return _train_settings(merged)


def default_train_settings() -> TrainSettings:
    """TRAIN_DEFAULTS alone, without configs/train.yaml."""
    return _train_settings(copy.deepcopy(TRAIN_DEFAULTS))


def _train_settings(merged: dict[str, Any]) -> TrainSettings:
    two_stage, progressive = merged["two_stage"], merged["progressive"]
    return TrainSettings(
        epochs=checks.positive_int(merged["epochs"], "epochs"),
        strategy=checks.choice(merged["strategy"], "strategy", STRATEGIES),
        max_restarts=checks.non_negative_int(merged["max_restarts"], "max_restarts"),
        val_every=checks.positive_int(merged["val_every"], "val_every"),
        plots=checks.boolean(merged["plots"], "plots"),
        warmup_epochs=checks.fraction(merged["warmup_epochs"], "warmup_epochs", low=0.0, high=1e9),
        close_mosaic=checks.non_negative_int(merged["close_mosaic"], "close_mosaic"),
        fine_tune_share=checks.fraction(two_stage["fine_tune_share"], "two_stage.fine_tune_share", low=0.0, high=1.0,
                                  low_open=True, high_open=True),  # fmt: skip
        fine_tune_lr_factor=checks.positive_float(two_stage["lr_factor"], "two_stage.lr_factor"),
        progressive_blocks=checks.positive_int(progressive["blocks"], "progressive.blocks"),
        seed=checks.non_negative_int(merged["seed"], "seed"),
    )


def parse_list(text: str, flag: str, kind: type) -> list[Any]:
    """A comma-separated flag value such as `--imgsz 160,224` into numbers."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        example = "160,224,288" if kind is int else "0,0.5"
        raise ConfigError(f"`{flag}` must be comma-separated numbers like {example}; got {text!r}.") from None


def _choices(text: str, flag: str) -> list[int] | str:
    return AUTO if text.strip() == AUTO else parse_list(text, flag, int)


def _probe_images(text: str) -> dict[str, int]:
    sizes = parse_list(text, "--probe-images", int)
    if len(sizes) != 2:
        raise ConfigError(f"`--probe-images` takes two sizes, TRAIN,VAL (e.g. 128,64; 0 for a whole split); got {text!r}.")
    return {"train_images": sizes[0], "val_images": sizes[1]}


def probe_overrides(args: Any) -> dict[str, Any]:
    """The `tuner probe` flags the user passed (an argparse namespace; None where not passed), nested like the
    config file: what `load` takes as `overrides`."""
    top = {
        "data": args.data,
        "model": args.model,
        "device": args.device,
        "memory_budget": args.memory_budget,
        "n_trials": args.n_trials,
        "timeout": args.timeout,
        "safety_margin": args.safety_margin,
        "seed": args.seed,
        "pruner": args.pruner,
        "train_time": args.train_time,
    }
    sections = {
        "space": {
            "imgsz": args.imgsz and _choices(args.imgsz, "--imgsz"),
            "batch": args.batch and _choices(args.batch, "--batch"),
            "mosaic": args.mosaic and parse_list(args.mosaic, "--mosaic", float),
            "mixup": args.mixup and parse_list(args.mixup, "--mixup", float),
        },
        "probe": {
            "epochs": args.probe_epochs,
            "anneal": args.probe_anneal,
            "fraction": args.probe_fraction,
            **(_probe_images(args.probe_images) if args.probe_images else {}),
            "trial_timeout": args.trial_timeout,
            "repeats": args.repeats,
            "race": args.race,
            "budget": args.probe_budget,
        },
    }
    out: dict[str, Any] = {key: value for key, value in top.items() if value is not None}
    for section, flags in sections.items():
        passed = {key: value for key, value in flags.items() if value is not None}
        if passed:
            out[section] = passed
    return out
