"""The probe's pruners: Optuna's own, comparing a running probe only with trials that stayed under the
stable limit.

A probe over the limit may score well (a larger imgsz is usually more accurate), but it is not a config
anyone can train; measured against such probes, every config that does fit looks weak and is stopped.
So the pruner sees the study through `StableView`, which leaves out the trials that ran out of memory
or peaked over the limit. Running trials stay in (their peak is not known yet).

`halving` (the default) is Optuna's SuccessiveHalvingPruner over probe epochs (rungs at 1, 3, 9, ...
epochs): a weak config costs one short rung, and only the best third of each rung trains on to full
length; `median` is its MedianPruner. tuner.search never stops a probe at its last epoch (it is measured
by then) nor a noise repeat.
"""

from __future__ import annotations

from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config import ProbeConfig
from tuner.records import Outcome, StudyRecord, TrialRecord


def comparable(trial: FrozenTrial, limit_mb: float) -> bool:
    """A trial the pruner may compare others with: not out of memory, and not over the stable limit."""
    record = TrialRecord.of(trial)
    if record.outcome == Outcome.OOM:
        return False
    return record.peak_mem_mb is None or record.peak_mem_mb <= limit_mb


class StableView:
    """A study as a pruner reads it, without the trials that are not `comparable`; the rest is the study's own."""

    def __init__(self, study: optuna.Study, limit_mb: float) -> None:
        self._study = study
        self._limit_mb = limit_mb

    def get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [trial for trial in trials if comparable(trial, self._limit_mb)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class StableOnly(optuna.pruners.BasePruner):
    """Prunes as `inner` does, against the study's comparable trials only. The limit is the study's own
    (`StudyRecord.stable_limit_mb`, which kills from outside may lower mid-study); `limit_mb` where it has none."""

    def __init__(self, inner: optuna.pruners.BasePruner, limit_mb: float) -> None:
        self.inner = inner
        self.limit_mb = limit_mb

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        limit = StudyRecord.of(study).stable_limit_mb or self.limit_mb
        return self.inner.prune(StableView(study, limit), trial)  # type: ignore[arg-type]


def make(cfg: ProbeConfig, limit_mb: float) -> optuna.pruners.BasePruner:
    """The pruner `cfg.pruner` names, comparing with stable trials only."""
    if cfg.pruner == "median":
        return StableOnly(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1), limit_mb)
    if cfg.pruner == "halving":
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0)
        return StableOnly(inner, limit_mb)
    return optuna.pruners.NopPruner()
