"""The supervisor of a train-best run: trains its stages in order, each in a watched child process,
until all are finished, and decides what to do when a training process dies.

Each attempt is one `python -m tuner.train.stage_child spec.json` run by the `runner` (by default
tuner.process.trial.run_child: the memory watchdog of the probes, the end classified from facts). When it
dies, the stage continues from its own `weights/last.pt` (never Ultralytics' newest-last.pt-anywhere
lookup), at most `max_restarts` times per invocation. A config that runs out of memory twice at the
same point (stage, epochs done, params) steps down instead: to the stable config of the study that the
probe would pick among those no larger in imgsz and batch, else along the memory frontier, else to the next
smaller imgsz, then to half the batch (tuner.train.plan.step_down), continuing from the current weights; the
later stages then train no larger in imgsz and batch than the config it stepped down to. Ultralytics' silent
batch halving counts as running out of memory. An error that repeats at the same point ends the run.

The state (tuner.train.records.RunState, frozen: each event replaces it) is saved (tuner.train.run_folder)
after each event, and an epoch is recorded only after the training process reported it, which it does once
the epoch is in last.pt.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable

from tuner import config as configs
from tuner.errors import TunerError
from tuner.memory.budget import MIB
from tuner.memory.device import Device
from tuner.params import Params
from tuner.process.contract import STAGE_CHILD, Cause, EpochRecord, Outcome, TrainSpec
from tuner.process.trial import Attempt, OnEpoch, run_child
from tuner.train.checkpoints import CheckpointError, catch_up, checkpoint_to_resume, untouched
from tuner.train.plan import capped_at, step_down, train_settings
from tuner.train.records import Failure, RunPlan, RunState, StageProgress, StepDown
from tuner.train.run_folder import RunFiles, append_memory, now, save_state

CHECKPOINT = "checkpoint"  # tuner.process.trial's cause for a checkpoint the training process could not use

Runner = Callable[[str, TrainSpec, Path, Device, int, float, OnEpoch], Attempt]


class TrainFailed(TunerError):
    """Training kept dying; the run is kept and a re-run continues it."""

    exit_code = 1


class NoSmallerConfig(TrainFailed):
    """Out of memory twice with a config (`params`) that has nothing smaller to step down to (train-best may fall
    back to a smaller model's study: tuner.commands.train_best)."""

    def __init__(self, message: str, params: Params | None = None) -> None:
        super().__init__(message)
        self.params = params


class Screen:
    """What a person watching train-best sees: progress lines on stderr, only the important ones with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str, *, important: bool = False) -> None:
        if important or not self.quiet:
            print(text, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def clock_at(seconds: float) -> str:
    """The local time `seconds` from now, as a person reads it: "21:45", or "Sun 09:10" where it is a day off."""
    return time.strftime("%a %H:%M" if seconds > 20 * 3600 else "%H:%M", time.localtime(time.time() + seconds))


class Supervisor:
    """Runs the stages of a run in order, each in a watched child process, until all are finished.

    `state` is the run's state as it is now: each event replaces it (it is frozen), and `save` writes it."""

    def __init__(
        self,
        run_files: RunFiles,
        plan: RunPlan,
        state: RunState,
        device: Device,
        budget: int,
        *,
        max_restarts: int,
        plots: bool,
        screen: Screen,
        runner: Runner = run_child,
    ) -> None:
        self.run_files = run_files
        self.plan = plan
        self.state = state
        self.device = device
        self.budget = budget
        self.max_restarts = max_restarts
        self.plots = plots
        self.screen = screen
        self.runner = runner
        self.restarts = 0  # this invocation's; the state keeps the run's total
        self.started = time.monotonic()
        self.wall_before = state.wall_s

    def save(self) -> None:
        self.state = dataclasses.replace(self.state, wall_s=round(self.wall_s(), 2), updated=now())
        save_state(self.run_files, self.state)

    def wall_s(self) -> float:
        """The run's wall time so far, its earlier invocations included."""
        return self.wall_before + time.monotonic() - self.started

    def eta(self, index: int, stage_left_s: float, epoch_s: float) -> str:
        """` | ETA 12 min, at 21:45` for the rest of the run: stage `index`'s `stage_left_s`, then the later stages'
        epochs at the prediction's pace (the best config's), else at `epoch_s`; under --train-time, with how far the
        run goes over it at this pace, where it does (more than 2% of it: the pace of one epoch to the next varies)."""
        later = zip(self.plan.stages[index + 1 :], self.state.stages[index + 1 :])
        pace = self.plan.prediction.epoch_s if self.plan.prediction else epoch_s
        left = stage_left_s + pace * sum(stage.epochs - progress.epochs_done for stage, progress in later)
        if left <= 0:
            return ""
        limit, text = self.plan.train_time_s, f" | ETA {duration(left)}, at {clock_at(left)}"
        over = None if limit is None else self.wall_s() + left - limit
        if over is not None and over > 0.02 * limit:
            text += f", {duration(over)} over the training time of {duration(limit)}"
        return text

    def _change(self, **changes) -> None:
        self.state = dataclasses.replace(self.state, **changes)

    def _set_stage(self, index: int, progress: StageProgress) -> None:
        self.state = self.state.with_stage(index, progress)

    def run(self) -> None:
        for index in range(len(self.plan.stages)):
            if not self.state.stages[index].finished:
                self._train_stage(index)
        self._change(finished=True)
        self.save()

    def _train_stage(self, index: int) -> None:
        last = self.run_files.last_pt(self.plan.stages[index])
        while True:
            resume = checkpoint_to_resume(last, self.state.stages[index], self.run_files.root)
            self._set_stage(index, catch_up(self.state.stages[index], last))
            params = self.state.stages[index].params
            self._announce(index, params, resume)
            attempt = self._attempt(index, params, resume)
            if attempt.cause == CHECKPOINT:
                raise CheckpointError(f"{attempt.reason}: {untouched(last, self.run_files.root)}.")
            if attempt.outcome == Outcome.OK and attempt.result is not None:
                progress = self.state.stages[index]  # as the attempt's epochs left it
                self._set_stage(index, dataclasses.replace(
                    progress, finished=True, epochs_done=max(progress.epochs_done, attempt.result.epochs_done),
                    final_metrics=attempt.result.final_metrics or progress.last_metrics,
                ))  # fmt: skip
                self.save()
                if attempt.result.already_done:
                    self.screen.say(f"{self.label(index)} had trained all its epochs before the last stop.")
                return
            self._after_failure(index, params, attempt)

    def _init_weights(self, index: int) -> str:
        init = self.plan.stages[index].init
        if init == "model":
            return str(self.plan.model)
        previous = self.run_files.stage_dir(self.plan.stages[index - 1]) / "weights" / init.split()[-1]
        if not previous.is_file():
            raise CheckpointError(
                f"{previous} is missing, but stage {index + 1} starts from it; restore it, or move "
                f"{self.run_files.root} away to train from scratch."
            )
        return str(previous)

    def _spec(self, index: int, params: Params, resume: Path | None) -> TrainSpec:
        stage = self.plan.stages[index]
        settings = train_settings(stage, self.plan.optimizer, self.plan.seed, self.device, self.plots)
        return TrainSpec(
            model=self._init_weights(index),
            data=self.plan.data,
            device=self.device.ultralytics,
            device_kind=self.device.kind,
            budget=self.budget,
            params=params,
            metric=self.plan.metric,
            workers=settings["workers"],
            settings=settings,
            save_dir=str(self.run_files.stage_dir(stage)),
            resume=str(resume) if resume else None,
            val_every=stage.val_every,
        )

    def _attempt(self, index: int, params: Params, resume: Path | None) -> Attempt:
        spec = self._spec(index, params, resume)
        self._change(attempts=self.state.attempts + 1)
        self.save()
        folder = self.run_files.attempt_dir(self.state.attempts)
        on_epoch = _EpochRecorder(self, index)
        attempt = self.runner(STAGE_CHILD, spec, folder, self.device, self.budget, math.inf, on_epoch)
        self._change(peak_mem_mb=max(self.state.peak_mem_mb, attempt.peak_mb))
        self.save()
        return attempt

    def record_epoch(self, index: int, record: EpochRecord) -> None:
        """An epoch the training process reported (it is in last.pt): recorded and saved."""
        progress = self.state.stages[index]
        metrics = record.metrics or progress.last_metrics  # None for an epoch that --val-every did not validate
        self._set_stage(index, dataclasses.replace(progress, epochs_done=record.epoch, last_metrics=metrics))
        self._change(peak_mem_mb=max(self.state.peak_mem_mb, record.peak_mb or 0.0))
        self.save()

    def _after_failure(self, index: int, params: Params, attempt: Attempt) -> None:
        """Record a training process that died, then restart it as it was, step down, or give up."""
        last = self.run_files.last_pt(self.plan.stages[index])
        # it died in the epoch after its checkpoint, which state.json may lag behind
        progress = catch_up(self.state.stages[index], last)
        self._set_stage(index, progress)
        outcome = Outcome(attempt.outcome)
        failure = Failure(
            stage=index + 1, epochs_done=progress.epochs_done, params=params, outcome=outcome,
            cause=None if attempt.cause is None else Cause(attempt.cause), reason=attempt.reason,
            peak_mem_mb=attempt.peak_mb, log=str(attempt.log), at=now(),
        )  # fmt: skip
        same_point = [earlier for earlier in self.state.failures if earlier.point == failure.point]
        self._change(failures=(*self.state.failures, failure))
        where = f"{self.label(index)} after epoch {progress.epochs_done}"
        self.screen.say(f"Training process died in {where} ({outcome}: {attempt.reason}).", important=True)
        if attempt.cause == Cause.BATCH_HALVING:
            self.screen.say(f"Warning: {attempt.reason}; counted as out of memory.", important=True)
        if self.restarts >= self.max_restarts:
            self.save()
            raise TrainFailed(
                f"Training died {self.restarts + 1} times in this run of tuner (last: {outcome}, "
                f"{attempt.reason}; log {attempt.log}). Its checkpoint is kept: re-run the same command to continue, "
                "with a larger --max-restarts or --memory-budget if memory is the cause."
            )
        if outcome == Outcome.OOM and same_point:
            self._step_down(index, params, attempt.reason, where)
        elif outcome == Outcome.ERROR and any(earlier.reason == attempt.reason for earlier in same_point):
            self.save()
            raise TrainFailed(
                f"{where}: the training process failed twice the same way: {attempt.reason}. See {attempt.log}; "
                "fix the cause, then re-run to continue from the checkpoint."
            )
        self.restarts += 1
        self._change(restarts=self.state.restarts + 1)
        self.save()
        done = self.state.stages[index].epochs_done
        start = f"epoch {done} of {last}" if done else "the stage's start"
        self.screen.say(f"Restart {self.restarts}/{self.max_restarts}: continuing from {start}.", important=True)

    def _step_down(self, index: int, params: Params, reason: str | None, where: str) -> None:
        progress = self.state.stages[index]
        lower = step_down(params, self.plan.candidates, self.plan.frontier)
        if lower is None:
            self.save()
            raise NoSmallerConfig(
                f"{where}: out of memory twice with {params}, and there is no smaller config to step down to. "
                "Raise --memory-budget or free memory, then re-run to continue.",
                params,
            )
        new_params, why = lower
        self._set_stage(index, dataclasses.replace(progress, params=new_params))
        capped = self._cap_later_stages(index, new_params)
        step = StepDown(stage=index + 1, epochs_done=progress.epochs_done, from_params=params, to_params=new_params,
                        why=why, after=reason, capped=capped, at=now())  # fmt: skip
        self._change(step_downs=(*self.state.step_downs, step))
        later = "" if not capped else (
            f" Stage{'s' if len(capped) > 1 else ''} {', '.join(map(str, capped))} "
            f"train{'' if len(capped) > 1 else 's'} no larger in imgsz and batch."
        )  # fmt: skip
        self.screen.say(
            f"Step-down: out of memory twice at this point with {params}; continuing with {new_params}, {why}.{later}",
            important=True,
        )

    def _cap_later_stages(self, index: int, reached: Params) -> tuple[int, ...]:
        """Lower every later stage to no larger in imgsz and batch than `reached`, the config this run steps down
        to (the largest it knows to fit from here on), keeping the stage's own mosaic and mixup; the stages it
        lowered, numbered from 1.

        A later stage that started at its planned size would run out of memory again and walk the same ladder
        (two restarts a rung): progressive 64/96/128/160 with 128 out of memory stepped down to 96 in stage 3,
        then spent stage 4's restarts on 160 and on 128, and died with 96 fitting."""
        capped = []
        for later in range(index + 1, len(self.state.stages)):
            progress = self.state.stages[later]
            lower = capped_at(progress.params, reached)
            if lower != progress.params:
                self._set_stage(later, dataclasses.replace(progress, params=lower))
                capped.append(later + 1)
        return tuple(capped)

    def _announce(self, index: int, params: Params, resume: Path | None) -> None:
        """The stage's start; until its first epoch ends, its ETA is the probe's prediction (train-best's plan)."""
        stage, progress = self.plan.stages[index], self.state.stages[index]
        left, prediction = stage.epochs - progress.epochs_done, self.plan.prediction
        eta = self.eta(index, left * prediction.epoch_s, prediction.epoch_s) if prediction else ""
        eta = eta and f"{eta} (predicted)"
        if resume is None:
            self.screen.say(f"{self.label(index)}: training {stage.epochs} epochs with {params} "
                            f"(from {self._init_weights(index)}){eta}")  # fmt: skip
        else:
            self.screen.say(f"{self.label(index)}: continuing after epoch {progress.epochs_done}/{stage.epochs} "
                            f"from {resume} with {params}{eta}")  # fmt: skip

    def label(self, index: int) -> str:
        return f"stage {index + 1}/{len(self.plan.stages)} {self.plan.stages[index].name}"


class _EpochRecorder:
    """The `on_epoch` of one attempt: records each epoch the training process reports, and shows it."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.stage = supervisor.plan.stages[index]
        self.started = time.monotonic()
        self.first_epoch = supervisor.state.stages[index].epochs_done

    def __call__(self, record: EpochRecord) -> bool:
        self.supervisor.record_epoch(self.index, record)
        append_memory(self.supervisor.run_files, self.stage, record.epoch, record.peak_mb)
        self.supervisor.screen.say(self._line(record))
        return False  # a train-best stage is never pruned

    def _line(self, record: EpochRecord) -> str:
        supervisor = self.supervisor
        epochs = record.epochs or self.stage.epochs
        per_epoch = (time.monotonic() - self.started) / max(1, record.epoch - self.first_epoch)
        left = (epochs - record.epoch) * per_epoch
        metric = configs.METRIC_NAMES.get(supervisor.plan.metric, "metric")
        value = f"{metric} {record.value:.4f}" if record.value is not None else "not validated"
        memory = f" | mem {record.peak_mb:.0f}/{supervisor.budget / MIB:.0f} MiB" if record.peak_mb else ""
        return (
            f"{supervisor.label(self.index)} | epoch {record.epoch}/{epochs} | {value} | "
            f"imgsz {record.imgsz} batch {record.batch}{memory} | {per_epoch:.1f} s/epoch"
            + supervisor.eta(self.index, left, per_epoch)
        )
