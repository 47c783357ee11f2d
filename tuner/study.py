"""`tuner probe`: create or continue the study, run the trials, pick and write the best stable config."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner import __version__, frontier, inputs, selection, space
from tuner import config as configs
from tuner import device as devices
from tuner.errors import ConfigError, TunerError
from tuner.memory import MB, parse_budget
from tuner.progress import Progress, describe
from tuner.storage import default_study_name, open_storage, storage_url
from tuner.trial import run_probe_process
from tuner.yamlio import write_yaml_atomic

MAX_RETRY = 2  # a trial orphaned by a killed tuner is run again at most this often
SAME_ERROR_STOP = 2  # stop when the first trials of a run all fail with the same message
MAX_INFERRED_IN_A_ROW = 30  # the sampler keeps proposing configs known not to fit: the space is used up


class ProbeFailed(Exception):
    """A trial ended in an error that is not memory: the trial FAILs and the study goes on."""


class StudyFailed(TunerError):
    """Every trial failed the same way; going on would burn the whole budget."""

    exit_code = 1


def run_probe(args: argparse.Namespace) -> int:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tuner prints each trial's end itself
    cfg = configs.load(args.config, overrides_from_args(args))
    device = devices.resolve(cfg.device)
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    limit = budget * (1 - cfg.safety_margin)
    data_yaml = inputs.dataset(cfg.data)
    model = inputs.model(cfg.model, embedded=cfg.data is None)
    name = args.study_name or default_study_name(cfg.data, cfg.model, device.kind)
    url = storage_url(args.storage, args.studies_dir, name)
    study_attrs = {
        "config": cfg.to_dict(),
        "device": device.torch,
        "device_name": device.name,
        "usable_memory_mb": round(device.total_memory / MB, 1),
        "budget_mb": round(budget / MB, 1),
        "stable_limit_mb": round(limit / MB, 1),
        "model_path": str(model),
        "data_path": str(data_yaml),
        "tuner_version": __version__,
    }
    study = open_study(name, url, cfg, study_attrs)
    progress = Progress(cfg.n_trials + cfg.probe.repeats, budget, cfg.metric_name, quiet=args.quiet)
    progress.say(
        f"Study {name!r} in {url}\n"
        f"Device {device.torch} ({device.name}); memory budget {budget / MB:.0f} MB, "
        f"stable below {limit / MB:.0f} MB"
    )
    runner = _Runner(study, cfg, device, budget, data_yaml, model, Path(args.studies_dir) / name, progress)
    runner.run()

    trials = study.get_trials(deepcopy=False)
    spread = selection.noise(trials)
    study.set_user_attr("noise", spread)
    choice = selection.best_stable(trials, limit / MB, spread["spread"], budget / MB)
    results_dir = Path(args.results_dir) / name
    best_yaml = results_dir / "best.yaml"
    if choice is not None:
        write_best(best_yaml, choice, cfg, device, model, data_yaml, name, study_attrs)
        study.set_user_attr(
            "best",
            {
                "trial": choice.trial.number,
                "params": choice.params,
                "value": choice.value,
                "runs": choice.runs,
                "peak_mem_mb": choice.peak_mb,
                "best_yaml": str(best_yaml),
            },
        )
    _write_report(study, Path(args.results_dir), url, progress)
    summary = summarize(study, choice, best_yaml if choice else None, spread)
    if choice is not None:
        summary["hint"] = selection.room_to_grow(
            choice.params["imgsz"], choice.peak_mb, cfg.space.imgsz, limit / MB
        )
    _print_summary(summary, args, progress)
    return 0 if choice is not None else 1


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user passed, nested like the config file."""
    top = {
        "data": args.data,
        "model": args.model,
        "device": args.device,
        "memory_budget": args.memory_budget,
        "n_trials": args.n_trials,
        "timeout": args.timeout,
        "safety_margin": args.safety_margin,
        "seed": args.seed,
    }
    space_flags = {
        "imgsz": args.imgsz and configs.parse_list(args.imgsz, "--imgsz", int),
        "batch": args.batch and configs.parse_list(args.batch, "--batch", int),
        "mosaic": args.mosaic and configs.parse_list(args.mosaic, "--mosaic", float),
        "mixup": args.mixup and configs.parse_list(args.mixup, "--mixup", float),
    }
    probe_flags = {
        "epochs": args.probe_epochs,
        "fraction": args.probe_fraction,
        "trial_timeout": args.trial_timeout,
        "repeats": args.repeats,
    }
    out: dict[str, Any] = {key: value for key, value in top.items() if value is not None}
    if args.memory_budget is not None:
        out["memory_budget"] = args.memory_budget
    for section, flags in (("space", space_flags), ("probe", probe_flags)):
        passed = {key: value for key, value in flags.items() if value is not None}
        if passed:
            out[section] = passed
    return out


def open_study(name: str, url: str, cfg: configs.ProbeConfig, attrs: dict[str, Any]) -> optuna.Study:
    """Create the study, or continue it if what it measures has not changed."""
    storage = open_storage(
        url, create=True, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period, max_retry=MAX_RETRY
    )
    existing = {summary.study_name: summary for summary in optuna.get_all_study_summaries(storage)}
    if name in existing:
        _check_same_study(name, existing[name].user_attrs, attrs)
    sampler = _sampler(cfg)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if cfg.pruner == "median" else None
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=sampler,
        pruner=pruner or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    study.set_metric_names([cfg.metric_name])
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def startup_trials(cfg: configs.ProbeConfig) -> int:
    """Trials before TPE models the results: the startup design (see space.startup_design)."""
    return max(2, min(len(cfg.space.imgsz), cfg.n_trials // 2))


def _sampler(cfg: configs.ProbeConfig) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup_trials(cfg), multivariate=True)


def _check_same_study(name: str, stored: dict[str, Any], new: dict[str, Any]) -> None:
    if "config" not in stored:
        return
    old_id, new_id = configs.identity(stored["config"]), configs.identity(new["config"])
    for key in (*old_id.keys(),):
        if old_id[key] != new_id[key]:
            raise ConfigError(
                f"Study {name!r} was created with {key} = {_show(old_id[key])}, but this run asks for "
                f"{_show(new_id[key])}. Re-run with the study's settings, or pass --study-name for a new study."
            )
    for key, what in (("budget_mb", "a memory budget of {} MB"), ("device", "device {}")):
        if key in stored and stored[key] != new[key]:
            raise ConfigError(
                f"Study {name!r} was created with {what.format(stored[key])}, but this run has "
                f"{what.format(new[key])}. Re-run with the same --memory-budget/--device, or pass --study-name "
                "for a new study."
            )


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class _Runner:
    """Runs the main trials, then the noise repeats, until the study has what it was asked for."""

    def __init__(self, study, cfg, device, budget, data_yaml, model, trials_dir, progress):
        self.study = study
        self.cfg = cfg
        self.device = device
        self.budget = budget
        self.data_yaml = data_yaml
        self.model = model
        self.trials_dir = trials_dir
        self.progress = progress
        self.first_number: int | None = None
        self.failure: str | None = None
        self.inferred_in_a_row = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.cfg.timeout if self.cfg.timeout else None
        if not self.study.get_trials(deepcopy=False):
            for params in space.startup_design(self.cfg.space, startup_trials(self.cfg)):
                self.study.enqueue_trial(params)
        done = self._main_trials_done()
        if done:
            self.progress.say(f"Continuing: {done} of {self.cfg.n_trials} trials done.")
        # Inferred OOMs cost no training and do not count, so go round until n_trials really ran.
        while not self.failure and (remaining := self.cfg.n_trials - self._main_trials_done()) > 0:
            if deadline is not None and time.monotonic() >= deadline:
                return
            self._optimize(remaining, deadline)
        if self.failure:
            raise StudyFailed(self.failure)
        if deadline is None or time.monotonic() < deadline:
            self._enqueue_repeats()
            waiting = len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            self._optimize(waiting, deadline)

    def _main_trials_done(self) -> int:
        return sum(1 for t in self.study.get_trials(deepcopy=False) if _counts(t) and "repeat_of" not in t.user_attrs)

    def _optimize(self, n_trials: int, deadline: float | None) -> None:
        if n_trials <= 0:
            return
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.study.optimize(
            self.objective,
            n_trials=n_trials,
            timeout=timeout,
            catch=(ProbeFailed,),
            callbacks=[self._stop_on_repeated_errors],
            gc_after_trial=False,
        )

    def _enqueue_repeats(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        repeated = {t.user_attrs["repeat_of"] for t in trials if "repeat_of" in t.user_attrs}
        needed = self.cfg.probe.repeats - len(repeated)
        if needed <= 0:
            return
        limit_mb = self.budget * (1 - self.cfg.safety_margin) / MB
        candidates = sorted(
            (t for t in trials if selection.is_stable(t, limit_mb) and "repeat_of" not in t.user_attrs),
            key=lambda t: -t.value,
        )
        configs_repeated = {space.config_key(t.params) for t in trials if t.number in repeated}
        for original in candidates:
            if needed <= 0:
                break
            if space.config_key(original.params) in configs_repeated:
                continue  # one repeat per config: TPE may have sampled the same config twice
            configs_repeated.add(space.config_key(original.params))
            self.study.enqueue_trial(original.params, user_attrs={"repeat_of": original.number})
            needed -= 1

    def objective(self, trial: optuna.Trial) -> float:
        if self.first_number is None:
            self.first_number = trial.number
        params = space.suggest(trial, self.cfg.space)
        repeat_of = trial.user_attrs.get("repeat_of")
        seed = self.cfg.seed + trial.number
        for key, value in (("seed", seed), ("device", self.device.torch)):
            trial.set_user_attr(key, value)
        note = f" (repeat of trial {repeat_of})" if repeat_of is not None else ""
        self.progress.trial_start(trial.number, params, note)

        source = frontier.inferred_oom(params, self.study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        if source is not None:
            reason = (
                f"inferred: imgsz {source.params['imgsz']} / batch {source.params['batch']} "
                f"ran out of memory in trial {source.number}"
            )
            inferred = {"outcome": "oom", "oom_reason": reason, "oom_cause": "inferred", "inferred_from": source.number}
            for key, value in inferred.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("stable", False)
            self.progress.trial_end("oom", None, None, reason, counted=False)
            self.inferred_in_a_row += 1
            if self.inferred_in_a_row >= MAX_INFERRED_IN_A_ROW:
                self.failure = (
                    f"The sampler proposed {self.inferred_in_a_row} configs in a row that are known not to fit "
                    "the memory budget. Lower the imgsz/batch choices or raise --memory-budget, then re-run."
                )
                self.study.stop()
            raise optuna.TrialPruned(reason)
        self.inferred_in_a_row = 0

        def on_epoch(record: dict[str, Any]) -> bool:
            trial.report(record["value"], record["epoch"])
            self.progress.epoch(record, self.cfg.probe.epochs, record.get("peak_mb"))
            return repeat_of is None and trial.should_prune()

        spec = probe_spec(self.cfg, self.device, self.budget, self.data_yaml, self.model, params, seed)
        trial_dir = self.trials_dir / f"trial-{trial.number:04d}"
        out = run_probe_process(spec, trial_dir, self.device, self.budget, self.cfg.probe.trial_timeout, on_epoch)
        limit_mb = self.budget * (1 - self.cfg.safety_margin) / MB
        attrs = {
            "outcome": out.outcome,
            "peak_mem_mb": out.peak_mb,
            "peak_rss_mb": out.peak_rss_mb,
            "peak_device_mb": out.peak_device_mb,
            "duration_s": out.duration_s,
            "epochs_done": out.epochs_done,
            "batch_used": out.batch_used,
            "imgsz_used": out.imgsz_used,
            "log": str(out.log),
            "stable": out.outcome == "ok" and out.peak_mb <= limit_mb,
        }
        if out.outcome == "oom":
            attrs["oom_reason"] = out.reason
            attrs["oom_cause"] = out.cause
        elif out.outcome == "error":
            attrs["error"] = out.reason
        elif out.outcome == "pruned":
            attrs["pruned_reason"] = out.reason
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self.progress.trial_end(out.outcome, out.value, out.peak_mb, out.reason)
        if out.outcome == "ok":
            return out.value
        if out.outcome in ("oom", "pruned"):
            raise optuna.TrialPruned(out.reason)
        tail = out.log_tail()
        self.progress.say(f"  trial {trial.number} failed: {out.reason}\n  log {out.log}:\n" + _indent(tail))
        raise ProbeFailed(out.reason)

    def _stop_on_repeated_errors(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if self.first_number is None:
            return
        ours = [t for t in study.get_trials(deepcopy=False) if t.number >= self.first_number and t.state.is_finished()]
        errors = {t.user_attrs.get("error") for t in ours}
        if len(ours) >= SAME_ERROR_STOP and all(t.state == TrialState.FAIL for t in ours) and len(errors) == 1:
            message = errors.pop() or "unknown error"
            log = frozen.user_attrs.get("log", "")
            self.failure = (
                f"The first {len(ours)} trials all failed with the same error: {message}. "
                f"Stopped early instead of repeating it; see {log} and fix the cause, then re-run."
            )
            study.stop()


def probe_spec(cfg, device, budget: int, data_yaml: Path, model, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """What one probe trial process is told to do (see tuner.probe)."""
    return {
        "model": str(model),
        "data": str(data_yaml),
        "device": device.ultralytics,
        "device_kind": device.kind,
        "budget": budget,
        "params": params,
        "probe": {
            "epochs": cfg.probe.epochs,
            "fraction": cfg.probe.fraction,
            "optimizer": cfg.probe.optimizer,
            "lr0": cfg.probe.lr0,
            "warmup_epochs": cfg.probe.warmup_epochs,
        },
        "seed": seed,
        "workers": 0 if device.kind == "cpu" else 2,
        "metric": cfg.metric,
    }


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial counts towards n_trials.

    An orphan failed by its heartbeat does not (it is retried), nor an inferred OOM (it never ran).
    """
    if trial.user_attrs.get("oom_cause") == "inferred":
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "outcome" in trial.user_attrs


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def write_best(path, choice, cfg, device, model, data_yaml, name, attrs) -> None:
    params = choice.params
    spread = f", noise +/-{choice.spread:.3f}" if choice.spread is not None else ""
    header = [
        f"Best stable config of study {name!r} (tuner {__version__}).",
        f"{cfg.metric_name} {choice.value:.4f} (mean of {choice.runs} probe run(s){spread}; best of any config "
        f"{choice.best_value:.4f}), trial {choice.trial.number}.",
        f"Peak memory {choice.peak_mb:.0f} MB of the {attrs['budget_mb']:.0f} MB budget on {device.torch} "
        f"(stable limit {attrs['stable_limit_mb']:.0f} MB).",
        f"Train it: tuner train-best --study-name {name}",
        "These are Ultralytics training arguments: yolo train cfg=<this file> also works.",
    ]
    body = {
        "model": str(model),
        "data": str(data_yaml),
        "imgsz": params["imgsz"],
        "batch": params["batch"],
        "mosaic": params["mosaic"],
        "mixup": params["mixup"],
        "device": device.ultralytics,
        "workers": 0 if device.kind == "cpu" else 2,
        "optimizer": cfg.probe.optimizer,
        "lr0": cfg.probe.lr0,
    }
    write_yaml_atomic(path, body, header)


def summarize(study: optuna.Study, choice, best_yaml: Path | None, spread: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        outcome = trial.user_attrs.get("outcome") or trial.state.name.lower()
        counts[outcome] = counts.get(outcome, 0) + 1
    return {
        "study": study.study_name,
        "counts": counts,
        "noise": spread["spread"],
        "best": None
        if choice is None
        else {
            "trial": choice.trial.number,
            "params": choice.params,
            "value": choice.value,
            "peak_mem_mb": choice.peak_mb,
            "best_yaml": str(best_yaml),
        },
    }


def _write_report(study: optuna.Study, results_dir: Path, url: str, progress: Progress) -> None:
    from tuner.report import write_report

    written = write_report(study, results_dir, url=url)
    progress.say(f"Report: {written.get('report.md', results_dir / study.study_name)}")


def _print_summary(summary: dict[str, Any], args: argparse.Namespace, progress: Progress) -> None:
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2))
        return
    counts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(summary["counts"].items()))
    lines = [f"Study {summary['study']}: {counts}."]
    if summary["noise"] is not None:
        lines.append(f"Noise: repeated configs differ by {summary['noise']:.3f} on average.")
    best = summary["best"]
    if best is None:
        lines.append(
            "No stable config: every trial ran out of memory, failed or went over the stable limit. "
            "Lower the imgsz/batch choices or raise --memory-budget, then re-run."
        )
    else:
        lines.append(
            f"Best stable config: {describe(best['params'])} -> {best['value']:.4f}, "
            f"peak {best['peak_mem_mb']:.0f} MB (trial {best['trial']})."
        )
        lines.append(f"Written to {best['best_yaml']}. Next: tuner train-best --study-name {summary['study']}")
        if summary.get("hint"):
            lines.append(f"Note: {summary['hint']}")
    progress.say("\n".join(lines), important=True)
