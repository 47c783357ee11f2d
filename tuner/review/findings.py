"""What a study found: the read model behind report.md, trials.csv, the plots and the dashboard notes.

`read` reads a study once, through `tuner.study.records`, into a `Findings`; nothing here writes a file or
changes the study. The writers are `tuner.review.report` (files), `tuner.review.plots` (PNGs) and
`tuner.review.dashboard` (optuna-dashboard notes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.params import Params
from tuner.process.contract import Cause, Outcome
from tuner.review.runs import TrainRun, train_runs
from tuner.study import cost, selection, training_time
from tuner.study.limits import Limits
from tuner.study.records import Best, StudyRecord, TrialRecord, largest_runs, stable_configs
from tuner.study.storage import sqlite_path, storage_url

OUTCOME_MEANINGS = {
    "ok": "finished every probe epoch",
    "pruned": "stopped early by the pruner: its metric was low",
    "oom": "ran out of memory (watchdog kill, kill from outside, or Ultralytics halving the batch)",
    "inferred": "not run: known not to fit (a config no larger ran out of memory, a run of its imgsz and batch went over the limit, or the frontier or a kill level puts it beyond)",
    "error": "failed for another reason; see its log",
    "not run": "never run: another trial had filled its place, or its config had run while a cell was untried",
    "orphaned": "left running by a tuner that died, failed by its heartbeat; its config was run again",
    "running": "still running (or left behind by a tuner that died)",
    "waiting": "queued, not started",
}
_STATE_OUTCOMES = {
    TrialState.COMPLETE: "ok",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "error",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}
# A cell shows the most telling outcome of the trials that tried its imgsz and batch.
_CELL_PRIORITY = ("oom", "ok", "pruned", "inferred", "error", "running")
_TELLING = ("oom", "ok", "pruned", "inferred")  # what a cell's trials say about its memory (error, running: nothing)
TOP_N = 5
PARAMS = tuple(field.name for field in dataclasses.fields(Params))  # imgsz, batch, mosaic, mixup


@dataclasses.dataclass(frozen=True)
class Cell:
    """One imgsz x batch square of the memory grid: what is known about fitting it in memory."""

    status: str  # one of _CELL_PRIORITY, or "not tried"
    peak_mem_mb: float | None = None  # the highest peak among the trials of that status
    over_limit: bool = False  # ran to the end, but above the stable limit

    @property
    def label(self) -> str:
        peak = f" {self.peak_mem_mb:.0f} MiB" if self.peak_mem_mb is not None else ""
        if self.status == "ok":
            return f"ok{peak}" + (" (over limit)" if self.over_limit else "")
        if self.status == "pruned":
            return f"pruned{peak}"
        if self.status == "oom":
            return f"OOM at{peak}" if peak else "OOM"
        if self.status == "inferred":
            return "OOM (inferred)"
        return self.status

    @property
    def fits(self) -> bool:
        """Ran without running out of memory and stayed within the stable limit."""
        return self.status in ("ok", "pruned") and not self.over_limit


@dataclasses.dataclass(frozen=True)
class MemoryGrid:
    """imgsz rows x batch columns of the search space, with what each config did to memory: in its trials, and
    where the study mapped its limits (tuner.study.limits), in its pre-flights."""

    imgsz: tuple[int, ...]
    batch: tuple[int, ...]
    cells: dict[tuple[int, int], Cell]
    budget_mb: float | None
    stable_limit_mb: float | None
    frontier: dict[int, int | None] | None = None  # batch -> the largest imgsz its pre-flights put under the limit
    preflights: dict[tuple[int, int], float | None] = dataclasses.field(default_factory=dict)  # peak MiB, None: OOM

    def fits(self, imgsz: int, batch: int) -> bool:
        """Within the stable limit: by the trials of the config where they ran (or were inferred out of memory),
        else by the pre-flights' frontier (a config no larger than one whose pre-flight fitted fits too)."""
        cell = self.cells[(imgsz, batch)]
        if cell.status in _TELLING or self.frontier is None:
            return cell.fits
        largest = self.frontier.get(batch)
        return largest is not None and imgsz <= largest

    def largest_fitting_batch(self, imgsz: int) -> int | None:
        fitting = [batch for batch in self.batch if self.fits(imgsz, batch)]
        return max(fitting) if fitting else None

    def label(self, imgsz: int, batch: int) -> str:
        """The cell's label; a config no trial tried shows its pre-flight's peak, if it had one."""
        cell = self.cells[(imgsz, batch)]
        if cell.status != "not tried" or (imgsz, batch) not in self.preflights:
            return cell.label
        peak = self.preflights[(imgsz, batch)]
        return "pre-flight: OOM" if peak is None else f"pre-flight {peak:.0f} MiB"


@dataclasses.dataclass(frozen=True)
class BestConfig(Best):
    """The best stable config: the one `tuner probe` recorded, or (`recorded` False) chosen here as it would.

    A probe that was interrupted before its end has not recorded one yet.
    """

    recorded: bool = True


@dataclasses.dataclass(frozen=True)
class Point:
    """One trial on a plot. `value` is None for trials with no metric (oom, error)."""

    trial: int
    kind: str  # stable, over limit, pruned, oom or error (tuner.review.plots.POINT_STYLES)
    value: float | None
    peak_mem_mb: float | None


@dataclasses.dataclass(frozen=True)
class Trade:
    """A stable config as a person with a deadline weighs it: the probes' mean metric, its full training's predicted
    seconds (None where nothing predicts it) and the largest peak any run of its imgsz x batch showed."""

    trial: int  # its first trial
    params: Params
    value: float
    runs: int
    train_s: float | None
    peak_mb: float


@dataclasses.dataclass(frozen=True)
class Findings:
    """What the report, the plots and the dashboard notes say, read once from the study."""

    study_name: str
    trials: tuple[FrozenTrial, ...]
    metric_name: str
    record: StudyRecord
    grid: MemoryGrid
    best: BestConfig | None
    command: str  # the exact train-best command
    speed: cost.Speed | None = None  # the pre-flights' speed law (tuner.study.cost), where they timed their batches
    planned_epochs: int = 40  # of the full training, as train-best would run it from here
    results_dir: Path = Path("results")
    runs: tuple[TrainRun, ...] = ()  # the study's train-best runs that ended (train_runs)

    @property
    def counts(self) -> dict[str, int]:
        return count_outcomes(self.trials)

    @property
    def train_time_excluding_all(self) -> float | None:
        """The study's training time where it left no pick though there are stable configs (all train longer); None
        otherwise."""
        record = self.record
        limit = record.config.train_time if record.config else None
        if self.best is not None or not limit or record.stable_limit_mb is None:
            return None
        unbounded = selection.best_stable(self.trials, record.stable_limit_mb, record.noise.spread, record.budget_mb)
        return limit if unbounded is not None else None

    def training_seconds(self, params: Params) -> float | None:
        """The predicted wall time of the full training of `params` on the whole splits, validation included (None
        where the pre-flights timed no batches or the study stored no sample, so the splits' sizes are unknown)."""
        sample = self.record.sample
        if self.speed is None or sample is None:
            return None
        return cost.probe_seconds(params, self.speed, sample.train_total, sample.val_total, self.planned_epochs)

    def trades(self, count: int = TOP_N) -> list[Trade]:
        """The `count` most accurate stable configs, each with its predicted full training and peak memory."""
        limit = self.record.stable_limit_mb
        if limit is None:
            return []
        largest = largest_runs(self.trials)
        out = []
        for runs in stable_configs(self.trials, limit).values():
            config = selection.Summary.of(runs, largest)  # the mean and peak as the pick weighs them
            out.append(Trade(config.first.number, Params.of(config.first.params), config.value, config.runs,
                             selection.config_seconds(runs, self.predicted), config.peak_mb))  # fmt: skip
        return sorted(out, key=lambda trade: (-trade.value, trade.trial))[:count]

    def predicted(self, trial: FrozenTrial) -> float | None:
        """The full training's predicted seconds for the config of `trial` over the planned epochs: as its probe
        timed it (TrialRecord.prediction, tuner.study.training_time), else as the pre-flights' speeds predict it."""
        prediction = TrialRecord.of(trial).prediction
        if prediction is not None:
            return prediction.for_epochs(self.planned_epochs).seconds
        return self.training_seconds(Params.of(trial.params))


def read(study: optuna.Study, results_dir: Path, url: str | None = None) -> Findings:
    """`url` (the study's storage URL) is used only to spell the train-best command exactly."""
    trials = tuple(study.get_trials(deepcopy=False))
    record = StudyRecord.of(study)
    metric_name = record.config.metric_name if record.config else (study.metric_names or ["value"])[0]
    found = Findings(
        study_name=study.study_name,
        trials=trials,
        metric_name=metric_name,
        record=record,
        grid=memory_grid(record, trials),
        best=None,
        command=train_best_command(study.study_name, Path(results_dir), url),
        speed=cost.fit_speed(Limits.from_dict(record.limits).frontier.measurements) if record.limits else None,
        planned_epochs=training_time.planned_epochs(),
        results_dir=Path(results_dir),
        runs=train_runs(Path(results_dir) / study.study_name, metric_name),
    )
    return dataclasses.replace(found, best=best_config(record, trials, found.predicted))


# --------------------------------------------------------------------------------------- reading trials


def trial_outcome(trial: FrozenTrial) -> str:
    """ok, pruned, oom, inferred (an OOM that was never run), error, not run, orphaned, running or waiting."""
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return _STATE_OUTCOMES[trial.state]
    record = TrialRecord.of(trial)
    if record.outcome == Outcome.OOM and (record.inferred or record.inferred_from is not None):
        return "inferred"
    if record.outcome is not None:
        return record.outcome.value
    if trial.state == TrialState.FAIL:  # failed without a result: it never ran, or its tuner died under it
        return "not run" if record.surplus else "orphaned"
    return _STATE_OUTCOMES[trial.state]


def trial_reason(trial: FrozenTrial, metric_name: str) -> str:
    """Why a trial did not finish, in one line ("" for one that did)."""
    record = TrialRecord.of(trial)
    outcome = trial_outcome(trial)
    if outcome in ("oom", "inferred"):
        return _first_line(record.oom_reason or "") or "out of memory"
    if outcome == "error":
        return _first_line(record.error or "") or "error (no message recorded)"
    if outcome == "pruned" and record.pruned_reason:
        return _first_line(record.pruned_reason)
    if outcome == "pruned" and trial.intermediate_values:
        step = max(trial.intermediate_values)
        return f"stopped by the pruner after epoch {step} at {metric_name} {trial.intermediate_values[step]:.4f}"
    return ""


def count_outcomes(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Trials per outcome, every outcome listed (zeros included), in OUTCOME_MEANINGS order."""
    counts = dict.fromkeys(OUTCOME_MEANINGS, 0)
    for trial in trials:
        counts[trial_outcome(trial)] += 1
    return counts


def best_config(record: StudyRecord, trials: Sequence[FrozenTrial],
                seconds_of: Callable[[FrozenTrial], float | None] = lambda trial: None) -> BestConfig | None:  # fmt: skip
    """The best stable config: the one `tuner probe` recorded, else chosen from the trials as it would (within the
    study's training time, by `seconds_of`: each config's predicted full training)."""
    best = record.best
    if best is not None:
        return BestConfig(best.trial, best.params, best.value, best.peak_mem_mb, best.runs, best.best_yaml)
    if record.stable_limit_mb is None:
        return None
    train_time = record.config.train_time if record.config else None
    slow = selection.too_slow(trials, record.stable_limit_mb, seconds_of, train_time)
    choice = selection.best_stable(trials, record.stable_limit_mb, record.noise.spread, record.budget_mb, exclude=frozenset(slow))
    if choice is None:
        return None
    return BestConfig(
        choice.trial.number, Params.of(choice.trial.params), choice.value, choice.peak_mb, choice.runs, recorded=False
    )


def memory_grid(record: StudyRecord, trials: Sequence[FrozenTrial]) -> MemoryGrid:
    """The search space's imgsz x batch (and any other size a trial tried), each cell with its outcome."""
    space = record.config.space if record.config else None
    searched = {"imgsz": space.imgsz, "batch": space.batch} if space else {}
    imgsz, batch = (
        sorted({int(v) for v in searched.get(name, ())} | {t.params[name] for t in trials if name in t.params})
        for name in ("imgsz", "batch")
    )
    by_config: dict[tuple[int, int], list[FrozenTrial]] = {}
    for trial in trials:
        if "imgsz" in trial.params and "batch" in trial.params:
            by_config.setdefault((trial.params["imgsz"], trial.params["batch"]), []).append(trial)
    limit = record.stable_limit_mb
    cells = {
        (size, count): _cell(by_config.get((size, count), []), limit) for size in imgsz for count in batch
    }
    budget = record.budget_mb
    frontier, preflights = _preflights(record)
    return MemoryGrid(tuple(imgsz), tuple(batch), cells, None if budget is None else float(budget), limit, frontier, preflights)


def _preflights(record: StudyRecord) -> tuple[dict[int, int | None] | None, dict[tuple[int, int], float | None]]:
    """The frontier the pre-flights mapped (None: not mapped) and each pre-flight's peak (None: out of memory)."""
    if not record.limits:
        return None, {}
    mapped = Limits.from_dict(record.limits).frontier
    return mapped.largest(), {(taken.imgsz, taken.batch): None if taken.oom else taken.peak_mb for taken in mapped.measurements}


def _cell(trials: list[FrozenTrial], limit_mb: float | None) -> Cell:
    """What a cell's trials say, as the pick judges it (tuner.study.records.largest_runs): a kill from outside
    decides the cell only where nothing else ran there, and the largest peak any run showed decides the limit."""
    told = [t for t in trials if TrialRecord.of(t).oom_cause != Cause.OS_KILL] or trials
    outcomes = {trial_outcome(trial) for trial in told}
    status = next((outcome for outcome in _CELL_PRIORITY if outcome in outcomes), "not tried")
    seen = [peak for t in trials if (peak := TrialRecord.of(t).peak_mem_mb) is not None and not TrialRecord.of(t).inferred]
    peak = max(seen) if seen and status in ("ok", "pruned") else None
    if peak is None:
        peaks = [peak for t in told if trial_outcome(t) == status and (peak := TrialRecord.of(t).peak_mem_mb) is not None]
        peak = max(peaks) if peaks else None
    over = status in ("ok", "pruned") and limit_mb is not None and peak is not None and peak > limit_mb
    return Cell(status, peak, over)


def top_trials(trials: Iterable[FrozenTrial], count: int = TOP_N) -> list[FrozenTrial]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: (-t.value, t.number))[:count]


def trial_points(trials: Iterable[FrozenTrial], limit_mb: float | None) -> list[Point]:
    """Trials as plot points: stable, over limit, pruned (at its last epoch's metric), oom or error."""
    points = []
    for trial in trials:
        outcome = trial_outcome(trial)
        peak = TrialRecord.of(trial).peak_mem_mb
        if outcome == "ok" and trial.value is not None:
            over = peak is not None and limit_mb is not None and peak > limit_mb
            points.append(Point(trial.number, "over limit" if over else "stable", trial.value, peak))
        elif outcome == "pruned" and trial.intermediate_values:
            last = trial.intermediate_values[max(trial.intermediate_values)]
            points.append(Point(trial.number, "pruned", last, peak))
        elif outcome in ("oom", "error"):
            points.append(Point(trial.number, outcome, None, peak))
    return points


def duration_s(trial: FrozenTrial) -> float | None:
    recorded = TrialRecord.of(trial).duration_s
    if recorded is not None:
        return float(recorded)
    return trial.duration.total_seconds() if trial.duration is not None else None


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""


# ------------------------------------------------------------------------------------------- as text


def train_best_command(study_name: str, results_dir: Path, url: str | None) -> str:
    """The exact `tuner train-best` command, with the storage flags only where they are not the default."""
    parts = ["tuner", "train-best", "--study-name", study_name]
    if url is not None and url != storage_url(None, Path("studies"), study_name):
        path = sqlite_path(url)
        if path is not None and path.stem == study_name:
            parts += ["--studies-dir", relative(path.parent)]
        else:
            parts += ["--storage", url]
    if Path(results_dir) != Path("results"):
        parts += ["--results-dir", relative(Path(results_dir))]
    return " ".join(parts)


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def param_cells(params: Params | Mapping[str, Any], missing: str = "?") -> list[str]:
    """imgsz, batch, mosaic, mixup as text; floats without binary noise (0.15, not 0.15000000000000002)."""
    values = params.to_dict() if isinstance(params, Params) else params
    return [missing if values.get(name) is None else f"{values[name]:.6g}" for name in PARAMS]


def describe_params(params: Params | Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {text}" for name, text in zip(PARAMS, param_cells(params)))
