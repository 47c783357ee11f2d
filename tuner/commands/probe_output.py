"""What `tuner probe` hands on at its end: best.yaml, and the summary on the console (or as JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuner import __version__, files
from tuner import config as configs
from tuner.config import ProbeConfig
from tuner.train import plan
from tuner.memory.device import Device
from tuner.errors import TunerError
from tuner.study.progress import Progress
from tuner.study.records import StudyRecord, TrialRecord
from tuner.study.selection import Choice
from tuner.study.space import Params


def write_best_yaml(
    path: Path, choice: Choice, cfg: ProbeConfig, device: Device, name: str, study: StudyRecord,
    settings: configs.TrainSettings,
) -> None:
    """The best stable config as the Ultralytics training arguments train-best would use, with what it
    scored in a comment header: `yolo train cfg=best.yaml` trains what the probe measured."""
    params = Params.of(choice.params)
    spread = f", noise +/-{choice.spread:.3f}" if choice.spread is not None else ""
    header = [
        f"Best stable config of study {name!r} (tuner {__version__}).",
        f"{cfg.metric_name} {choice.value:.4f} (mean of {choice.runs} probe run(s){spread}; best of any config "
        f"{choice.best_value:.4f}), trial {choice.trial.number}.",
        f"Peak memory {choice.peak_mb:.0f} MiB of the {study.budget_mb:.0f} MiB budget on {device.torch} "
        f"(stable limit {study.stable_limit_mb:.0f} MiB).",
        f"Train it: tuner train-best --study-name {name}",
        "These are the Ultralytics training arguments train-best uses for a single-stage run of "
        f"{settings.epochs} epochs: yolo train cfg=<this file> trains the same way.",
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


def probe_summary(study_name: str, trials, record: StudyRecord, best_yaml: Path | None, hint: str | None) -> dict[str, Any]:
    """The end of a probe in numbers: trials per outcome, the noise, the best stable config."""
    counts: dict[str, int] = {}
    for trial in trials:
        outcome = TrialRecord.of(trial).outcome
        key = outcome.value if outcome is not None else trial.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    best = record.best
    return {
        "study": study_name,
        "counts": counts,
        "noise": record.noise.spread,
        "best": None
        if best is None
        else {
            "trial": best.trial,
            "params": best.params.to_dict(),
            "value": best.value,
            "peak_mem_mb": best.peak_mem_mb,
            "best_yaml": str(best_yaml),
        },
        "hint": hint,
    }


def print_probe_summary(summary: dict[str, Any], progress: Progress, as_json: bool) -> None:
    if as_json:
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
            f"Best stable config: {Params.of(best['params'])} -> {best['value']:.4f}, "
            f"peak {best['peak_mem_mb']:.0f} MiB (trial {best['trial']})."
        )
        lines.append(f"Written to {best['best_yaml']}. Next: tuner train-best --study-name {summary['study']}")
        if summary.get("hint"):
            lines.append(f"Note: {summary['hint']}")
    progress.say("\n".join(lines), important=True)
