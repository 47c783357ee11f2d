"""What a study found, written for people: report.md, trials.csv and plots in results/<study-name>/.

Everything here reads the study as `tuner probe` leaves it (see the study and trial user attrs it
writes) and changes nothing in it but the optuna-dashboard notes. `write_report` is called by
`tuner report` and at the end of `tuner probe`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import plots, selection
from tuner.space import config_key
from tuner.storage import load_study, resolve_study_name, sqlite_path, storage_url

OUTCOME_MEANINGS = {
    "ok": "finished every probe epoch",
    "pruned": "stopped early by the pruner: its metric was low",
    "oom": "ran out of memory (watchdog kill, kill from outside, or Ultralytics halving the batch)",
    "inferred": "not run: a config no larger in imgsz and batch had run out of memory",
    "error": "failed for another reason; see its log",
    "running": "still running (or left behind by a tuner that died)",
    "waiting": "queued, not started",
}
CSV_COLUMNS = (
    "number", "state", "outcome", "imgsz", "batch", "mosaic", "mixup", "value", "peak_mem_mb",
    "peak_rss_mb", "peak_device_mb", "stable", "duration_s", "epochs_done", "imgsz_used", "batch_used",
    "seed", "repeat_of", "inferred_from", "device", "reason", "log",
)  # fmt: skip
_STATE_OUTCOMES = {
    TrialState.COMPLETE: "ok",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "error",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}
# A cell shows the most telling outcome of the trials that tried its imgsz and batch.
_CELL_PRIORITY = ("oom", "ok", "pruned", "inferred", "error", "running")
TOP_N = 5
PARAMS = ("imgsz", "batch", "mosaic", "mixup")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One imgsz x batch square of the frontier: what is known about fitting it in memory."""

    status: str  # one of _CELL_PRIORITY, or "not tried"
    peak_mem_mb: float | None = None  # the highest peak among the trials of that status
    over_limit: bool = False  # ran to the end, but above the stable limit

    @property
    def label(self) -> str:
        peak = f" {self.peak_mem_mb:.0f} MB" if self.peak_mem_mb is not None else ""
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
class Frontier:
    """imgsz rows x batch columns of the search space, with what each config did to memory."""

    imgsz: tuple[int, ...]
    batch: tuple[int, ...]
    cells: dict[tuple[int, int], Cell]
    budget_mb: float | None
    stable_limit_mb: float | None

    def largest_fitting_batch(self, imgsz: int) -> int | None:
        fitting = [batch for batch in self.batch if self.cells[(imgsz, batch)].fits]
        return max(fitting) if fitting else None


# --------------------------------------------------------------------------------------- reading trials


def trial_outcome(trial: FrozenTrial) -> str:
    """ok, pruned, oom, inferred (an OOM that was never run), error, running or waiting."""
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return _STATE_OUTCOMES[trial.state]
    outcome = trial.user_attrs.get("outcome")
    if outcome == "oom" and "inferred_from" in trial.user_attrs:
        return "inferred"
    if outcome in OUTCOME_MEANINGS:
        return outcome
    return _STATE_OUTCOMES[trial.state]


def trial_reason(trial: FrozenTrial, metric_name: str) -> str:
    """Why a trial did not finish, in one line ("" for one that did)."""
    attrs = trial.user_attrs
    outcome = trial_outcome(trial)
    if outcome in ("oom", "inferred"):
        return _first_line(attrs.get("oom_reason", "")) or "out of memory"
    if outcome == "error":
        return _first_line(attrs.get("error", "")) or "error (no message recorded)"
    if outcome == "pruned" and attrs.get("pruned_reason"):
        return _first_line(attrs["pruned_reason"])
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


def stable_limit_mb(study: optuna.Study) -> float | None:
    attrs = study.user_attrs
    if attrs.get("stable_limit_mb") is not None:
        return float(attrs["stable_limit_mb"])
    margin = attrs.get("config", {}).get("safety_margin")
    if attrs.get("budget_mb") is not None and margin is not None:
        return float(attrs["budget_mb"]) * (1 - float(margin))
    return None


def best_config(study: optuna.Study, trials: Sequence[FrozenTrial]) -> dict[str, Any] | None:
    """The best stable config: the one `tuner probe` recorded, else chosen from the trials as it would.

    `recorded` says which: a probe that was interrupted before its end has not recorded one yet.
    """
    recorded = study.user_attrs.get("best")
    if recorded:
        return {**recorded, "recorded": True}
    limit = stable_limit_mb(study)
    if limit is None:
        return None
    choice = selection.best_stable(trials, limit, study.user_attrs.get("noise", {}).get("spread"))
    if choice is None:
        return None
    return {
        "trial": choice.trial.number,
        "params": choice.params,
        "value": choice.value,
        "peak_mem_mb": choice.peak_mb,
        "best_yaml": None,
        "recorded": False,
    }


def frontier(study: optuna.Study, trials: Sequence[FrozenTrial]) -> Frontier:
    space = study.user_attrs.get("config", {}).get("space", {})
    imgsz, batch = (
        sorted({int(v) for v in space.get(name, [])} | {t.params[name] for t in trials if name in t.params})
        for name in ("imgsz", "batch")
    )
    limit = stable_limit_mb(study)
    by_config: dict[tuple[int, int], list[FrozenTrial]] = {}
    for trial in trials:
        if "imgsz" in trial.params and "batch" in trial.params:
            by_config.setdefault((trial.params["imgsz"], trial.params["batch"]), []).append(trial)
    cells = {
        (size, count): _cell(by_config.get((size, count), []), limit) for size in imgsz for count in batch
    }
    budget = study.user_attrs.get("budget_mb")
    return Frontier(tuple(imgsz), tuple(batch), cells, None if budget is None else float(budget), limit)


def _cell(trials: list[FrozenTrial], limit_mb: float | None) -> Cell:
    outcomes = {trial_outcome(trial) for trial in trials}
    status = next((outcome for outcome in _CELL_PRIORITY if outcome in outcomes), "not tried")
    peaks = [
        t.user_attrs["peak_mem_mb"] for t in trials if trial_outcome(t) == status and "peak_mem_mb" in t.user_attrs
    ]
    peak = max(peaks) if peaks else None
    over = status in ("ok", "pruned") and limit_mb is not None and peak is not None and peak > limit_mb
    return Cell(status, peak, over)


def top_trials(trials: Iterable[FrozenTrial], count: int = TOP_N) -> list[FrozenTrial]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: (-t.value, t.number))[:count]


def trial_points(trials: Iterable[FrozenTrial], limit_mb: float | None) -> list[plots.Point]:
    """Trials as plot points: stable, over limit, pruned (at its last epoch's metric), oom or error."""
    points = []
    for trial in trials:
        outcome = trial_outcome(trial)
        peak = trial.user_attrs.get("peak_mem_mb")
        if outcome == "ok" and trial.value is not None:
            over = peak is not None and limit_mb is not None and peak > limit_mb
            points.append(plots.Point(trial.number, "over limit" if over else "stable", trial.value, peak))
        elif outcome == "pruned" and trial.intermediate_values:
            last = trial.intermediate_values[max(trial.intermediate_values)]
            points.append(plots.Point(trial.number, "pruned", last, peak))
        elif outcome in ("oom", "error"):
            points.append(plots.Point(trial.number, outcome, None, peak))
    return points


def duration_s(trial: FrozenTrial) -> float | None:
    if trial.user_attrs.get("duration_s") is not None:
        return float(trial.user_attrs["duration_s"])
    return trial.duration.total_seconds() if trial.duration is not None else None


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""


# -------------------------------------------------------------------------------------------- writing


def trials_csv(trials: Iterable[FrozenTrial], metric_name: str) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for trial in trials:
        attrs = trial.user_attrs
        row = {column: attrs.get(column, "") for column in CSV_COLUMNS}
        row.update(zip(PARAMS, param_cells(trial.params, missing="")))
        duration = duration_s(trial)
        row.update(
            number=trial.number,
            state=trial.state.name,
            outcome=trial_outcome(trial),
            value="" if trial.value is None else trial.value,
            duration_s="" if duration is None else round(duration, 1),
            reason=trial_reason(trial, metric_name),
        )
        writer.writerow(row)
    return buffer.getvalue()


def train_best_command(study_name: str, results_dir: Path, url: str | None) -> str:
    """The exact `tuner train-best` command, with the storage flags only where they are not the default."""
    parts = ["tuner", "train-best", "--study-name", study_name]
    if url is not None and url != storage_url(None, Path("studies"), study_name):
        path = sqlite_path(url)
        if path is not None and path.stem == study_name:
            parts += ["--studies-dir", _relative(path.parent)]
        else:
            parts += ["--storage", url]
    if Path(results_dir) != Path("results"):
        parts += ["--results-dir", _relative(Path(results_dir))]
    return " ".join(parts)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclasses.dataclass(frozen=True)
class Findings:
    """What the report, the plots and the dashboard notes say, read once from the study."""

    study: optuna.Study
    trials: tuple[FrozenTrial, ...]
    metric_name: str
    frontier: Frontier
    best: dict[str, Any] | None
    command: str  # the exact train-best command

    @property
    def counts(self) -> dict[str, int]:
        return count_outcomes(self.trials)


def summarize(study: optuna.Study, results_dir: Path, url: str | None = None) -> Findings:
    """`url` (the study's storage URL) is used only to spell the train-best command exactly."""
    trials = tuple(study.get_trials(deepcopy=False))
    config = study.user_attrs.get("config", {})
    metric_name = config.get("metric_name") or (study.metric_names or ["value"])[0]
    command = train_best_command(study.study_name, Path(results_dir), url)
    return Findings(study, trials, metric_name, frontier(study, trials), best_config(study, trials), command)


def write_report(study: optuna.Study, results_dir: Path, *, url: str | None = None) -> dict[str, Path]:
    """Write report.md, trials.csv and the plots to `results_dir/<study-name>/`, and the dashboard notes.

    Returns the paths written, keyed by file name ("report.md", "trials.csv", "frontier.png", ...).
    """
    return write_findings(summarize(study, results_dir, url), results_dir)


def write_findings(found: Findings, results_dir: Path) -> dict[str, Path]:
    from tuner.dashboard import save_notes

    out_dir = Path(results_dir) / found.study.study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_plots(found, out_dir)
    markdown = render_markdown(found, [path.name for path in written.values()])
    written["trials.csv"] = write_atomic(out_dir / "trials.csv", trials_csv(found.trials, found.metric_name))
    written["report.md"] = write_atomic(out_dir / "report.md", markdown)
    save_notes(found)
    return written


def write_plots(found: Findings, out_dir: Path) -> dict[str, Path]:
    grid = found.frontier
    points = trial_points(found.trials, grid.stable_limit_mb)
    written = {
        "frontier.png": plots.plot_frontier(grid, out_dir / "frontier.png").path,
        "accuracy_vs_memory.png": plots.plot_accuracy_vs_memory(
            points, out_dir / "accuracy_vs_memory.png", metric_name=found.metric_name, budget_mb=grid.budget_mb,
            stable_limit_mb=grid.stable_limit_mb, best_trial=found.best["trial"] if found.best else None,
        ).path,
        "history.png": plots.plot_history(points, out_dir / "history.png", metric_name=found.metric_name).path,
    }  # fmt: skip
    metric_column = found.study.user_attrs.get("config", {}).get("metric", "metrics/mAP50-95(B)")
    train = plots.plot_train_epochs(out_dir / "train" / "results.csv", out_dir / "train_epochs.png",
                                    metric_column=metric_column, budget_mb=grid.budget_mb)  # fmt: skip
    if train is not None:
        written["train_epochs.png"] = train.path
    return written


def write_atomic(path: Path, text: str) -> Path:
    """Write through a temporary file in the same folder and os.replace it, so no reader sees half."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------- markdown


def render_markdown(found: Findings, images: Sequence[str]) -> str:
    study, trials, metric_name = found.study, found.trials, found.metric_name
    sections = [
        f"# Study `{study.study_name}`\n\n{setting_lines(study)}",
        "## Best stable config\n\n" + best_section(found.best, metric_name, found.command) + grow_hint(found),
        "## Trials by outcome\n\n" + outcome_table(found.counts),
        "## Memory frontier\n\n" + frontier_section(found.frontier),
        f"## Top configs by {metric_name}\n\n" + top_table(trials, found.frontier.stable_limit_mb, metric_name),
        "## Pruned, out of memory, inferred, failed\n\n" + stopped_list(trials, metric_name),
        "## Noise\n\n" + noise_text(study.user_attrs.get("noise") or {}, trials, found.frontier, metric_name),
        "## Plots\n\n" + "\n".join(f"![{Path(name).stem}]({name})" for name in images)
        + "\n\nEvery trial, one row each: [trials.csv](trials.csv).",
    ]  # fmt: skip
    return "\n\n".join(sections) + "\n"


def setting_lines(study: optuna.Study) -> str:
    attrs = study.user_attrs
    config = attrs.get("config", {})
    probe = config.get("probe", {})
    lines = [f"- Device: {attrs.get('device_name', '?')} (`{attrs.get('device', config.get('device', '?'))}`)"]
    if attrs.get("budget_mb") is not None:
        given = config.get("memory_budget")
        margin = config.get("safety_margin")
        usable = attrs.get("usable_memory_mb")
        line = f"- Memory budget: {attrs['budget_mb']:.0f} MB"
        line += f" (given as `{given}`)" if given is not None else ""
        line += f" of {usable:.0f} MB usable" if usable is not None else ""
        if margin is not None:
            line += f"; stable limit {stable_limit_mb(study):.0f} MB (safety margin {margin:.0%})"
        lines.append(line)
    if config:
        data = f"`{config['data']}`" if config.get("data") else "the embedded synthetic shapes dataset"
        lines.append(f"- Model `{config.get('model')}` on {data}")
        lines.append(
            f"- Metric {config.get('metric_name', '?')} (`{config.get('metric')}`) after {probe.get('epochs', '?')} "
            f"probe epoch(s) on fraction {probe.get('fraction', '?')} of the train split"
        )
        space = config.get("space", {})
        lines.append(
            f"- Space: imgsz {space.get('imgsz')}, batch {space.get('batch')}, mosaic {space.get('mosaic')}, "
            f"mixup {space.get('mixup')}; sampler {config.get('sampler')}, pruner {config.get('pruner')}, "
            f"seed {config.get('seed')}"
        )
    if attrs.get("tuner_version"):
        lines.append(f"- tuner {attrs['tuner_version']}")
    return "\n".join(lines)


def best_section(best: dict[str, Any] | None, metric_name: str, command: str) -> str:
    if best is None:
        return (
            "No stable config yet: no trial finished within the stable limit. Raise `--memory-budget`, add "
            "smaller `--imgsz`/`--batch` choices, or run more trials with `tuner probe`."
        )
    params = best.get("params", {})
    peak = best.get("peak_mem_mb")
    table = _table(
        ["trial", "imgsz", "batch", "mosaic", "mixup", metric_name, "peak memory"],
        [[best["trial"], *param_cells(params), _fmt(best.get("value"), 4), "?" if peak is None else f"{peak:.0f} MB"]],
    )  # fmt: skip
    if best.get("best_yaml"):
        where = f"Recorded in `{best['best_yaml']}`."
    elif not best.get("recorded"):
        where = "Chosen here from the trials: `tuner probe` has not recorded a best config yet (interrupted?)."
    else:
        where = ""
    return f"{table}\n\n{where}\n\nTrain it:\n\n```\n{command}\n```"


def grow_hint(found: Findings) -> str:
    """The probe's hint, when the best config sits at the largest imgsz searched with memory to spare."""
    hint = room_to_grow(found)
    return f"\n\n**Room to grow:** {hint}" if hint else ""


def room_to_grow(found: Findings) -> str | None:
    best, grid = found.best, found.frontier
    if best is None:
        return None
    searched = (found.study.user_attrs.get("config") or {}).get("space", {}).get("imgsz") or grid.imgsz
    return selection.room_to_grow(best["params"]["imgsz"], best.get("peak_mem_mb"), searched, grid.stable_limit_mb)


def outcome_table(counts: dict[str, int]) -> str:
    rows = [[outcome, count, OUTCOME_MEANINGS[outcome]] for outcome, count in counts.items()]
    rows.append(["total", sum(counts.values()), ""])
    return _table(["outcome", "trials", "meaning"], rows)


def frontier_section(grid: Frontier) -> str:
    if not grid.imgsz or not grid.batch:
        return "No imgsz or batch tried yet."
    rows = [[size, *(grid.cells[(size, count)].label for count in grid.batch)] for size in grid.imgsz]
    table = _table(["imgsz \\ batch", *grid.batch], rows)
    limit = "the stable limit" + ("" if grid.stable_limit_mb is None else f" of {grid.stable_limit_mb:.0f} MB")
    walls = ", ".join(f"imgsz {size}: {grid.largest_fitting_batch(size) or 'none'}" for size in grid.imgsz)
    return (
        "Peak memory of each imgsz and batch tried (the highest when tried more than once). \"over limit\": "
        f"finished, but above {limit}; OOM: ran out of memory; inferred: skipped, because a config no larger "
        f"had run out of memory.\n\n{table}\n\nLargest batch within {limit}: {walls}."
    )


def top_table(trials: Sequence[FrozenTrial], limit_mb: float | None, metric_name: str) -> str:
    top = top_trials(trials)
    if not top:
        return "No trial has completed yet."
    rows = []
    for rank, trial in enumerate(top, start=1):
        peak = trial.user_attrs.get("peak_mem_mb")
        stable = selection.is_stable(trial, limit_mb) if limit_mb is not None else None
        repeat = trial.user_attrs.get("repeat_of")
        rows.append([
            rank, trial.number if repeat is None else f"{trial.number} (repeat of {repeat})",
            *param_cells(trial.params), _fmt(trial.value, 4), "?" if peak is None else f"{peak:.0f} MB",
            {True: "yes", False: "no", None: "?"}[stable],
        ])  # fmt: skip
    return _table(["rank", "trial", "imgsz", "batch", "mosaic", "mixup", metric_name, "peak memory", "stable"], rows)


def stopped_list(trials: Sequence[FrozenTrial], metric_name: str) -> str:
    lines = []
    for trial in trials:
        outcome = trial_outcome(trial)
        if outcome not in ("pruned", "oom", "inferred", "error"):
            continue
        config = f"imgsz {trial.params.get('imgsz')}, batch {trial.params.get('batch')}"
        what = {"pruned": "pruned", "oom": "out of memory", "inferred": "out of memory (inferred, not run)",
                "error": "error"}[outcome]  # fmt: skip
        line = f"- Trial {trial.number} ({config}): {what}: {trial_reason(trial, metric_name)}"
        if outcome in ("oom", "error") and trial.user_attrs.get("log"):
            line += f". Log: `{trial.user_attrs['log']}`"
        lines.append(line)
    return "\n".join(lines) if lines else "None: every trial finished."


def noise_text(noise: dict[str, Any], trials: Sequence[FrozenTrial], grid: Frontier, metric_name: str) -> str:
    spread = noise.get("spread")
    pairs = noise.get("pairs") or []
    if spread is None:
        return (
            f"Not measured: no config was run twice. Without it, small {metric_name} differences between "
            "configs may be seed noise; `--repeats N` re-runs the top configs with another seed."
        )
    pair_text = ", ".join(f"trials {first}/{second}: {diff:.4f}" for first, second, diff in pairs)
    text = (
        f"Re-running a config with another seed moved {metric_name} by {spread:.4f} on average "
        f"({len(pairs)} pair(s): {pair_text}). Configs closer than that are not reliably better or worse."
    )
    limit = grid.stable_limit_mb
    stable = [trial for trial in trials if limit is not None and selection.is_stable(trial, limit)]
    if stable:
        top = max(trial.value for trial in stable)
        close = {config_key(t.params) for t in stable if t.value >= top - spread}
        text += (
            f" {len(close)} stable config(s) score within {spread:.4f} of the best stable {top:.4f}; among "
            "those, tuner picks the one with the lowest peak memory (the most headroom)."
        )
    return text


def _table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def param_cells(params: dict[str, Any], missing: str = "?") -> list[str]:
    """imgsz, batch, mosaic, mixup as text; floats without binary noise (0.15, not 0.15000000000000002)."""
    return [missing if params.get(name) is None else f"{params[name]:.6g}" for name in PARAMS]


def describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{name} {text}" for name, text in zip(PARAMS, param_cells(params)))


def _fmt(value: float | None, digits: int) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------------- command


def run_report(
    *, study_name: str | None, storage: str | None, studies_dir: Path, results_dir: Path, quiet: bool, as_json: bool
) -> int:
    """`tuner report`: find the study, write the report, say where it is."""
    name = resolve_study_name(study_name, storage, studies_dir)
    url = storage_url(storage, studies_dir, name)
    study = load_study(name, url)
    found = summarize(study, results_dir, url)
    written = write_findings(found, results_dir)
    if as_json:
        files = {key: str(path) for key, path in written.items()}
        summary = {"study": name, "storage": url, "best": found.best, "counts": found.counts, "files": files}
        print(json.dumps(summary, indent=2))
        return 0
    if not quiet:
        counts = ", ".join(f"{count} {outcome}" for outcome, count in found.counts.items() if count)
        print(f"Study {name}: {len(found.trials)} trials ({counts or 'none yet'}).")
        if found.best is None:
            print("No stable config yet.")
        else:
            params = describe_params(found.best["params"])
            print(f"Best stable config: trial {found.best['trial']}: {params}; "
                  f"{found.metric_name} {_fmt(found.best.get('value'), 4)}. Next: {found.command}")  # fmt: skip
            hint = room_to_grow(found)
            if hint:
                print(f"Note: {hint}")
    print(f"Report: {written['report.md']}")
    return 0
