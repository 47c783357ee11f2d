"""`tuner probe`: open the study (tuner.study.open), run its trials (tuner.study.search), then pick and hand on
the best stable config: best.yaml, the report, the dashboard notes, and the summary on the console (or as JSON).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna

from tuner import __version__, files
from tuner import config as configs
from tuner.config import ProbeConfig
from tuner.errors import TunerError
from tuner.memory import device as devices
from tuner.memory.budget import MIB, describe_budget, parse_budget
from tuner.memory.device import Device
from tuner.params import Params
from tuner.review import findings
from tuner.review import larger as larger_config
from tuner.study import cost, inputs, limits, probe_budget, selection, space, training_time
from tuner.study import workers as tuner_workers
from tuner.study.inputs import Inputs
from tuner.study.open import mapped_limits, open_study, probe_sample, study_space
from tuner.study.progress import Progress
from tuner.study.records import Best, StudyRecord
from tuner.study.search import Search
from tuner.study.space import startup_trials
from tuner.study.selection import Choice
from tuner.study.training_time import Prediction
from tuner.study.storage import default_study_name, legacy_study_name, storage_url, stored_config
from tuner.train import plan


def run_probe(
    cfg: configs.ProbeConfig,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    studies_dir: Path = Path("studies"),
    results_dir: Path = Path("results"),
    quiet: bool = False,
    as_json: bool = False,
    limits_only: bool = False,
    workers: int = 1,
    worker: str | None = None,
    argv: list[str] | None = None,
    summaries: list[dict[str, Any]] | None = None,
    ruled_out: tuple[limits.RuledOut, ...] = (),
) -> int:
    """The whole `tuner probe`; returns the exit code (1 when no config is stable).

    First it maps where the memory limit lies (tuner.study.limits), once per study; with `limits_only` it stops there.
    Choices of the space the user left out are derived from the data first (tuner.study.derive).
    With `workers` > 1 it then starts that many workers in all on this machine (`argv` is their command line,
    tuner.study.workers): one per CUDA device where there are enough ("pinned"), else sharing this device's budget
    ("shared"). A `worker` (started so, with its kind) only runs trials: its starter writes best.yaml and the report.
    Several models (`--model a.pt,b.pt`) are one study each (tuner.commands.probe_models), which runs this for each
    with `summaries`: the summary is added to it, and printed as text whatever `as_json`; `ruled_out` are the
    configs smaller models did not fit, which the pre-flights need not run.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tuner prints each trial's end itself
    device = devices.resolve(cfg.device)
    layout = tuner_workers.layout(device, workers, cfg.device, worker)
    shared = layout == "shared"
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    if shared:  # one device for all the workers: each trial gets its share of the budget
        budget //= workers
    data_yaml = inputs.dataset(cfg.data)
    model = inputs.model(cfg.model, embedded=cfg.data is None)
    name = study_name or default_name(cfg, device.kind, storage, Path(studies_dir))
    files.check_writable(Path(studies_dir), "--studies-dir")  # the trials' logs go there, whatever the storage
    if not limits_only:
        files.check_writable(Path(results_dir), "--results-dir")
    url = storage_url(storage, studies_dir, name)
    space, space_notes = study_space(name, url, cfg.space, data_yaml, cfg.probe.train_images)
    cfg = dataclasses.replace(cfg, space=space)
    record = new_record(cfg, device, budget, model, data_yaml, space_from_data=bool(space_notes))
    study, created = open_study(name, url, cfg, record)
    sample = probe_sample(study, data_yaml, Path(studies_dir) / name / "sample", cfg)
    progress = Progress(cfg.n_trials + cfg.probe.repeats, budget, cfg.metric_name, quiet=quiet)
    _say_start(progress, name, url, cfg, device, budget, record, space_notes, workers if shared else 1, worker)
    progress.say(sample.describe())
    trials = Inputs(cfg, device, budget, data_yaml, model, Path(studies_dir) / name, sample, workers if shared else 1,
                    training_time.planned_epochs())  # fmt: skip
    found = mapped_limits(study, trials, progress, queue_design=not limits_only, created=created, ruled_out=ruled_out)
    plan = None if limits_only else fit_plan(trials, found, probe_budget.Ran.of(study.get_trials(deepcopy=False)))
    if plan is not None:
        trials = dataclasses.replace(trials, cfg=fitted(trials.cfg, plan))
    if worker:
        Search(study, trials, progress, found, plan=plan).run()
        return 0
    if limits_only:
        return _print_limits(study, record, found, progress, as_json, summaries)
    _announce(study, trials, found, plan, progress)
    search = Search(study, trials, progress, found, plan=plan)
    _search_with_workers(search, workers, argv, Path(studies_dir) / name, layout)
    return _finish(study, cfg, device, record, url, Path(results_dir), progress, as_json, summaries)


def _print_limits(study: optuna.Study, record: StudyRecord, found: limits.Limits, progress: Progress, as_json: bool,
                  summaries: list[dict[str, Any]] | None = None) -> int:  # fmt: skip
    """`--limits-only`: what the pre-flights found, as text or JSON (one model of several: as text, and added to
    `summaries`)."""
    if summaries is not None:
        summaries.append({"study": study.study_name, "stable_limit_mb": found.stable_limit_mb,
                          "frontier": found.frontier.to_list()})  # fmt: skip
        as_json = False
    if as_json:
        print(json.dumps({"study": study.study_name, "budget_mb": record.budget_mb, **found.summary()}, indent=2))
    else:
        progress.say(limits.describe(found), important=True)
    return 0


def _announce(study: optuna.Study, trials: Inputs, found: limits.Limits, plan: probe_budget.Plan, progress: Progress) -> None:
    """Before the first trial: the limits, what a probe costs, and the plan (stored on the study)."""
    progress.say(limits.describe(found))
    progress.say(_probe_costs(trials, found))
    progress.say(plan.describe(), important=bool(plan.cut))
    StudyRecord(probe_plan=plan.to_json()).save(study, "probe_plan")
    progress.total = plan.n_trials + plan.repeats


def _probe_costs(trials: Inputs, found: limits.Limits) -> str:
    """What a probe will cost, as the pre-flights' speeds predict it, from the smallest config to the frontier's largest."""
    speed = cost.fit_speed(found.frontier.measurements)
    if speed is None:
        return f"Probe timeout: {cost.trial_timeout(trials.cfg.probe.trial_timeout, None):.0f} s (no pre-flight timed its batches)."
    largest = [Params(entry.imgsz, entry.batch, 1.0, 0.0) for entry in found.frontier.entries if entry.imgsz is not None]
    smallest = Params(min(trials.cfg.space.imgsz), min(trials.cfg.space.batch), 1.0, 0.0)
    seconds = [trials.probe_seconds(params, speed) for params in (smallest, *largest)]
    timeout = ("each gets 4x its prediction as its timeout, at least 120 s" if trials.cfg.probe.trial_timeout == cost.AUTO
               else f"timeout {float(trials.cfg.probe.trial_timeout):.0f} s")  # fmt: skip
    return (f"A probe takes about {min(seconds):.0f}-{max(seconds):.0f} s ({trials.cfg.probe.epochs} epoch(s)), "
            f"as the pre-flights' speeds predict it; {timeout}.")


def fit_plan(trials: Inputs, found: limits.Limits, ran: probe_budget.Ran = probe_budget.Ran()) -> probe_budget.Plan:
    """The study's probes fitted to `probe.budget` by their predicted times (tuner.study.probe_budget), after the
    pre-flights' seconds and what earlier runs of the study probed (`ran`, at the seconds it took): the startup
    design's cells each at its pre-flights' prediction over the sample; a share is of the full training (train-best's
    epochs over the whole splits) of the design's median cell, until the search has a best config of its own."""
    cfg, speed = trials.cfg, cost.fit_speed(found.frontier.measurements)
    design = [Params(cell["imgsz"], cell["batch"], 1.0, 0.0) for cell in
              space.startup_design(cfg.space, startup_trials(cfg), found.frontier.largest())]  # fmt: skip
    if speed is None or not design:
        return probe_budget.fit(cfg.probe.budget, [], cfg.n_trials, cfg.probe.repeats, cfg.probe.race,
                                preflight_s=found.seconds, ran=ran)  # fmt: skip
    median = sorted(design, key=lambda params: (params.imgsz, params.batch))[len(design) // 2]
    reference = None
    if trials.sample is not None:
        seconds = cost.probe_seconds(median, speed, trials.sample.train_total, trials.sample.val_total, trials.planned_epochs)
        reference = (f"{median.imgsz}/{median.batch}", round(seconds, 1), trials.planned_epochs)
    design_s = [trials.probe_seconds(params, speed) for params in design]
    return probe_budget.fit(cfg.probe.budget, design_s, cfg.n_trials, cfg.probe.repeats, cfg.probe.race, reference,
                            found.seconds, ran)  # fmt: skip


def fitted(cfg: ProbeConfig, plan: probe_budget.Plan) -> ProbeConfig:
    """`cfg` with the trials, repeats and race runs `plan` keeps."""
    probe = dataclasses.replace(cfg.probe, repeats=plan.repeats, race=plan.race)
    return dataclasses.replace(cfg, n_trials=plan.n_trials, probe=probe)


def new_record(cfg, device, budget: int, model: str | Path, data_yaml: Path, space_from_data: bool) -> StudyRecord:
    """What this run records on its study: its settings, device, budget and stable limit, model and data."""
    return StudyRecord(
        config=cfg,
        device=device.torch,
        device_name=device.name,
        usable_memory_mb=round(device.total_memory / MIB, 1),
        budget_mb=round(budget / MIB, 1),
        stable_limit_mb=round(budget * (1 - cfg.safety_margin) / MIB, 1),
        model_path=str(model),
        data_path=str(data_yaml),
        tuner_version=__version__,
        space_from_data=space_from_data,
    )


def _say_start(progress, name, url, cfg, device, budget, record, space_notes, sharing: int, worker) -> None:
    """What the run works on: the study, the device and budget (split between `sharing` workers), notes on the space."""
    described = describe_budget(cfg.memory_budget, budget * sharing, device.total_memory)
    if sharing > 1:
        described += f", shared by {sharing} workers: {budget / MIB:.0f} MiB each"
    progress.say(
        f"Study {name!r} in {url}\n"
        f"Device {device.torch} ({device.name}); memory budget {described}, stable below {record.stable_limit_mb:.0f} MiB"
    )
    for note in space_notes:
        progress.say(note)
    if sharing > 1 and device.kind == "cpu" and worker is None:
        progress.say(f"Note: {sharing} workers share this CPU, and one training already uses every core: each trial "
                     "runs several times slower (two on 2 cores: over 7x, README). --workers pays on a GPU, or one "
                     "worker per CUDA card.", important=True)  # fmt: skip


def _search_with_workers(search: Search, workers: int, argv: list[str] | None, folder: Path, layout: str) -> None:
    """Run the search here, with `workers` - 1 more workers of this command started beside it; wait for them all."""
    others = []
    if workers > 1:
        others = tuner_workers.spawn(argv or [], workers - 1, folder / "workers", layout)
        search.progress.say(f"Started {workers - 1} more worker(s) on this machine; their logs: {folder / 'workers'}")
    try:
        search.run()
    finally:
        for process, log in others:
            if process.wait() != 0:
                search.progress.say(f"A worker ended with exit code {process.returncode}; see {log}", important=True)


def _finish(study, cfg, device, record: StudyRecord, url: str, results_dir: Path, progress: Progress, as_json: bool,
            summaries: list[dict[str, Any]] | None = None) -> int:  # fmt: skip
    """Choose the best stable config, record it on the study, and write best.yaml, the report and notes."""
    record = StudyRecord.of(study)  # as the search left it: kills from outside may have lowered the stable limit
    trials = study.get_trials(deepcopy=False)
    noise = selection.noise(trials)
    slow = selection.too_slow(trials, record.stable_limit_mb, findings.read(study, results_dir, url).predicted, cfg.train_time)
    choice = selection.best_stable(trials, record.stable_limit_mb, noise.spread, record.budget_mb, exclude=frozenset(slow))
    time_note = _train_time_note(cfg.train_time, slow, trials, record, noise.spread, choice)
    best_yaml = results_dir / study.study_name / "best.yaml"
    best, settings = None, None
    if choice is not None:
        settings = train_settings_or_defaults(progress)
        predicted = selection.pick_prediction(trials, choice.trial.number, settings.epochs)
        write_best_yaml(best_yaml, choice, cfg, device, study.study_name, record, settings, predicted)
        best = Best(choice.trial.number, Params.of(choice.params), choice.value, choice.peak_mb, choice.runs, str(best_yaml))
    record = dataclasses.replace(record, noise=noise, best=best)
    record.save(study, "noise", "best")
    found = findings.read(study, results_dir, url)  # with the pick recorded
    larger = _write_larger(found, cfg, device, record, choice, settings)
    _write_report(found, results_dir, url, progress)
    hint = None
    if best is not None and not record.space_from_data:  # a derived space reaches the limit by itself
        hint = selection.room_to_grow(best.params.imgsz, best.peak_mem_mb, cfg.space.imgsz, record.stable_limit_mb)
    summary = probe_summary(study.study_name, trials, record, best_yaml if best else None, hint)
    summary["train_time"] = time_note
    summary["larger"] = None if larger is None else larger_summary(larger)
    if summaries is not None:  # one model of several (tuner.commands.probe_models): its limits set beside the others'
        frontier = (record.limits or {}).get("frontier")
        summaries.append({**summary, "stable_limit_mb": record.stable_limit_mb, "frontier": frontier})
        as_json = False
    print_probe_summary(summary, progress, as_json, next_step=summaries is None)  # several: the pick across them says
    return 0 if best is not None else 1


def _train_time_note(limit_s: float | None, slow: dict[tuple, float], trials, record: StudyRecord, spread: float | None,
                     choice: Choice | None) -> dict[str, Any] | None:  # fmt: skip
    """What the training-time budget did to the pick: which stable configs it left out, and what the most accurate
    of them, or (when nothing fits) the fastest, would take."""
    if not limit_s:
        return None
    budget = training_time.minutes(limit_s)
    unbounded = selection.best_stable(trials, record.stable_limit_mb, spread, record.budget_mb)
    none_fit = choice is None and bool(slow)
    if none_fit:
        key, seconds = min(slow.items(), key=lambda item: item[1])
        line = (f"No stable config trains within the training time of {budget}: the fastest, {Params(*key)}, is "
                f"predicted at {training_time.minutes(seconds)}. Raise --train-time or plan fewer epochs "
                "(configs/train.yaml), then re-run.")  # fmt: skip
    elif unbounded is not None and choice is not None and unbounded.trial.number != choice.trial.number:
        seconds = slow.get(Params.of(unbounded.params).key)
        line = (f"Training time {budget}: {Params.of(unbounded.params)} ({unbounded.value:.4f}) would train for about "
                f"{training_time.minutes(seconds or 0)}; the pick is the most accurate stable config predicted to fit.")  # fmt: skip
    else:
        line = f"Training time {budget}: the pick is predicted to fit; {len(slow)} stable config(s) would not."
    return {"limit_s": limit_s, "over": len(slow), "none_fit": none_fit, "line": line}


def _write_larger(found: findings.Findings, cfg: ProbeConfig, device: Device, record: StudyRecord, pick: Choice | None,
                  settings: configs.TrainSettings | None) -> larger_config.Larger | None:  # fmt: skip
    """larger.yaml beside best.yaml (written with `settings`, as best.yaml was for the `pick`), where the data is many
    times the probes' sample and a stable config at a larger imgsz than the pick ran (tuner.review.larger); an earlier
    study's file is removed where there is none now."""
    larger = larger_config.of(found) if pick is not None and settings is not None else None
    path = found.results_dir / found.study_name / larger_config.LARGER_YAML
    if larger is None:
        path.unlink(missing_ok=True)
        return None
    config = larger.config
    choice = Choice(trial=config.first, value=config.value, runs=config.runs, peak_mb=config.peak_mb,
                    best_value=pick.best_value, spread=record.noise.spread)  # fmt: skip
    predicted = selection.pick_prediction(found.trials, config.first.number, settings.epochs)
    write_best_yaml(path, choice, cfg, device, found.study_name, record, settings, predicted,
                    title=f"Study {found.study_name!r}: the most accurate stable config at a larger imgsz than its pick",
                    train_it=larger.command)  # fmt: skip
    return larger


def larger_summary(larger: larger_config.Larger) -> dict[str, Any]:
    config = larger.config
    return {"trial": config.first.number, "params": Params.of(config.first.params).to_dict(), "value": config.value,
            "train_s_predicted": larger.seconds, "yaml": str(larger.yaml_path), "command": larger.command,
            "line": larger.describe()}  # fmt: skip


def _write_report(found: findings.Findings, results_dir: Path, url: str, progress: Progress) -> None:
    from tuner.review import dashboard, report

    written = report.write_report(found, results_dir)
    dashboard.save_notes(found, url)
    progress.say(f"Report: {written.get('report.md', results_dir / found.study_name)}")


def write_best_yaml(
    path: Path, choice: Choice, cfg: ProbeConfig, device: Device, name: str, study: StudyRecord,
    settings: configs.TrainSettings, predicted: Prediction | None = None, title: str | None = None,
    train_it: str | None = None,
) -> None:
    """The best stable config as the Ultralytics training arguments train-best would use, with what it
    scored in a comment header: `yolo train cfg=best.yaml` trains what the probe measured. Its full training's
    predicted time (`predicted`) is a comment too, which train-best reads back (tuner.study.training_time)."""
    params = Params.of(choice.params)
    spread = f", noise +/-{choice.spread:.3f}" if choice.spread is not None else ""
    header = [
        f"{title or f'Best stable config of study {name!r}'} (tuner {__version__}).",
        f"{cfg.metric_name} {choice.value:.4f} (mean of {choice.runs} probe run(s){spread}; best of any config "
        f"{choice.best_value:.4f}), trial {choice.trial.number}.",
        f"Peak memory {choice.peak_mb:.0f} MiB of the {study.budget_mb:.0f} MiB budget on {device.torch} "
        f"(stable limit {study.stable_limit_mb:.0f} MiB).",
        f"Train it: {train_it or f'tuner train-best --study-name {name}'}",
        "These are the Ultralytics training arguments train-best uses for a single-stage run of "
        f"{settings.epochs} epochs: yolo train cfg=<this file> trains the same way.",
        *(training_time.comment_lines(predicted) if predicted is not None else []),
    ]
    arguments = plan.best_yaml_arguments(params, cfg.probe.optimizer, cfg.probe.lr0, device, settings)
    body = {"model": study.model_path, "data": study.data_path, "device": device.ultralytics, **arguments}
    files.write_yaml(path, body, header)


def train_settings_or_defaults(progress: Progress) -> configs.TrainSettings:
    """What train-best would run with from this folder (configs/train.yaml, if here); the defaults if it is malformed."""
    try:
        return configs.load_train(None, {})
    except TunerError as exc:
        progress.say(f"Warning: {exc} best.yaml uses the default train settings instead.", important=True)
        return configs.default_train_settings()


def default_name(cfg, device_kind: str, storage: str | None, studies_dir: Path) -> str:
    """The default study name; a study of the same data and model stored under the name tuner gave before
    (`data-best-cpu`) goes on under it, while no study has the new one (another dataset's old study is left alone)."""
    name = default_study_name(cfg.data, cfg.model, device_kind)
    legacy = legacy_study_name(cfg.data, cfg.model, device_kind)
    if legacy == name or stored_config(name, storage, studies_dir) is not None:
        return name
    old = stored_config(legacy, storage, studies_dir)
    if old is not None and (old.get("data"), old.get("model")) == (cfg.data, cfg.model):
        return legacy
    return name


def probe_summary(study_name: str, trials, record: StudyRecord, best_yaml: Path | None, hint: str | None) -> dict[str, Any]:
    """The end of a probe in numbers: trials per outcome (counted as report.md and `tuner report --json` count
    them), the noise, the best stable config."""
    best = record.best
    predicted = None if best is None else selection.pick_prediction(trials, best.trial, training_time.planned_epochs())
    spent = probe_budget.spent(trials) + float((record.limits or {}).get("seconds") or 0.0)  # the pre-flights too
    return {
        "study": study_name,
        "counts": findings.count_outcomes(trials),
        "noise": record.noise.spread,
        "best": None
        if best is None
        else {
            "trial": best.trial,
            "params": best.params.to_dict(),
            "value": best.value,
            "peak_mem_mb": best.peak_mem_mb,
            "best_yaml": str(best_yaml),
            "train_predicted": None if predicted is None else predicted.to_json(),
        },
        "hint": hint,
        "sample": None if record.sample is None else record.sample.to_dict(),
        "plan": record.probe_plan,
        "cost": cost_summary(spent, predicted),
    }


def cost_summary(spent_s: float, predicted: training_time.Prediction | None) -> dict[str, Any]:
    """What the probe spent (its trials and pre-flights) against the pick's predicted full training."""
    training_s = None if predicted is None else predicted.seconds
    return {"probe_s": round(spent_s, 1), "training_s": training_s, "line": probe_budget.cost_line(spent_s, training_s)}


def print_probe_summary(summary: dict[str, Any], progress: Progress, as_json: bool, next_step: bool = True) -> None:
    """The study's summary, as text or JSON; `next_step`: end the pick's line with the train-best command (one model
    of several leaves that to the pick across them)."""
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    counts = ", ".join(f"{count} {outcome}" for outcome, count in summary["counts"].items() if count)
    lines = [f"Study {summary['study']}: {counts}."]
    if summary["noise"] is not None:
        lines.append(f"Noise: repeated configs differ by {summary['noise']:.3f} on average.")
    best = summary["best"]
    too_slow = (summary.get("train_time") or {}).get("none_fit")  # then the training time's line below says why
    if best is None and not too_slow:
        lines.append(
            "No stable config: every trial ran out of memory, failed or went over the stable limit. "
            "Lower the imgsz/batch choices or raise --memory-budget, then re-run."
        )
    elif best is not None:
        lines.append(
            f"Best stable config: {Params.of(best['params'])} -> {best['value']:.4f}, "
            f"peak {best['peak_mem_mb']:.0f} MiB (trial {best['trial']})."
        )
        predicted = Prediction.from_json(best.get("train_predicted"))
        if predicted is not None:
            lines.append(f"Predicted full training: {predicted.describe()} (as its probe timed it).")
        next_line = f" Next: tuner train-best --study-name {summary['study']}" if next_step else ""
        lines.append(f"Written to {best['best_yaml']}.{next_line}")
        if summary.get("hint"):
            lines.append(f"Note: {summary['hint']}")
        larger = summary.get("larger")
        if larger:
            lines.append(f"Note: {larger['line']} Written to {larger['yaml']}: {larger['command']}")
    if summary.get("train_time"):
        lines.append(summary["train_time"]["line"])
    lines.append(summary["cost"]["line"])
    progress.say("\n".join(lines), important=True)
