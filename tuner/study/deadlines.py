"""When the probe's trials stop starting: --timeout's end, and the probe budget's once the floor has run.

The floor is the startup design and then one noise repeat (tuner.study.probe_budget): it runs in full even where
the probes take longer than the pre-flights predicted (a slower machine, another job beside it); only --timeout
stops it. Past the floor, a trial starts only where a probe of the study's mean time (and the floor's repeat,
while it is owed) still fits in what is left of the budget, so that what starts ends, about, inside it. A share
budget follows the best stable config so far, and says so when that config changes.
"""

from __future__ import annotations

import time
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.study import probe_budget, selection, workers
from tuner.study.inputs import Inputs
from tuner.study.progress import Progress
from tuner.study.records import StudyRecord, TrialRecord, repeats_run
from tuner.study.training_time import minutes

Floor = Callable[[list[FrozenTrial]], bool]  # whether this stage's part of the floor has run, from the study's trials


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def design_done(trials: list[FrozenTrial]) -> bool:
    """Every cell of the startup design has started (none of its `startup:` places is still waiting): the budget
    decides what starts next. Counted by the places queued, not by the design's size, which the plan's cut of the
    main trials shrinks; and by starts, not ends, so that other workers' design trials still running do not let
    this worker start trials of the sampler's past the budget."""
    return not any(t.state == TrialState.WAITING and (TrialRecord.of(t).slot or "").startswith("startup:")
                   for t in trials)  # fmt: skip


def design_finished(trials: list[FrozenTrial]) -> bool:
    """Every cell of the startup design has ended (none of its `startup:` places is waiting or running): what it
    found is known, and the floor's noise repeat can be chosen from it."""
    return not any(not t.state.is_finished() and (TrialRecord.of(t).slot or "").startswith("startup:") for t in trials)


def repeat_waiting(trials: list[FrozenTrial]) -> bool:
    """A noise repeat (a `repeat:` place, not a race run) is queued and has not started."""
    return any(t.state == TrialState.WAITING and (TrialRecord.of(t).slot or "").startswith("repeat:") for t in trials)


def repeat_queued(trials: list[FrozenTrial]) -> bool:
    """A noise repeat is queued, running or counted: the floor's is taken care of."""
    return repeat_waiting(trials) or repeat_done(trials)


def repeat_done(trials: list[FrozenTrial]) -> bool:
    """The floor's one noise repeat has started, or finished as a run that counts (not a surplus or an inferred
    OOM)."""
    running = any(TrialRecord.of(t).repeat_of is not None and t.state == TrialState.RUNNING for t in trials)
    return running or bool(repeats_run(trials))


def design_and_repeat_done(trials: list[FrozenTrial]) -> bool:
    return design_done(trials) and repeat_done(trials)


def floor_done(trials: list[FrozenTrial]) -> bool:
    """No floor is left to run (the race, after the repeats)."""
    return True


class Deadlines:
    """One run's deadlines over a study: `start` them, then read `deadline` before every trial; `floor` is what
    must have run before the budget may stop a trial from starting (the search moves it on stage by stage)."""

    def __init__(self, study: optuna.Study, inputs: Inputs, progress: Progress, plan: probe_budget.Plan | None) -> None:
        self.study = study
        self.inputs = inputs
        self.progress = progress
        self.plan = plan  # the probes fitted to the budget (tuner.study.probe_budget); None: no budget is kept
        self.timeout_at: float | None = None  # --timeout's end: no trial starts after it, whatever the study has
        self.started_at = 0.0  # time.monotonic() at this run's start, and what the study had spent on probes by then
        self.spent_before = 0.0  # (its trials of earlier runs and the pre-flights): the budget counts both
        self.following: str | None = None  # the config whose full training the budget is a share of, once said
        self.floor: Floor = floor_done

    def start(self, trials: list[FrozenTrial]) -> None:
        """This run starts now, on a study that holds `trials`: --timeout counts from now, the budget from what the
        study's earlier runs and pre-flights spent."""
        self.started_at = now = time.monotonic()
        self.progress.ends_at = None  # another study's, where one progress serves several (tuner probe --model a,b)
        preflights = float((StudyRecord.of(self.study).limits or {}).get("seconds") or 0.0)
        self.spent_before = probe_budget.spent(trials) + preflights
        timeout = self.inputs.cfg.timeout
        self.timeout_at = None if timeout is None else now + timeout

    @property
    def deadline(self) -> float | None:
        """When no more trial may start (time.monotonic): --timeout's end; and once this stage's part of the floor has
        run, the budget's end too."""
        budget = None
        if self.plan is not None:  # the study's trials read once for both: a round trip each on PostgreSQL
            trials = self.study.get_trials(deepcopy=False)
            budget = self.budget_end(trials) if self.floor(trials) else None
        ends = [end for end in (self.timeout_at, budget) if end is not None]
        return min(ends) if ends else None

    def budget_end(self, trials: list[FrozenTrial]) -> float | None:
        """When the budget's last probe may start (time.monotonic): its end, less a probe of the study's mean time and
        the floor's repeat while it is owed (probe_budget.reserve_s); None where it is unbounded. A share follows the
        best stable config so far (probe_budget.budget_now): its full training as its probe timed it; said when it
        moves."""
        assert self.plan is not None
        follows = None
        record = StudyRecord.of(self.study)  # one read of each: a check is made after every trial and while waiting
        limit = record.stable_limit_mb or self.inputs.stable_limit_mb
        if probe_budget.share_of(self.plan.setting) is not None:
            epochs = self.plan.epochs or self.inputs.planned_epochs
            follows = probe_budget.following(self.plan, trials, limit, record.budget_mb, epochs)
        left = probe_budget.deadline_s(self.plan, self.spent_before, follows and follows.training_s)
        if follows is not None and follows.config != self.following:
            self.following = follows.config
            StudyRecord(budget_follows=follows.to_json()).save(self.study, "budget_follows")
            self.progress.say(f"Budget: {self.plan.setting} {follows.describe()}")
        if left is None:
            return None
        reserve = probe_budget.reserve_s(trials, self.repeat_owed(trials, limit))
        floor_s = reserve - probe_budget.reserve_s(trials)  # the floor's repeat, if owed
        self.progress.ends_at = max(self.started_at + left, time.monotonic() + floor_s)  # the floor runs in full
        return self.started_at + left - reserve

    @property
    def keeps_budget(self) -> bool:
        """A budget bounds this run (not `none`, nor a share with nothing to plan by)."""
        return self.plan is not None and self.plan.budget_s is not None

    def repeat_owed(self, trials: list[FrozenTrial], limit_mb: float) -> int:
        """1 while the floor's noise repeat is still to run: to be queued for a stable config (none where no config is
        stable yet, or one ran twice already: the noise is measured), or queued and not started (another worker's
        trial queued before it may run first). A repeat owed to a config that becomes stable only with the last main
        trial runs past the budget: the floor runs in full."""
        if self.plan is None or self.plan.repeats <= 0:
            return 0
        return int(bool(selection.to_repeat(trials, 1, limit_mb)) or (repeat_waiting(trials) and not repeat_done(trials)))

    def say_budget_stop(self, trials: list[FrozenTrial], limit_mb: float) -> None:
        """Say that the budget stopped the main trials short of the plan's, and why: a probe no longer fits."""
        if past(self.timeout_at):  # --timeout's end came meanwhile: it stopped them
            return
        done, each = workers.main_trials_done(trials), probe_budget.reserve_s(trials)
        why = f"a probe takes about {minutes(each)}, which no longer fits in what is left" if each else "none is left"
        kept = " (kept for the noise repeat)" if self.repeat_owed(trials, limit_mb) else ""
        self.progress.say(f"Budget: {done} of the plan's {self.inputs.cfg.n_trials} main trials ran; {why}{kept}.")
