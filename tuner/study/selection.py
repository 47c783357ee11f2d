"""The study's noise, the configs to probe again, and the best *stable* config.

Stable: the trial completed and its peak memory stayed within the budget minus the safety margin, and no
other run of the same config went over it (records.stable_configs: the largest peak seen decides).
Noise: the same config probed again with another seed scores differently; the mean absolute
difference over such pairs is the study's spread. Among stable configs whose mean metric is within
that spread of the best (less as more runs stand behind the means: `tolerance`), the one with the
lowest peak memory (the most headroom) is chosen; peaks within MEMORY_TIE of the budget of each other
count as equal (the same config's peak scatters by several percent from run to run), and among those
the higher mean metric wins.
Repeats: the best stable configs not yet repeated, one repeat per config, most accurate first.
Race: while the top configs tie (`contenders`) and the tie decides the pick (`tie_decides`), more seeds for
them only (tuner.study.search).
"""

from __future__ import annotations

import dataclasses
import math
from statistics import mean
from typing import Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.params import config_key
from tuner.study.records import Noise, TrialRecord, stable_configs

MEMORY_TIE = 0.05  # peaks closer than this fraction of the budget are the same headroom
ROOM_TO_GROW = 0.5  # a best config at the largest imgsz, peaking below this share of the stable limit


@dataclasses.dataclass(frozen=True)
class Choice:
    trial: optuna.trial.FrozenTrial  # the first trial of the chosen config
    value: float  # mean metric over the config's stable trials
    runs: int
    peak_mb: float  # the largest peak of its runs
    best_value: float  # the highest mean of any stable config
    spread: float | None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.trial.params)


def noise(trials: Iterable[FrozenTrial]) -> Noise:
    """Pairs (original, repeat, |difference|) of completed repeats, and their mean difference."""
    by_number = {trial.number: trial for trial in trials}
    pairs = []
    for trial in by_number.values():
        repeat_of = TrialRecord.of(trial).repeat_of
        original = by_number.get(repeat_of) if repeat_of is not None else None
        if original is None or trial.state != TrialState.COMPLETE or original.state != TrialState.COMPLETE:
            continue
        pairs.append((original.number, trial.number, round(abs(trial.value - original.value), 6)))
    spread = round(mean(pair[2] for pair in pairs), 6) if pairs else None
    return Noise(tuple(pairs), spread)


def to_repeat(trials: Iterable[FrozenTrial], wanted: int, limit_mb: float) -> list[FrozenTrial]:
    """The trials whose configs to probe again with another seed, so that `wanted` configs have a repeat.

    The most accurate stable originals first, one repeat per config (the sampler may have proposed
    one config twice), none for a config that was repeated already.
    """
    trials = list(trials)
    repeated = {TrialRecord.of(t).repeat_of for t in trials} - {None}
    needed = wanted - len(repeated)
    done = {config_key(t.params) for t in trials if t.number in repeated}
    stable = {id(t) for runs in stable_configs(trials, limit_mb).values() for t in runs}
    originals = [t for t in trials if id(t) in stable and TrialRecord.of(t).repeat_of is None]
    chosen = []
    for original in sorted(originals, key=lambda t: -t.value):
        if len(chosen) >= needed:
            break
        if config_key(original.params) not in done:
            done.add(config_key(original.params))
            chosen.append(original)
    return chosen


def tolerance(spread: float | None, runs: int, best_runs: int) -> float:
    """How far below the best config's mean metric another config's mean may be and still tie: the seed
    spread for one run each, shrinking as more runs stand behind the means (a mean of n runs scatters
    1/sqrt(n) as much as one run)."""
    return (spread or 0.0) * math.sqrt((1 / runs + 1 / best_runs) / 2)


def contenders(trials: Iterable[FrozenTrial], limit_mb: float, spread: float | None) -> list[list[FrozenTrial]]:
    """The runs of each stable config whose mean metric ties with the most accurate config's, most accurate first."""
    groups = sorted(stable_configs(trials, limit_mb).values(), key=lambda runs: -mean(t.value for t in runs))
    if not groups:
        return []
    best_value, best_runs = mean(t.value for t in groups[0]), len(groups[0])
    return [runs for runs in groups if mean(t.value for t in runs) >= best_value - tolerance(spread, len(runs), best_runs)]


def best_stable(
    trials: Iterable[optuna.trial.FrozenTrial], limit_mb: float, spread: float | None, budget_mb: float | None = None
) -> Choice | None:
    groups = stable_configs(trials, limit_mb)
    if not groups:
        return None
    summaries = [
        (mean(t.value for t in runs), max(TrialRecord.of(t).peak_mem_mb for t in runs), min(runs, key=lambda t: t.number), len(runs))
        for runs in groups.values()
    ]
    best_value, best_runs = max((summary[0], summary[3]) for summary in summaries)
    close = [summary for summary in summaries if summary[0] >= best_value - tolerance(spread, summary[3], best_runs)]
    lowest_peak = min(summary[1] for summary in close)
    same_headroom = [summary for summary in close if summary[1] <= lowest_peak + MEMORY_TIE * (budget_mb or limit_mb)]
    value, peak, first, runs = max(same_headroom, key=lambda summary: (summary[0], -summary[1]))
    return Choice(trial=first, value=value, runs=runs, peak_mb=peak, best_value=best_value, spread=spread)


def tie_decides(
    trials: Iterable[optuna.trial.FrozenTrial], limit_mb: float, spread: float | None, budget_mb: float | None = None
) -> bool:
    """Whether the pick rests on a tie: `best_stable` chooses a config other than the most accurate one, for its
    memory headroom. Otherwise the most accurate config is picked whether the others tie with it or not (they
    need no less memory), and more seeds could only re-rank configs within the noise."""
    choice = best_stable(trials, limit_mb, spread, budget_mb)
    return choice is not None and choice.value < choice.best_value


def room_to_grow(imgsz: int, peak_mb: float | None, searched: Iterable[int], stable_limit_mb: float | None) -> str | None:
    """A hint when the best stable config is at the largest imgsz searched and far below the stable limit.

    The probe can only choose among the sizes it is given; when accuracy still grows at the edge of
    the space and memory is left over, a larger imgsz may train a more accurate model that still fits.
    """
    sizes = sorted(set(searched))
    if not sizes or imgsz < sizes[-1] or peak_mb is None or not stable_limit_mb:
        return None
    if peak_mb > ROOM_TO_GROW * stable_limit_mb:
        return None
    wider = ",".join(str(size) for size in [*sizes[-3:], sizes[-1] + 64, sizes[-1] + 128])
    return (
        f"imgsz {imgsz} is the largest size this study searched, and its peak ({peak_mb:.0f} MiB) is under half of "
        f"the stable limit ({stable_limit_mb:.0f} MiB): larger sizes may be more accurate and still fit. "
        f"Try `tuner probe --imgsz {wider} --study-name <new name>`."
    )
