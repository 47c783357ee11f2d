"""The probe's pruners, comparing a running probe only with trials that stayed under the stable limit.

A probe over the limit may score well (a larger imgsz is usually more accurate), but it is not a config
anyone can train; measured against such probes, every config that does fit looks weak and is stopped.
So the pruner sees the study through `StableView`, which leaves out the trials that ran out of memory
or peaked over the limit. Running trials stay in (their peak is not known yet).

`halving` (the default) is successive halving over probe epochs (`Halving`: rungs at 1, 3, 9, ...
epochs) whose cut allows for the probe's noise: a weak config costs one short rung, and the best third of
each rung, with those within the noise of it, train on to full length. `median` is Optuna's MedianPruner.
tuner.study.search never stops a probe at its last epoch (it is measured by then) nor a noise repeat.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.config import ProbeConfig
from tuner.process.contract import Outcome
from tuner.study.records import StudyRecord, TrialRecord

# How far behind a rung's cut a probe may be and still train on, as a fraction of the cut. Measured on the
# embedded dataset, over 65 probe curves of the benchmarks: after epoch 1, two seeds of one config were up to
# 13% apart (imgsz 640 / batch 1: 0.250 and 0.287), and a config up to 16% behind another still ended its
# 3 epochs ahead (512/1: 0.203 against 448/2's 0.242, then 0.2739 against 0.2736); of the 1259 pairs more than
# 20% apart after epoch 1, none ended in the other order.
NOISE_MARGIN = 0.2


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


class Halving(optuna.pruners.BasePruner):
    """Successive halving over probe epochs whose cut allows for the probe's noise.

    Rungs at `min_resource` x `reduction_factor`^k epochs (1, 3, 9, ...). At a rung, a probe trains on when
    it is among the best 1/`reduction_factor` (rounded up) of the trials that reached the rung, or less than
    `margin` (a fraction of that cut) behind the last of them; while fewer than `min_trials` others reached
    the rung, it always trains on. Optuna's SuccessiveHalvingPruner, by contrast, lets only a new best on
    while a rung holds fewer than 2 x `reduction_factor` trials: in a study of a dozen 3-epoch probes, that
    stopped the grid's best config on one noisy epoch (README, "Benchmark: the search").
    """

    def __init__(self, reduction_factor: int = 3, min_resource: int = 1, min_trials: int = 3,
                 margin: float = NOISE_MARGIN) -> None:  # fmt: skip
        self.reduction_factor, self.min_resource = reduction_factor, min_resource
        self.min_trials, self.margin = min_trials, margin

    def is_rung(self, step: int) -> bool:
        rung = self.min_resource
        while rung < step:
            rung *= self.reduction_factor
        return rung == step

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.is_rung(step):
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and step in t.intermediate_values
                  and not math.isnan(t.intermediate_values[step])]  # fmt: skip
        if len(others) < self.min_trials:
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        ranked = sorted([*others, value], reverse=maximize)
        cut = ranked[math.ceil(len(ranked) / self.reduction_factor) - 1]
        slack = self.margin * abs(cut)
        return value < cut - slack if maximize else value > cut + slack


def make(cfg: ProbeConfig, limit_mb: float) -> optuna.pruners.BasePruner:
    """The pruner `cfg.pruner` names, comparing with stable trials only."""
    if cfg.pruner == "median":
        return StableOnly(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1), limit_mb)
    if cfg.pruner == "halving":
        return StableOnly(Halving(), limit_mb)
    return optuna.pruners.NopPruner()
