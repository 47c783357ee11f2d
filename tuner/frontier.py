"""What is known not to fit: memory grows with imgsz and with batch, so a config at least as large
in both as one that ran out of memory will too, and is not worth a process start to find out.

mosaic and mixup change pixels, not tensor sizes, so they do not enter the comparison. Only OOMs
measured against the trial's own budget count (records.EVIDENCE): a SIGKILL from outside is an OOM
for that trial, but other processes may have caused it, so it rules out no other config.
"""

from __future__ import annotations

from typing import Any, Iterable

from optuna.trial import FrozenTrial

from tuner.records import TrialRecord


def observed_ooms(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that really ran and ran out of their budget (not ones inferred to)."""
    return [trial for trial in trials if TrialRecord.of(trial).is_oom_evidence]


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
