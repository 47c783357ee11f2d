"""What tuner stores on a study and on each of its trials (Optuna user attrs): the one schema.

Every reader and writer goes through `TrialRecord` and `StudyRecord`, so an attribute's key is
spelled here and nowhere else. The attrs stay plain JSON in the storage, which is what
optuna-dashboard shows and what other tools read.

A trial's `outcome` and, for OOMs, its `oom_cause`:

    ok       COMPLETE  trained every probe epoch with the batch it was given
    oom      PRUNED    ran out of memory; oom_cause says what says so:
                         watchdog, exception, batch-halving  measured against the trial's own budget
                         os-kill                              a SIGKILL from outside (other processes may have caused it)
                         inferred                             never run: a config no larger ran out of memory
    pruned   PRUNED    the pruner stopped it
    error    FAIL      anything else

A trial with no outcome and state FAIL never produced a result: an orphan its heartbeat failed (a copy
of it is queued again), or a `surplus` trial another worker had already taken the place of (see
tuner.study.workers); neither counts towards `n_trials`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import config as configs
from tuner.data.sample import Sample
from tuner.params import Params
from tuner.process.contract import EVIDENCE, Cause, Outcome
from tuner.study.training_time import Prediction


def _from_attrs(cls, attrs: dict[str, Any]):
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in attrs.items() if key in names})


def _to_attrs(record) -> dict[str, Any]:
    return {key: value for key, value in dataclasses.asdict(record).items() if value is not None}


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """The user attrs of one trial; None where a trial has no such fact."""

    outcome: Outcome | None = None
    oom_cause: str | None = None
    oom_reason: str | None = None
    error: str | None = None
    pruned_reason: str | None = None
    peak_mem_mb: float | None = None  # the budgeted quantity (see tuner.memory.device); peak_rss_mb/peak_device_mb its parts
    peak_rss_mb: float | None = None
    peak_device_mb: float | None = None
    stable: bool | None = None
    repeat_of: int | None = None  # a noise repeat: the trial whose config it trains again with another seed
    inferred_from: int | None = None  # an inferred OOM: the trial that ran out of memory
    seed: int | None = None
    device: str | None = None
    duration_s: float | None = None
    epochs_done: int | None = None
    batch_used: int | None = None
    imgsz_used: int | None = None
    log: str | None = None
    worker: str | None = None  # host:pid of the tuner process that ran it (tuner.study.workers)
    slot: str | None = None  # the place in the study's plan an enqueued trial fills: startup:K, repeat:N, race:K
    surplus: str | None = None  # never run: why another trial already filled its place
    train_s_predicted: float | None = None  # an ok probe: its config's full training, as the probe timed it
    train_epochs_predicted: int | None = None  # ... for so many epochs (train-best's plan when the probe ran)
    train_epoch_s_predicted: float | None = None  # ... of so many seconds each (tuner.study.training_time)

    def __post_init__(self) -> None:
        if self.outcome is not None and not isinstance(self.outcome, Outcome):  # unknown text: no outcome
            object.__setattr__(self, "outcome", Outcome._value2member_map_.get(self.outcome))

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        return _from_attrs(cls, trial.user_attrs)

    def attrs(self) -> dict[str, Any]:
        out = _to_attrs(self)
        if self.outcome is not None:
            out["outcome"] = self.outcome.value
        return out

    def save(self, trial: optuna.Trial) -> None:
        for key, value in self.attrs().items():
            trial.set_user_attr(key, value)

    @property
    def prediction(self) -> Prediction | None:
        """Its config's full training as its probe timed it; None where it has no such prediction."""
        if self.train_s_predicted is None:
            return None
        return Prediction.from_json({"seconds": self.train_s_predicted, "epochs": self.train_epochs_predicted,
                                     "epoch_s": self.train_epoch_s_predicted})  # fmt: skip

    @property
    def inferred(self) -> bool:
        return self.oom_cause == Cause.INFERRED

    @property
    def is_oom_evidence(self) -> bool:
        """Ran and ran out of its own budget: what rules out every config at least as large."""
        return self.outcome == Outcome.OOM and self.oom_cause in EVIDENCE


def peak_seen(trial: FrozenTrial) -> float | None:
    """What one run showed its imgsz x batch needs (MiB): its peak, or more than any limit where it ran out of
    memory (not inferred, nor killed from outside); None for a trial that never ran or has no peak.

    A kill from outside is not such evidence (other processes may have caused it): that run showed only the peak
    it reached before the kill. Consistent kills set a limit of their own (tuner.study.dominance.kill_level)."""
    record = TrialRecord.of(trial)
    if record.inferred:
        return None
    return math.inf if record.outcome == Outcome.OOM and record.oom_cause != Cause.OS_KILL else record.peak_mem_mb


def largest_runs(trials: Iterable[FrozenTrial]) -> dict[tuple[int, int], FrozenTrial]:
    """For each imgsz x batch, the run that showed the largest peak (`peak_seen`): what decides stability.

    mosaic and mixup change pixels, not tensor sizes, so every run of one imgsz x batch needs the same memory
    within the re-run spread, and the largest peak any of them showed is what each needs, whatever order they
    ran in. (Nor can the memory model show a mosaic or mixup term that would say otherwise: every pre-flight
    runs at the top of both ranges, so no fit tells such a term apart from batch·imgsz².)
    """
    largest: dict[tuple[int, int], FrozenTrial] = {}
    for trial in trials:
        seen = peak_seen(trial)
        if seen is None or not {"imgsz", "batch"} <= trial.params.keys():
            continue
        size = (trial.params["imgsz"], trial.params["batch"])
        if size not in largest or seen > peak_seen(largest[size]):
            largest[size] = trial
    return largest


def _completed(trial: FrozenTrial) -> bool:
    record = TrialRecord.of(trial)
    return (
        trial.state == TrialState.COMPLETE
        and trial.value is not None
        and record.outcome == Outcome.OK
        and record.peak_mem_mb is not None
    )


def _within(trial: FrozenTrial, limit_mb: float, largest: dict[tuple[int, int], FrozenTrial]) -> bool:
    """Completed, and the largest peak of its imgsz x batch (`largest`, from largest_runs) within the limit."""
    if not _completed(trial):
        return False
    run = largest.get((trial.params["imgsz"], trial.params["batch"]), trial)
    return max(peak_seen(run), peak_seen(trial)) <= limit_mb


def is_stable(trial: FrozenTrial, limit_mb: float, trials: Iterable[FrozenTrial]) -> bool:
    """Completed with a metric, and no run of its imgsz x batch among `trials` (the study's; it may be among
    them) nor itself peaked over the stable limit or ran out of memory (`largest_runs`). `trials` has no
    default: a run judged alone can look stable while another run of its imgsz x batch went over."""
    return _within(trial, limit_mb, largest_runs([trial, *trials]))


def ran_over_limit(trial: FrozenTrial, limit_mb: float) -> bool:
    """Really ran (not inferred), and ran out of memory or peaked over the stable limit."""
    seen = peak_seen(trial)
    return seen is not None and seen > limit_mb


def stable_configs(trials: Iterable[FrozenTrial], limit_mb: float) -> dict[tuple, list[FrozenTrial]]:
    """The stable trials of each config (by Params.key) whose imgsz x batch no run took over the limit.

    The same imgsz x batch peaks several percent apart from run to run, whatever its mosaic and mixup, so one
    run under the limit is not enough: a config is judged on the largest peak any run of its imgsz x batch
    showed, and one run of it over the limit (or out of memory) rules out every config of that imgsz x batch.
    """
    trials = [t for t in trials if Params.FIELDS <= t.params.keys()]  # not one another worker is still sampling
    largest = largest_runs(trials)
    groups: dict[tuple, list[FrozenTrial]] = {}
    for trial in trials:
        if _within(trial, limit_mb, largest):
            groups.setdefault(Params.of(trial.params).key, []).append(trial)
    return groups


def retried(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials a heartbeat failed and Optuna queued again (RetryHeartbeatStaleTrialCallback)."""
    return {number for t in trials for number in t.system_attrs.get("retry_history", ())}


def repeats_run(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The noise repeats (and race runs) that finished and count: not a surplus, an inferred OOM or a retried orphan."""
    again = retried(trials)
    return [t for t in trials if TrialRecord.of(t).repeat_of is not None and t.state.is_finished()
            and counts_towards_total(t, again)]  # fmt: skip


def counts_towards_total(trial: FrozenTrial, retried_numbers: set[int] | frozenset[int] = frozenset()) -> bool:
    """Whether a finished trial counts towards `n_trials`.

    An inferred OOM does not (it never ran), nor a surplus trial, nor an orphan failed by its heartbeat
    (a copy of it runs again; `retried_numbers` names orphans killed after their result was written).
    """
    record = TrialRecord.of(trial)
    if record.inferred or record.surplus:
        return False
    if trial.number in retried_numbers:
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and record.outcome == Outcome.ERROR


def holds_place(trial: FrozenTrial, retried_numbers: set[int] | frozenset[int] = frozenset()) -> bool:
    """Whether a trial fills its place in the study: waiting, running, or finished with a result (an
    inferred OOM included); not an orphan or a surplus trial."""
    if trial.state in (TrialState.WAITING, TrialState.RUNNING):
        return not TrialRecord.of(trial).surplus
    return counts_towards_total(trial, retried_numbers) or TrialRecord.of(trial).inferred


# ------------------------------------------------------------------------------------------- the study


@dataclasses.dataclass(frozen=True)
class Noise:
    """Pairs (original trial, repeat trial, |difference|) of a config probed twice, and their mean."""

    pairs: tuple[tuple[int, int, float], ...] = ()
    spread: float | None = None

    @classmethod
    def of(cls, value: dict[str, Any] | None) -> Noise:
        value = value or {}
        return cls(tuple(tuple(pair) for pair in value.get("pairs") or ()), value.get("spread"))

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": [list(pair) for pair in self.pairs], "spread": self.spread}


@dataclasses.dataclass(frozen=True)
class Race:
    """How the race among tied top configs ended: the configs still tied (first trial numbers, the most accurate
    first), the extra runs spent over the whole study, and "separated", "settled" (the most accurate of the tied
    configs needs no more memory than the others: it is the pick either way, so no more runs are spent), or
    "still tied" (the race's budget is spent), or "out of time" (the probe budget or --timeout ended it first)."""

    tied: tuple[int, ...] = ()
    runs: int = 0
    verdict: str | None = None

    @classmethod
    def of(cls, value: dict[str, Any] | None) -> Race | None:
        if not value:
            return None
        return cls(tuple(value.get("tied") or ()), int(value.get("runs") or 0), value.get("verdict"))

    def to_dict(self) -> dict[str, Any]:
        return {"tied": list(self.tied), "runs": self.runs, "verdict": self.verdict}

    def describe(self) -> str:
        if self.verdict == "separated":
            return f"the top configs separated after {self.runs} more run(s); trial {self.tied[0]} leads."
        names = ", ".join(f"trial {number}" for number in self.tied)
        if self.verdict == "settled":
            after = f" after {self.runs} more run(s)" if self.runs else ""
            return (f"{names} tie within the noise{after}, but the most accurate, trial {self.tied[0]}, needs no more "
                    "memory than the others, so it is the pick either way: no more runs are spent on them.")  # fmt: skip
        why = "the probe's budget or --timeout ran out" if self.verdict == "out of time" else "the race's budget, --race, is spent"
        return (f"{names} still tie after {self.runs} more run(s) ({why}); "
                "tuner picks the one with the most memory headroom among them.")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Best:
    """The best stable config `tuner probe` chose, as recorded on the study."""

    trial: int
    params: Params
    value: float | None
    peak_mem_mb: float | None
    runs: int = 1
    best_yaml: str | None = None

    @classmethod
    def of(cls, value: dict[str, Any] | None) -> Best | None:
        if not value:
            return None
        return cls(
            trial=int(value["trial"]),
            params=Params.of(value["params"]),
            value=value.get("value"),
            peak_mem_mb=value.get("peak_mem_mb"),
            runs=int(value.get("runs") or 1),
            best_yaml=value.get("best_yaml"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "params": self.params.to_dict()}


@dataclasses.dataclass(frozen=True)
class MappingLease:
    """Who maps the study's memory limits (tuner.study.workers.Lease): the worker (host:pid), the token of its one
    lease, and its last beat (time.time() on the worker's host; readers compare beats, not clocks)."""

    worker: str
    token: str
    beat: float

    @classmethod
    def of(cls, value: dict[str, Any] | None) -> MappingLease | None:
        return _from_attrs(cls, value) if value else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    """The user attrs of a study: what it measures (config), where (device, budget), what it found."""

    config: configs.ProbeConfig | None = None
    device: str | None = None
    device_name: str | None = None
    usable_memory_mb: float | None = None
    budget_mb: float | None = None
    stable_limit_mb: float | None = None  # lowered below the budget's when kills from outside set a limit
    outside_kill_mb: float | None = None  # the peak at which kills from outside consistently came (tuner.study.dominance)
    model_path: str | None = None
    data_path: str | None = None
    tuner_version: str | None = None
    space_from_data: bool | None = None  # imgsz or batch choices derived from the data (tuner.study.derive)
    noise: Noise = Noise()
    best: Best | None = None
    race: Race | None = None  # how the race among tied top configs ended (tuner.study.search)
    limits: dict[str, Any] | None = None  # what the pre-flights found (tuner.study.limits.Limits.to_dict)
    mapping: dict[str, Any] | None = None  # a mapping under way: the pre-flights so far (tuner.study.limits.Mapping)
    mapping_lease: MappingLease | None = None  # who maps the limits while they are mapped (tuner.study.workers)
    sample: Sample | None = None  # the images every probe trains and validates on (tuner.data.sample)
    probe_plan: dict[str, Any] | None = None  # the probes fitted to the budget (tuner.study.probe_budget.Plan.to_json)
    budget_follows: dict[str, Any] | None = None  # the best config a share budget last followed (config, training_s, budget_s)
    family: dict[str, Any] | None = None  # the studies of one probe of several models (tuner.commands.probe_models)

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        attrs = dict(study.user_attrs)
        stored = attrs.get("config")
        attrs["config"] = configs.from_stored(stored) if stored else None
        attrs["noise"] = Noise.of(attrs.get("noise"))
        attrs["best"] = Best.of(attrs.get("best"))
        attrs["race"] = Race.of(attrs.get("race"))
        attrs["mapping_lease"] = MappingLease.of(attrs.get("mapping_lease"))
        attrs["sample"] = Sample.from_dict(attrs["sample"]) if attrs.get("sample") else None
        record = _from_attrs(cls, attrs)
        if record.stable_limit_mb is None and record.budget_mb is not None and record.config is not None:
            record = dataclasses.replace(record, stable_limit_mb=record.budget_mb * (1 - record.config.safety_margin))
        return record

    def attrs(self) -> dict[str, Any]:
        """The attributes this record has (None: it has no such fact), as stored."""
        return {key: value for key, value in self._stored().items() if value is not None}

    def save(self, study: optuna.Study, *names: str) -> None:
        """Write the attributes `names` (None clears one), or with no names every attribute this record has.

        Name what changed: several workers write one study, and a whole record written back from an earlier read
        undoes what another worker stored in between (a lowered stable limit, the race, the mapping lease)."""
        stored = self._stored()
        for key in names or [key for key, value in stored.items() if value is not None]:
            study.set_user_attr(key, stored[key])

    def _stored(self) -> dict[str, Any]:
        out = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        out["config"] = None if self.config is None else self.config.to_dict()
        out["noise"] = None if self.noise == Noise() else self.noise.to_dict()
        out["best"] = None if self.best is None else self.best.to_dict()
        out["race"] = None if self.race is None else self.race.to_dict()
        out["mapping_lease"] = None if self.mapping_lease is None else self.mapping_lease.to_dict()
        out["sample"] = None if self.sample is None else self.sample.to_dict()
        return out
