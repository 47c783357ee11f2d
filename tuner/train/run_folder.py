"""The folder of a train-best run, its lock, its saved plan and state, and what a re-run may change.

Everything of a run lives in `<results-dir>/<study-name>/train/`:

    config.yaml     the resolved plan (inputs, settings, stages), written before the first epoch;
                    a re-run trains with this file, changed only by the flags passed to it
    state.json      where the run is: epochs done per stage, current params, restarts, step-downs,
                    failures, peak memory, wall time, `finished` (rewritten after each event)
    memory.csv      epoch, peak memory so far, for the report's per-epoch plot
    weights/        last.pt, best.pt of the final stage (Ultralytics'); results.csv, args.yaml beside
    stages/K-NAME/  the same for the earlier stages of the two-stage and progressive strategies
    attempts/NNN/   one folder per training process: spec.json, progress.jsonl, result.json, log.txt
    summary.json    the final summary (tuner.commands.train_best)

config.yaml, state.json and summary.json are written through tuner.files (temp file + rename), so a
kill never leaves one half-written. Nothing here touches a checkpoint (tuner.train.checkpoints does).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
from pathlib import Path
from typing import Any, Iterator

from tuner import __version__, files
from tuner import config as configs
from tuner.errors import ConfigError, TunerError
from tuner.train.plan import close_mosaic

STATE_VERSION = 1


class RunFiles:
    """The paths of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.state = self.root / "state.json"
        self.summary = self.root / "summary.json"
        self.memory = self.root / "memory.csv"
        self.lock = self.root / ".lock"

    def stage_dir(self, stage: dict[str, Any]) -> Path:
        return (self.root / stage["folder"]).resolve()

    def last_pt(self, stage: dict[str, Any]) -> Path:
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


def new_state(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "finished": False,
        "stages": [
            {"name": stage["name"], "epochs_done": 0, "params": dict(stage["params"]), "finished": False,
             "final_metrics": None, "last_metrics": None}
            for stage in plan["stages"]
        ],  # fmt: skip
        "restarts": 0,
        "attempts": 0,
        "invocations": 0,
        "step_downs": [],
        "failures": [],
        "peak_mem_mb": 0.0,
        "budget_mb": None,
        "wall_s": 0.0,
        "updated": now(),
    }


def load_run(run_files: RunFiles) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved plan and state of an existing run; a damaged one is reported, never replaced."""
    fix = f"restore it, or move {run_files.root} away to train from scratch"
    try:
        plan = configs.read_file(run_files.config)
        if not run_files.state.exists() and "stages" in plan:
            return plan, new_state(plan)  # stopped between the two first writes: nothing trained yet
        state = json.loads(run_files.state.read_text())
    except (ConfigError, OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"The run in {run_files.root} cannot be read ({str(exc).rstrip('.')}); {fix}.") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "stages" not in plan:
        raise ConfigError(f"{run_files.state} is not a state file of this tuner version; {fix}.")
    return plan, state


def save_plan(run_files: RunFiles, plan: dict[str, Any]) -> None:
    header = [
        f"Resolved config of `tuner train-best` for study {plan['study']!r} (tuner {__version__}).",
        "Written before the first epoch; re-running the command continues the run with this file.",
    ]
    files.write_yaml(run_files.config, plan, header)


def save_state(run_files: RunFiles, state: dict[str, Any]) -> None:
    files.write_json(run_files.state, state)


def epochs_done(state: dict[str, Any]) -> int:
    return sum(stage["epochs_done"] for stage in state["stages"])


def append_memory(run_files: RunFiles, stage: dict[str, Any], epoch: int, peak_mb: float | None) -> None:
    """One row per epoch of the final stage (the one training into the run folder itself).

    An append-only log like progress.jsonl, not a state file: a row cut short by a kill is one
    missing point of a plot.
    """
    if stage["folder"] not in ("", "."):
        return
    new = not run_files.memory.exists()
    with open(run_files.memory, "a") as handle:
        if new:
            handle.write("epoch,peak_mem_mb\n")
        handle.write(f"{epoch},{peak_mb or 0.0}\n")


# ---------------------------------------------------------------------------------- re-run checks


def check_rerun(plan, state, run_files: RunFiles, epochs: int | None, strategy: str | None) -> bool:
    """Flags given to a re-run must fit the run; returns whether the plan's epochs changed.

    Only flags count here: configs/train.yaml and the defaults shaped the run when it began.
    """
    root = run_files.root
    if strategy is not None and strategy != plan["strategy"]:
        raise ConfigError(
            f"The run in {root} trains with --strategy {plan['strategy']}; re-run without --strategy, "
            "or pass another --results-dir for a new run."
        )
    done = epochs_done(state)
    if epochs is None or epochs == plan["epochs"]:
        return False
    if epochs < done:
        raise ConfigError(
            f"--epochs {epochs} is below the {done} epochs the run in {root} has already trained; "
            f"pass --epochs {done} or more (or leave it out), or another --results-dir for a new run."
        )
    if state["finished"]:
        raise ConfigError(
            f"The run in {root} finished its {plan['epochs']} epochs; a finished run cannot be extended "
            "(Ultralytics stripped its optimizer state). Pass another --results-dir for a new run."
        )
    if plan["strategy"] != "single":
        raise ConfigError(
            f"The run in {root} is a {plan['strategy']} run planned for {plan['epochs']} epochs; only a "
            f"single-stage run can change --epochs. Leave --epochs out, or pass another --results-dir."
        )
    plan["epochs"] = epochs
    stage = plan["stages"][0]
    stage["epochs"] = epochs
    stage["close_mosaic"] = close_mosaic((plan.get("settings") or configs.TRAIN_DEFAULTS)["close_mosaic"], epochs)
    return True


def apply_val_every(plan: dict[str, Any], val_every: int | None) -> bool:
    """--val-every on a re-run applies from the next epoch on; returns whether the plan changed."""
    if val_every is None or (plan.get("settings") or {}).get("val_every", 1) == val_every:
        return False
    plan.setdefault("settings", {})["val_every"] = val_every
    for stage in plan["stages"]:
        stage["val_every"] = val_every
    return True


def check_inputs_exist(plan: dict[str, Any], run_files: RunFiles) -> None:
    for key in ("data", "model"):
        value = str(plan[key])
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
                "another --results-dir, so that nothing in it is overwritten."
            )
