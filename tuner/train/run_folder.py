"""The folder of a train-best run, its lock, its saved plan and state, and what a re-run may change.

Everything of a run lives in `<results-dir>/<study-name>/train/` (`--run NAME`: `.../NAME/`):

    config.yaml     the resolved plan (inputs, settings, stages), written before the first epoch;
                    a re-run trains with this file, changed only by the flags passed to it
    state.json      where the run is: epochs done per stage, current params, restarts, step-downs,
                    failures, peak memory, wall time, `finished` (rewritten after each event)
    memory.csv      epoch, peak memory so far, for the report's per-epoch plot
    weights/        last.pt, best.pt of the final stage (Ultralytics'); results.csv, args.yaml beside
    stages/K-NAME/  the same for the earlier stages of the two-stage and progressive strategies
    attempts/NNN/   one folder per training process: spec.json, progress.jsonl, result.json, log.txt
    summary.json    the final summary (tuner.commands.train_best)

config.yaml and state.json are a `RunPlan` and a `RunState` (tuner.train.records, the one schema of both);
they and summary.json are written through tuner.files (temp file + rename), so a kill never leaves one
half-written. Nothing here touches a checkpoint (tuner.train.checkpoints does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
from pathlib import Path
from typing import Iterator

from tuner import __version__, files
from tuner import config as configs
from tuner.errors import ConfigError, TunerError
from tuner.train.plan import close_mosaic
from tuner.train.records import STATE_VERSION, RunPlan, RunState, Stage


class RunFiles:
    """The paths of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.state = self.root / "state.json"
        self.summary = self.root / "summary.json"
        self.memory = self.root / "memory.csv"
        self.lock = self.root / ".lock"

    def stage_dir(self, stage: Stage) -> Path:
        return (self.root / stage.folder).resolve()

    def last_pt(self, stage: Stage) -> Path:
        """The stage's own checkpoint: what a restart continues from (never Ultralytics' newest last.pt anywhere)."""
        return self.stage_dir(stage) / "weights" / "last.pt"

    def attempt_dir(self, number: int) -> Path:
        return self.root / "attempts" / f"{number:03d}"


@contextlib.contextmanager
def locked(run_files: RunFiles) -> Iterator[None]:
    """One `tuner train-best` per run folder: a second one would train over the first one's checkpoints."""
    run_files.root.mkdir(parents=True, exist_ok=True)
    with open(run_files.lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TunerError(
                f"Another `tuner train-best` is training in {run_files.root}; wait for it to end, or stop it first."
            ) from None
        yield


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------- plan and state


def new_state(plan: RunPlan) -> RunState:
    return RunState.new(plan, now())


def load_run(run_files: RunFiles) -> tuple[RunPlan, RunState]:
    """The saved plan and state of an existing run; a damaged one is reported, never replaced."""
    fix = f"restore it, or move {run_files.root} away to train from scratch"
    try:
        values = configs.read_file(run_files.config)
        state = json.loads(run_files.state.read_text()) if run_files.state.exists() else None
    except (ConfigError, OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"The run in {run_files.root} cannot be read ({str(exc).rstrip('.')}); {fix}.") from None
    if state is not None and (not isinstance(state, dict) or state.get("version") != STATE_VERSION):
        raise ConfigError(f"{run_files.state} is not a state file of this tuner version; {fix}.")
    try:
        plan = RunPlan.from_json(values, run_files.config.name)
        if state is None:
            return plan, new_state(plan)  # stopped between the two first writes: nothing trained yet
        return plan, RunState.from_json(state, run_files.state.name)
    except ConfigError as exc:  # a key missing, unknown or of the wrong type: hand-edited or damaged
        raise ConfigError(f"The run in {run_files.root} cannot be read: {exc}; {fix}.") from None


def save_plan(run_files: RunFiles, plan: RunPlan) -> None:
    header = [
        f"Resolved config of `tuner train-best` for study {plan.study!r} (tuner {__version__}).",
        "Written before the first epoch; re-running the command continues the run with this file.",
    ]
    files.write_yaml(run_files.config, plan.to_json(), header)


def save_state(run_files: RunFiles, state: RunState) -> None:
    files.write_json(run_files.state, state.to_json())


def append_memory(run_files: RunFiles, stage: Stage, epoch: int, peak_mb: float | None) -> None:
    """One row per epoch of the final stage (the one training into the run folder itself).

    An append-only log like progress.jsonl, not a state file: a row cut short by a kill is one
    missing point of a plot.
    """
    if stage.folder not in ("", "."):
        return
    new = not run_files.memory.exists()
    with open(run_files.memory, "a") as handle:
        if new:
            handle.write("epoch,peak_mem_mb\n")
        handle.write(f"{epoch},{peak_mb or 0.0}\n")


# ---------------------------------------------------------------------------------- re-run checks


def check_rerun(
    plan: RunPlan, state: RunState, run_files: RunFiles, epochs: int | None, strategy: str | None, seed: int | None = None
) -> RunPlan:
    """Flags given to a re-run must fit the run; returns the plan with the epochs of --epochs.

    Only flags count here: configs/train.yaml and the defaults shaped the run when it began.
    """
    root = run_files.root
    if strategy is not None and strategy != plan.strategy:
        raise ConfigError(
            f"The run in {root} trains with --strategy {plan.strategy}; re-run without --strategy, "
            "or pass another --run NAME for a new run."
        )
    if seed is not None and seed != plan.seed:
        raise ConfigError(
            f"The run in {root} trains with --seed {plan.seed}; re-run without --seed, "
            "or pass another --run NAME for a run with another seed."
        )
    done = state.epochs_done
    if epochs is None or epochs == plan.epochs:
        return plan
    if epochs < done:
        raise ConfigError(
            f"--epochs {epochs} is below the {done} epochs the run in {root} has already trained; "
            f"pass --epochs {done} or more (or leave it out), or another --run NAME for a new run."
        )
    if state.finished:
        raise ConfigError(
            f"The run in {root} finished its {plan.epochs} epochs; a finished run cannot be extended "
            "(Ultralytics stripped its optimizer state). Pass another --run NAME for a new run."
        )
    if plan.strategy != "single":
        raise ConfigError(
            f"The run in {root} is a {plan.strategy} run planned for {plan.epochs} epochs; only a "
            f"single-stage run can change --epochs. Leave --epochs out, or pass another --run NAME."
        )
    setting = plan.settings.close_mosaic if plan.settings else configs.TRAIN_DEFAULTS["close_mosaic"]
    stage = dataclasses.replace(plan.stages[0], epochs=epochs, close_mosaic=close_mosaic(setting, epochs))
    return dataclasses.replace(plan, epochs=epochs, stages=(stage, *plan.stages[1:]))


def apply_val_every(plan: RunPlan, val_every: int | None) -> RunPlan:
    """--val-every on a re-run applies from the next epoch on; returns the plan with it."""
    if val_every is None or all(stage.val_every == val_every for stage in plan.stages):  # the stages train with it
        return plan
    settings = dataclasses.replace(plan.settings, val_every=val_every) if plan.settings else None
    stages = tuple(dataclasses.replace(stage, val_every=val_every) for stage in plan.stages)
    return dataclasses.replace(plan, settings=settings, stages=stages)


def check_inputs_exist(plan: RunPlan, run_files: RunFiles) -> None:
    for key, value in (("data", plan.data), ("model", plan.model)):
        if (key == "data" or value.lower().endswith(".pt")) and not Path(value).is_file():
            raise ConfigError(
                f"The run in {run_files.root} trains on {key} {value}, which no longer exists; restore it, or move "
                f"{run_files.root} away to start a new run."
            )


def check_no_foreign_run(run_files: RunFiles) -> None:
    for leftover in (run_files.root / "weights" / "last.pt", run_files.state):
        if leftover.exists():
            raise ConfigError(
                f"{run_files.root} holds {leftover.name} but no config.yaml of tuner; move that folder away or pass "
                "another --run NAME, so that nothing in it is overwritten."
            )
