"""The probe's trial loop: the main trials, then the noise repeats, until the study has what was asked.

Each trial is one `python -m tuner.study.probe_child` process (tuner.process.trial.run_child) under the memory watchdog;
its end becomes the trial's record (tuner.study.records) and Optuna state: ok -> COMPLETE, oom and pruned
-> PRUNED, error -> FAIL. The search stays inside the memory limit the pre-flights mapped
(tuner.study.limits): a config beyond the frontier, at least as large as one that ran out of its budget, or
of an imgsz x batch that already ran over the stable limit (tuner.study.dominance), is recorded as an inferred
OOM without a process. Inferred trials cost nothing and do not count towards `n_trials`, so the loop goes round
until `n_trials` trials really ran. Nor is a config already run probed again while an imgsz x batch cell that
may fit is untried: that trial ends unrun, and the cell is queued in its place.

Every finished trial carries Optuna's `memory_mb` constraint (its peak minus the stable limit; > 0 is
infeasible), so TPE models a probe that completed over the limit, or never ran, as infeasible rather
than as a good score; the pruner compares only with stable trials (tuner.study.pruners). No trial starts past
--timeout's end, nor, once the floor has run, past the probe budget's (tuner.study.deadlines).
"""

from __future__ import annotations

import dataclasses
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StudyFailed
from tuner.params import Params
from tuner.process.contract import PROBE_CHILD, Cause, EpochRecord, Outcome
from tuner.process.trial import Attempt, run_child
from tuner.study import deadlines, dominance, limits, probe_budget, pruners, records, selection, space, workers
from tuner.study.deadlines import past
from tuner.study.inputs import Inputs
from tuner.study.progress import Progress
from tuner.study.records import Race, StudyRecord, TrialRecord

SAME_ERROR_STOP = 2  # stop when the first trials of a run all fail with the same message
MAX_INFERRED_IN_A_ROW = 30  # the sampler keeps proposing configs known not to fit: the space is used up
CONSTRAINT = "memory_mb"  # Optuna constraint: the trial's peak (or predicted peak) minus the stable limit, MiB


class ProbeFailed(Exception):
    """A trial ended in an error that is not memory: the trial FAILs and the study goes on."""


class Surplus(Exception):
    """Another worker already fills this trial's place: it FAILs unrun and counts for nothing (tuner.study.workers)."""


def main_trials_done(study: optuna.Study) -> int:
    """Trials that count towards n_trials: finished, really run, and not a noise repeat."""
    return workers.main_trials_done(study.get_trials(deepcopy=False))


class Search:
    """Runs the main trials, then the noise repeats, until the study has what it was asked for.

    Other workers may run the same study at the same time (tuner.study.workers): the loop then takes only the
    places still free, and waits while trials of other workers are open, to finish their orphans if they die.
    """

    def __init__(
        self, study: optuna.Study, inputs: Inputs, progress: Progress, found: limits.Limits, runner: limits.Runner = run_child,
        worker: str | None = None, plan: probe_budget.Plan | None = None,
    ) -> None:
        self.study = study
        self.inputs = inputs
        self.cfg = inputs.cfg
        self.progress = progress
        self.ours: list[int] = []  # numbers of the trials this worker ran or recorded
        self.failure: str | None = None
        self.inferred_in_a_row = 0
        self.limits = found
        self.runner = runner
        self.worker = worker or workers.worker_id()
        self.waiting_said = False
        self.queued_only = False  # while draining the queue: a trial the sampler made instead is a surplus
        self.gate = deadlines.Deadlines(study, inputs, progress, plan)  # plan: the probes fitted to the budget, kept

    @property
    def limit_mb(self) -> float:
        """The study's stable limit as stored: kills from outside that any worker saw may have lowered it."""
        return StudyRecord.of(self.study).stable_limit_mb or self.inputs.stable_limit_mb

    @property
    def kill_level(self) -> float | None:
        """The peak at which kills from outside came, once they came at a consistent one (stored in the study)."""
        return StudyRecord.of(self.study).outside_kill_mb

    @property
    def deadline(self) -> float | None:
        """When no more trial may start (tuner.study.deadlines): --timeout's end, and the budget's once the floor ran."""
        return self.gate.deadline

    def run(self) -> None:
        gate = self.gate
        gate.start(self._trials())
        if not self.study.get_trials(deepcopy=False):  # limits mapped by --limits-only: the design is not queued yet
            space.enqueue_startup(self.study, self.cfg, self.limits)
        done = main_trials_done(self.study)
        if done:
            self.progress.say(f"Continuing: {done} of {self.cfg.n_trials} trials done.")
            self.progress.done = done + len(records.repeats_run(self._trials()))
            self.progress.best = max((t.value for t in self._trials() if t.state == TrialState.COMPLETE), default=None)
        gate.floor = deadlines.design_done
        while not self.failure and main_trials_done(self.study) < self.cfg.n_trials:
            if past(gate.timeout_at):
                return
            if past(self.deadline):  # the budget is spent and the design has run: on to the floor's repeat
                gate.say_budget_stop(self._trials(), self.limit_mb)
                break
            free = self.cfg.n_trials - workers.places_taken(self._trials())
            if free > 0:
                self._optimize(free)
            else:
                self._wait_for_others()
        if self.failure:
            raise StudyFailed(self.failure)
        if past(gate.timeout_at):
            return
        trials = self._trials()
        repeats = selection.to_repeat(trials, self.cfg.probe.repeats, self.limit_mb)
        if gate.plan is not None and past(gate.budget_end(trials)):  # the floor's one noise repeat, unless it is queued
            repeats = [] if deadlines.repeat_queued(trials) else repeats[:1]
        self._enqueue_repeats(repeats)
        # no repeat to run (none asked for, none stable, or the noise measured already): the floor is the design
        owed = repeats or deadlines.repeat_waiting(trials)
        gate.floor = deadlines.design_and_repeat_done if owed else deadlines.design_done
        self._drain()
        gate.floor = deadlines.floor_done
        self._race()
        self._drain()

    def _trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _drain(self) -> None:
        """Run the queued trials, and wait for those other workers run, until none is open."""
        while not past(self.deadline):
            running, waiting = workers.open_work(self._trials())
            if waiting:
                self.queued_only = True  # another worker may pop what we counted first: Optuna then samples anew
                try:
                    self._optimize(waiting)
                finally:
                    self.queued_only = False
            elif running:
                self._wait_for_others()
            else:
                return

    def _wait_for_others(self) -> None:
        """Other workers hold the open places: wait, failing their trials whose heartbeat went stale
        (Optuna then queues them again, and this worker runs them)."""
        if not self.waiting_said:
            running, _ = workers.open_work(self._trials())
            self.progress.say(f"Waiting for {running} trial(s) other workers are running.")
            self.waiting_said = True
        deadline = self.deadline
        time.sleep(workers.WAIT_POLL_S if deadline is None else max(0.0, min(workers.WAIT_POLL_S, deadline - time.monotonic())))
        optuna.storages.fail_stale_trials(self.study)

    def _race(self) -> None:
        """While the top configs tie within the noise and the tie decides the pick, probe them again with new seeds,
        the one with the fewest runs first, until they separate, the pick no longer rests on the tie, or
        `probe.race` such runs (over the whole study) are spent; say which. The tie decides the pick when a config
        with more memory headroom than the most accurate one is chosen for it (selection.tie_decides). Tied configs
        that need the same memory are not raced: the most accurate is picked either way, and more seeds could only
        re-rank them within the noise (configs that differ only in mosaic or mixup: README, calibration)."""
        spent = workers.race_runs(self.study.get_trials(deepcopy=False))
        tied, decides = self._standing()
        if len(tied) < 2 or spent >= self.cfg.probe.race:
            return
        if decides and not past(self.deadline):  # else no run starts: the verdict below says why
            names = ", ".join(f"trial {min(t.number for t in runs)}" for runs in tied)
            self.progress.say(f"Race: {names} tie within the noise; probing them with more seeds.")
        out_of_time = False
        while len(tied) >= 2 and spent < self.cfg.probe.race and decides:
            if past(self.deadline):  # the budget or --timeout ended it: said so, not left announced and unfinished
                out_of_time = True
                break
            slot = workers.free_race_slot(self._trials(), self.cfg.probe.race)
            if slot is None:  # every place is held (some by trials of other workers): the budget is spent
                break
            runs = min(tied, key=len)
            original = min(runs, key=lambda t: t.number)
            record = TrialRecord(repeat_of=original.number)
            if workers.enqueue(self.study, original.params, slot, record):
                self.progress.total += 1
            self._drain()
            spent = workers.race_runs(self._trials())
            tied, decides = self._standing()
        verdict = "separated" if len(tied) < 2 else "out of time" if out_of_time else "still tied" if decides else "settled"
        race = Race(tuple(min(t.number for t in runs) for runs in tied), spent, verdict)
        StudyRecord(race=race).save(self.study, "race")
        self.progress.say(f"Race: {race.describe()}", important=True)

    def _standing(self) -> tuple[list[list[FrozenTrial]], bool]:
        """The top configs that tie within the noise (none while no noise was measured: more seeds then tell
        nothing), and whether the tie decides the pick (selection.tie_decides); one read of the study."""
        trials = self.study.get_trials(deepcopy=False)
        spread = selection.noise(trials).spread
        if not spread:
            return [], False
        record = StudyRecord.of(self.study)
        limit = record.stable_limit_mb or self.inputs.stable_limit_mb
        return selection.contenders(trials, limit, spread), selection.tie_decides(trials, limit, spread, record.budget_mb)

    def _optimize(self, n_trials: int) -> None:
        if n_trials <= 0:
            return
        deadline = self.deadline
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.study.optimize(
            self.objective,
            n_trials=n_trials,
            timeout=timeout,
            catch=(ProbeFailed, Surplus),
            callbacks=[
                self._stop_on_repeated_errors,
                self._queue_the_floors_repeat,
                self._stop_when_places_taken,
                self._stop_at_deadline,
            ],
            gc_after_trial=False,
        )

    def objective(self, trial: optuna.Trial) -> float:
        self.ours.append(trial.number)
        TrialRecord(worker=self.worker).save(trial)
        trials = self._trials()
        surplus = workers.surplus_reason(trial, trials, self.cfg.n_trials)
        if surplus is None and self.queued_only and not workers.from_queue(trials[trial.number]):
            surplus = "another worker took the queued trial it was to run"  # the main trials have ended: none starts here
        if surplus is not None:
            TrialRecord(surplus=surplus).save(trial)
            raise Surplus(surplus)
        self.progress.done = main_trials_done(self.study) + len(records.repeats_run(trials))  # as the total counts them
        params = Params.of(space.suggest(trial, self.cfg.space, trials))
        repeat_of = TrialRecord.of(trial).repeat_of
        seed = self.cfg.seed + trial.number
        TrialRecord(seed=seed, device=self.inputs.device.torch).save(trial)
        self.progress.trial_start(trial.number, params, f" (repeat of trial {repeat_of})" if repeat_of is not None else "")
        known = self._known_oom(params, self._trials())
        if known is not None:
            self._infer_oom(trial, known.reason, known.source)
        self.inferred_in_a_row = 0
        if repeat_of is None:
            self._skip_if_run_already(trial, params)

        epochs: list[EpochRecord] = []

        def on_epoch(record: EpochRecord) -> bool:
            epochs.append(record)
            trial.report(record.value, record.epoch)
            self.progress.epoch(record, self.cfg.probe.epochs)
            last = record.epoch >= self.cfg.probe.epochs  # a finished probe is measured: stopping it only loses that
            return repeat_of is None and not last and trial.should_prune()

        folder = self.inputs.trials_dir / f"trial-{trial.number:04d}"
        attempt = self.runner(
            PROBE_CHILD, self.inputs.spec(params, seed), folder, self.inputs.device, self.inputs.budget,
            self.inputs.probe_timeout(params, self.limits.frontier.measurements), on_epoch,
        )  # fmt: skip
        self._record(trial, attempt, epochs)
        return self._verdict(trial, attempt)

    def _known_oom(self, params: Params, trials: list[FrozenTrial]) -> dominance.Known | None:
        """Why `params` will not fit, known without a process, the first that applies: the frontier the pre-flights
        mapped; an OOM at no larger imgsz and batch, or a run of its own imgsz x batch over the stable limit (stability
        is judged on the largest peak any run of it showed); the limit kills from outside set."""
        beyond = limits.beyond_frontier(self.limits, params)
        if beyond is not None:
            return dominance.Known(beyond)
        known = dominance.known_oom(params, trials, self.limit_mb)
        if known is not None:
            return known
        killed = self._over_kill_level(params, trials)
        return dominance.Known(killed) if killed is not None else None

    def _skip_if_run_already(self, trial: optuna.Trial, params: Params) -> None:
        """A config already run is not probed again while imgsz x batch cells that may fit are untried: the trial
        ends unrun, counting for nothing, and the untried cell nearest it is queued in its place. TPE has no option
        against proposing a config twice (Optuna's FAQ checks in the objective), so the objective checks; the cell
        goes through Optuna's enqueue_trial, as a `cell:` slot that two workers fill once (tuner.study.workers).
        Once every cell was tried, a config proposed again runs: another seed of it, which the noise counts."""
        trials = self._trials()
        earlier = selection.run_already(trials, params, trial.number)
        cells = selection.untried_cells(self.cfg.space, trials, params) if earlier is not None else []
        cell = next((cell for cell in cells if self._known_oom(cell, trials) is None), None)
        if cell is None:
            return
        workers.enqueue(self.study, {"imgsz": cell.imgsz, "batch": cell.batch}, f"cell:{cell.imgsz}x{cell.batch}")
        reason = (f"trial {earlier.number} ran this config already; imgsz {cell.imgsz} / batch {cell.batch}, not tried "
                  "yet, is queued instead")  # fmt: skip
        TrialRecord(surplus=reason).save(trial)
        self.progress.trial_end("skipped", None, None, reason, counted=False)
        raise Surplus(reason)

    def _infer_oom(self, trial: optuna.Trial, reason: str, source: int | None = None) -> None:
        """Record `trial` as out of memory without running it: trial `source` ran out with less or went over the
        limit at its imgsz x batch, or the pre-flights (or kills from outside) put the limit below it."""
        TrialRecord(
            outcome=Outcome.OOM, oom_reason=reason, oom_cause=Cause.INFERRED, inferred_from=source, stable=False
        ).save(trial)
        predicted = self.limits.model.predict(**dataclasses.asdict(Params.of(trial.params))) if self.limits.model else None
        trial.set_constraint(CONSTRAINT, max(1.0, (predicted or 0.0) - self.limit_mb))
        self.progress.trial_end("oom", None, None, reason, counted=False)
        self.inferred_in_a_row += 1
        if self.inferred_in_a_row >= MAX_INFERRED_IN_A_ROW:
            self.failure = (
                f"The sampler proposed {self.inferred_in_a_row} configs in a row that are known not to fit "
                "the memory budget. Lower the imgsz/batch choices or raise --memory-budget, then re-run."
            )
            self.study.stop()
        raise optuna.TrialPruned(reason)

    def _over_kill_level(self, params: Params, trials: list[FrozenTrial] | None = None) -> str | None:
        """Why `params` will not fit under the limit that kills from outside set: configs measured say so by
        monotonicity (dominance.measured_fit), which comes before the memory model, or else the model's bound does."""
        record = StudyRecord.of(self.study)  # one read of the study for both figures
        model, kill_level = self.limits.model, record.outside_kill_mb
        if kill_level is None:
            return None
        limit = record.stable_limit_mb or self.inputs.stable_limit_mb
        lowered = f"inferred: kills from outside came at about {kill_level:.0f} MiB, so the stable limit is now {limit:.0f} MiB"
        measured = dominance.measured_fit(
            params, dominance.measurements(self.limits.frontier.measurements, self._trials() if trials is None else trials), limit
        )
        if measured is not None:
            return None if measured.fits else f"{lowered}; {measured.describe()}"
        upper = None if model is None else model.upper(params.imgsz, params.batch, self.cfg.space.mosaic[1], self.cfg.space.mixup[1])
        if upper is None or upper <= limit:
            return None
        return f"{lowered}; the memory model puts this config at up to {upper:.0f} MiB"

    def _heed_outside_kills(self) -> None:
        """When SIGKILLs from outside come at a consistent peak, that is the real limit for the rest of the study:
        stored (stable_limit_mb lowered by the safety margin below it), said once (by the worker that stores it), and
        applied from here on by every worker."""
        level = dominance.outside_kill_level(self.study.get_trials(deepcopy=False))
        record = StudyRecord.of(self.study)
        if level is None or (record.outside_kill_mb is not None and level >= record.outside_kill_mb):
            return
        limit = min(record.stable_limit_mb or self.inputs.stable_limit_mb, level * (1 - self.cfg.safety_margin))
        lowered = StudyRecord(outside_kill_mb=round(level, 1), stable_limit_mb=round(limit, 1))
        lowered.save(self.study, "outside_kill_mb", "stable_limit_mb")
        self.progress.say(
            f"Trials were killed from outside at about {level:.0f} MiB, below the budget: the machine's real limit is "
            f"lower (other apps, a container limit, memory pressure). The stable limit is now {limit:.0f} MiB for the "
            "rest of the study.",
            important=True,
        )

    def _record(self, trial: optuna.Trial, attempt: Attempt, epochs: list[EpochRecord]) -> None:
        outcome, limit = attempt.outcome, self.limit_mb
        predicted = self.inputs.full_training(Params.of(trial.params), epochs) if outcome == Outcome.OK else None
        reason = (pruners.explained(self.study, trial.number) or attempt.reason) if outcome == Outcome.PRUNED else attempt.reason
        TrialRecord(
            outcome=outcome,
            oom_reason=attempt.reason if outcome == Outcome.OOM else None,
            oom_cause=attempt.cause if outcome == Outcome.OOM else None,
            error=attempt.reason if outcome == Outcome.ERROR else None,
            pruned_reason=reason if outcome == Outcome.PRUNED else None,
            peak_mem_mb=attempt.peak_mb,
            peak_rss_mb=attempt.peak_rss_mb,
            peak_device_mb=attempt.peak_device_mb,
            duration_s=attempt.duration_s,
            epochs_done=attempt.epochs_done,
            batch_used=attempt.batch_used,
            imgsz_used=attempt.imgsz_used,
            log=str(attempt.log),
            stable=outcome == Outcome.OK and attempt.peak_mb <= limit,
            train_s_predicted=predicted and predicted.seconds,
            train_epochs_predicted=predicted and predicted.epochs,
            train_epoch_s_predicted=predicted and predicted.epoch_s,
        ).save(trial)
        over = attempt.peak_mb - limit
        trial.set_constraint(CONSTRAINT, max(over, 1.0) if outcome == Outcome.OOM else over)
        self.progress.trial_end(outcome.value, attempt.value, attempt.peak_mb, reason)
        if attempt.cause == Cause.OS_KILL:
            self._heed_outside_kills()

    def _verdict(self, trial: optuna.Trial, attempt: Attempt) -> float:
        """The trial's value, or the exception that gives it its Optuna state."""
        if attempt.outcome == Outcome.OK:
            return attempt.value
        if attempt.outcome in (Outcome.OOM, Outcome.PRUNED):
            raise optuna.TrialPruned(attempt.reason)
        tail = "\n".join(f"    {line}" for line in attempt.log_tail().splitlines())
        self.progress.say(f"  trial {trial.number} failed: {attempt.reason}\n  log {attempt.log}:\n{tail}")
        raise ProbeFailed(attempt.reason)

    def _queue_the_floors_repeat(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        """Under a probe budget the floor comes first: once the startup design has ended, the floor's noise repeat
        (of its best stable config; of the first config to become stable, where none of the design's is) is queued
        ahead of the sampler's trials. The pick, and a share budget that follows it, then weigh the noise before
        anything past the floor is spent. (Until 2026-12-06 the repeats came after the main trials: on 960 images
        the budget followed the design's best, 480 / 2, through four more main trials, its repeat then tied it with
        320 / 2, the pick, whose training is half as long, and the probe came to 17% of it against a 15% share.)"""
        if not self.gate.keeps_budget or self.cfg.probe.repeats <= 0:
            return
        trials = study.get_trials(deepcopy=False)
        if not deadlines.design_finished(trials):
            return
        self._enqueue_repeats(selection.to_repeat(trials, 1, self.limit_mb))  # none once any config has a second run

    def _enqueue_repeats(self, originals: list[FrozenTrial]) -> None:
        """Queue a noise repeat of each trial, in the place `repeat:<its number>` (one per config, over all workers)."""
        for original in originals:
            workers.enqueue(self.study, original.params, f"repeat:{original.number}", TrialRecord(repeat_of=original.number))

    def _stop_when_places_taken(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        """Ask for no new main trial once other workers hold every place left (Optuna's MaxTrialsCallback,
        counting running trials too)."""
        if workers.is_main(frozen) and workers.places_taken(self._trials()) >= self.cfg.n_trials:
            study.stop()

    def _stop_at_deadline(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        if past(self.deadline):  # --timeout, or the budget once the floor has run, is spent: no trial starts after this
            study.stop()

    def _stop_on_repeated_errors(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        mine = set(self.ours)
        ours = [t for t in study.get_trials(deepcopy=False)
                if t.number in mine and t.state.is_finished() and not TrialRecord.of(t).surplus]  # fmt: skip
        if not ours:
            return
        errors = {TrialRecord.of(t).error for t in ours}
        if len(ours) >= SAME_ERROR_STOP and all(t.state == TrialState.FAIL for t in ours) and len(errors) == 1:
            message = errors.pop() or "unknown error"
            self.failure = (
                f"The first {len(ours)} trials all failed with the same error: {message}. "
                f"Stopped early instead of repeating it; see {TrialRecord.of(frozen).log} and fix the cause, then re-run."
            )
            study.stop()
