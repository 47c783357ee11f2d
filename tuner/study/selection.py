"""The study's noise, the configs to probe again, and the best *stable* config.

Stable: the trial completed and its peak memory stayed within the budget minus the safety margin, and no
other run of the same imgsz x batch went over it, whatever its mosaic and mixup (records.stable_configs: the
largest peak seen decides, in whatever order the runs came).
Noise: the same config probed again with another seed scores differently; the mean absolute
difference over such pairs is the study's spread. Among stable configs whose mean metric is within
that spread of the best (less as more runs stand behind the means: `tolerance`), the one with the
lowest peak memory (the most headroom) is chosen; peaks within MEMORY_TIE of the budget of each other
count as equal (the same config's peak scatters by several percent from run to run), and among those
the higher mean metric wins.
Noise pairs and repeats: every config run twice counts, whether as a noise repeat or because the sampler
proposed it again. Repeats: the best stable configs run once, one repeat per config, most accurate first.
Race: while the top configs tie (`contenders`) and the tie decides the pick (`tie_decides`), more seeds for
them only (tuner.study.search).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from statistics import mean
from typing import Any, Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config import Space
from tuner.data.sample import Sample
from tuner.params import Params, config_key
from tuner.study.records import Noise, TrialRecord, holds_place, largest_runs, peak_seen, retried, stable_configs
from tuner.study.training_time import Prediction

MEMORY_TIE = 0.05  # peaks closer than this fraction of the budget are the same headroom
ROOM_TO_GROW = 0.5  # a best config at the largest imgsz, peaking below this share of the stable limit
SAMPLE_PULL = 4  # a train split at least this many times the probes' sample: a larger imgsz may train better than its probe


@dataclasses.dataclass(frozen=True)
class Choice:
    trial: optuna.trial.FrozenTrial  # the first trial of the chosen config
    value: float  # mean metric over the config's stable trials
    runs: int
    peak_mb: float  # the largest peak any run of its imgsz x batch showed
    best_value: float  # the highest mean of any stable config
    spread: float | None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.trial.params)


def noise(trials: Iterable[FrozenTrial]) -> Noise:
    """Pairs (original, repeat, |difference|) of completed runs of one config, and their mean difference.

    A noise repeat pairs with the trial it repeats; any other run of a config already run (the sampler may
    propose one config twice) pairs with that config's first completed run: every run with another seed counts.
    """
    by_number = {trial.number: trial for trial in trials}
    complete = sorted((t for t in by_number.values() if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    first: dict[tuple, FrozenTrial] = {}
    for trial in complete:
        first.setdefault(config_key(trial.params), trial)
    pairs = []
    for trial in complete:
        repeat_of = TrialRecord.of(trial).repeat_of
        original = by_number.get(repeat_of) if repeat_of is not None else first[config_key(trial.params)]
        if original is None or original is trial or original.state != TrialState.COMPLETE:
            continue
        pairs.append((original.number, trial.number, round(abs(trial.value - original.value), 6)))
    spread = round(mean(pair[2] for pair in pairs), 6) if pairs else None
    return Noise(tuple(pairs), spread)


def to_repeat(trials: Iterable[FrozenTrial], wanted: int, limit_mb: float) -> list[FrozenTrial]:
    """The trials whose configs to probe again with another seed, so that `wanted` configs have a second run.

    The most accurate stable originals first, one repeat per config, none for a config repeated already or
    completed twice already (the sampler may have proposed one config twice: those runs measure the noise too).
    """
    trials = list(trials)
    repeated = {TrialRecord.of(t).repeat_of for t in trials} - {None}
    completed = Counter(config_key(t.params) for t in trials if t.state == TrialState.COMPLETE)
    done = {config_key(t.params) for t in trials if t.number in repeated} | {key for key, runs in completed.items() if runs >= 2}
    needed = wanted - len(done)
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


def run_already(trials: Iterable[FrozenTrial], params: Params, number: int) -> FrozenTrial | None:
    """A trial other than trial `number` that ran, or runs, the very config `params` (an inferred OOM never ran)."""
    trials = list(trials)
    again = retried(trials)
    return next((t for t in trials if t.number != number and Params.FIELDS <= t.params.keys()
                 and Params.of(t.params).key == params.key and holds_place(t, again)
                 and not TrialRecord.of(t).inferred), None)  # fmt: skip


def untried_cells(space: Space, trials: Iterable[FrozenTrial], near: Params) -> list[Params]:
    """The imgsz x batch cells of `space` that no trial ran, runs or waits for, nearest `near` first (in steps of the
    space's choices; the larger imgsz first among equals), each with `near`'s mosaic and mixup."""
    trials = list(trials)
    again = retried(trials)
    tried = {_cell(trial) for trial in trials if holds_place(trial, again)}
    sizes, batches = list(space.imgsz), list(space.batch)

    def distance(cell: Params) -> tuple[int, int]:
        steps = abs(sizes.index(cell.imgsz) - sizes.index(near.imgsz)) + abs(batches.index(cell.batch) - batches.index(near.batch))
        return steps, -cell.imgsz

    cells = [dataclasses.replace(near, imgsz=imgsz, batch=batch) for imgsz in sizes for batch in batches]
    return sorted((cell for cell in cells if cell.size not in tried), key=distance)


def _cell(trial: FrozenTrial) -> tuple[int, int] | None:
    """A trial's imgsz x batch; a queued trial has no params yet, only the fixed ones enqueue_trial stored."""
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    return (params["imgsz"], params["batch"]) if {"imgsz", "batch"} <= params.keys() else None


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


@dataclasses.dataclass(frozen=True)
class Summary:
    """One stable config as the pick weighs it."""

    first: FrozenTrial  # its first trial
    value: float  # the mean metric of its stable runs
    peak_mb: float  # the largest peak any run of its imgsz x batch showed (records.largest_runs)
    runs: int

    @classmethod
    def of(cls, runs: list[FrozenTrial], largest: dict[tuple[int, int], FrozenTrial]) -> Summary:
        first = min(runs, key=lambda t: t.number)
        peak = peak_seen(largest[first.params["imgsz"], first.params["batch"]])
        return cls(first, mean(t.value for t in runs), peak, len(runs))


def best_stable(
    trials: Iterable[optuna.trial.FrozenTrial], limit_mb: float, spread: float | None, budget_mb: float | None = None,
    exclude: frozenset[tuple] = frozenset(),
) -> Choice | None:
    """The most accurate stable config, a tie within the noise going to more memory headroom. `exclude` (config
    keys) leaves configs out of the choice but not out of the evidence: their runs still count for the memory of
    their imgsz x batch (train-best's step-down ladder picks again among the rest)."""
    trials = list(trials)
    largest = largest_runs(trials)
    configs = stable_configs(trials, limit_mb)
    summaries = [Summary.of(runs, largest) for key, runs in configs.items() if key not in exclude]
    if not summaries:
        return None
    best = max(summaries, key=lambda summary: (summary.value, summary.runs))
    close = [s for s in summaries if s.value >= best.value - tolerance(spread, s.runs, best.runs)]
    lowest_peak = min(s.peak_mb for s in close)
    same_headroom = [s for s in close if s.peak_mb <= lowest_peak + MEMORY_TIE * (budget_mb or limit_mb)]
    pick = max(same_headroom, key=lambda summary: (summary.value, -summary.peak_mb))
    return Choice(trial=pick.first, value=pick.value, runs=pick.runs, peak_mb=pick.peak_mb, best_value=best.value,
                  spread=spread)  # fmt: skip


def too_slow(
    trials: Iterable[FrozenTrial], limit_mb: float, seconds_of: Callable[[FrozenTrial], float | None],
    train_time_s: float | None,
) -> dict[tuple, float]:
    """The stable configs (config keys) whose full training is predicted to take longer than `train_time_s`, each
    with its prediction (`seconds_of` its earliest run that has one); none without a time budget. A config with no
    prediction is not left out: nothing says it is too slow."""
    if not train_time_s:
        return {}
    slow = {}
    for key, runs in stable_configs(trials, limit_mb).items():
        seconds = config_seconds(runs, seconds_of)
        if seconds is not None and seconds > train_time_s:
            slow[key] = seconds
    return slow


def config_seconds(runs: Iterable[FrozenTrial], seconds_of: Callable[[FrozenTrial], float | None]) -> float | None:
    """A config's predicted full training: `seconds_of` its earliest run that has one (None where none has)."""
    return next((found for found in map(seconds_of, sorted(runs, key=lambda t: t.number)) if found is not None), None)


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


def larger_on_more_data(
    trials: Iterable[FrozenTrial], limit_mb: float, pick: Params, sample: Sample | None,
    exclude: frozenset[tuple] = frozenset(),
) -> Summary | None:
    """The most accurate stable config with a larger imgsz than the `pick`, where the probes trained on a small share
    of the train split (`sample` at most 1/SAMPLE_PULL of it); None on data near the sample's size, or where no
    larger stable config ran. `exclude`: config keys left out (over the training time).

    A probe of a few hundred optimizer steps on the sample measures how fast a config adapts from the weights, and
    the sizes near the weights' own adapt first; a full training over many times the sample's images can turn that:
    on 960 thin images the probe put 480/2 0.054 behind its pick 320/2, and 15 epochs over all of them put it 0.030
    ahead (README, "The sample's order over a training on all 960 images"). Nothing in the probe tells when, so the
    study names the config and writes it out, and a full training of it decides.
    """
    if sample is None or sample.train_total < SAMPLE_PULL * max(1, sample.train_images):
        return None
    trials = list(trials)
    largest = largest_runs(trials)
    larger = [Summary.of(runs, largest) for key, runs in stable_configs(trials, limit_mb).items()
              if key not in exclude and runs[0].params["imgsz"] > pick.imgsz]  # fmt: skip
    return max(larger, key=lambda summary: (summary.value, summary.runs, -summary.peak_mb), default=None)


def pick_prediction(trials: Iterable[FrozenTrial], number: int, epochs: int) -> Prediction | None:
    """The full training of trial `number`'s config for `epochs` epochs, as its probe timed it, else as another run of
    the same config did; None where none of them was timed."""
    trials = list(trials)
    pick = next((trial for trial in trials if trial.number == number), None)
    if pick is None:
        return None
    same = [pick, *(t for t in trials if t.number != number and t.params == pick.params)]
    found = next((record.prediction for record in map(TrialRecord.of, same) if record.prediction), None)
    return None if found is None else found.for_epochs(epochs)
