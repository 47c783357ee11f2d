"""The probe's pruners, comparing a running probe only with trials that stayed under the stable limit.

A probe over the limit may score well (a larger imgsz is usually more accurate), but it is not a config
anyone can train; measured against such probes, every config that does fit looks weak and is stopped.
So the pruner sees the study through `StableView`, which leaves out the trials that ran out of memory
or peaked over the limit. Running trials stay in (their peak is not known yet).

`halving` (the default) is successive halving over probe epochs (`Halving`: rungs at 1, 3, 9, ...
epochs) whose cut allows for the probe's noise: a weak config costs one short rung, and the best third of
each rung, with those within the noise of it, train on to full length; a probe behind the cut trains on too
where its projection to the last probe epoch is not behind the cut's (larger imgsz fine-tunes start lower and
climb faster). `median` is Optuna's MedianPruner.
tuner.study.search never stops a probe at its last epoch (it is measured by then) nor a noise repeat.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, NamedTuple, Sequence

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
MIN_CURVES = 3  # finished probe curves needed before their climb projects a probe's first epoch


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


def measured(trial: FrozenTrial) -> dict[int, float]:
    """The epochs `trial` reported, with their values, where they are numbers."""
    return {step: value for step, value in trial.intermediate_values.items() if not math.isnan(value)}


class Projection(NamedTuple):
    value: float  # the metric at the probe's last epoch
    basis: str  # what says so, for the reason text: "measured", "its own slope", "the climb of ..."


def by_neighbours(imgsz: int, step: int, value: float, finished: Sequence[FrozenTrial], last: int) -> Projection | None:
    """Where a probe of `imgsz` at `value` after epoch `step` ends at epoch `last`, climbing as the `finished` probes
    did from `step` on: the mean climb of those at its imgsz, or interpolated linearly in imgsz between the nearest
    below and above (the smallest's below every one). None on fewer than MIN_CURVES curves, or above every finished
    imgsz: larger fine-tunes climb faster (README, "Promising configs get the full probe"), so nothing says how
    fast this one climbs."""
    climbs: dict[int, list[float]] = {}
    for other in finished:
        values = measured(other)
        if step in values and last in values and "imgsz" in other.params:
            climbs.setdefault(other.params["imgsz"], []).append(values[last] - values[step])
    if sum(len(gains) for gains in climbs.values()) < MIN_CURVES or imgsz > max(climbs):
        return None
    mean = {size: statistics.fmean(gains) for size, gains in climbs.items()}
    above = min(size for size in mean if size >= imgsz)
    below = max((size for size in mean if size <= imgsz), default=above)
    if below == above:
        return Projection(value + mean[above], f"the climb of finished probes at imgsz {above}")
    weight = (imgsz - below) / (above - below)
    climb = mean[below] + weight * (mean[above] - mean[below])
    return Projection(value + climb, f"the climb of finished probes at imgsz {below} and {above}")


def projection(trial: FrozenTrial, finished: Sequence[FrozenTrial], last: int) -> Projection | None:
    """Where `trial` ends at epoch `last`, from all it measured so far: its value there once it got there; from two
    epochs or more, its own slope over its last two, continued linearly; from one, that value plus the climb
    the `finished` probes nearest its imgsz made from that epoch on (`by_neighbours`). None where nothing says."""
    values = measured(trial)
    if not values:
        return None
    step = max(values)
    if step >= last:
        return Projection(values.get(last, values[step]), "measured")
    earlier = [epoch for epoch in values if epoch < step]
    if earlier:
        before = max(earlier)
        slope = (values[step] - values[before]) / (step - before)
        return Projection(values[step] + slope * (last - step), "its own slope")
    imgsz = trial.params.get("imgsz")
    return None if imgsz is None else by_neighbours(imgsz, step, values[step], finished, last)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What `Halving` decided for a probe at a rung, and on what."""

    step: int
    value: float
    cut: float
    behind: float  # how far the probe trails the cut, a fraction of it (< 0: ahead)
    last: int | None  # the probe's last epoch, which the projections reach; None: the level alone decides
    projected: Projection | None = None
    cut_projected: Projection | None = None
    pruned: bool = False

    def reason(self) -> str:
        text = f"pruned at epoch {self.step}: {self.value:.3f}, {self.behind:.0%} behind the rung's cut {self.cut:.3f}"
        if self.projected is None or self.cut_projected is None:
            return text
        return (f"{text}; projected {self.projected.value:.3f} at epoch {self.last} ({self.projected.basis}) "
                f"against {self.cut_projected.value:.3f}")  # fmt: skip


class Halving(optuna.pruners.BasePruner):
    """Successive halving over probe epochs whose cut allows for the probe's noise, and for how fast a probe climbs.

    Rungs at `min_resource` x `reduction_factor`^k epochs (1, 3, 9, ...). At a rung, a probe trains on when
    it is among the best 1/`reduction_factor` (rounded up) of the trials that reached the rung, or less than
    `margin` (a fraction of that cut) behind the last of them; while fewer than `min_trials` others reached
    the rung, it always trains on. Optuna's SuccessiveHalvingPruner, by contrast, lets only a new best on
    while a rung holds fewer than 2 x `reduction_factor` trials: in a study of a dozen 3-epoch probes, that
    stopped the grid's best config on one noisy epoch (README, "Benchmark: the search").

    Given the probe's last epoch (`epochs`), a probe behind the cut is pruned only if its `projection` to that
    epoch is also more than `margin` behind the projection of the trial at the cut: larger-imgsz fine-tunes start
    lower and climb faster (a probe at 640/1 stopped after epoch 1 at 0.238 against 0.341 was the best config
    trained in full). The cut's projection is that trial's own, by the same rule from all it measured by now
    (its value at the last epoch once it got there: a measurement beats a projection), rather than a cut of
    every trial's projections ranked: one comparison, with the trial it names. A probe whose projection, or the
    cut's, nothing supports (`projection` is None) trains on. Each verdict is kept by trial number (`verdicts`)
    for the reason the trial's record gives (`explained`).
    """

    def __init__(self, reduction_factor: int = 3, min_resource: int = 1, min_trials: int = 3,
                 margin: float = NOISE_MARGIN, epochs: int | None = None) -> None:  # fmt: skip
        self.reduction_factor, self.min_resource = reduction_factor, min_resource
        self.min_trials, self.margin, self.epochs = min_trials, margin, epochs
        self.verdicts: dict[int, Verdict] = {}

    def is_rung(self, step: int) -> bool:
        rung = self.min_resource
        while rung < step:
            rung *= self.reduction_factor
        return rung == step

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.is_rung(step):
            return False
        if math.isnan(trial.intermediate_values[step]):
            return True
        verdict = self.verdict(study, trial, step)
        if verdict is None:
            return False
        self.verdicts[trial.number] = verdict
        return verdict.pruned

    def verdict(self, study: optuna.Study, trial: FrozenTrial, step: int) -> Verdict | None:
        """The verdict on `trial` at rung `step`; None while fewer than `min_trials` others reached it."""
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        others = [t for t in trials if step in measured(t)]
        if len(others) < self.min_trials:
            return None
        maximize = study.direction == StudyDirection.MAXIMIZE
        sign = 1.0 if maximize else -1.0
        value = trial.intermediate_values[step]
        ranked = sorted([*others, trial], key=lambda t: (-sign * t.intermediate_values[step], t.number))
        at_cut = ranked[math.ceil(len(ranked) / self.reduction_factor) - 1]
        cut = at_cut.intermediate_values[step]
        gap = sign * (cut - value)
        behind = gap / abs(cut) if cut else math.inf if gap > 0 else 0.0
        verdict = Verdict(step, value, cut, behind, self.epochs)
        if behind <= self.margin:
            return verdict
        if self.epochs is None:
            return dataclasses.replace(verdict, pruned=True)
        finished = [t for t in trials if self.epochs in measured(t)]
        mine, theirs = projection(trial, finished, self.epochs), projection(at_cut, finished, self.epochs)
        if mine is None or theirs is None:
            return dataclasses.replace(verdict, projected=mine, cut_projected=theirs)
        trails = sign * (theirs.value - mine.value) > self.margin * abs(theirs.value)
        return dataclasses.replace(verdict, projected=mine, cut_projected=theirs, pruned=trails)


def explained(study: optuna.Study, number: int) -> str | None:
    """Why the study's pruner stopped trial `number`, where it is tuner's `Halving` (behind `StableOnly`): the level
    and the projections its verdict stood on. None for another pruner, or a trial it did not stop."""
    pruner = study.pruner.inner if isinstance(study.pruner, StableOnly) else study.pruner
    verdict = pruner.verdicts.get(number) if isinstance(pruner, Halving) else None
    return verdict.reason() if verdict is not None and verdict.pruned else None


def make(cfg: ProbeConfig, limit_mb: float) -> optuna.pruners.BasePruner:
    """The pruner `cfg.pruner` names, comparing with stable trials only."""
    if cfg.pruner == "median":
        return StableOnly(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1), limit_mb)
    if cfg.pruner == "halving":
        return StableOnly(Halving(epochs=cfg.probe.epochs), limit_mb)
    return optuna.pruners.NopPruner()
