"""What `tuner train-best` trains from: a study or a best.yaml, resolved into a `Source` (the model, data,
budget, the best config, the study's stable configs as the step-down ladder, its memory frontier).

Everything is checked here, before a run folder exists: a best.yaml that cannot be trained, or a study with
no stable config, is one line and nothing is written.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Callable

from tuner import checks
from tuner import config as configs
from tuner.data import datasets
from tuner.errors import ConfigError, StudyError
from tuner.memory.budget import MIB
from tuner.params import Params
from tuner.study import inputs, selection, training_time
from tuner.study.dominance import StableSizes
from tuner.study.records import StudyRecord
from tuner.study.training_time import Prediction

BEST_KEYS = ("model", "data", "imgsz", "batch", "mosaic", "mixup")
OPTIONAL_BEST_KEYS = ("device", "workers", "optimizer", "lr0")
# Written by `tuner probe` so that `yolo train cfg=best.yaml` trains as train-best would; train-best itself
# takes these from its settings (configs/train.yaml, flags), so here they are only checked.
TRAINING_BEST_KEYS = ("epochs", "nbs", "warmup_epochs", "close_mosaic", "seed", "deterministic", "plots")
BEST_FIX = "fix it, or run `tuner probe` again to rewrite it"
DEFAULT_SHARE = float(configs.DEFAULTS["memory_budget"])  # of usable memory: the budget a probe takes by default


def _imgsz(value: Any, name: str) -> int:
    return checks.imgsz_choices(checks.positive_int(value, name))[0]


def _unit(value: Any, name: str) -> float:
    return checks.fraction(value, name, low=0.0, high=1.0)


def _optimizer(value: Any, name: str) -> str:
    return checks.choice(value, name, configs.OPTIMIZERS)


def _non_negative(value: Any, name: str) -> float:
    return checks.fraction(value, name, low=0.0, high=1e9)  # as configs/train.yaml's warmup_epochs


# The checks of the settings (tuner.checks) for the values of a best.yaml; device and workers are not checked:
# train-best takes them from --device and the device itself.
BEST_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "model": checks.text,
    "data": checks.text,
    "imgsz": _imgsz,
    "batch": checks.positive_int,
    "mosaic": _unit,
    "mixup": _unit,
    "optimizer": _optimizer,
    "lr0": checks.positive_float,
    "epochs": checks.non_negative_int,
    "nbs": checks.non_negative_int,
    "warmup_epochs": _non_negative,
    "close_mosaic": checks.non_negative_int,
    "seed": checks.non_negative_int,
    "deterministic": checks.boolean,
    "plots": checks.boolean,
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A stable config of the study: a rung of the step-down ladder (the order `tuner probe` picks in)."""

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
    usable_memory_mb: float | None = None  # of the machine the study was measured on, where it recorded it
    prediction: Prediction | None = None  # the best's full training as its probe timed it (tuner.study.training_time)


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
        usable_memory_mb=record.usable_memory_mb,
        prediction=training_time.from_comment(Path(path).read_text()),
    )


TRAIN_EPOCHS = configs.TRAIN_DEFAULTS["epochs"]  # what a study's prediction is scaled to; the plan scales it to its own


def source_from_study(name: str, storage: str | None, studies_dir: Path, at_most: Params | None = None) -> Source:
    """The study's best stable config; with `at_most` (a larger model's config that ran out of memory), the start of
    a fallback instead (`_fallback_start`), said in `origin`."""
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
    candidates = _candidates(study, record)
    origin = f"study {name!r} in {url}"
    best, trial = record.best.params, record.best.trial
    if at_most is not None and candidates:  # no ladder (none stable by its records): the pick, as before
        start, how = _fallback_start(candidates, at_most)
        best, trial, origin = start.params, start.trial, f"{origin}, {how}"
    return Source(
        study=name,
        origin=origin,
        model=_check_model(str(record.model_path), f"the model of {where}"),
        data=_check_data(str(record.data_path), f"the dataset of {where}"),
        device=str(record.device or "auto"),
        memory_budget=_study_budget(record),
        optimizer=stored.probe.optimizer,
        lr0=float(stored.probe.lr0),
        metric=stored.metric,
        best=best,
        candidates=candidates,
        frontier=StableSizes.of(record),
        usable_memory_mb=record.usable_memory_mb,
        prediction=selection.pick_prediction(study.get_trials(deepcopy=False), trial, TRAIN_EPOCHS),
    )


def _fallback_start(candidates: tuple[Candidate, ...], limit: Params) -> tuple[Candidate, str]:
    """Where a smaller model's run starts after `limit`, a larger model's config, ran out of memory: the first config
    of its ladder no larger than `limit` in imgsz and batch; where none is, the one with the fewest pixels a batch
    (the least memory, as far as the sizes tell). With how it was chosen, for the run's origin."""
    described = f"{limit.imgsz}/{limit.batch}"
    start = next((candidate for candidate in candidates if candidate.params.within(limit)), None)
    if start is not None:
        return start, f"its first stable config no larger than {described} (imgsz/batch), the fallback's start"
    start = min(candidates, key=lambda candidate: candidate.params.batch * candidate.params.imgsz**2)
    return start, f"its smallest stable config (none is no larger than {described} in imgsz and batch), the fallback's start"


def smaller_model_study(name: str, storage: str | None, studies_dir: Path) -> tuple[str, str] | None:
    """(study, model) of the next smaller model with a stable config, where study `name` is one of several models
    probed together smallest first (StudyRecord.family); None where there is none, or which is smaller is unknown."""
    study = _try_load_study(name, storage, studies_dir)
    family = StudyRecord.of(study).family if study is not None else None
    if not family or not family.get("smallest_first") or name not in family["studies"]:
        return None
    for index in reversed(range(family["studies"].index(name))):
        other = _try_load_study(family["studies"][index], storage, studies_dir)
        if other is not None and StudyRecord.of(other).best is not None:
            return family["studies"][index], family["models"][index]
    return None


def best_params(path: Path) -> Params:
    """The config a best.yaml trains (checked as `source_from_config` checks it)."""
    return Params.of(_read_best_yaml(path))


def _read_best_yaml(path: Path) -> dict[str, Any]:
    """best.yaml's values, each checked as the settings are (tuner.checks); a bad one is one line naming the file."""
    try:
        values = configs.read_file(Path(path))
    except ConfigError as exc:
        raise ConfigError(f"{str(exc).rstrip('.')}; {BEST_FIX}.") from None
    missing = [key for key in BEST_KEYS if key not in values]
    if missing:
        raise ConfigError(f"{path} has no `{'`, `'.join(missing)}`; {BEST_FIX}.")
    known = BEST_KEYS + OPTIONAL_BEST_KEYS + TRAINING_BEST_KEYS
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"Did you mean `{close[0]}`?" if close else f"It takes {', '.join(known)}."
            raise ConfigError(f"Unknown setting `{key}` in {path}. {hint}")
    try:
        return {**values, **{key: check(values[key], key) for key, check in BEST_CHECKS.items() if key in values}}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {str(exc).rstrip('.')}; {BEST_FIX}.") from None


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


def fitted_budget(budget: int, study_usable_mb: float | None, usable: int) -> int:
    """The study's budget (bytes) on this machine, with `usable` bytes of usable memory.

    A study stores its budget in MiB, so on a machine with less memory than the study's it could be more than
    the machine holds (0.7 of 16 GB is 11.2 GB; an 8 GB machine's OS kills the training before the watchdog
    sees it over). It is kept where this machine has as much memory as the study's; else it is at most the
    same share of this machine's memory, or the default share where that is more (a budget chosen small on
    purpose, 3 GB of 16, stays 3 GB on 8), or the default share where the study recorded no machine memory."""
    if study_usable_mb is not None and usable >= (study_usable_mb - 1) * MIB:  # 1 MiB: the stored figures are rounded
        return budget
    share = DEFAULT_SHARE if not study_usable_mb else max(DEFAULT_SHARE, budget / (study_usable_mb * MIB))
    return min(budget, int(share * usable))


def _candidates(study, record: StudyRecord) -> tuple[Candidate, ...]:
    """The study's stable configs in the order `tuner probe` picks (tuner.study.selection.best_stable: the most
    accurate, a tie within the noise going to the most memory headroom): its pick, then its pick among the rest,
    and so on. The first is the study's best; a step-down takes the first one no larger than what ran out."""
    trials = [trial for trial in study.get_trials(deepcopy=False) if Params.FIELDS <= trial.params.keys()]
    limit = record.stable_limit_mb if record.stable_limit_mb is not None else float("inf")
    spread = selection.noise(trials).spread
    ladder: list[Candidate] = []
    picked: frozenset[tuple] = frozenset()  # left out of the next pick, but their runs still tell the memory
    while (choice := selection.best_stable(trials, limit, spread, record.budget_mb, exclude=picked)) is not None:
        params = Params.of(choice.params)
        ladder.append(Candidate(params, choice.value, choice.peak_mb, choice.trial.number))
        picked |= {params.key}
    return tuple(ladder)
