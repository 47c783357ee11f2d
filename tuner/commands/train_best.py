"""`tuner train-best`: train the best stable config of a study to the end, and survive kills doing it.

The command starts a run, continues one, or reports a finished one; the run summary is made here.
Where the pieces live:
- tuner.train.source:      what is trained from (a study or a best.yaml, checked before anything is written);
- tuner.train.plan:        what is trained (the stages of a strategy, step-downs);
- tuner.train.records:     the plan and the run state as config.yaml and state.json keep them;
- tuner.train.run_folder:  the run's folder, its lock, config.yaml and state.json, and the re-run checks;
- tuner.train.checkpoints: whether the checkpoint a run continues from is whole, and how many epochs it holds;
- tuner.train.supervisor:  the stages, each in a watched child process (tuner.train.stage_child), restarts and
                     step-downs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tuner import checks
from tuner import config as configs
from tuner import files
from tuner.errors import ConfigError, StudyFailed, TunerError
from tuner.memory import device as devices
from tuner.memory.budget import MIB, describe_budget, parse_budget
from tuner.params import Params
from tuner.process.contract import Cause
from tuner.process.trial import run_child
from tuner.study import training_time
from tuner.study.cost import START_S
from tuner.study.training_time import Prediction
from tuner.train.checkpoints import preflight
from tuner.train.plan import new_plan
from tuner.train.records import RunPlan, RunState
from tuner.train.source import (
    DEFAULT_SHARE,
    best_params,
    fitted_budget,
    smaller_model_study,
    source_from_config,
    source_from_study,
    study_name_for,
)
from tuner.train.run_folder import (
    RunFiles,
    apply_val_every,
    check_inputs_exist,
    check_no_foreign_run,
    check_rerun,
    load_run,
    locked,
    new_state,
    now,
    save_plan,
    save_state,
)
from tuner.train.supervisor import NoSmallerConfig, Runner, Screen, Supervisor, duration


RUN = "train"  # the run's folder under results/<study>/ (--run)


@dataclasses.dataclass(frozen=True)
class _Run:
    """A run about to train: its plan and state, and the settings this invocation trains it with."""

    plan: RunPlan
    state: RunState
    existing: bool
    plan_changed: bool  # config.yaml is (re)written before training
    max_restarts: int
    plots: bool


def train_best(
    *,
    study_name: str | None = None,
    storage: str | None = None,
    studies_dir: Path = Path("studies"),
    results_dir: Path = Path("results"),
    config: Path | None = None,
    run: str = RUN,
    settings_file: Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
    memory_budget: str | None = None,
    max_restarts: int | None = None,
    strategy: str | None = None,
    val_every: int | None = None,
    plots: bool | None = None,
    seed: int | None = None,
    train_time: str | None = None,
    quiet: bool = False,
    as_json: bool = False,
    runner: Runner = run_child,
    at_most: Params | None = None,
) -> int:
    """`tuner train-best`: start, continue or report the run of a study.

    Settings come from the defaults, then configs/train.yaml (or `settings_file`), then the flags (the
    arguments that are not None); a run that exists keeps its config.yaml and applies only the flags.
    `runner` runs one training process (tests pass a fake). `at_most`: a new run from the study starts at its
    first stable config no larger than this one (the fallback from a larger model's config that ran out of memory).
    """
    screen = Screen(quiet)
    time_limit = _check_flags(epochs, max_restarts, val_every, strategy, config, train_time, seed)
    flags = {"epochs": epochs, "strategy": strategy, "max_restarts": max_restarts, "val_every": val_every,
             "plots": plots, "seed": seed}  # fmt: skip
    settings = configs.load_train(settings_file, flags)
    name = study_name_for(study_name, storage, Path(studies_dir), config)
    run_name = checks.run_name(run, "--run")
    run_files = RunFiles(Path(results_dir) / name / run_name)
    if run_files.config.exists():
        run = _continued_run(run_files, settings, flags, screen, time_limit)
        if config is not None:
            _check_same_config(Path(config), run.plan, run_files)
        if run.state.finished:
            screen.say(f"The run in {run_files.root} is finished ({run.state.epochs_done} epochs); nothing to do.",
                       important=True)  # fmt: skip
            print_summary(run_summary(run_files, run.plan, run.state), screen, as_json)
            return 0
        files.check_writable(run_files.root, "--results-dir")
    else:
        check_no_foreign_run(run_files)
        files.check_writable(Path(results_dir), "--results-dir")
        if config is not None:
            source = source_from_config(Path(config), name, storage, Path(studies_dir))
        else:
            source = source_from_study(name, storage, Path(studies_dir), at_most)
        settings = _fit_to_time(settings, source.prediction, time_limit, screen)
        plan = new_plan(source, settings, now(), time_limit)
        run = _Run(plan, new_state(plan), False, True, settings.max_restarts, settings.plots)
    target = devices.resolve(device or run.plan.device)
    budget, budget_text = _budget(memory_budget, run.plan, target, screen)
    try:
        with locked(run_files):
            summary = _train(run_files, run, target, budget, budget_text, screen, runner)
    except NoSmallerConfig as exc:
        study = _smaller_model(exc, run.plan.study, storage, Path(studies_dir), Path(results_dir), run_name, screen)
        return train_best(study_name=study, storage=storage, studies_dir=studies_dir, results_dir=results_dir,
                          run=run_name, settings_file=settings_file, epochs=epochs, device=device,
                          memory_budget=memory_budget, max_restarts=max_restarts, strategy=strategy, val_every=val_every, plots=plots, seed=seed,
                          train_time=train_time, quiet=quiet, as_json=as_json, runner=runner,
                          at_most=exc.params)  # fmt: skip
    print_summary(summary, screen, as_json)
    return 0


def _smaller_model(failed: NoSmallerConfig, study: str, storage: str | None, studies_dir: Path, results_dir: Path,
                   run_name: str, screen: Screen) -> str:  # fmt: skip
    """The study train-best falls back to when `study`'s config ran out of memory with nothing smaller left: the
    next smaller model's, where the study was probed with smaller models (the seed note's fallback); else `failed`.
    Its run goes in the same `--run` folder of that study's results."""
    smaller = smaller_model_study(study, storage, studies_dir)
    if smaller is None or failed.params is None:
        raise failed
    name, model = smaller
    screen.say(f"{str(failed).split(' Raise')[0]} Falling back to the smaller model {model}: study {name!r}, "
               f"trained as a run of its own in {results_dir / name / run_name} (this run is kept as it is); a new run "
               f"starts at its first stable config no larger than {failed.params.imgsz}/{failed.params.batch} "
               "(imgsz/batch), else at its smallest.", important=True)  # fmt: skip
    return name


def _check_same_config(config: Path, plan: RunPlan, run_files: RunFiles) -> None:
    """A run folder trains one config: `--config` naming another one, on a run that exists, is refused, not ignored
    (a re-probe may have written another larger.yaml since that run began)."""
    asked = best_params(config)
    if asked != plan.best:
        raise ConfigError(f"The run in {run_files.root} trains {plan.best} (from {plan.origin}), not {asked} of "
                          f"{config}: pass another --run NAME for it, or remove that folder to start it over.")  # fmt: skip


def _check_flags(epochs, max_restarts, val_every, strategy, config, train_time, seed=None) -> float | None:
    """The flags given, checked as configs/train.yaml's settings are (tuner.checks), named as flags; returns the
    training time in seconds (None: none given)."""
    for value, flag, check in ((epochs, "--epochs", checks.positive_int), (max_restarts, "--max-restarts",
                               checks.non_negative_int), (val_every, "--val-every", checks.positive_int),
                               (seed, "--seed", checks.non_negative_int)):  # fmt: skip
        if value is not None:
            check(value, flag)
    if strategy is not None:
        checks.choice(strategy, "--strategy", configs.STRATEGIES)
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"Config file {config} does not exist; pass --config with a best.yaml that `tuner probe` wrote.")
    return checks.duration_or_none(train_time, "--train-time")


def _fit_to_time(settings: configs.TrainSettings, prediction: Prediction | None, limit_s: float | None,
                 screen: Screen) -> configs.TrainSettings:  # fmt: skip
    """The settings of a new run with its epochs fitted to `limit_s` (--train-time) by the probe's prediction of an
    epoch: the planned epochs where they fit, else as many as do. Raises StudyFailed when not one does."""
    if limit_s is None:
        return settings
    budget = training_time.minutes(limit_s)
    if prediction is None:
        screen.say(f"--train-time {budget}: the study holds no prediction of this config's training (an older tuner's "
                   f"probe, or a best.yaml without one); training the planned {settings.epochs} epochs.", important=True)  # fmt: skip
        return settings
    planned = prediction.for_epochs(settings.epochs)
    if planned.seconds <= limit_s:
        screen.say(f"Training time {budget}: the {settings.epochs} planned epochs fit ({planned.describe()}).")
        return settings
    fit = training_time.epochs_within(prediction, limit_s)
    if fit < 1:
        raise StudyFailed(
            f"Not one epoch fits in the training time of {budget}: an epoch of this config is predicted at "
            f"{training_time.minutes(prediction.epoch_s)}, after a start of about {training_time.minutes(START_S)}. "
            "Raise --train-time, or pick a faster config with `tuner probe --train-time`."
        )
    screen.say(f"Training time {budget}: {fit} of the {settings.epochs} planned epochs fit "
               f"({prediction.for_epochs(fit).describe()}); training {fit}. The ETA after each epoch says how it "
               "holds.", important=True)  # fmt: skip
    return dataclasses.replace(settings, epochs=fit)


def _budget(flag: str | None, plan: RunPlan, target: devices.Device, screen: Screen) -> tuple[int, str]:
    """The budget this invocation trains under, and how to say it: --memory-budget, refused where it is more than
    the device's usable memory (the system would kill the training before the watchdog could); else the study's,
    fitted to this machine (source.fitted_budget), saying so where that lowered it."""
    usable = target.total_memory
    if flag is not None:
        budget = parse_budget(flag, usable)
        if budget > usable:
            raise ConfigError(
                f"--memory-budget {flag} is {budget / MIB:.0f} MiB, more than the device's usable memory ({usable / MIB:.0f} "
                f"MiB on {target.torch}): the system would kill the training before tuner's watchdog could. Pass a smaller "
                f"--memory-budget, e.g. {DEFAULT_SHARE:g} ({DEFAULT_SHARE * usable / MIB:.0f} MiB)."
            )
        return budget, describe_budget(flag, budget, usable)
    given = plan.memory_budget
    study_budget = parse_budget(given, usable)
    budget = fitted_budget(study_budget, plan.usable_memory_mb, usable)
    if budget == study_budget:
        return budget, describe_budget(given, budget, usable)
    studied, ours = plan.usable_memory_mb, f"{usable / MIB:.0f} MiB"
    why = (f"This machine has {ours} usable memory, less than the {studied:.0f} MiB of the machine the study was "
           f"measured on" if studied else f"The study recorded no machine memory, and its budget is more than "
           f"{DEFAULT_SHARE:g} of this machine's {ours}")  # fmt: skip
    screen.say(
        f"{why}: training under {budget / MIB:.0f} MiB ({budget / usable:.2f} of {ours}) instead of the study's "
        f"{study_budget / MIB:.0f} MiB budget, which this machine could not hold; configs that need more step down. "
        "Pass --memory-budget to choose another.",
        important=True,
    )
    return budget, f"{budget / MIB:.0f} MiB (the study's {study_budget / MIB:.0f} MiB, fitted to {usable / MIB:.0f} MiB usable)"


def _continued_run(run_files: RunFiles, settings: configs.TrainSettings, flags: dict[str, Any], screen: Screen,
                   time_limit: float | None) -> _Run:  # fmt: skip
    """The run in `run_files` with this invocation's flags applied and its checkpoint checked (unless finished)."""
    if time_limit is not None:
        screen.say("--train-time fits the epochs of a new run; this run keeps its planned epochs (--epochs changes "
                   "them).", important=True)  # fmt: skip
    saved_plan, state = load_run(run_files)
    plan = check_rerun(saved_plan, state, run_files, flags["epochs"], flags["strategy"], flags["seed"])
    if state.finished:
        return _Run(plan, state, True, plan != saved_plan, 0, False)
    check_inputs_exist(plan, run_files)
    state = preflight(run_files, plan, state)
    plan = apply_val_every(plan, flags["val_every"])
    saved = plan.settings or settings  # a plan made before configs/train.yaml: this invocation's settings
    max_restarts = saved.max_restarts if flags["max_restarts"] is None else flags["max_restarts"]
    plots = saved.plots if flags["plots"] is None else flags["plots"]
    return _Run(plan, state, True, plan != saved_plan, max_restarts, plots)


def _train(
    run_files: RunFiles, run: _Run, target: devices.Device, budget: int, budget_text: str, screen: Screen, runner: Runner
) -> dict:
    """Under the run's lock: save the plan and state, train every stage, write the summary."""
    plan, state = run.plan, run.state
    if run.existing:  # re-read under the lock: another invocation may have moved it on
        _, state = load_run(run_files)
        if state.finished:
            raise TunerError(f"The run in {run_files.root} was finished by another tuner meanwhile; nothing to do.")
        state = preflight(run_files, plan, state)
    state = dataclasses.replace(state, invocations=state.invocations + 1, budget_mb=round(budget / MIB, 1))
    if run.plan_changed:  # config.yaml first: it marks a run that a re-run continues
        save_plan(run_files, plan)
    save_state(run_files, state)
    screen.say(
        (f"Continuing the run in {run_files.root} after {state.epochs_done} of {plan.epochs} epochs" if run.existing
         else f"Training {plan.study!r} into {run_files.root}: {plan.epochs} epochs, strategy {plan.strategy}")
        + f"\nFrom {plan.origin}; device {target.torch} ({target.name}), memory budget {budget_text}",
    )  # fmt: skip
    if plan.prediction is not None and not state.epochs_done:
        predicted = plan.prediction.for_epochs(plan.epochs)
        screen.say(f"Predicted: {predicted.describe()} (as the probe timed {plan.best}; measured epochs follow).")
    supervisor = Supervisor(
        run_files, plan, state, target, budget, max_restarts=run.max_restarts, plots=run.plots, screen=screen, runner=runner
    )
    supervisor.run()
    summary = run_summary(run_files, plan, supervisor.state)
    files.write_json(run_files.summary, summary)
    return summary


# ------------------------------------------------------------------------------------------ summary


def run_summary(run_files: RunFiles, plan: RunPlan, state: RunState) -> dict[str, Any]:
    """What a run trained and how it went: summary.json, and what is printed at its end."""
    final = state.stages[-1]
    weights = run_files.stage_dir(plan.stages[-1]) / "weights"
    return {
        "study": plan.study,
        "strategy": plan.strategy,
        "finished": state.finished,
        "epochs": state.epochs_done,
        "epochs_planned": plan.epochs,
        "metric": plan.metric,
        "metrics": final.final_metrics or final.last_metrics,
        "stages": [
            {
                "name": stage.name,
                "folder": str(run_files.stage_dir(stage)),
                "epochs": progress.epochs_done,
                "planned": stage.params.to_dict(),
                "trained_with": progress.params.to_dict(),
                "init": stage.init,
                "lr0": stage.lr0,
                "metrics": progress.final_metrics or progress.last_metrics,
            }
            for stage, progress in zip(plan.stages, state.stages)
        ],
        "restarts": state.restarts,
        "step_downs": [step.to_json() for step in state.step_downs],
        "batch_halvings": sum(1 for failure in state.failures if failure.cause == Cause.BATCH_HALVING),
        "failures": len(state.failures),
        "peak_mem_mb": state.peak_mem_mb,
        "budget_mb": state.budget_mb,
        "wall_s": state.wall_s,
        "weights": {"best": str(weights / "best.pt"), "last": str(weights / "last.pt")},
        "results_csv": str(weights.parent / "results.csv"),
        "config": str(run_files.config),
    }


def print_summary(summary: dict[str, Any], screen: Screen, as_json: bool) -> None:
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
    budget = f" of the {summary['budget_mb']:.0f} MiB budget" if summary["budget_mb"] else ""
    lines.append(f"Peak memory {summary['peak_mem_mb']:.0f} MiB{budget}; wall time {duration(summary['wall_s'])}.")
    for step in summary["step_downs"]:
        lines.append(
            f"  step-down in stage {step['stage']} after epoch {step['epochs_done']}: {Params.of(step['from'])} -> "
            f"{Params.of(step['to'])} ({step['why']})"
            + (f"; stage(s) {', '.join(map(str, step['capped']))} capped at it" if step.get("capped") else "")
        )
    if summary["batch_halvings"]:
        lines.append(f"  Ultralytics halved the batch {summary['batch_halvings']} time(s); each counted as out of memory.")
    lines.append(f"Summary: {summary['config'].replace('config.yaml', 'summary.json')}")
    screen.say("\n".join(lines), important=True)
