"""What a study found, written for people: report.md, trials.csv and plots in results/<study-name>/.

`write_report` writes the files from `Findings` (see `tuner.review.findings`) and nothing else; the command
`tuner report` (tuner.commands.report) also leaves the optuna-dashboard notes.
"""

from __future__ import annotations

import csv
import io
from statistics import mean
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from tuner import files
from tuner.review import findings, plots
from tuner.review import larger as larger_config
from tuner.review.findings import BestConfig, Findings, MemoryGrid, param_cells, trial_outcome, trial_reason
from tuner.study import probe_budget, records, selection, training_time
from tuner.study.records import Noise, StudyRecord, TrialRecord

CSV_COLUMNS = (
    "number", "state", "outcome", "imgsz", "batch", "mosaic", "mixup", "value", "peak_mem_mb",
    "peak_rss_mb", "peak_device_mb", "stable", "duration_s", "epochs_done", "imgsz_used", "batch_used",
    "seed", "repeat_of", "inferred_from", "device", "reason", "log", "train_s_predicted", "model",
)  # fmt: skip


def write_report(found: Findings, results_dir: Path) -> dict[str, Path]:
    """Write report.md, trials.csv and the plots to `results_dir/<study-name>/`; nothing else.

    Returns the paths written, keyed by file name ("report.md", "trials.csv", "frontier.png", ...).
    """
    out_dir = Path(results_dir) / found.study_name
    written = write_plots(found, out_dir)
    markdown = render_markdown(found, [path.name for path in written.values()])
    written["trials.csv"] = files.write_text(out_dir / "trials.csv", trials_csv(found.trials, found.metric_name, found))
    written["report.md"] = files.write_text(out_dir / "report.md", markdown)
    return written


def write_plots(found: Findings, out_dir: Path) -> dict[str, Path]:
    grid = found.grid
    points = findings.trial_points(found.trials, grid.stable_limit_mb)
    written = {
        "frontier.png": plots.plot_memory_grid(grid, out_dir / "frontier.png").path,
        "accuracy_vs_memory.png": plots.plot_accuracy_vs_memory(
            points, out_dir / "accuracy_vs_memory.png", metric_name=found.metric_name, budget_mb=grid.budget_mb,
            stable_limit_mb=grid.stable_limit_mb, best_trial=found.best.trial if found.best else None,
        ).path,
        "history.png": plots.plot_history(points, out_dir / "history.png", metric_name=found.metric_name).path,
    }  # fmt: skip
    config = found.record.config
    trades = found.trades()
    if any(trade.train_s is not None for trade in trades):
        written["accuracy_vs_time.png"] = plots.plot_accuracy_vs_time(
            trades, out_dir / "accuracy_vs_time.png", metric_name=found.metric_name,
            train_time_s=config.train_time if config else None, best_trial=found.best.trial if found.best else None,
        ).path  # fmt: skip
    metric_column = config.metric if config else "metrics/mAP50-95(B)"
    train = plots.plot_train_epochs(out_dir / "train" / "results.csv", out_dir / "train_epochs.png",
                                    metric_column=metric_column, budget_mb=grid.budget_mb)  # fmt: skip
    if train is not None:
        written["train_epochs.png"] = train.path
    return written


def trials_csv(trials: Iterable[FrozenTrial], metric_name: str, found: Findings | None = None) -> str:
    """One row per trial; `train_s_predicted` (with `found`): the full training's predicted seconds, for every stable
    config (tuner.review.findings.Findings.predicted: as its probe timed it, else the pre-flights); `model` (with
    `found`): the study's model as asked for, so that the trials.csv of several models' studies can be read as one."""
    trials = list(trials)
    limit = found.record.stable_limit_mb if found is not None else None
    model = found.record.config.model if found is not None and found.record.config is not None else ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for trial in trials:
        attrs = TrialRecord.of(trial).attrs()
        row = {column: attrs.get(column, "") for column in CSV_COLUMNS}
        row.update(zip(findings.PARAMS, param_cells(trial.params, missing="")))
        duration = findings.duration_s(trial)
        row.update(
            number=trial.number,
            state=trial.state.name,
            outcome=trial_outcome(trial),
            value="" if trial.value is None else trial.value,
            duration_s="" if duration is None else round(duration, 1),
            reason=trial_reason(trial, metric_name),
            model=model,
        )
        if limit is not None and records.is_stable(trial, limit, trials):
            predicted = found.predicted(trial)
            row["train_s_predicted"] = "" if predicted is None else round(predicted)
        writer.writerow(row)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- markdown


def render_markdown(found: Findings, images: Sequence[str]) -> str:
    trials, metric_name, grid = found.trials, found.metric_name, found.grid
    sections = [
        f"# Study `{found.study_name}`\n\n{setting_lines(found.record)}",
        "## Best stable config\n\n" + best_section(found.best, metric_name, found.command, found.train_time_excluding_all)
        + grow_hint(found) + larger_note(found),
        "## Probe cost\n\n" + cost_section(found),
        *([f"## Full trainings\n\n{runs_section(found)}"] if found.runs else []),
        "## Trials by outcome\n\n" + outcome_table(found.counts),
        "## Memory frontier\n\n" + grid_section(grid),
        *([f"## Memory limits\n\n{limits_section(found.record.limits)}"] if found.record.limits else []),
        f"## Top configs by {metric_name}\n\n" + top_table(trials, grid.stable_limit_mb, metric_name, found),
        "## Accuracy against training time\n\n" + trade_section(found),
        "## Pruned, out of memory, inferred, failed\n\n" + stopped_list(trials, metric_name),
        "## Noise\n\n" + noise_text(found.record.noise, trials, grid, metric_name)
        + (f"\n\nRace: {found.record.race.describe()}" if found.record.race else ""),
        "## Plots\n\n" + "\n".join(f"![{Path(name).stem}]({name})" for name in images)
        + "\n\nEvery trial, one row each: [trials.csv](trials.csv).",
    ]  # fmt: skip
    return "\n\n".join(sections) + "\n"


def cost_section(found: Findings) -> str:
    """The plan fitted to the probe budget (tuner.study.probe_budget), and what the probe spent (trials and
    pre-flights) against the pick's predicted full training."""
    plan = probe_budget.Plan.from_json(found.record.probe_plan)
    spent = probe_budget.spent(found.trials) + float((found.record.limits or {}).get("seconds") or 0.0)
    pick = found.best and selection.pick_prediction(found.trials, found.best.trial, found.planned_epochs)
    follows = probe_budget.Follows.from_json(found.record.budget_follows)
    lines = [plan.describe()] if plan is not None else []
    lines += [f"Budget then {plan.setting} {follows.describe()}"] if plan is not None and follows is not None else []
    return "\n\n".join([*lines, probe_budget.cost_line(spent, pick.seconds if pick else None)])


def runs_section(found: Findings) -> str:
    """The study's train-best runs side by side (`train/`, the pick's; `larger/`, larger.yaml's; any other --run)."""
    rows = []
    for run in found.runs:
        epochs = f"{run.epochs}" if run.finished else f"{run.epochs} of {run.epochs_planned} (stopped)"
        wall = "?" if run.wall_s is None else training_time.minutes(run.wall_s)
        peak = "?" if run.peak_mem_mb is None else f"{run.peak_mem_mb:.0f} MiB"
        rows.append([f"`{run.name}/`", *param_cells(run.params), epochs, _fmt(run.value, 4), wall, peak])
    table = _table(["run", "imgsz", "batch", "mosaic", "mixup", "epochs", found.metric_name, "wall", "peak memory"], rows)
    return (f"{table}\n\nEach run's best.pt on the whole val split (a run stopped early: its last validated epoch), "
            "from its summary.json; the probes' metrics are of a few epochs on their sample.")  # fmt: skip


def setting_lines(record: StudyRecord) -> str:
    config = record.config
    lines = [f"- Device: {record.device_name or '?'} (`{record.device or (config.device if config else '?')}`)"]
    if record.budget_mb is not None:
        line = f"- Memory budget: {record.budget_mb:.0f} MiB"
        line += f" (given as `{config.memory_budget}`)" if config is not None else ""
        line += f" of {record.usable_memory_mb:.0f} MiB usable" if record.usable_memory_mb is not None else ""
        if config is not None and record.stable_limit_mb is not None:
            line += f"; stable limit {record.stable_limit_mb:.0f} MiB (safety margin {config.safety_margin:.0%})"
        if record.outside_kill_mb is not None:
            line += (f". Trials or pre-flights were killed from outside at about {record.outside_kill_mb:.0f} MiB, below the budget: "
                     "the stable limit was lowered to the safety margin below that for the rest of the study")  # fmt: skip
        lines.append(line)
    if config is not None:
        data = f"`{config.data}`" if config.data else "the embedded synthetic shapes dataset"
        lines.append(f"- Model `{config.model}` on {data}")
        lines.append(
            f"- Metric {config.metric_name} (`{config.metric}`) after {config.probe.epochs} "
            f"probe epoch(s) on fraction {config.probe.fraction} of the train split"
        )
    if record.sample is not None:
        lines.append(f"- {record.sample.describe()}")
    if config is not None:
        space = config.space
        lines.append(
            f"- Space: imgsz {list(space.imgsz)}, batch {list(space.batch)}, mosaic {list(space.mosaic)}, "
            f"mixup {list(space.mixup)}; sampler {config.sampler}, pruner {config.pruner}, seed {config.seed}"
        )
    if record.tuner_version:
        lines.append(f"- tuner {record.tuner_version}")
    return "\n".join(lines)


def best_section(best: BestConfig | None, metric_name: str, command: str, train_time_s: float | None = None) -> str:
    """The pick; or, without one, why: `train_time_s` where there are stable configs and none trains within it."""
    if best is None and train_time_s:
        return (f"No stable config trains within the training time of {training_time.minutes(train_time_s)} "
                "(`--train-time`); the top configs below show what each would take. Raise `--train-time` or plan "
                "fewer epochs, then re-run `tuner probe`.")  # fmt: skip
    if best is None:
        return (
            "No stable config yet: no trial finished within the stable limit. Raise `--memory-budget`, add "
            "smaller `--imgsz`/`--batch` choices, or run more trials with `tuner probe`."
        )
    peak = best.peak_mem_mb
    table = _table(
        ["trial", "imgsz", "batch", "mosaic", "mixup", metric_name, "peak memory"],
        [[best.trial, *param_cells(best.params), _fmt(best.value, 4), "?" if peak is None else f"{peak:.0f} MiB"]],
    )  # fmt: skip
    if best.best_yaml:
        where = f"Recorded in `{best.best_yaml}`."
    elif not best.recorded:
        where = "Chosen here from the trials: `tuner probe` has not recorded a best config yet (interrupted?)."
    else:
        where = ""
    return f"{table}\n\n{where}\n\nTrain it:\n\n```\n{command}\n```"


def grow_hint(found: Findings) -> str:
    """The probe's hint, when the best config sits at the largest imgsz searched with memory to spare."""
    hint = room_to_grow(found)
    return f"\n\n**Room to grow:** {hint}" if hint else ""


def larger_note(found: Findings) -> str:
    """A stable config at a larger imgsz than the pick, where the data is many times the probes' sample."""
    larger = larger_config.of(found)
    if larger is None:
        return ""
    written = (f" `tuner probe` wrote its training arguments to `{larger.yaml_path}`; train it beside the pick:\n\n"
               f"```\n{larger.command}\n```") if larger.written else ""  # fmt: skip
    return f"\n\n**A larger imgsz on large data:** {larger.describe()}{written}"


def room_to_grow(found: Findings) -> str | None:
    best, grid, config = found.best, found.grid, found.record.config
    if best is None or found.record.space_from_data:  # a derived space reaches the limit by itself
        return None
    searched = (config.space.imgsz if config else ()) or grid.imgsz
    return selection.room_to_grow(best.params.imgsz, best.peak_mem_mb, searched, grid.stable_limit_mb)


def outcome_table(counts: dict[str, int]) -> str:
    rows = [[outcome, count, findings.OUTCOME_MEANINGS[outcome]] for outcome, count in counts.items()]
    rows.append(["total", sum(counts.values()), ""])
    return _table(["outcome", "trials", "meaning"], rows)


def grid_section(grid: MemoryGrid) -> str:
    if not grid.imgsz or not grid.batch:
        return "No imgsz or batch tried yet."
    rows = [[size, *(grid.label(size, count) for count in grid.batch)] for size in grid.imgsz]
    table = _table(["imgsz \\ batch", *grid.batch], rows)
    limit = "the stable limit" + ("" if grid.stable_limit_mb is None else f" of {grid.stable_limit_mb:.0f} MiB")
    walls = ", ".join(f"imgsz {size}: {grid.largest_fitting_batch(size) or 'none'}" for size in grid.imgsz)
    untried, judged = "", ""
    if grid.frontier is not None:  # one frontier, as frontier.png draws it: the pre-flights tell where no trial ran
        untried = " pre-flight: no trial ran it, its pre-flight peaked there (Memory limits, below)."
        judged = " (by the trials, and where no trial ran a config by the pre-flights' frontier)"
    return (
        "Peak memory of each imgsz and batch tried (the highest when tried more than once). \"over limit\": "
        f"finished, but above {limit}; OOM: ran out of memory; inferred: skipped, known not to fit "
        f"(see the outcome table).{untried}\n\n{table}\n\nLargest batch within {limit}{judged}: {walls}."
    )


def limits_section(stored: dict[str, Any]) -> str:
    """What the pre-flights of `tuner probe --limits-only` found: the frontier, and how well the model predicts."""
    from tuner.study.limits import Limits

    found = Limits.from_dict(stored)
    rows = [[entry.batch, "none" if entry.imgsz is None else entry.imgsz,
             "?" if entry.peak_mem_mb is None else f"{entry.peak_mem_mb:.0f} MiB",
             "measured" if entry.measured else "inferred"] for entry in found.frontier.entries]  # fmt: skip
    table = _table(["batch", "largest stable imgsz", "peak", "how"], rows)
    model = f"Memory model: {found.model.describe()}." if found.model else "Too few pre-flights for a memory model."
    return (
        f"For each batch, the largest imgsz whose pre-flight (mosaic and mixup at the top of their ranges, "
        f"a few training batches and one validation batch) peaked under the stable limit of "
        f"{found.stable_limit_mb:.0f} MiB; \"inferred\" ones follow from the measured ones, since memory grows "
        f"with imgsz and batch. {len(found.frontier.measurements)} pre-flight(s) in {found.seconds:.0f} s.\n\n"
        f"{table}\n\n{model}"
    )


def top_table(trials: Sequence[FrozenTrial], limit_mb: float | None, metric_name: str, found: Findings | None = None) -> str:
    """The top configs; with a prediction of it (`found.predicted`), each stable one's full training time."""
    top = findings.top_trials(trials)
    if not top:
        return "No trial has completed yet."
    from_preflights = found is not None and found.speed is not None and found.record.sample is not None
    predicting = found is not None and (from_preflights or any(TrialRecord.of(trial).prediction for trial in top))
    train_time = found.record.config.train_time if found is not None and found.record.config else None
    rows = []
    for rank, trial in enumerate(top, start=1):
        record = TrialRecord.of(trial)
        peak, repeat = record.peak_mem_mb, record.repeat_of
        stable = records.is_stable(trial, limit_mb, trials) if limit_mb is not None else None
        rows.append([
            rank, trial.number if repeat is None else f"{trial.number} (repeat of {repeat})",
            *param_cells(trial.params), _fmt(trial.value, 4), "?" if peak is None else f"{peak:.0f} MiB",
            {True: "yes", False: "no", None: "?"}[stable],
        ])  # fmt: skip
        if predicting:
            seconds = found.predicted(trial) if stable else None
            over = seconds is not None and train_time is not None and seconds > train_time
            rows[-1].append("-" if seconds is None else f"{seconds / 60:.0f} min" + (" (over the training time)" if over else ""))
    header = ["rank", "trial", "imgsz", "batch", "mosaic", "mixup", metric_name, "peak memory", "stable"]
    if predicting:
        within = f", training time {training_time.minutes(train_time)}" if train_time else ""
        header.append(f"full training ({found.planned_epochs} epochs{within}), predicted")
    return _table(header, rows)


def trade_section(found: Findings) -> str:
    """The top stable configs by predicted training time, each against the pick: what more time buys."""
    trades = [trade for trade in found.trades() if trade.train_s is not None]
    if not trades:
        return "No stable config's full training is predicted yet."
    config = found.record.config
    limit = config.train_time if config else None
    pick = next((trade for trade in trades if found.best and trade.trial == found.best.trial), None)
    rows = []
    for trade in sorted(trades, key=lambda t: (t.train_s, -t.value)):
        against = "the pick" if trade is pick else (
            f"{trade.value - pick.value:+.4f} for {trade.train_s / pick.train_s - 1:+.0%} time" if pick else "")  # fmt: skip
        over = " (over the training time)" if limit is not None and trade.train_s > limit else ""
        rows.append([f"{trade.params} (trial {trade.trial})", f"{trade.value:.4f} ({trade.runs} run(s))",
                     f"{trade.train_s / 60:.0f} min{over}", f"{trade.peak_mb:.0f} MiB", against])  # fmt: skip
    header = ["config", f"{found.metric_name} (probe)", f"full training ({found.planned_epochs} epochs), predicted",
              "peak memory", "against the pick"]  # fmt: skip
    within = f" The training time is {training_time.minutes(limit)} (`--train-time`)." if limit else ""
    return (_table(header, rows) + "\n\nThe probe's metric ranks configs for a short fine-tune; a difference within the "
            f"noise is a tie.{within}")  # fmt: skip


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
        log = TrialRecord.of(trial).log
        if outcome in ("oom", "error") and log:
            line += f". Log: `{log}`"
        lines.append(line)
    return "\n".join(lines) if lines else "None: every trial finished."


def noise_text(noise: Noise, trials: Sequence[FrozenTrial], grid: MemoryGrid, metric_name: str) -> str:
    spread, pairs = noise.spread, noise.pairs
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
    tied = selection.contenders(trials, grid.stable_limit_mb, spread) if grid.stable_limit_mb is not None else []
    return f"{text} {tie_text(tied, trials, grid, spread)}" if tied else text


def tie_text(tied: Sequence[Sequence[FrozenTrial]], trials: Sequence[FrozenTrial], grid: MemoryGrid, spread: float) -> str:
    """What the pick rule (tuner.study.selection.best_stable) makes of the stable configs that tie with the most
    accurate one (`tied`, selection.contenders: the most accurate first), as the pick and the race line say it."""
    top = mean(trial.value for trial in tied[0])
    if len(tied) == 1:
        return f"No other stable config scores within the noise of the most accurate one ({top:.4f}): it is the pick."
    head = f"{len(tied)} stable configs score within the noise of the most accurate one ({top:.4f})"
    same = f"peaks within {selection.MEMORY_TIE:.0%} of the budget count as the same memory"
    if selection.tie_decides(trials, grid.stable_limit_mb, spread, grid.budget_mb):
        return f"{head}; tuner picks the one with the most memory headroom among them ({same}, and of those the most accurate)."
    return f"{head}; none of the others needs clearly less memory ({same}), so the most accurate is the pick."


def _table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def _fmt(value: float | None, digits: int) -> str:
    return "?" if value is None else f"{value:.{digits}f}"
