"""`tuner probe --model a.pt,b.pt`: the model as a dimension of the search, one study per model.

Each model gets a study of its own, the same as `tuner probe --model a.pt` would run (and a study of that model
run before goes on): its own pre-flights and memory frontier, and its own search over imgsz x batch x mosaic x
mixup inside that frontier. Dominance holds within a model; across models only one way: where the models are one
architecture's scales (yolov8n.yaml, yolov8s.yaml, or weights files of them: tuner.study.architecture) they run
smallest first, and a config the smaller did not fit rules the larger out there without a pre-flight
(tuner.study.limits.RuledOut), never the other way round. A model that fits nowhere is said in one line and left out.

The models share one probe budget, spent as one search over the model and the rest: each study first runs its floor
alone (`--probe-budget floor`: its pre-flights, its startup design and one noise repeat, which every model needs to be
compared at all), then what is left of the budget goes to the leading model's study, continued (`rest_s`), where the
sampler spends it inside that model's frontier. A share is of the leading model's pick's full training; a duration
is the whole run's; with no budget each study runs its whole plan. The pick is the most accurate of the studies'
picks, a tie within the noise (the larger of the studies') going to the lower peak memory; results/<family>/report.md
sets the models side by side, and results/<family>/trials.csv holds every model's trials
(tuner.review.models).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tuner import config as configs
from tuner.errors import ConfigError, NothingFits, StudyError
from tuner.memory import device as devices
from tuner.memory.budget import parse_budget
from tuner.params import Params
from tuner.review.models import ModelResult, Rest, write_report
from tuner.study import inputs, limits, probe_budget, training_time
from tuner.study.open import check_continues, study_space
from tuner.study.progress import Progress
from tuner.study.storage import name_of, storage_url


def run_models(cfg: configs.ProbeConfig, *, study_name: str | None, storage: str | None, studies_dir: Path,
               results_dir: Path, quiet: bool, as_json: bool, limits_only: bool, workers: int, worker: str | None) -> int:  # fmt: skip
    """Every model's study in turn, then the pick across them; returns the exit code (1 when no model has a stable
    config)."""
    from tuner.commands.probe import run_probe  # the one-model probe, which hands several models to this module

    if workers > 1 or worker:
        raise ConfigError("--workers runs the study of one model; with several models, run one `tuner probe --model "
                          "M --workers N` per model, or leave out --workers.")  # fmt: skip
    device = devices.resolve(cfg.device)
    runs, ordered = _runs(cfg, device, study_name, storage, studies_dir)
    progress = Progress(0, 0, cfg.metric_name, quiet=quiet)
    _say_plan(progress, cfg.probe.budget, runs, ordered)
    stems = "+".join(name_of(model) for model, _, _ in runs)
    family = f"{study_name}-{stems}" if study_name else family_name(cfg.data, [model for model, _, _ in runs], device.kind)
    results, smaller = [], []
    for number, (model, model_cfg, name) in enumerate(runs, 1):
        progress.say(f"Model {number}/{len(runs)}: {model}", important=True)
        summaries: list[dict[str, Any]] = []
        try:
            run_probe(model_cfg, study_name=name, storage=storage, studies_dir=studies_dir, results_dir=results_dir,
                      quiet=quiet, limits_only=limits_only, summaries=summaries, ruled_out=tuple(smaller))  # fmt: skip
        except NothingFits as exc:
            progress.say(f"Model {model} fits nowhere within the memory budget; left out. {exc}", important=True)
            results.append(ModelResult(model, name, left_out=str(exc)))
        else:
            results.append(ModelResult(model, name, summaries[0]))
        stored = _record_family(name, family, runs, ordered, storage, studies_dir)
        if stored and results[-1].summary is None:
            results[-1] = dataclasses.replace(results[-1], preflight_s=float(stored.get("seconds") or 0.0))
        if ordered and stored:
            smaller.append(limits.RuledOut.of(model, stored))
    if limits_only:
        if as_json:
            print(json.dumps({"family": family, "models": [result.to_json() for result in results]}, indent=2))
        return 0 if any(result.summary for result in results) else 1
    rest = _spend_the_rest(cfg, runs, results, progress, storage, studies_dir, results_dir, quiet)
    picked = pick(results)
    report = write_report(Path(results_dir) / family, results, picked, cfg.metric_name, rest)
    _print(family, results, picked, report, progress, as_json, rest)
    return 0 if picked is not None else 1


def _spend_the_rest(cfg: configs.ProbeConfig, runs: list, results: list[ModelResult], progress: Progress,
                    storage: str | None, studies_dir: Path, results_dir: Path, quiet: bool) -> Rest | None:  # fmt: skip
    """What the floors left of the shared budget, spent on the leading model's study (continued with it as its
    budget, on top of what it spent); `results` gets its new summary. None where nothing was left to spend (no
    budget, or the floors spent it), said in one line."""
    from tuner.commands.probe import run_probe

    leader = pick(results)
    if leader is None or cfg.probe.budget in (probe_budget.NONE, probe_budget.FLOOR):
        return None
    seconds, budget_s, floors_s = rest_s(cfg.probe.budget, results, leader)
    study = _stored_study(leader.study, storage, studies_dir)
    each = probe_budget.reserve_s(study.get_trials(deepcopy=False)) if study is not None else 0.0
    if budget_s is None:
        progress.say(f"The shared budget ({cfg.probe.budget}) is a share of the leading model's full training, which no "
                     "probe timed: no probe past the floors.", important=True)  # fmt: skip
        return None
    if seconds is None or seconds < max(each, 1.0):
        progress.say(f"The floors took {training_time.minutes(floors_s)} of the shared budget's "
                     f"{training_time.minutes(budget_s)}: no probe more fits.", important=True)  # fmt: skip
        return None
    rest = Rest(leader.model, leader.study, round(seconds, 1), round(budget_s, 1), round(floors_s, 1))
    progress.say(rest.describe(), important=True)
    progress.say(f"Model {leader.model}, continued", important=True)
    model_cfg = next(model_cfg for model, model_cfg, _ in runs if model == leader.model)
    model_cfg = dataclasses.replace(model_cfg, probe=dataclasses.replace(model_cfg.probe, budget=leader.spent_s + seconds))
    summaries: list[dict[str, Any]] = []
    run_probe(model_cfg, study_name=leader.study, storage=storage, studies_dir=studies_dir, results_dir=results_dir,
              quiet=quiet, summaries=summaries)  # fmt: skip
    results[results.index(leader)] = dataclasses.replace(leader, summary=summaries[0])
    return rest


def rest_s(setting: float | str, results: list[ModelResult], leader: ModelResult) -> tuple[float | None, float | None, float]:
    """(what is left of the shared budget `setting` once every study ran its floor, the budget in seconds, what the
    studies spent): a share is of the leading model's pick's predicted full training, a duration is the run's; the
    rest and the budget are None where the budget is none or unknown (the pick's training not predicted)."""
    floors_s = sum(result.spent_s for result in results)
    fraction = probe_budget.share_of(setting)
    if fraction is not None:
        predicted = training_time.Prediction.from_json(((leader.summary or {}).get("best") or {}).get("train_predicted"))
        budget_s = None if predicted is None else fraction * predicted.seconds
    else:
        budget_s = setting if isinstance(setting, float) else None
    return (None if budget_s is None else budget_s - floors_s), budget_s, floors_s


def _runs(cfg: configs.ProbeConfig, device: devices.Device, study_name: str | None, storage: str | None,
          studies_dir: Path) -> tuple[list[tuple[str, configs.ProbeConfig, str]], bool]:  # fmt: skip
    """(model, its config, its study name) for each model, smallest first where that is known (then True). Before
    the first study spends time, every model is checked (and any base checkpoint built), and so is every study
    that exists: one that `tuner probe` would refuse is refused now, with nothing run."""
    from tuner.commands.probe import default_name, new_record

    models = inputs.models(cfg.model)
    paths = {model: inputs.model(model, embedded=cfg.data is None) for model in models}
    ordered = inputs.by_scale(models)
    first = cfg.probe.budget if cfg.probe.budget == probe_budget.NONE else probe_budget.FLOOR  # the rest: the leader's
    data_yaml = inputs.dataset(cfg.data)
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    runs = []
    for model in ordered or models:
        model_cfg = dataclasses.replace(cfg, model=model, probe=dataclasses.replace(cfg.probe, budget=first))
        name = f"{study_name}-{name_of(model)}" if study_name else default_name(model_cfg, device.kind, storage, studies_dir)
        runs.append((model, model_cfg, name))
    _check_names(runs)
    for model, model_cfg, name in runs:
        url = storage_url(storage, studies_dir, name)
        space, _ = study_space(name, url, model_cfg.space, data_yaml, model_cfg.probe.train_images)
        record = new_record(dataclasses.replace(model_cfg, space=space), device, budget, paths[model], data_yaml, False)
        check_continues(name, url, record)
    return runs, ordered is not None


def _say_plan(progress: Progress, budget: float | str, runs: list, ordered: bool) -> None:
    if budget == probe_budget.NONE:
        progress.say(f"{len(runs)} models, one study each, each its whole plan (no probe budget).")
    elif budget == probe_budget.FLOOR:
        progress.say(f"{len(runs)} models, one study each, each its floor (its startup design and one noise repeat).")
    else:
        shown = budget if isinstance(budget, str) else training_time.minutes(budget)
        progress.say(f"{len(runs)} models, one study each, sharing the probe budget ({shown}): each runs its floor "
                     "(its startup design and one noise repeat), then what is left goes to the leading model's study.")  # fmt: skip
    if ordered:
        progress.say(f"Smallest first: {', '.join(model for model, _, _ in runs)}; a config a smaller model does not "
                     "fit rules the larger ones out there without a pre-flight.")  # fmt: skip
    else:
        progress.say("Each model's memory frontier is mapped in full: tuner tells which model is larger only for one "
                     "architecture's scales (yolov8n.yaml, yolov8s.yaml, or weights files of them), not for local "
                     "YAML files or different architectures.")  # fmt: skip


def _check_names(runs: list[tuple[str, Any, str]]) -> None:
    """Two models whose files have one name (v1/yolo.pt, v2/yolo.pt) would share a study; refused before any runs."""
    seen: dict[str, str] = {}
    for model, _, name in runs:
        if name in seen:
            raise ConfigError(f"--model {seen[name]} and {model} would share the study {name!r} (a study is named "
                              "after the model's file); copy one to a file of another name, then re-run.")  # fmt: skip
        seen[name] = model


def _record_family(name: str, family: str, runs: list, ordered: bool, storage: str | None,
                   studies_dir: Path) -> dict[str, Any] | None:  # fmt: skip
    """Study `name`, as soon as it has run, learns the others (StudyRecord.family), smallest first where that is
    known: train-best falls back to a smaller model's best stable config when the pick's own step-downs run out.
    Returns what its pre-flights found (Limits.to_dict), None where it was not created or mapped nothing."""
    from tuner.study.records import StudyRecord

    study = _stored_study(name, storage, studies_dir)
    if study is None:
        return None
    record = {"name": family, "models": [model for model, _, _ in runs], "studies": [other for _, _, other in runs],
              "smallest_first": ordered}  # fmt: skip
    StudyRecord(family=joined(StudyRecord.of(study).family, record)).save(study, "family")
    return StudyRecord.of(study).limits


def joined(before: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """The family a study records once it has run in family `now`, where it ran in family `before` too (n+s, then s+m):
    both families' models smallest first, where both were ordered and all of them still are, so that the study's
    fallback to a smaller model (tuner.train.source.smaller_model_study) keeps the one `before` gave it; else `now`.
    A model in both keeps the study `now` gives it."""
    if not before or before.get("name") == now["name"] or not (before.get("smallest_first") and now["smallest_first"]):
        return now
    studies = {**dict(zip(before["models"], before["studies"])), **dict(zip(now["models"], now["studies"]))}
    order = inputs.by_scale(list(studies))
    if order is None:
        return now
    return {"name": now["name"], "models": order, "studies": [studies[model] for model in order], "smallest_first": True}


def _stored_study(name: str, storage: str | None, studies_dir: Path):
    """Study `name`, or None where it was not created (no empty SQLite file is left behind for it)."""
    from tuner.study.storage import load_study, sqlite_path

    url = storage_url(storage, studies_dir, name)
    if (path := sqlite_path(url)) is not None and not path.exists():
        return None
    try:
        return load_study(name, url)
    except StudyError:
        return None


def family_name(data: str | None, models: list[str], device_kind: str) -> str:
    """`<dataset>-<model>+<model>-<device>`, the folder of the models' side-by-side report: `shapes-yolov8n+yolov8s-cpu`."""
    data_part = "shapes" if data is None else name_of(data)
    return f"{data_part}-{'+'.join(name_of(model) for model in models)}-{device_kind}"


def pick(results: list[ModelResult]) -> ModelResult | None:
    """The most accurate of the models' best stable configs; those within the noise of it (the larger of the
    studies' noise) tie, and a tie goes to the lowest peak memory (a smaller model, as a rule, also trains faster)."""
    fitted = [result for result in results if result.value is not None]
    if not fitted:
        return None
    top = max(result.value for result in fitted)
    noise = max((result.summary.get("noise") or 0.0) for result in fitted)
    tied = [result for result in fitted if top - result.value <= noise]
    return min(tied, key=lambda result: (result.summary["best"]["peak_mem_mb"], -result.value))


def _print(family: str, results: list[ModelResult], picked: ModelResult | None, report: Path, progress: Progress,
           as_json: bool, rest: Rest | None = None) -> None:  # fmt: skip
    if as_json:
        chosen = None if picked is None else {"model": picked.model, "study": picked.study, **picked.summary["best"]}
        print(json.dumps({"family": family, "models": [result.to_json() for result in results], "pick": chosen,
                          "rest": rest and rest.to_json(), "report": str(report)}, indent=2))  # fmt: skip
        return
    too_slow = [result for result in results if result.too_slow]
    lines = [f"Models compared: {report}"]
    for result in results:
        value = ("fits nowhere" if result.left_out else "none within the training time" if result.too_slow
                 else "no stable config" if result.value is None else f"{result.value:.4f}")  # fmt: skip
        lines.append(f"  {result.model}: {value}" + (" <- pick" if result is picked else ""))
    total = training_time.minutes(sum(result.spent_s for result in results))
    lines.append(f"Probe cost, all models: {total}" + (f" (the rest of the budget, {training_time.minutes(rest.seconds)}, "
                                                       f"went to {rest.model})." if rest else "."))  # fmt: skip
    if picked is None:
        if too_slow:
            lines.append("No model has a stable config that trains within the training time:")
            lines.extend(f"  {result.model}: {result.summary['train_time']['line']}" for result in too_slow)
        if len(too_slow) < len(results):
            lines.append("The others have no stable config within the memory budget: lower their imgsz/batch choices or "
                         "raise --memory-budget." if too_slow else "No model has a stable config. Lower the imgsz/batch "
                         "choices or raise --memory-budget, then re-run.")  # fmt: skip
    else:
        best = picked.summary["best"]
        lines.append(f"Pick: {picked.model}, {Params.of(best['params'])} -> {best['value']:.4f}. "
                     f"Next: tuner train-best --study-name {picked.study}")  # fmt: skip
    progress.say("\n".join(lines), important=True)
