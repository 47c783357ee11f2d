"""Open a study: create it, or continue it when what it measures has not changed, and map its memory
limits once (the pre-flights of tuner.study.limits, under the lease of tuner.study.workers).

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

from tuner import config as configs
from tuner.data import sample as samples
from tuner.errors import ConfigError, NothingFits
from tuner.study import derive, limits, pruners
from tuner.study import workers as tuner_workers
from tuner.study.inputs import Inputs
from tuner.study.progress import Progress
from tuner.study.records import StudyRecord
from tuner.study.space import enqueue_startup, startup_trials
from tuner.study.storage import open_storage, sqlite_path

MAX_RETRY = 2  # a trial orphaned by a killed tuner is run again at most this often


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


def study_space(name: str, url: str, space: configs.Space, data_yaml: Path, probe_images: int) -> tuple[configs.Space, list[str]]:
    """The space a run of study `name` searches, and what to tell the user of it: the choices the user gave (a batch
    larger than a probe's images refused: tuner.study.derive.check_batches), the rest as the study derived them when
    it was created (`kept_space`), else derived from the data now."""
    derive.check_batches(space, data_yaml, probe_images)
    kept = kept_space(name, url, space)
    if kept is None:
        return derive.resolve(space, data_yaml, probe_images)
    return kept, [f"Search space as the study derived it from the data: imgsz {derive.span(kept.imgsz)}, "
                  f"batch {', '.join(map(str, kept.batch))}"]  # fmt: skip


def kept_space(name: str, url: str, space: configs.Space) -> configs.Space | None:
    """The space study `name` derived from its data when it was created, for a continued run that leaves the space
    to the data too (the choices left out of `space`): how tuner derives a space may have changed since, and a
    study keeps its space for life. None for a new study, or one whose space the user gave."""
    path = sqlite_path(url)
    if (space.imgsz is not None and space.batch is not None) or (path is not None and not path.exists()):
        return None
    storage = open_storage(url, create=False)
    if name not in optuna.get_all_study_names(storage):
        return None
    stored = StudyRecord.of(optuna.load_study(study_name=name, storage=storage))
    if stored.config is None or not stored.space_from_data:
        return None
    old = stored.config.space
    return dataclasses.replace(space, imgsz=space.imgsz or old.imgsz, batch=space.batch or old.batch)


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
    old_id, new_id = (_drawn(configs.identity(record.config.to_dict()), stored.sample) for record in (stored, new))
    differences = _differences(old_id, new_id)
    if differences:
        key, old, now = differences[0]
        flag = FLAGS.get((key, _show(old)))
        if key in ("probe.train_images", "probe.val_images"):
            flag = f"--probe-images {stored.config.probe.train_images},{stored.config.probe.val_images}"
        fix = f"Re-run with {flag}" if flag else "Re-run with the study's settings"
        raise ConfigError(
            f"Study {name!r} was created with {key} = {_show(old)}, but this run asks for {_show(now)}. "
            f"{fix}, or pass --study-name for a new study."
        )
    if stored.model_path and new.model_path and _starts_from(stored.model_path) != _starts_from(new.model_path):
        raise ConfigError(
            f"Study {name!r} trained {stored.model_path} ({_starts_from(stored.model_path)}), but this run trains "
            f"{new.model_path} ({_starts_from(new.model_path)}). Pass --study-name for a new study."
        )
    for what, old, now in (("a memory budget of {} MiB", stored.budget_mb, new.budget_mb),
                           ("device {}", _card(stored), _card(new))):  # fmt: skip
        if old is not None and old != now:
            raise ConfigError(
                f"Study {name!r} was created with {what.format(old)}, but this run has {what.format(now)}. "
                "Re-run with the same --memory-budget/--device, or pass --study-name for a new study."
            )


def _drawn(identity: dict[str, Any], sample: samples.Sample | None) -> dict[str, Any]:
    """`identity` with the sample sizes it asks for as the images a probe would use of the study's splits (`sample`,
    as stored): on splits smaller than both, 128 and 200 train images are the same whole split, and the same study."""
    if sample is None:
        return identity
    probe = dict(identity["probe"])
    for key, total in (("train_images", sample.train_total), ("val_images", sample.val_total)):
        if isinstance(probe.get(key), int):
            probe[key] = total if probe[key] <= 0 else min(probe[key], total)
    return {**identity, "probe": probe}


def _starts_from(model_path: str) -> str:
    """What a study's probes start from: weights (a .pt: the user's, or tuner's base checkpoint on the embedded data)
    or random init (a model YAML): on the embedded data yolov8s.yaml started from random init before it had a base
    checkpoint, and those trials measure something else."""
    return "weights" if Path(model_path).suffix.lower() == ".pt" else "random init"


def check_continues(name: str, url: str, record: StudyRecord) -> None:
    """Refuse now, before anything runs, a study that `open_study` would refuse (several models: a later model's
    study must not be refused after an earlier one has run). Nothing is created or changed."""
    from tuner.study.storage import sqlite_path

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return
    opened = open_storage(url, create=False)
    try:
        if name in optuna.get_all_study_names(opened):
            _check_same_study(name, StudyRecord.of(optuna.load_study(study_name=name, storage=opened)), record)
    finally:
        opened.engine.dispose()


def _card(record: StudyRecord) -> str | None:
    """The device a study measures on: `cuda:1` measures as `cuda:0` does when it is the same card model."""
    if record.device and record.device.startswith("cuda:"):
        return f"cuda ({record.device_name})"
    return record.device


FLAGS = {("probe.anneal", "false"): "--no-probe-anneal", ("probe.anneal", "true"): "--probe-anneal"}  # (key, stored)


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The keys whose values differ, named down to the setting (`probe.anneal`, not the whole `probe`)."""
    out = []
    for key in old:
        a, b = old[key], new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def mapped_limits(
    study: optuna.Study, trials: Inputs, progress: Progress, queue_design: bool = True, created: bool = False,
    ruled_out: tuple[limits.RuledOut, ...] = (),
) -> limits.Limits:
    """The study's frontier and memory model: mapped by pre-flights on its first run, stored, then reused.
    One worker maps them while others wait (tuner.study.workers.Lease; the study's creator, when it is this run,
    looks for it first); it also queues the startup design.
    Raises NothingFits (exit 1) when not even the smallest config fits."""
    lease = tuner_workers.Lease(study)
    said = False
    while not (stored := StudyRecord.of(study).limits):
        if lease.acquire(creator=created):
            with lease.held():
                found = _map(study, trials, progress, queue_design, ruled_out)
            if found is None:  # mapped by a worker whose lease ended as this one took it
                continue
            break
        if not said:
            progress.say(f"Worker {lease.holder()} is mapping the memory limits; waiting for its result.")
            said = True
        time.sleep(tuner_workers.WAIT_POLL_S)
    else:
        found = limits.Limits.from_dict(stored)
        progress.say(f"Memory limits mapped before: {len(found.frontier.measurements)} pre-flight(s), stored in the study.")
    if all(entry.imgsz is None for entry in found.frontier.entries):
        raise NothingFits(limits.smallest_needs(found))
    return found


def _map(study: optuna.Study, trials: Inputs, progress: Progress, queue_design: bool,
         ruled_out: tuple[limits.RuledOut, ...] = ()) -> limits.Limits | None:  # fmt: skip
    """Map the limits under the lease and store them, or None where another worker stored them meanwhile. Each
    pre-flight is stored as it finishes (StudyRecord.mapping), so a mapping that a dead worker left is continued.
    Kills from outside that stopped pre-flights at one peak lower the study's stable limit, as trials' kills do."""
    record = StudyRecord.of(study)
    if record.limits:
        return None

    def store(mapping: limits.Mapping) -> None:
        StudyRecord(mapping=mapping.to_dict()).save(study, "mapping")

    found = limits.map_limits(trials, progress, before=limits.Mapping.from_dict(record.mapping), store=store,
                              ruled_out=ruled_out)  # fmt: skip
    if queue_design and any(entry.imgsz is not None for entry in found.frontier.entries):
        enqueue_startup(study, trials.cfg, found)
    changed = ["limits", "mapping"]  # the mapping under way is cleared: the limits hold it all
    if found.outside_kill_mb is not None:
        changed += ["outside_kill_mb", "stable_limit_mb"]
    StudyRecord(limits=found.to_dict(), outside_kill_mb=found.outside_kill_mb,
                stable_limit_mb=round(found.stable_limit_mb, 1)).save(study, *changed)  # fmt: skip
    return found


def probe_sample(study: optuna.Study, data_yaml: Path, folder: Path, cfg: configs.ProbeConfig) -> samples.Sample:
    """The images every probe of the study trains and validates on: the sample stored on the study (drawn by its
    first run, so a continued study and every worker use the same), else drawn now into `folder` and stored."""
    stored = StudyRecord.of(study).sample
    if stored is not None and Path(stored.data_yaml).is_file():
        return stored
    sample = samples.make(data_yaml, folder, cfg.probe.train_images, cfg.probe.val_images, cfg.seed)
    StudyRecord(sample=sample).save(study, "sample")
    return sample
