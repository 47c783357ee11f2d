"""`tuner train-best`: train the best stable config of a study to the end, and survive kills doing it.

Everything of a run lives in `<results-dir>/<study-name>/train/`:

    config.yaml     the resolved config (inputs, settings, stages), written before the first epoch;
                    a re-run trains with this file, changed only by the flags passed to it
    state.json      where the run is: epochs done per stage, current params, restarts, step-downs,
                    failures, peak memory, wall time, `finished` (written atomically after each event)
    weights/        last.pt, best.pt of the final stage (Ultralytics'); results.csv, args.yaml beside
    stages/K-NAME/  the same for the earlier stages of the two-stage and progressive strategies
    attempts/NNN/   one folder per training process: spec.json, progress.jsonl, result.json, log.txt
    summary.json    the final summary, also printed

Each stage runs in a child process (`python -m tuner.train_child`) under the memory watchdog of the
probes (tuner.trial). When the child dies, the stage continues from its own `weights/last.pt`
(never Ultralytics' newest-last.pt-anywhere lookup), at most `--max-restarts` times per invocation.
A config that runs out of memory twice at the same epoch steps down instead: to the most accurate
stable config of the study that is no larger in imgsz and batch, else to the next smaller imgsz, then
to half the batch; it continues from the current weights. Ultralytics' silent batch halving counts
as running out of memory.

What is trained (the source, the stages of a strategy, step-downs) is planned in tuner.plan.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import io
import json
import math
import pickle
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

from tuner import __version__, child
from tuner import config as configs
from tuner import device as devices
from tuner.errors import ConfigError, TunerError
from tuner.memory import MB, parse_budget
from tuner.plan import (
    Candidate,
    Params,
    close_mosaic,
    new_plan,
    source_from_config,
    source_from_study,
    step_down,
    study_name_for,
    train_settings,
)
from tuner.yamlio import write_yaml_atomic

STATE_VERSION = 1


class TrainFailed(TunerError):
    """Training kept dying; the run is kept and a re-run continues it."""

    exit_code = 1


class CheckpointError(TunerError):
    """A checkpoint of this run cannot be used; it is left as it is."""


# --------------------------------------------------------------------------------------- run folder


class RunFiles:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.state = self.root / "state.json"
        self.summary = self.root / "summary.json"
        self.memory = self.root / "memory.csv"  # epoch, peak memory so far: for the report's epoch plot
        self.lock = self.root / ".lock"

    def stage_dir(self, stage: dict[str, Any]) -> Path:
        return (self.root / stage["folder"]).resolve()

    def attempt_dir(self, number: int) -> Path:
        return self.root / "attempts" / f"{number:03d}"


@contextlib.contextmanager
def _locked(files: RunFiles) -> Iterator[None]:
    """One `tuner train-best` per run folder: a second one would train over the first one's checkpoints."""
    files.root.mkdir(parents=True, exist_ok=True)
    with open(files.lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TunerError(
                f"Another `tuner train-best` is training in {files.root}; wait for it to end, or stop it first."
            ) from None
        yield


def new_state(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "finished": False,
        "stages": [
            {"name": stage["name"], "epochs_done": 0, "params": dict(stage["params"]), "finished": False,
             "final_metrics": None, "last_metrics": None}
            for stage in plan["stages"]
        ],
        "restarts": 0,
        "attempts": 0,
        "invocations": 0,
        "step_downs": [],
        "failures": [],
        "peak_mem_mb": 0.0,
        "budget_mb": None,
        "wall_s": 0.0,
        "updated": _now(),
    }


def load_run(files: RunFiles) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved plan and state of an existing run; a damaged one is reported, never replaced."""
    fix = f"restore it, or move {files.root} away to train from scratch"
    try:
        plan = configs.read_file(files.config)
        if not files.state.exists() and "stages" in plan:
            return plan, new_state(plan)  # stopped between the two first writes: nothing trained yet
        state = json.loads(files.state.read_text())
    except (ConfigError, OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"The run in {files.root} cannot be read ({str(exc).rstrip('.')}); {fix}.") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "stages" not in plan:
        raise ConfigError(f"{files.state} is not a state file of this tuner version; {fix}.")
    return plan, state


def _check_rerun(plan, state, files, epochs: int | None, strategy: str | None) -> bool:
    """Flags given to a re-run must fit the run; returns whether the plan's epochs changed.

    Only flags count here: configs/train.yaml and the defaults shaped the run when it began.
    """
    if strategy is not None and strategy != plan["strategy"]:
        raise ConfigError(
            f"The run in {files.root} trains with --strategy {plan['strategy']}; re-run without --strategy, "
            "or pass another --results-dir for a new run."
        )
    done = sum(stage["epochs_done"] for stage in state["stages"])
    if epochs is None or epochs == plan["epochs"]:
        return False
    if epochs < done:
        raise ConfigError(
            f"--epochs {epochs} is below the {done} epochs the run in {files.root} has already trained; "
            f"pass --epochs {done} or more (or leave it out), or another --results-dir for a new run."
        )
    if state["finished"]:
        raise ConfigError(
            f"The run in {files.root} finished its {plan['epochs']} epochs; a finished run cannot be extended "
            "(Ultralytics stripped its optimizer state). Pass another --results-dir for a new run."
        )
    if plan["strategy"] != "single":
        raise ConfigError(
            f"The run in {files.root} is a {plan['strategy']} run planned for {plan['epochs']} epochs; only a "
            f"single-stage run can change --epochs. Leave --epochs out, or pass another --results-dir."
        )
    plan["epochs"] = epochs
    stage = plan["stages"][0]
    stage["epochs"] = epochs
    stage["close_mosaic"] = close_mosaic((plan.get("settings") or configs.TRAIN_DEFAULTS)["close_mosaic"], epochs)
    return True


def _apply_val_every(plan: dict[str, Any], val_every: int | None) -> bool:
    """--val-every on a re-run applies from the next epoch on; returns whether the plan changed."""
    if val_every is None or (plan.get("settings") or {}).get("val_every", 1) == val_every:
        return False
    plan.setdefault("settings", {})["val_every"] = val_every
    for stage in plan["stages"]:
        stage["val_every"] = val_every
    return True


def _check_inputs_exist(plan: dict[str, Any], files: RunFiles) -> None:
    for key in ("data", "model"):
        value = str(plan[key])
        if (key == "data" or value.lower().endswith(".pt")) and not Path(value).is_file():
            raise ConfigError(
                f"The run in {files.root} trains on {key} {value}, which no longer exists; restore it, or move "
                f"{files.root} away to start a new run."
            )


def _check_no_foreign_run(files: RunFiles) -> None:
    for leftover in (files.root / "weights" / "last.pt", files.state):
        if leftover.exists():
            raise ConfigError(
                f"{files.root} holds {leftover.name} but no config.yaml of tuner; move that folder away or pass "
                "another --results-dir, so that nothing in it is overwritten."
            )


def _untouched(path: Path, root: Path) -> str:
    return f"{path} was left untouched; restore it from a backup, or move {root} away to train from scratch"


def verify_checkpoint(path: Path, root: Path) -> None:
    """A torch checkpoint is a zip archive: every member's CRC must match, or it is corrupt (e.g. cut short)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, zlib.error) as exc:
        raise CheckpointError(f"The checkpoint is corrupt ({str(exc) or type(exc).__name__}): {_untouched(path, root)}.") from None
    if bad is not None:
        raise CheckpointError(f"The checkpoint is corrupt (bad CRC in {bad}): {_untouched(path, root)}.")


class _Opaque:
    """Whatever a checkpoint's pickle builds besides plain containers: accepted and ignored."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _TopLevelUnpickler(pickle.Unpickler):
    """Reads the plain values of a torch checkpoint without torch: no class is imported, no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        return None


def checkpoint_epochs(path: Path) -> int | None:
    """Epochs trained into an Ultralytics checkpoint, read from its pickle alone; None if unreadable.

    The supervisor records an epoch after the training process has saved it, so a kill in between
    leaves state.json one epoch behind last.pt; the checkpoint is the truth a resume continues from.
    Reading it this way costs milliseconds and keeps torch out of the supervising process's memory.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
            ckpt = _TopLevelUnpickler(io.BytesIO(archive.read(name))).load()
        epoch = ckpt.get("epoch")
        if isinstance(epoch, int) and epoch >= 0:
            return epoch + 1
        epochs = (ckpt.get("train_results") or {}).get("epoch")  # a final, stripped checkpoint: epoch -1
        return len(epochs) if isinstance(epochs, list) else None
    except Exception:  # the training process reads it properly and reports what is wrong
        return None


def catch_up(progress: dict[str, Any], last: Path) -> None:
    """A stage's `epochs_done` catches up with its last.pt, which may be an epoch ahead of state.json."""
    if last.exists():
        progress["epochs_done"] = max(progress["epochs_done"], checkpoint_epochs(last) or 0)


def checkpoint_to_resume(last: Path, progress: dict[str, Any], root: Path) -> Path | None:
    """The stage's own last.pt if it has one (checked whole, `epochs_done` caught up with it), None for a
    stage that starts from its init."""
    if last.exists():
        verify_checkpoint(last, root)
        catch_up(progress, last)
        return last
    if progress["epochs_done"] > 0:
        raise CheckpointError(
            f"{last} is missing, but {progress['epochs_done']} epochs were trained into it; restore it, or move "
            f"{root} away to train from scratch."
        )
    return None


def _preflight(files: RunFiles, plan: dict[str, Any], state: dict[str, Any]) -> None:
    """Before anything is written: the checkpoint the run would continue from must be whole.

    The state's epochs done catch up with it (see checkpoint_epochs)."""
    for stage, progress in zip(plan["stages"], state["stages"]):
        if not progress["finished"]:
            checkpoint_to_resume(files.stage_dir(stage) / "weights" / "last.pt", progress, files.root)
            return


# --------------------------------------------------------------------------------------- supervisor


class _Screen:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str, *, important: bool = False) -> None:
        if important or not self.quiet:
            print(text, file=sys.stderr, flush=True)


class Supervisor:
    """Runs the stages of a run in order, each in a watched child process, until all are finished."""

    def __init__(self, files, plan, state, device, budget, *, max_restarts: int, plots: bool, screen: _Screen):
        self.files = files
        self.plan = plan
        self.state = state
        self.device = device
        self.budget = budget
        self.max_restarts = max_restarts
        self.plots = plots
        self.screen = screen
        self.restarts = 0  # this invocation's; the state keeps the run's total
        self.candidates = tuple(
            Candidate(Params.of(c), c.get("value"), c.get("peak_mem_mb"), c.get("trial")) for c in plan["candidates"]
        )
        self.started = time.monotonic()
        self.wall_before = state["wall_s"]

    def save(self) -> None:
        self.state["wall_s"] = round(self.wall_before + time.monotonic() - self.started, 2)
        self.state["updated"] = _now()
        child.write_json_atomic(self.files.state, self.state)

    def run(self) -> None:
        for index in range(len(self.plan["stages"])):
            if not self.state["stages"][index]["finished"]:
                self._train_stage(index)
        self.state["finished"] = True
        self.save()

    def _train_stage(self, index: int) -> None:
        stage, progress = self.plan["stages"][index], self.state["stages"][index]
        last = self.files.stage_dir(stage) / "weights" / "last.pt"
        while True:
            resume = checkpoint_to_resume(last, progress, self.files.root)
            params = Params.of(progress["params"])
            self._announce(index, params, resume)
            outcome, result = self._attempt(index, params, resume)
            if result.get("status") == "checkpoint":
                raise CheckpointError(f"{result.get('message')}: {_untouched(last, self.files.root)}.")
            if outcome.outcome == "ok":
                progress["finished"] = True
                progress["epochs_done"] = max(progress["epochs_done"], result.get("epochs_done") or 0)
                progress["final_metrics"] = result.get("final_metrics") or progress["last_metrics"]
                self.save()
                if result.get("already_done"):
                    self.screen.say(f"{self._label(index)} had trained all its epochs before the last stop.")
                return
            self._after_failure(index, params, outcome)

    def _init_weights(self, index: int) -> str:
        init = self.plan["stages"][index]["init"]
        if init == "model":
            return str(self.plan["model"])
        previous = self.files.stage_dir(self.plan["stages"][index - 1]) / "weights" / init.split()[-1]
        if not previous.is_file():
            raise CheckpointError(
                f"{previous} is missing, but stage {index + 1} starts from it; restore it, or move "
                f"{self.files.root} away to train from scratch."
            )
        return str(previous)

    def _attempt(self, index: int, params: Params, resume: Path | None):
        from tuner.trial import run_probe_process

        stage, progress = self.plan["stages"][index], self.state["stages"][index]
        self.state["attempts"] += 1
        self.save()
        attempt_dir = self.files.attempt_dir(self.state["attempts"])
        spec = {
            "model": self._init_weights(index),
            "resume": str(resume) if resume else None,
            "data": self.plan["data"],
            "device": self.device.ultralytics,
            "device_kind": self.device.kind,
            "budget": self.budget,
            "params": params.to_dict(),
            "train": train_settings(stage, self.plan, self.device, self.plots),
            "save_dir": str(self.files.stage_dir(stage)),
            "metric": self.plan["metric"],
            "val_every": stage.get("val_every", 1),
        }
        started = time.monotonic()
        first_epoch = progress["epochs_done"]

        def on_epoch(record: dict[str, Any]) -> bool:
            progress["epochs_done"] = record["epoch"]
            if record.get("metrics"):  # None for an epoch that --val-every did not validate
                progress["last_metrics"] = record["metrics"]
            self.state["peak_mem_mb"] = max(self.state["peak_mem_mb"], record.get("peak_mb") or 0.0)
            self.save()
            _append_memory(self.files.memory, stage, record)
            per_epoch = (time.monotonic() - started) / max(1, record["epoch"] - first_epoch)
            left = (record["epochs"] - record["epoch"]) * per_epoch
            metric = configs.METRIC_NAMES.get(self.plan["metric"], "metric")
            value = f"{metric} {record['value']:.4f}" if record.get("value") is not None else "not validated"
            memory = f" | mem {record['peak_mb']:.0f}/{self.budget / MB:.0f} MB" if record.get("peak_mb") else ""
            self.screen.say(
                f"{self._label(index)} | epoch {record['epoch']}/{record['epochs']} | {value} | "
                f"imgsz {record['imgsz']} batch {record['batch']}{memory} | {per_epoch:.1f} s/epoch"
                + (f" | ETA {_duration(left)}" if left > 0 else "")
            )
            return False

        outcome = run_probe_process(
            spec, attempt_dir, self.device, self.budget, math.inf, on_epoch, module="tuner.train_child"
        )
        self.state["peak_mem_mb"] = max(self.state["peak_mem_mb"], outcome.peak_mb)
        self.save()
        return outcome, _read_json(attempt_dir / "result.json") or {}

    def _after_failure(self, index: int, params: Params, outcome) -> None:
        """Record a training process that died, then restart it as it was, step down, or give up."""
        progress = self.state["stages"][index]
        last = self.files.stage_dir(self.plan["stages"][index]) / "weights" / "last.pt"
        catch_up(progress, last)  # it died in the epoch after its checkpoint, which state.json may lag behind
        point = (index + 1, progress["epochs_done"], params.to_dict(), outcome.outcome)
        same_point = [f for f in self.state["failures"] if (f["stage"], f["epochs_done"], f["params"], f["outcome"]) == point]
        self.state["failures"].append(
            {"stage": index + 1, "epochs_done": progress["epochs_done"], "params": params.to_dict(),
             "outcome": outcome.outcome, "cause": outcome.cause, "reason": outcome.reason,
             "peak_mem_mb": outcome.peak_mb, "log": str(outcome.log), "at": _now()}
        )  # fmt: skip
        where = f"{self._label(index)} after epoch {progress['epochs_done']}"
        self.screen.say(f"Training process died in {where} ({outcome.outcome}: {outcome.reason}).", important=True)
        if outcome.cause == "batch-halving":
            self.screen.say(f"Warning: {outcome.reason}; counted as out of memory.", important=True)
        if self.restarts >= self.max_restarts:
            self.save()
            raise TrainFailed(
                f"Training died {self.restarts + 1} times in this run of tuner (last: {outcome.outcome}, "
                f"{outcome.reason}; log {outcome.log}). Its checkpoint is kept: re-run the same command to continue, "
                "with a larger --max-restarts or --memory-budget if memory is the cause."
            )
        if outcome.outcome == "oom" and same_point:
            self._step_down(index, params, outcome.reason, where)
        elif outcome.outcome == "error" and any(f["reason"] == outcome.reason for f in same_point):
            self.save()
            raise TrainFailed(
                f"{where}: the training process failed twice the same way: {outcome.reason}. See {outcome.log}; "
                "fix the cause, then re-run to continue from the checkpoint."
            )
        self.restarts += 1
        self.state["restarts"] += 1
        self.save()
        start = f"epoch {progress['epochs_done']} of {last}" if progress["epochs_done"] else "the stage's start"
        self.screen.say(f"Restart {self.restarts}/{self.max_restarts}: continuing from {start}.", important=True)

    def _step_down(self, index: int, params: Params, reason: str | None, where: str) -> None:
        progress = self.state["stages"][index]
        lower = step_down(params, self.candidates)
        if lower is None:
            self.save()
            raise TrainFailed(
                f"{where}: out of memory twice with {params}, and there is no smaller config to step down to. "
                "Raise --memory-budget or free memory, then re-run to continue."
            )
        new_params, why = lower
        self.state["step_downs"].append(
            {"stage": index + 1, "epochs_done": progress["epochs_done"], "from": params.to_dict(),
             "to": new_params.to_dict(), "why": why, "after": reason, "at": _now()}
        )  # fmt: skip
        progress["params"] = new_params.to_dict()
        self.screen.say(
            f"Step-down: out of memory twice at this point with {params}; continuing with {new_params}, {why}.",
            important=True,
        )

    def _announce(self, index: int, params: Params, resume: Path | None) -> None:
        stage, progress = self.plan["stages"][index], self.state["stages"][index]
        if resume is None:
            self.screen.say(f"{self._label(index)}: training {stage['epochs']} epochs with {params} "
                            f"(from {self._init_weights(index)})")
        else:
            self.screen.say(f"{self._label(index)}: continuing after epoch {progress['epochs_done']}/{stage['epochs']} "
                            f"from {resume} with {params}")

    def _label(self, index: int) -> str:
        return f"stage {index + 1}/{len(self.plan['stages'])} {self.plan['stages'][index]['name']}"


# ------------------------------------------------------------------------------------------ summary


def summarize(files: RunFiles, plan: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    final_stage = plan["stages"][-1]
    final = state["stages"][-1]
    weights = files.stage_dir(final_stage) / "weights"
    return {
        "study": plan["study"],
        "strategy": plan["strategy"],
        "finished": state["finished"],
        "epochs": sum(stage["epochs_done"] for stage in state["stages"]),
        "epochs_planned": plan["epochs"],
        "metric": plan["metric"],
        "metrics": final["final_metrics"] or final["last_metrics"],
        "stages": [
            {
                "name": stage["name"],
                "folder": str(files.stage_dir(stage)),
                "epochs": progress["epochs_done"],
                "planned": stage["params"],
                "trained_with": progress["params"],
                "init": stage["init"],
                "lr0": stage["lr0"],
                "metrics": progress["final_metrics"] or progress["last_metrics"],
            }
            for stage, progress in zip(plan["stages"], state["stages"])
        ],
        "restarts": state["restarts"],
        "step_downs": state["step_downs"],
        "batch_halvings": sum(1 for f in state["failures"] if f["cause"] == "batch-halving"),
        "failures": len(state["failures"]),
        "peak_mem_mb": state["peak_mem_mb"],
        "budget_mb": state["budget_mb"],
        "wall_s": state["wall_s"],
        "weights": {"best": str(weights / "best.pt"), "last": str(weights / "last.pt")},
        "results_csv": str(weights.parent / "results.csv"),
        "config": str(files.config),
    }


def _print_summary(summary: dict[str, Any], screen: _Screen, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    stages = len(summary["stages"])
    lines = [
        f"Trained {summary['study']!r} ({summary['strategy']}): {summary['epochs']} epochs"
        + (f" in {stages} stages" if stages > 1 else "")
        + f", {summary['restarts']} restart(s), {len(summary['step_downs'])} step-down(s)."
    ]
    metrics = summary["metrics"] or {}
    if metrics:
        shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        lines.append(f"Final {shown} (best.pt: {summary['weights']['best']}).")
    budget = f" of the {summary['budget_mb']:.0f} MB budget" if summary["budget_mb"] else ""
    lines.append(f"Peak memory {summary['peak_mem_mb']:.0f} MB{budget}; wall time {_duration(summary['wall_s'])}.")
    for step in summary["step_downs"]:
        lines.append(
            f"  step-down in stage {step['stage']} after epoch {step['epochs_done']}: {Params.of(step['from'])} -> "
            f"{Params.of(step['to'])} ({step['why']})"
        )
    if summary["batch_halvings"]:
        lines.append(f"  Ultralytics halved the batch {summary['batch_halvings']} time(s); each counted as out of memory.")
    lines.append(f"Summary: {summary['config'].replace('config.yaml', 'summary.json')}")
    screen.say("\n".join(lines), important=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _append_memory(path: Path, stage: dict[str, Any], record: dict[str, Any]) -> None:
    """One row per epoch of the final stage (the one training into train/ itself)."""
    if stage["folder"] not in ("", "."):
        return
    new = not path.exists()
    with open(path, "a") as handle:
        if new:
            handle.write("epoch,peak_mem_mb\n")
        handle.write(f"{record['epoch']},{record.get('peak_mb') or 0.0}\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------- command


def train_best(
    *,
    study_name: str | None = None,
    storage: str | None = None,
    studies_dir: Path = Path("studies"),
    results_dir: Path = Path("results"),
    config: Path | None = None,
    settings_file: Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
    memory_budget: str | None = None,
    max_restarts: int | None = None,
    strategy: str | None = None,
    val_every: int | None = None,
    plots: bool | None = None,
    quiet: bool = False,
    as_json: bool = False,
) -> int:
    """`tuner train-best`: start, continue or report the run of a study; see the module docstring.

    Settings come from the defaults, then configs/train.yaml (or `settings_file`), then the flags (the
    arguments that are not None); a run that exists keeps its config.yaml and applies only the flags.
    """
    screen = _Screen(quiet)
    if epochs is not None and epochs <= 0:
        raise ConfigError(f"--epochs is {epochs}, but must be a positive integer.")
    if max_restarts is not None and max_restarts < 0:
        raise ConfigError(f"--max-restarts is {max_restarts}, but must be 0 or more.")
    if val_every is not None and val_every <= 0:
        raise ConfigError(f"--val-every is {val_every}, but must be a positive integer (1 validates every epoch).")
    if strategy is not None and strategy not in configs.STRATEGIES:
        raise ConfigError(f"Unknown --strategy {strategy!r}; use one of: {', '.join(configs.STRATEGIES)}.")
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"Config file {config} does not exist; pass --config with a best.yaml that `tuner probe` wrote.")
    flags = {"epochs": epochs, "strategy": strategy, "max_restarts": max_restarts, "val_every": val_every,
             "plots": plots}  # fmt: skip
    settings = configs.load_train(settings_file, flags)
    name = study_name_for(study_name, storage, Path(studies_dir), config)
    files = RunFiles(Path(results_dir) / name / "train")

    existing = files.config.exists()
    if existing:
        plan, state = load_run(files)
        plan_changed = _check_rerun(plan, state, files, epochs, strategy)
        if state["finished"]:
            screen.say(f"The run in {files.root} is finished ({sum(s['epochs_done'] for s in state['stages'])} "
                       "epochs); nothing to do.", important=True)
            _print_summary(summarize(files, plan, state), screen, as_json)
            return 0
        _check_inputs_exist(plan, files)
        _preflight(files, plan, state)
        plan_changed |= _apply_val_every(plan, val_every)
        saved = plan.get("settings") or {}
        max_restarts = saved.get("max_restarts", settings.max_restarts) if max_restarts is None else max_restarts
        plots = saved.get("plots", settings.plots) if plots is None else plots
    else:
        _check_no_foreign_run(files)
        if config is not None:
            source = source_from_config(Path(config), name, storage, Path(studies_dir))
        else:
            source = source_from_study(name, storage, Path(studies_dir))
        plan = new_plan(source, settings, _now())
        state = new_state(plan)
        plan_changed = True
        max_restarts, plots = settings.max_restarts, settings.plots
    target = devices.resolve(device or plan["device"])
    budget = parse_budget(memory_budget if memory_budget is not None else plan["memory_budget"], target.total_memory)

    with _locked(files):
        if existing:  # re-read under the lock: another invocation may have moved it on
            plan_saved, state = load_run(files)
            if state["finished"]:
                raise TunerError(f"The run in {files.root} was finished by another tuner meanwhile; nothing to do.")
            _preflight(files, plan, state)
        state["invocations"] += 1
        state["budget_mb"] = round(budget / MB, 1)
        if plan_changed:  # config.yaml first: it marks a run that a re-run continues
            header = [
                f"Resolved config of `tuner train-best` for study {plan['study']!r} (tuner {__version__}).",
                "Written before the first epoch; re-running the command continues the run with this file.",
            ]
            write_yaml_atomic(files.config, plan, header)
        child.write_json_atomic(files.state, state)
        done = sum(stage["epochs_done"] for stage in state["stages"])
        screen.say(
            (f"Continuing the run in {files.root} after {done} of {plan['epochs']} epochs" if existing
             else f"Training {plan['study']!r} into {files.root}: {plan['epochs']} epochs, strategy {plan['strategy']}")
            + f"\nFrom {plan['origin']}; device {target.torch} ({target.name}), memory budget {budget / MB:.0f} MB",
        )
        supervisor = Supervisor(
            files, plan, state, target, budget,
            max_restarts=max_restarts,
            plots=plots, screen=screen,
        )
        supervisor.run()
        summary = summarize(files, plan, state)
        child.write_json_atomic(files.summary, summary)
    _print_summary(summary, screen, as_json)
    return 0
