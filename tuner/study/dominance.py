"""What is known not to fit: memory grows with imgsz and with batch, so a config at least as large
in both as one that ran out of memory will too, and is not worth a process start to find out. And
what the pre-flights put under the stable limit (`StableSizes`), for train-best's step-downs.

mosaic and mixup change pixels, not tensor sizes, so they do not enter the comparison. Only OOMs
measured against the trial's own budget count (tuner.process.contract.EVIDENCE): a SIGKILL from outside is an OOM
for that trial, but other processes may have caused it, so it rules out no other config. Its own
imgsz x batch is another matter: stability is judged on the largest peak any run of an imgsz x batch
showed (records.largest_runs), so once one went over the limit no probe of it can be stable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

from optuna.trial import FrozenTrial

from tuner.memory.model import RERUN_SPREAD, Measurement, MemoryModel
from tuner.params import Params
from tuner.process.contract import Cause, Outcome
from tuner.study.records import StudyRecord, TrialRecord, largest_runs, ran_over_limit


def observed_ooms(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that really ran and ran out of their budget (not ones inferred to)."""
    return [trial for trial in trials if TrialRecord.of(trial).is_oom_evidence]


CONSISTENT_KILLS = 2  # kills from outside, at peaks within KILL_SPREAD of each other, make a limit
KILL_SPREAD = 0.15


def outside_kill_level(trials: Iterable[FrozenTrial]) -> float | None:
    """The peak (MiB) at which SIGKILLs from outside the trial consistently came, or None.

    One such kill says nothing about other configs (another process may have caused it), but several at
    about the same peak say the real limit is there (other apps, a container limit, macOS under memory
    pressure), whatever the budget: the lowest of those peaks. A kill clearly below the peak a finished
    trial held (by more than the re-run spread) is no sign of a limit, since the machine held more than
    that, so it is left out: killing a trial by hand early in its run is not taken for the memory limit.
    (The kernel's limit counts memory otherwise than RSS, so kills under it scatter around the largest
    peaks that survived it: those kills count.)
    """
    records = [TrialRecord.of(trial) for trial in trials]
    held = max((r.peak_mem_mb for r in records if r.outcome == Outcome.OK and r.peak_mem_mb), default=0.0)
    return kill_level([r.peak_mem_mb for r in records if r.oom_cause == Cause.OS_KILL and r.peak_mem_mb], held)


def kill_level(kills: Iterable[float], held: float = 0.0) -> float | None:
    """The lowest of the peaks `kills` (MiB) at which processes were killed from outside, where at least
    CONSISTENT_KILLS of them came within KILL_SPREAD of each other, leaving out kills clearly below `held` (the
    largest peak a finished process held, see outside_kill_level); else None. The rule for trials, and for
    pre-flights (tuner.study.limits)."""
    floor = held * (1 - RERUN_SPREAD)
    peaks = sorted(peak for peak in kills if peak >= floor)
    if len(peaks) < CONSISTENT_KILLS or peaks[-1] > peaks[0] * (1 + KILL_SPREAD):
        return None
    return peaks[0]


def inferred_oom(params: dict[str, Any], trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """An observed OOM at no larger imgsz and batch than `params`, if there is one (the smallest)."""
    dominated = [
        trial
        for trial in observed_ooms(trials)
        if trial.params.get("imgsz", 0) <= params["imgsz"] and trial.params.get("batch", 0) <= params["batch"]
    ]
    if not dominated:
        return None
    return min(dominated, key=lambda trial: (trial.params["imgsz"] * trial.params["batch"], trial.number))


def over_limit_run(params: Params, trials: Iterable[FrozenTrial], limit_mb: float) -> FrozenTrial | None:
    """The run of `params`' imgsz x batch with the largest peak, where it went over the stable limit or ran out
    of memory (records.largest_runs): `params` cannot be stable either, whatever its mosaic and mixup."""
    run = largest_runs(trials).get(params.size)
    return run if run is not None and ran_over_limit(run, limit_mb) else None


@dataclasses.dataclass(frozen=True)
class Known:
    """Why a config will not fit, known without running it, and the trial that shows it (None: no one trial does)."""

    reason: str
    source: int | None = None


def known_oom(params: Params, trials: list[FrozenTrial], limit_mb: float) -> Known | None:
    """Why `params` will not fit, as the trials show it: an OOM at no larger imgsz and batch, or a run of its own
    imgsz x batch over the stable limit."""
    source = inferred_oom(params.to_dict(), trials)
    if source is not None:
        return Known(f"inferred: imgsz {source.params['imgsz']} / batch {source.params['batch']} "
                     f"ran out of memory in trial {source.number}", source.number)  # fmt: skip
    over = over_limit_run(params, trials, limit_mb)
    if over is None:
        return None
    record = TrialRecord.of(over)
    what = "ran out of memory" if record.outcome == Outcome.OOM else f"peaked at {record.peak_mem_mb:.0f} MiB"
    return Known(f"inferred: imgsz {params.imgsz} / batch {params.batch} {what} in trial {over.number}, over the "
                 f"stable limit of {limit_mb:.0f} MiB", over.number)  # fmt: skip


def measurements(preflights: Iterable[Measurement], trials: Iterable[FrozenTrial]) -> list[Measurement]:
    """The pre-flights, and the probes that trained an epoch or ran out of their own budget (a kill from outside
    says nothing of other configs), as measurements of their configs."""
    measured = list(preflights)
    for trial in trials:
        record = TrialRecord.of(trial)
        if (record.outcome in (Outcome.OK, Outcome.PRUNED) and record.peak_mem_mb) or record.is_oom_evidence:
            params = Params.of(trial.params)
            measured.append(Measurement(params.imgsz, params.batch, params.mosaic, params.mixup, record.peak_mem_mb,
                                        oom=record.is_oom_evidence))  # fmt: skip
    return measured


@dataclasses.dataclass(frozen=True)
class Measured:
    """What configs already measured say of another by monotonicity alone: whether it fits, and which shows it."""

    fits: bool
    by: Measurement

    def describe(self) -> str:
        what = "ran out of memory" if self.by.oom else f"peaked at {self.by.peak_mb:.0f} MiB"
        return f"imgsz {self.by.imgsz} / batch {self.by.batch} {what}"


def _need(measurement: Measurement) -> float:
    return math.inf if measurement.oom else measurement.peak_mb


def measured_fit(params: Params, measured: Iterable[Measurement], limit_mb: float) -> Measured | None:
    """Whether `params` fits under `limit_mb` as far as measured configs show it (memory grows with imgsz and
    with batch), or None where they do not and only a model can guess. The first that applies decides:

        1. its own imgsz x batch was measured: the largest peak measured there (an OOM: over any limit);
        2. a config at least as large in both stayed under the limit: it fits;
        3. a config no larger in both went over the limit or ran out of memory: it does not.
    """
    measured = list(measured)
    same = [m for m in measured if (m.imgsz, m.batch) == params.size]
    if same:
        largest = max(same, key=_need)
        return Measured(_need(largest) <= limit_mb, largest)
    larger = [m for m in measured if m.imgsz >= params.imgsz and m.batch >= params.batch and _need(m) <= limit_mb]
    if larger:  # the nearest of them says so
        return Measured(True, min(larger, key=_pixels))
    smaller = [m for m in measured if m.imgsz <= params.imgsz and m.batch <= params.batch and _need(m) > limit_mb]
    if smaller:
        return Measured(False, max(smaller, key=_pixels))
    return None


def _pixels(measurement: Measurement) -> tuple[int, int]:
    return measurement.batch * measurement.imgsz**2, measurement.imgsz


@dataclasses.dataclass(frozen=True)
class StableSizes:
    """For each batch of the study's space, the largest imgsz its pre-flights put under the stable limit
    (None: none), and the imgsz choices of the space: what step-downs and progressive growth may use."""

    largest: dict[int, int | None]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, record: StudyRecord) -> StableSizes | None:
        """The frontier the pre-flights mapped, lowered to the study's stable limit where kills from outside
        lowered that limit after the mapping (the stored frontier keeps the budget's)."""
        if not record.limits or record.config is None or record.config.space.imgsz is None:
            return None
        largest = {int(entry["batch"]): entry["imgsz"] for entry in record.limits["frontier"]}
        sizes = tuple(record.config.space.imgsz)
        mapped_at = record.limits.get("stable_limit_mb")
        if record.stable_limit_mb is not None and mapped_at is not None and record.stable_limit_mb < mapped_at:
            largest = cls._under(largest, sizes, record, record.stable_limit_mb)
        return cls(largest, sizes)

    @staticmethod
    def _under(
        largest: dict[int, int | None], sizes: tuple[int, ...], record: StudyRecord, limit_mb: float
    ) -> dict[int, int | None]:
        """For each batch, the largest imgsz of the mapped frontier that stays under `limit_mb`, judged as the
        search judges configs after kills from outside (tuner.study.search): on the pre-flights' peaks first (a
        config at least as large as one that peaked over the limit, less the re-run spread, is over; one no
        larger than one that peaked under it is under), and where none decides, on the memory model's upper
        bound at the densest mosaic and mixup; without a model the mapped frontier stands."""
        measured = [Measurement(**taken) for taken in record.limits.get("preflights") or ()]
        stored = record.limits.get("model")
        model = MemoryModel.from_dict(stored) if stored else None
        space, inside = record.config.space, limit_mb / (1 + RERUN_SPREAD)

        def fits(imgsz: int, batch: int) -> bool:
            if any(m.imgsz <= imgsz and m.batch <= batch and (m.oom or m.peak_mb >= inside) for m in measured):
                return False
            if any(m.imgsz >= imgsz and m.batch >= batch and not m.oom and m.peak_mb < inside for m in measured):
                return True
            return model is None or model.upper(imgsz, batch, space.mosaic[1], space.mixup[1]) < limit_mb

        return {batch: max((size for size in sizes if top is not None and size <= top and fits(size, batch)), default=None)
                for batch, top in largest.items()}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"largest": {str(batch): imgsz for batch, imgsz in self.largest.items()}, "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> StableSizes | None:
        if not values:
            return None
        return cls({int(batch): imgsz for batch, imgsz in values["largest"].items()}, tuple(values["sizes"]))

    def step_down(self, current: Params) -> tuple[Params, str] | None:
        """The largest imgsz below `current`'s that the frontier allows at the same batch; else the next
        smaller batch of the space at the largest imgsz it allows, no larger than `current`'s."""
        allowed = self.largest.get(current.batch)
        smaller = [size for size in self.sizes if size < current.imgsz and (allowed is None or size <= allowed)]
        if allowed is not None and smaller:
            return dataclasses.replace(current, imgsz=max(smaller)), "the largest smaller imgsz the memory frontier allows"
        for batch in sorted((b for b in self.largest if b < current.batch), reverse=True):
            if self.largest[batch] is not None:
                imgsz = min(current.imgsz, self.largest[batch])
                return dataclasses.replace(current, batch=batch, imgsz=imgsz), "a smaller batch the memory frontier allows"
        return None
