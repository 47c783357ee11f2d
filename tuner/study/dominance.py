"""What is known not to fit: memory grows with imgsz and with batch, so a config at least as large
in both as one that ran out of memory will too, and is not worth a process start to find out. And
what the pre-flights put under the stable limit (`StableSizes`), for train-best's step-downs.

mosaic and mixup change pixels, not tensor sizes, so they do not enter the comparison. Only OOMs
measured against the trial's own budget count (records.EVIDENCE): a SIGKILL from outside is an OOM
for that trial, but other processes may have caused it, so it rules out no other config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from optuna.trial import FrozenTrial

from tuner.memory.model import RERUN_SPREAD, Measurement, MemoryModel
from tuner.params import Params
from tuner.process.contract import Cause, Outcome
from tuner.study.records import StudyRecord, TrialRecord


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
