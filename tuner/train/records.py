"""What a train-best run saves: its plan (config.yaml) and its state (state.json), the one schema of both.

Each is a frozen dataclass with one `to_json`/`from_json` that spells the file's keys, so a key is spelled
here and nowhere else; a change is a `dataclasses.replace`, saved whole by tuner.train.run_folder (temp file
+ rename). The keys are the files' own, so a run begun by an older tuner continues; the keys older tuners
did not write yet are read with the default their readers used (`legacy` below). A hand-edited or damaged
file with a missing, unknown or mistyped key is one line naming the key (ConfigError), never a KeyError or
TypeError in the middle of a run.

    config.yaml  RunPlan: the inputs, settings, the step-down ladder and frontier, and the `Stage`s
    state.json   RunState: per stage a `StageProgress`, the `StepDown`s, the `Failure`s, the counters
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, ClassVar

from tuner.config import TrainSettings
from tuner.errors import ConfigError
from tuner.params import Params
from tuner.process.contract import Cause, Outcome
from tuner.study.dominance import StableSizes
from tuner.study.training_time import Prediction
from tuner.train.source import Candidate

STATE_VERSION = 1

# ---------------------------------------------------------------------------------- reading a mapping

_KINDS = {int: "an integer", float: "a number", str: "text", bool: "true or false", dict: "a mapping",
          list: "a list", type(None): "null"}  # fmt: skip


def _schema(cls, renamed: dict[str, str] | None = None) -> dict[str, Any]:
    """The file keys of dataclass `cls` and their types; `renamed` maps a field to its key where they differ."""
    hints, renamed = typing.get_type_hints(cls), renamed or {}
    return {renamed.get(field.name, field.name): hints[field.name] for field in dataclasses.fields(cls)}


def _fields(schema: dict[str, Any], values: Any, where: str, legacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """`values` checked against `schema`: no unknown key, none missing (but the `legacy` ones, which get their
    default), each plain value of its type; nested records are read by their own from_json."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} is {_shown(values)}, not a mapping")
    legacy = legacy or {}
    for key in values:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise ConfigError(f"unknown key `{key}` in {where}{hint}")
    missing = [key for key in schema if key not in values and key not in legacy]
    if missing:
        raise ConfigError(f"{where} has no `{'`, `'.join(missing)}`")
    out = {key: values[key] if key in values else legacy[key] for key in schema}
    for key, hint in schema.items():
        _check_kind(out[key], hint, f"{where}.{key}")
    return out


def _check_kind(value: Any, hint: Any, where: str) -> None:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [typing.get_origin(option) or option for option in options]
    if not all(kind in _KINDS for kind in kinds):
        return  # a nested record: its from_json checks it
    if not any(_is(value, kind) for kind in kinds):
        raise ConfigError(f"{where} is {_shown(value)}, not {' or '.join(_KINDS[kind] for kind in kinds)}")


def _is(value: Any, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):  # a bool is an int to Python, but `true` is no count
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _each(read, values: Any, where: str) -> tuple:
    """The records of a list, each read by `read(value, where)`."""
    if not isinstance(values, list):
        raise ConfigError(f"{where} is {_shown(values)}, not a list")
    return tuple(read(value, f"{where}[{k}]") for k, value in enumerate(values))


def _int(value: Any, where: str) -> int:
    _check_kind(value, int, where)
    return value


def _enum(kind: type, value: Any, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{where} is {_shown(value)}, not one of {', '.join(m.value for m in kind)}") from None


def _params(values: Any, where: str) -> Params:
    return Params.of(_fields(_schema(Params), values, where))


def _plain(record) -> dict[str, Any]:
    """A record's fields by name, in their order (the files' key order), nested records left to the caller."""
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


# ------------------------------------------------------------------------------------ config.yaml


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the plan: what its training process trains (tuner.train.plan.train_settings)."""

    name: str
    epochs: int
    params: Params
    init: str  # "model", "previous best.pt" or "previous last.pt"
    lr0: float
    nbs: int
    warmup_epochs: float
    close_mosaic: int
    val_every: int
    folder: str  # relative to the run folder; "." for the last stage

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self), "params": self.params.to_dict()}

    @classmethod
    def from_json(cls, values: Any, where: str) -> Stage:
        fields = _fields(_schema(cls), values, where, legacy={"val_every": 1})  # plans before --val-every
        return cls(**{**fields, "params": _params(fields["params"], f"{where}.params")})


_CANDIDATE = {**_schema(Params), "value": float | None, "peak_mem_mb": float | None, "trial": int | None}


def _candidate(values: Any, where: str) -> Candidate:
    fields = _fields(_CANDIDATE, values, where, legacy={"value": None, "peak_mem_mb": None, "trial": None})
    return Candidate(Params.of(fields), fields["value"], fields["peak_mem_mb"], fields["trial"])


def _frontier(values: Any, where: str) -> StableSizes | None:
    if not values:  # plans made before tuner mapped limits, and studies without a mapping
        return None
    fields = _fields({"largest": dict, "sizes": list}, values, where)
    try:
        return StableSizes.from_dict(fields)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} is {_shown(values)}, not batches mapped to imgsz and a list of sizes") from None


def _settings(values: Any, where: str) -> TrainSettings | None:
    """A plan's train settings; None for a plan older than them, and for the partial `{val_every: N}` an older
    tuner's --val-every wrote into such a plan (its stages hold the same val_every)."""
    if values is None or (isinstance(values, dict) and set(values) <= {"val_every"}):
        return None
    return TrainSettings(**_fields(_schema(TrainSettings), values, where, legacy={"seed": 0}))  # before --seed


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """The resolved config of a run (tuner.train.plan.new_plan); a re-run trains with it, changed only by flags."""

    study: str
    origin: str
    strategy: str
    epochs: int
    model: str
    data: str
    device: str
    memory_budget: str | float
    usable_memory_mb: float | None  # of the study's machine: train_best fits the budget to this one
    metric: str
    optimizer: str
    lr0: float
    seed: int
    settings: TrainSettings | None  # None in plans made before configs/train.yaml
    best: Params
    candidates: tuple[Candidate, ...]  # the step-down ladder
    frontier: StableSizes | None
    stages: tuple[Stage, ...]
    tuner_version: str
    created: str
    prediction: Prediction | None = None  # the best's full training as its probe timed it (tuner.study.training_time)
    train_time_s: float | None = None  # --train-time of the new run: each epoch's ETA is held against it

    def to_json(self) -> dict[str, Any]:
        """The plan as config.yaml holds it; `prediction` and `train_time_s` only where it has them (a plan of today
        without is as it was)."""
        plain = _plain(self)
        prediction, train_time_s = plain.pop("prediction"), plain.pop("train_time_s")
        return {
            **plain,
            **({"prediction": prediction.to_json()} if prediction else {}),
            **({"train_time_s": train_time_s} if train_time_s is not None else {}),
            "settings": dataclasses.asdict(self.settings) if self.settings else None,
            "best": self.best.to_dict(),
            "candidates": [candidate.to_dict() for candidate in self.candidates],
            "frontier": self.frontier.to_dict() if self.frontier else None,
            "stages": [stage.to_json() for stage in self.stages],
        }

    @classmethod
    def from_json(cls, values: Any, where: str = "config.yaml") -> RunPlan:
        # what older tuners did not write
        legacy = {"usable_memory_mb": None, "settings": None, "frontier": None, "prediction": None, "train_time_s": None}
        fields = _fields(_schema(cls), values, where, legacy)
        return cls(**{
            **fields,
            "settings": _settings(fields["settings"], f"{where}.settings"),
            "best": _params(fields["best"], f"{where}.best"),
            "candidates": _each(_candidate, fields["candidates"], f"{where}.candidates"),
            "frontier": _frontier(fields["frontier"], f"{where}.frontier"),
            "stages": _each(Stage.from_json, fields["stages"], f"{where}.stages"),
            "prediction": Prediction.from_json(fields["prediction"]) if fields["prediction"] else None,
        })  # fmt: skip


# ------------------------------------------------------------------------------------- state.json


@dataclasses.dataclass(frozen=True)
class StageProgress:
    """Where one stage is: epochs recorded (each after it is in last.pt), the params it trains with now."""

    name: str
    epochs_done: int
    params: Params  # the stage's planned params until a step-down lowers them
    finished: bool
    final_metrics: dict[str, float] | None  # of best.pt at the stage's end
    last_metrics: dict[str, float] | None  # of the last validated epoch

    @classmethod
    def new(cls, stage: Stage) -> StageProgress:
        return cls(stage.name, 0, stage.params, False, None, None)

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self), "params": self.params.to_dict()}

    @classmethod
    def from_json(cls, values: Any, where: str) -> StageProgress:
        fields = _fields(_schema(cls), values, where)
        return cls(**{**fields, "params": _params(fields["params"], f"{where}.params")})


@dataclasses.dataclass(frozen=True)
class StepDown:
    """A config that ran out of memory twice at one point, and the smaller one the run continued with."""

    stage: int  # numbered from 1
    epochs_done: int
    from_params: Params  # "from" in state.json
    to_params: Params  # "to"
    why: str
    after: str | None  # the out-of-memory reason
    capped: tuple[int, ...]  # the later stages lowered to no larger than `to_params`
    at: str

    KEYS: ClassVar[dict[str, str]] = {"from_params": "from", "to_params": "to"}  # fields whose key differs

    def to_json(self) -> dict[str, Any]:
        out = {self.KEYS.get(key, key): value for key, value in _plain(self).items()}
        return {**out, "from": self.from_params.to_dict(), "to": self.to_params.to_dict(), "capped": list(self.capped)}

    @classmethod
    def from_json(cls, values: Any, where: str) -> StepDown:
        fields = _fields(_schema(cls, cls.KEYS), values, where, legacy={"capped": []})  # before step-downs held
        capped = _each(_int, fields.pop("capped"), f"{where}.capped")
        params = {name: _params(fields.pop(key), f"{where}.{key}") for name, key in cls.KEYS.items()}
        return cls(**fields, **params, capped=capped)


@dataclasses.dataclass(frozen=True)
class Failure:
    """A training process that died: where, with what, how (tuner.process.trial.classify) and why."""

    stage: int  # numbered from 1
    epochs_done: int
    params: Params
    outcome: Outcome
    cause: Cause | None
    reason: str | None
    peak_mem_mb: float
    log: str
    at: str

    @property
    def point(self) -> tuple[int, int, Params, Outcome]:
        """Two failures at one point (stage, epochs done, params, outcome) are the same failure again."""
        return (self.stage, self.epochs_done, self.params, self.outcome)

    def to_json(self) -> dict[str, Any]:
        cause = self.cause.value if self.cause is not None else None
        return {**_plain(self), "params": self.params.to_dict(), "outcome": self.outcome.value, "cause": cause}

    @classmethod
    def from_json(cls, values: Any, where: str) -> Failure:
        fields = _fields(_schema(cls), values, where)
        cause = fields["cause"]
        return cls(**{
            **fields,
            "params": _params(fields["params"], f"{where}.params"),
            "outcome": _enum(Outcome, fields["outcome"], f"{where}.outcome"),
            "cause": None if cause is None else _enum(Cause, cause, f"{where}.cause"),
        })  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunState:
    """Where a run is (rewritten after each event): its stages, restarts, step-downs, failures, peak, wall time."""

    version: int
    finished: bool
    stages: tuple[StageProgress, ...]
    restarts: int  # of the whole run; each invocation also counts its own against --max-restarts
    attempts: int  # training processes started, numbering attempts/NNN/
    invocations: int
    step_downs: tuple[StepDown, ...]
    failures: tuple[Failure, ...]
    peak_mem_mb: float
    budget_mb: float | None  # of the latest invocation
    wall_s: float
    updated: str

    @classmethod
    def new(cls, plan: RunPlan, updated: str) -> RunState:
        stages = tuple(StageProgress.new(stage) for stage in plan.stages)
        return cls(STATE_VERSION, False, stages, 0, 0, 0, (), (), 0.0, None, 0.0, updated)

    @property
    def epochs_done(self) -> int:
        return sum(stage.epochs_done for stage in self.stages)

    def with_stage(self, index: int, progress: StageProgress) -> RunState:
        return dataclasses.replace(self, stages=(*self.stages[:index], progress, *self.stages[index + 1 :]))

    def to_json(self) -> dict[str, Any]:
        return {
            **_plain(self),
            "stages": [stage.to_json() for stage in self.stages],
            "step_downs": [step.to_json() for step in self.step_downs],
            "failures": [failure.to_json() for failure in self.failures],
        }

    @classmethod
    def from_json(cls, values: Any, where: str = "state.json") -> RunState:
        fields = _fields(_schema(cls), values, where)
        if fields["version"] != STATE_VERSION:
            raise ConfigError(f"{where} is version {fields['version']!r}, not {STATE_VERSION}")
        return cls(**{
            **fields,
            "stages": _each(StageProgress.from_json, fields["stages"], f"{where}.stages"),
            "step_downs": _each(StepDown.from_json, fields["step_downs"], f"{where}.step_downs"),
            "failures": _each(Failure.from_json, fields["failures"], f"{where}.failures"),
        })  # fmt: skip
