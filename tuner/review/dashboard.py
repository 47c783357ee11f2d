"""Markdown notes for optuna-dashboard that say what was found and what next.

The notes are optuna-dashboard's own (`save_note`, kept in the study's system attrs), so they show
in `tuner dashboard` and in a plain `optuna-dashboard sqlite:///studies/<name>.db` alike.
"""

from __future__ import annotations

import optuna
import optuna_dashboard
from optuna.trial import TrialState

from tuner.review import larger as larger_config
from tuner.review.findings import Findings, describe_params
from tuner.study import records
from tuner.study.records import TrialRecord
from tuner.study.storage import open_storage


def study_note(found: Findings) -> str:
    """What the study found and what to run next, for the study's Note page."""
    name, grid, record = found.study_name, found.grid, found.record
    if found.best is None:
        facts = ["**No stable config yet**: no trial finished within the stable limit."]
    else:
        facts = [f"**Best stable config**: {_describe_best(found)}."]
    if grid.budget_mb is not None and grid.stable_limit_mb is not None:
        device = record.device_name or record.device or "?"
        limit = grid.stable_limit_mb
        facts.append(f"Budget {grid.budget_mb:.0f} MiB on {device}; stable means a peak within {limit:.0f} MiB.")
    counts = ", ".join(f"{count} {outcome}" for outcome, count in found.counts.items() if count)
    facts.append(f"Trials: {counts or 'none yet'}; trial user attrs `outcome`, `peak_mem_mb`, `oom_reason` say why.")
    if grid.imgsz:
        walls = "; ".join(f"imgsz {size}: {grid.largest_fitting_batch(size) or 'none'}" for size in grid.imgsz)
        facts.append(f"Largest batch within the stable limit: {walls}.")
    spread = record.noise.spread
    if spread is not None:
        facts.append(f"Seed noise: {found.metric_name} moves by about {spread:.4f} between repeats of one config.")
    top = _top_unstable(found)
    if top is not None:
        facts.append(
            f"The dashboard's *Best Trial* ({top.number}, {top.value:.4f}) is not used: its peak memory is over "
            "the stable limit, so a full training with it could be killed for memory."
        )
    return "\n".join(
        [f"## What tuner found in `{name}`", "", *(f"- {fact}" for fact in facts), "", "## What to run next", "",
         *(f"- {step}" for step in _next_steps(found))]
    )  # fmt: skip


def _next_steps(found: Findings) -> list[str]:
    name = found.study_name
    if found.best is not None:
        steps = [f"Train the best stable config: `{found.command}`"]
        larger = larger_config.of(found)
        if larger is not None and larger.written:
            sample, first = larger.sample, larger.config.first
            steps.append(f"The probes trained on {sample.train_images} of {sample.train_total} train images, and a "
                         f"larger imgsz may train better than its probe says ({describe_params(first.params)}, trial "
                         f"{first.number}): `{larger.command}` trains it beside the pick (README, \"A larger imgsz on "
                         "large data\").")  # fmt: skip
    else:
        steps = ["Raise `--memory-budget`, or add smaller `--imgsz`/`--batch` choices, and run `tuner probe` again."]
    not_tried = sum(1 for cell in found.grid.cells.values() if cell.status == "not tried")
    if not_tried:
        config = found.record.config
        total = (config.n_trials if config else len(found.trials)) + 10
        steps.append(
            f"{not_tried} imgsz x batch combination(s) not tried yet: "
            f"`tuner probe --study-name {name} --n-trials {total}` continues this study."
        )
    steps.append(f"Report with plots: `tuner report --study-name {name}` writes `results/{name}/report.md`.")
    return steps


def best_trial_note(found: Findings) -> str:
    return "\n".join([
        "## Best stable config",
        "",
        f"tuner chose this trial's config: {_describe_best(found)}.",
        "",
        f"Next: `{found.command}`",
    ])  # fmt: skip


def unstable_trial_note(found: Findings, trial: optuna.trial.FrozenTrial) -> str:
    peak = TrialRecord.of(trial).peak_mem_mb
    return (
        f"## Not chosen: over the stable limit\n\nThe highest {found.metric_name} of the study, but its peak memory "
        f"({'?' if peak is None else f'{peak:.0f}'} MiB) is over the stable limit of "
        f"{found.grid.stable_limit_mb:.0f} MiB: a full training with it could be killed for memory. "
        f"tuner chose trial {found.best.trial if found.best else '(none yet)'} instead."
    )


def _describe_best(found: Findings) -> str:
    best = found.best
    peak, value = best.peak_mem_mb, best.value
    return (
        f"trial {best.trial}: {describe_params(best.params)}; {found.metric_name} "
        f"{'?' if value is None else f'{value:.4f}'}, peak memory {'?' if peak is None else f'{peak:.0f}'} MiB"
    )


def _top_unstable(found: Findings) -> optuna.trial.FrozenTrial | None:
    """The highest-scoring completed trial, when it is not stable (and so not tuner's choice)."""
    complete = [t for t in found.trials if t.state == TrialState.COMPLETE and t.value is not None]
    limit = found.grid.stable_limit_mb
    if not complete or limit is None:
        return None
    top = max(complete, key=lambda trial: trial.value)
    return None if records.is_stable(top, limit, found.trials) else top


def save_notes(found: Findings, url: str) -> None:
    """Notes on the study, on the best stable trial, and on a higher-scoring trial that is over the limit.

    `url` is the study's storage URL; the notes are written there, through Optuna's public storage API.
    """
    storage = open_storage(url, create=False)
    study = optuna.load_study(study_name=found.study_name, storage=storage)
    _save_if_changed(study, study_note(found))
    notes = {}
    numbers = {trial.number for trial in found.trials}
    if found.best is not None and found.best.trial in numbers:
        notes[found.best.trial] = best_trial_note(found)
    top = _top_unstable(found)
    if top is not None:
        notes[top.number] = unstable_trial_note(found, top)
    study_id = storage.get_study_id_from_name(found.study_name)
    for number, body in notes.items():
        # save_note wants an optuna.Trial; one made for a finished trial only reads it.
        trial = optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
        _save_if_changed(trial, body)


def _save_if_changed(study_or_trial: optuna.Study | optuna.Trial, body: str) -> None:
    """Re-running the report leaves the note's version alone when nothing changed."""
    if optuna_dashboard.get_note(study_or_trial) != body:
        optuna_dashboard.save_note(study_or_trial, body)
