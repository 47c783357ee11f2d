"""What a parent tells a training process, and what the process tells back: a file in, a file out.

The parent writes a spec (`ProbeSpec` for a probe trial, `TrainSpec` for a train-best stage) to
`spec.json` in the process's folder and runs `python -m tuner.study.probe_child|tuner.train.stage_child spec.json`.
The child appends one `EpochRecord` per finished epoch to `progress.jsonl` (so the parent can report
to Optuna and show progress), and writes one `ChildResult` to `result.json` atomically at its end. A
process killed from outside writes no result; the parent classifies that from its exit status
(tuner.process.trial.classify). Every file of the exchange lives in the one folder `ChildFiles` names.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any, Literal

from tuner.config import ProbeSettings
from tuner.params import Params

Status = Literal["ok", "oom", "error", "checkpoint"]

PROBE_CHILD = "tuner.study.probe_child"  # `python -m` these: the entry points of the two kinds of training process
STAGE_CHILD = "tuner.train.stage_child"


class Outcome(str, enum.Enum):
    """How a training process ended, as its parent classifies it (tuner.process.trial.classify)."""

    OK = "ok"
    OOM = "oom"
    PRUNED = "pruned"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


class Cause(str, enum.Enum):
    """What says an OOM was one (a trial's `oom_cause`), or that an error was the checkpoint's."""

    WATCHDOG = "watchdog"  # tuner's watchdog killed it over its budget
    EXCEPTION = "exception"  # an out-of-memory error inside it
    BATCH_HALVING = "batch-halving"  # Ultralytics halved its batch after an out-of-memory error
    OS_KILL = "os-kill"  # a SIGKILL from outside (other processes may have caused it)
    INFERRED = "inferred"  # never run: a config no larger ran out of memory, or the limit puts it beyond
    CHECKPOINT = "checkpoint"  # an error: the checkpoint to continue from cannot be used

    def __str__(self) -> str:
        return self.value


# OOM causes measured against the trial's own budget: a config at least as large will not fit either.
# A tuple, not a set: a cause read back from storage is the plain string, and Enum hashes by name.
EVIDENCE = (Cause.WATCHDOG, Cause.EXCEPTION, Cause.BATCH_HALVING)


@dataclasses.dataclass(frozen=True)
class ChildFiles:
    """The files of one training process, all in its own folder."""

    folder: Path

    @property
    def spec(self) -> Path:
        return self.folder / "spec.json"

    @property
    def result(self) -> Path:
        return self.folder / "result.json"

    @property
    def progress(self) -> Path:
        return self.folder / "progress.jsonl"

    @property
    def log(self) -> Path:
        return self.folder / "log.txt"

    @property
    def device_bytes(self) -> Path:
        """The child's latest device-memory reading (CUDA reserved, MPS driver memory), for the watchdog."""
        return self.folder / "device_bytes"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChildSpec:
    """What every training process is told: the config, where to train it, under which budget."""

    model: str
    data: str
    device: str  # as Ultralytics takes it: "cpu", "mps", "0"
    device_kind: str  # "cpu" | "cuda" | "mps"
    budget: int  # bytes
    params: Params
    metric: str  # the Ultralytics metrics key, e.g. "metrics/mAP50-95(B)"
    workers: int = 0
    folder: str = ""  # set by tuner.process.trial.run_child: where the exchange files are

    @property
    def files(self) -> ChildFiles:
        return ChildFiles(Path(self.folder))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ChildSpec:
        return cls(**{**values, "params": Params.of(values["params"])})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbeSpec(ChildSpec):
    """A probe trial: a short fine-tune of `params` (see tuner.study.probe_child).

    With `preflight_batches` N > 0 it is a pre-flight instead: N training batches and one validation
    batch, then it stops, to measure the config's peak memory in seconds (its result has no value).
    """

    probe: ProbeSettings
    seed: int
    preflight_batches: int = 0

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ProbeSpec:
        return cls(**{**values, "params": Params.of(values["params"]), "probe": ProbeSettings(**values["probe"])})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSpec(ChildSpec):
    """One stage of train-best, from its start or continued from `resume` (see tuner.train.stage_child)."""

    settings: dict[str, Any]  # the Ultralytics arguments of the stage besides params (tuner.train.plan.train_settings)
    save_dir: str
    resume: str | None = None
    val_every: int = 1

    @property
    def epochs(self) -> int:
        return int(self.settings["epochs"])


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One line of progress.jsonl: an epoch that has finished (and, in train-best, is in last.pt)."""

    epoch: int
    value: float | None  # the metric; None for an epoch that was not validated
    imgsz: int
    batch: int
    seconds: float
    device_peak: int = 0
    epochs: int | None = None  # planned epochs of a train-best stage
    metrics: dict[str, float] | None = None  # train-best: the validation metrics by name
    threads: int | None = None
    accumulate: int | None = None
    nbs: int | None = None
    lr0: float | None = None
    peak_mb: float | None = None  # added by the parent: its watchdog's peak so far
    train_s: float | None = None  # a probe: seconds its training batches took this epoch (validation not included)
    train_batches: int | None = None  # ... and how many they were
    val_s: float | None = None  # seconds its validation took this epoch
    val_batches: int | None = None  # ... over how many batches (of twice the batch)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> EpochRecord:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_json(self) -> dict[str, Any]:
        """The facts the epoch has; `value` always, None for an epoch that was not validated."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None or key == "value"}


@dataclasses.dataclass(frozen=True)
class PreflightCounts:
    """What a finished pre-flight trained and validated (tuner.study.probe_child.Preflight)."""

    trained: int  # training batches
    per_epoch: int  # training batches in an epoch
    validated: int  # validation batches
    images: int  # in the validation batch
    height: int  # of the validation batch's images, padded
    width: int
    train_batch_s: float | None = None  # seconds a training batch took, the first (the loader's start) left out
    val_batch_s: float | None = None  # seconds the validation batch took


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """How the training process says it ended; absent when it was killed."""

    status: Status
    message: str | None = None  # why: the OOM, the error, or the unusable checkpoint
    halved: bool = False  # Ultralytics halved the batch after an OOM (seen by tuner's callback)
    value: float | None = None  # a probe's metric: its last epoch's
    epochs_done: int = 0
    batch_used: int | None = None
    imgsz_used: int | None = None
    device_peak: int = 0
    seconds: float = 0.0
    final_metrics: dict[str, float] | None = None  # train-best: metrics of best.pt at the end
    already_done: bool = False  # train-best: the checkpoint had trained every epoch before this process
    preflight: PreflightCounts | None = None  # a pre-flight that ended "ok": what it trained and validated

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ChildResult:
        names = {field.name for field in dataclasses.fields(cls)}
        known = {key: value for key, value in values.items() if key in names}
        if known.get("preflight") is not None:
            known["preflight"] = PreflightCounts(**known["preflight"])
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
