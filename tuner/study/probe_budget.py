"""The probe's budget: how much of the full training it may spend deciding, fitted before the first trial, kept.

`probe.budget` (`--probe-budget`, checked by tuner.checks.probe_budget) is a duration ("6m", "90s", "1h30m", or
seconds), a share of the full training ("15%", the default), "floor" (the floor below and nothing more: the cheapest
decision, and what each model's study runs first where several models share a budget, tuner.commands.probe_models),
or "none" (0: unbounded). The pre-flights count against it: they are part of what the probe
costs. A share is of the full training it decides (train-best's planned epochs over the whole splits): before the
first trial, of the startup design's median cell, as the pre-flights' speeds predict it (tuner.study.cost); once a
stable config has finished, of the best one so far, as its own probe timed it (`budget_now`), so the probe comes to
about that share of the training it picks, whichever config that is. The plan fits the study into the budget by its
probes' predicted times: the startup design's cells each at its own prediction, every other probe (main trials the
sampler proposes, repeats, race runs) at their mean. Over the budget, the race is cut first, then repeats down to
one, then main trials, never below the startup design (without it the sampler models nothing) and one noise repeat
(without it the pick cannot tell a tie from a lead: the default run on the embedded dataset once picked by 0.0003).
The budget is then a deadline: no trial starts unless a probe of the study's mean time (and the floor's repeat,
while it is owed) still fits in what is left of it, over every run of the study (a continued study counts the
trials' durations so far), except the floor's own: the design and its one repeat run in full even
where they alone take longer than the budget (tuner.study.deadlines); only --timeout stops them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

from optuna.trial import FrozenTrial

from tuner.checks import FLOOR, NONE
from tuner.process.contract import Outcome
from tuner.study import selection, workers
from tuner.study.records import TrialRecord, repeats_run
from tuner.study.training_time import minutes


def share_of(setting: float | str) -> float | None:
    """The share of the full training a setting asks for (0.15 for "15%"); None for a duration or none."""
    return float(setting[:-1]) / 100 if isinstance(setting, str) and setting.endswith("%") else None


@dataclasses.dataclass(frozen=True)
class Plan:
    """The study's probes fitted to its budget: what runs, what it is predicted to cost, what was cut."""

    setting: float | str  # as the setting holds it (tuner.checks.probe_budget)
    budget_s: float | None  # None: unbounded
    n_trials: int
    repeats: int
    race: int
    seconds: float | None  # the plan's predicted cost; None where no pre-flight timed its batches
    reference: str | None = None  # the reference training's config, "480/4"
    reference_s: float | None = None  # its full training's predicted seconds
    epochs: int | None = None  # of the reference training
    cut: tuple[str, ...] = ()  # what was cut, "2 repeats", "the race"
    preflight_s: float = 0.0  # the pre-flights' seconds, spent before the plan: counted in `seconds` and the budget
    ran_s: float = 0.0  # the probes earlier runs of the study spent (`Ran`): counted in `seconds` and the budget

    @property
    def probes(self) -> int:
        return self.n_trials + self.repeats + self.race

    def describe(self) -> str:
        """The plan in one line: `Plan: 8 probes, about 6 min, 11% of a 40-epoch training at 480/4 (about 55 min);
        budget 15% (8 min): 2 repeats and the race cut.`"""
        line = f"Plan: {self.probes} probes"
        if self.seconds is not None:
            line += f", about {minutes(self.seconds)}"
            line += f" with the pre-flights' {minutes(self.preflight_s)}" if self.preflight_s >= 1 else ""
            line += f" and the {minutes(self.ran_s)} its probes ran before" if self.ran_s >= 1 else ""
            if self.reference_s:
                line += (f", {100 * self.seconds / self.reference_s:.0f}% of a {self.epochs}-epoch training at "
                         f"{self.reference} (about {minutes(self.reference_s)})")  # fmt: skip
        line += f"; {self.budget_text()}"
        line += ": " + _joined(self.cut) + " cut" if self.cut else ""
        if self.over_budget:
            line += ("; the startup design and one noise repeat alone take longer, and run in full (the sampler needs "
                     "the design, the pick the noise)" if self.repeats else "; the startup design alone takes longer, "
                     "and runs in full (the sampler needs it)")  # fmt: skip
        return line + "."

    @property
    def over_budget(self) -> bool:
        """The plan is its floor (the startup design and one repeat) and still costs more than the budget (a small
        dataset's short training)."""
        return (self.setting != FLOOR and self.budget_s is not None and self.seconds is not None
                and self.seconds > self.budget_s)  # fmt: skip

    def budget_text(self) -> str:
        if self.setting == FLOOR:
            return "budget: the floor only (the startup design and one noise repeat)"
        if self.budget_s is None:
            return "no probe budget" if self.setting == NONE else f"budget {self.setting}, but no prediction to plan by"
        if isinstance(self.setting, str):
            return f"budget {self.setting} ({minutes(self.budget_s)})"
        return f"budget {minutes(self.budget_s)}"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "cut": list(self.cut)}

    @classmethod
    def from_json(cls, values: dict[str, Any] | None) -> Plan | None:
        if not values:
            return None
        names = {field.name for field in dataclasses.fields(cls)}
        known = {key: value for key, value in values.items() if key in names}
        return cls(**{**known, "cut": tuple(known.get("cut") or ())})


@dataclasses.dataclass(frozen=True)
class Follows:
    """The best config a share budget follows once one has finished: its predicted full training, the budget it sets."""

    config: str  # "320/2"
    training_s: float
    budget_s: float

    def describe(self) -> str:
        """`of the best config so far, 320/2, whose full training is predicted at 58 min: 9 min in all.`"""
        return (f"of the best config so far, {self.config}, whose full training is predicted at "
                f"{minutes(self.training_s)}: {minutes(self.budget_s)} in all.")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any] | None) -> Follows | None:
        try:
            return cls(str(values["config"]), float(values["training_s"]), float(values["budget_s"]))
        except (KeyError, TypeError, ValueError):
            return None


def _joined(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _plural(count: int, one: str) -> str:
    return f"{count} {one}" + ("" if count == 1 else "s")


@dataclasses.dataclass(frozen=True)
class Ran:
    """What earlier runs of a study probed: its main trials and noise repeats that count, their seconds, and the mean
    probe's (pruned ones included, as the deadline's reserve counts it)."""

    main: int = 0
    repeats: int = 0
    seconds: float = 0.0
    mean_s: float | None = None

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> Ran:
        mean = reserve_s(trials)
        return cls(workers.main_trials_done(trials), len(repeats_run(trials)), spent(trials), mean or None)


def fit(
    setting: float | str, design_s: Sequence[float], n_trials: int, repeats: int, race: int,
    reference: tuple[str, float, int] | None = None, preflight_s: float = 0.0, ran: Ran = Ran(),
) -> Plan:  # fmt: skip
    """The plan for `n_trials` main trials, `repeats` and `race` runs under `setting`, from the startup design's
    predicted probe times `design_s` (empty where no pre-flight timed its batches), after pre-flights that took
    `preflight_s`; `reference` is the reference training (its config, predicted seconds, epochs), which a share is
    of. A continued study's plan counts what it `ran` at the seconds it took, and only the rest at predictions (the
    mean probe it ran, where it ran any); it cuts nothing it ran."""
    label, reference_s, epochs = reference or (None, None, None)
    share = share_of(setting)
    budget_s = None if setting == NONE else (share * reference_s if share is not None and reference_s else None)
    if budget_s is None and isinstance(setting, float):
        budget_s = setting
    if setting == FLOOR:  # nothing past the floor, which runs in full
        budget_s = 0.0
    if not design_s:
        return Plan(setting, budget_s, n_trials, repeats, race, None, label, reference_s, epochs, (), preflight_s)
    each = ran.mean_s or sum(design_s) / len(design_s)
    floor = max(min(len(design_s), n_trials), min(ran.main, n_trials))

    def cost(trials: int, again: int, raced: int) -> float:
        design = sum(design_s[ran.main:trials])  # the design's cells not run yet
        probes = design + max(0, trials - max(ran.main, len(design_s))) * each + (max(0, again - ran.repeats) + raced) * each
        return preflight_s + ran.seconds + probes

    counts = {"race": race, "repeats": repeats, "trials": n_trials}
    if budget_s is not None:
        for key, low in (("race", 0), ("repeats", max(min(1, repeats), min(ran.repeats, repeats))), ("trials", floor)):
            while counts[key] > low and cost(counts["trials"], counts["repeats"], counts["race"]) > budget_s:
                counts[key] -= 1
    cut = []
    if n_trials > counts["trials"]:
        cut.append(_plural(n_trials - counts["trials"], "main trial"))
    if repeats > counts["repeats"]:
        cut.append(_plural(repeats - counts["repeats"], "repeat"))
    if race > counts["race"]:
        cut.append("the race" if counts["race"] == 0 else _plural(race - counts["race"], "race run"))
    seconds = cost(counts["trials"], counts["repeats"], counts["race"])
    return Plan(setting, budget_s, counts["trials"], counts["repeats"], counts["race"], round(seconds, 1), label,
                reference_s, epochs, tuple(cut), round(preflight_s, 1), round(ran.seconds, 1))  # fmt: skip


def budget_now(plan: Plan | None, best_training_s: float | None = None) -> float | None:
    """The probe's budget in seconds now: a share of the best stable config's predicted full training so far
    (`best_training_s`, for the plan's epochs) once one is known, else of the plan's reference; a duration as set;
    None where it is unbounded."""
    if plan is None or plan.budget_s is None:
        return None
    share = share_of(plan.setting)
    return share * best_training_s if share is not None and best_training_s else plan.budget_s


def following(plan: Plan, trials: Sequence[FrozenTrial], limit_mb: float, budget_mb: float | None, epochs: int) -> Follows | None:
    """What a share budget follows now: the best stable config so far (as the pick weighs it, noise and headroom
    included) with its full training for `epochs` as its probe timed it; None before one has finished timed."""
    choice = selection.best_stable(trials, limit_mb, selection.noise(trials).spread, budget_mb)
    found = choice and selection.pick_prediction(trials, choice.trial.number, epochs)
    if not found:
        return None
    config = f"{choice.trial.params['imgsz']}/{choice.trial.params['batch']}"
    return Follows(config, found.seconds, budget_now(plan, found.seconds))


def deadline_s(plan: Plan | None, spent_s: float, best_training_s: float | None = None) -> float | None:
    """Seconds left to the probe under `plan`, once `spent_s` went on it (its trials and pre-flights); None where it
    is unbounded. The floor (the startup design and one repeat) runs in full even past it
    (tuner.study.deadlines)."""
    budget = budget_now(plan, best_training_s)
    return None if budget is None else budget - spent_s


def reserve_s(trials: Iterable[FrozenTrial], owed: int = 0) -> float:
    """Seconds a start needs in hand: the mean of the study's probes so far for the one about to start (pruned ones
    included: it may be pruned too), and the mean of those that trained to the end for each probe the floor still owes
    (its noise repeat, which no pruner stops). A probe starts only where that fits in what is left, so the budget
    holds, about, at its end and not only at a probe's start."""
    records = [TrialRecord.of(trial) for trial in trials]
    ran = [record.duration_s for record in records if record.duration_s]
    whole = [record.duration_s for record in records if record.duration_s and record.outcome == Outcome.OK] or ran
    return sum(ran) / len(ran) + owed * sum(whole) / len(whole) if ran else 0.0


def spent(trials: Iterable[FrozenTrial]) -> float:
    """Seconds the study's probes have taken so far, over every run of it: its trials' durations."""
    return sum(TrialRecord.of(trial).duration_s or 0.0 for trial in trials)


def cost_line(spent_s: float, training_s: float | None) -> str:
    """`Probe: 7 min, 12% of the pick's predicted 58 min training.` (the share where the pick's training is known)."""
    line = f"Probe: {minutes(spent_s)}"
    if training_s:
        line += f", {100 * spent_s / training_s:.0f}% of the pick's predicted {minutes(training_s)} training"
    return line + "."
