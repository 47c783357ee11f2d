"""`tuner probe`: create or continue the study, run its trials (tuner.study.search), then pick and hand on
the best stable config (best.yaml, the report, the dashboard notes, the summary).

A study remembers what it measures (tuner.config.identity), its device and budget: a run that asks
for something else is refused rather than mixed into it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import optuna

from tuner import __version__, files
from tuner.study import derive, inputs, limits, pruners, selection
from tuner.commands import probe_output
from tuner import config as configs
from tuner.study import workers as tuner_workers
from tuner.memory import device as devices
from tuner.errors import ConfigError
from tuner.memory.budget import MIB, describe_budget, parse_budget
from tuner.study.progress import Progress
from tuner.study.records import Best, StudyRecord
from tuner.errors import StudyFailed
from tuner.study.inputs import Inputs
from tuner.study.search import Search, enqueue_startup, startup_trials
from tuner.study.space import Params
from tuner.study.storage import default_study_name, open_storage, storage_url

MAX_RETRY = 2  # a trial orphaned by a killed tuner is run again at most this often


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
) -> int:
    """The whole `tuner probe`; returns the exit code (1 when no config is stable).

    First it maps where the memory limit lies (tuner.study.limits), once per study; with `limits_only` it stops there.
    Choices of the space the user left out are derived from the data first (tuner.study.derive).
    With `workers` > 1 it then starts that many workers in all on this machine (`argv` is their command line,
    tuner.study.workers): one per CUDA device where there are enough ("pinned"), else sharing this device's budget
    ("shared"). A `worker` (started so, with its kind) only runs trials: its starter writes best.yaml and the report.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tuner prints each trial's end itself
    device = devices.resolve(cfg.device)
    layout = tuner_workers.layout(device, workers, cfg.device, worker)
    shared = layout == "shared"
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    if shared:  # one device for all the workers: each trial gets its share of the budget
        budget //= workers
    data_yaml = inputs.dataset(cfg.data)
    space, space_notes = derive.resolve(cfg.space, data_yaml)
    cfg = dataclasses.replace(cfg, space=space)
    model = inputs.model(cfg.model, embedded=cfg.data is None)
    name = study_name or default_study_name(cfg.data, cfg.model, device.kind)
    files.check_writable(Path(studies_dir), "--studies-dir")  # the trials' logs go there, whatever the storage
    if not limits_only:
        files.check_writable(Path(results_dir), "--results-dir")
    url = storage_url(storage, studies_dir, name)
    record = _new_record(cfg, device, budget, model, data_yaml, space_from_data=bool(space_notes))
    study, created = open_study(name, url, cfg, record)
    progress = Progress(cfg.n_trials + cfg.probe.repeats, budget, cfg.metric_name, quiet=quiet)
    _say_start(progress, name, url, cfg, device, budget, record, space_notes, workers if shared else 1, worker)
    trials = Inputs(cfg, device, budget, data_yaml, model, Path(studies_dir) / name)
    found = _mapped_limits(study, trials, progress, queue_design=not limits_only, created=created)
    if worker:
        Search(study, trials, progress, found).run()
        return 0
    if limits_only:
        if as_json:
            print(json.dumps({"study": study.study_name, "budget_mb": record.budget_mb, **found.summary()}, indent=2))
        else:
            progress.say(limits.describe(found), important=True)
        return 0
    progress.say(limits.describe(found))
    _search_with_workers(Search(study, trials, progress, found), workers, argv, Path(studies_dir) / name, layout)
    return _finish(study, cfg, device, record, url, Path(results_dir), progress, as_json)


def _new_record(cfg, device, budget: int, model: str | Path, data_yaml: Path, space_from_data: bool) -> StudyRecord:
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


def _mapped_limits(
    study: optuna.Study, trials: Inputs, progress: Progress, queue_design: bool = True, created: bool = False
) -> limits.Limits:
    """The study's frontier and memory model: mapped by pre-flights on its first run, stored, then reused.
    One worker maps them while others wait (tuner.study.workers.Lease: the study's creator, when it is this run, takes
    it at once); it also queues the startup design.
    Raises StudyFailed (exit 1) when not even the smallest config fits."""
    lease = tuner_workers.Lease(study)
    said = False
    while not (stored := StudyRecord.of(study).limits):
        if lease.acquire(creator=created):
            with lease.held():
                if StudyRecord.of(study).limits:  # mapped by a worker whose lease ended as this one took it
                    continue
                found = limits.map_limits(trials, progress)
                if queue_design and any(entry.imgsz is not None for entry in found.frontier.entries):
                    enqueue_startup(study, trials.cfg, found)
                dataclasses.replace(StudyRecord.of(study), limits=found.to_dict()).save(study)
            break
        if not said:
            progress.say(f"Worker {lease.holder()} is mapping the memory limits; waiting for its result.")
            said = True
        time.sleep(tuner_workers.WAIT_POLL_S)
    else:
        found = limits.Limits.from_dict(stored)
        progress.say(f"Memory limits mapped before: {len(found.frontier.measurements)} pre-flight(s), stored in the study.")
    if all(entry.imgsz is None for entry in found.frontier.entries):
        raise StudyFailed(limits.smallest_needs(found))
    return found


def _finish(study, cfg, device, record: StudyRecord, url: str, results_dir: Path, progress: Progress, as_json: bool) -> int:
    """Choose the best stable config, record it on the study, and write best.yaml, the report and notes."""
    record = StudyRecord.of(study)  # as the search left it: kills from outside may have lowered the stable limit
    trials = study.get_trials(deepcopy=False)
    noise = selection.noise(trials)
    choice = selection.best_stable(trials, record.stable_limit_mb, noise.spread, record.budget_mb)
    best_yaml = results_dir / study.study_name / "best.yaml"
    best = None
    if choice is not None:
        settings = probe_output.train_settings_or_defaults(progress)
        probe_output.write_best_yaml(best_yaml, choice, cfg, device, study.study_name, record, settings)
        best = Best(choice.trial.number, Params.of(choice.params), choice.value, choice.peak_mb, choice.runs, str(best_yaml))
    record = dataclasses.replace(record, noise=noise, best=best)
    record.save(study)
    _write_report(study, results_dir, url, progress)
    hint = None
    if best is not None and not record.space_from_data:  # a derived space reaches the limit by itself
        hint = selection.room_to_grow(best.params.imgsz, best.peak_mem_mb, cfg.space.imgsz, record.stable_limit_mb)
    summary = probe_output.probe_summary(study.study_name, trials, record, best_yaml if best else None, hint)
    probe_output.print_probe_summary(summary, progress, as_json)
    return 0 if best is not None else 1


def _write_report(study: optuna.Study, results_dir: Path, url: str, progress: Progress) -> None:
    from tuner.review import dashboard, findings, report

    found = findings.read(study, results_dir, url)
    written = report.write_report(found, results_dir)
    dashboard.save_notes(found, url)
    progress.say(f"Report: {written.get('report.md', results_dir / study.study_name)}")


def open_study(name: str, url: str, cfg: configs.ProbeConfig, record: StudyRecord) -> tuple[optuna.Study, bool]:
    """Create the study, or continue it if what it measures has not changed; True when this call created it."""
    storage = open_storage(
        url, create=True, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period, max_retry=MAX_RETRY
    )
    if name in optuna.get_all_study_names(storage):
        stored = StudyRecord.of(optuna.load_study(study_name=name, storage=storage))
        _check_same_study(name, stored, record)
        if stored.outside_kill_mb is not None:  # a limit that kills from outside set holds for the rest of the study
            record = dataclasses.replace(record, outside_kill_mb=stored.outside_kill_mb,
                                         stable_limit_mb=min(record.stable_limit_mb, stored.stable_limit_mb))  # fmt: skip
    settings = dict(study_name=name, storage=storage, sampler=_sampler(cfg), pruner=pruners.make(cfg, record.stable_limit_mb))
    try:
        study, created = optuna.create_study(direction="maximize", **settings), True
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
        study, created = optuna.load_study(**settings), False
    study.set_metric_names([cfg.metric_name])
    record.save(study)
    return study, created


def _sampler(cfg: configs.ProbeConfig) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    # constant_liar: while other workers' trials run, TPE counts them as poor, so workers do not sample the same config
    return optuna.samplers.TPESampler(
        seed=cfg.seed, n_startup_trials=startup_trials(cfg), multivariate=True, constant_liar=True
    )


def _check_same_study(name: str, stored: StudyRecord, new: StudyRecord) -> None:
    if stored.config is None:
        return
    old_id, new_id = configs.identity(stored.config.to_dict()), configs.identity(new.config.to_dict())
    for key in old_id:
        if old_id[key] != new_id[key]:
            raise ConfigError(
                f"Study {name!r} was created with {key} = {_show(old_id[key])}, but this run asks for "
                f"{_show(new_id[key])}. Re-run with the study's settings, or pass --study-name for a new study."
            )
    for what, old, now in (("a memory budget of {} MiB", stored.budget_mb, new.budget_mb),
                           ("device {}", _card(stored), _card(new))):  # fmt: skip
        if old is not None and old != now:
            raise ConfigError(
                f"Study {name!r} was created with {what.format(old)}, but this run has {what.format(now)}. "
                "Re-run with the same --memory-budget/--device, or pass --study-name for a new study."
            )


def _card(record: StudyRecord) -> str | None:
    """The device a study measures on: `cuda:1` measures as `cuda:0` does when it is the same card model."""
    if record.device and record.device.startswith("cuda:"):
        return f"cuda ({record.device_name})"
    return record.device


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
