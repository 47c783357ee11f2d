"""A stable config at a larger imgsz than the pick, where the data is many times the probes' sample
(tuner.study.selection.larger_on_more_data): named in the summary, report.md and the dashboard's notes, and written
to results/<study>/larger.yaml by `tuner probe` (README, "A larger imgsz on large data")."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from tuner.data.sample import Sample
from tuner.params import Params
from tuner.review.findings import Findings, relative
from tuner.study import selection, training_time

LARGER_YAML = "larger.yaml"  # beside best.yaml: the larger config's training arguments, as best.yaml's
LARGER_RUN = "larger"  # its train-best run's folder, beside the pick's train/


@dataclasses.dataclass(frozen=True)
class Larger:
    """A stable config at a larger imgsz than the pick, on data many times the probes' sample: its full training may
    end ahead of the pick's though its probe trails (tuner.study.selection.larger_on_more_data)."""

    config: selection.Summary
    seconds: float | None  # its full training, predicted
    pick_value: float | None
    pick_seconds: float | None
    sample: Sample
    yaml_path: Path  # where `tuner probe` writes it
    command: str  # train-best of it, in a run beside the pick's

    @property
    def written(self) -> bool:
        """Whether larger.yaml holds this config (a study continued since may name another)."""
        try:
            return Params.of(yaml.safe_load(self.yaml_path.read_text())) == Params.of(self.config.first.params)
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
            return False

    def describe(self) -> str:
        params = Params.of(self.config.first.params)
        pick = "?" if self.pick_value is None else f"{self.pick_value:.4f}"
        times = ""
        if self.seconds is not None:
            pick = f" against the pick's {training_time.minutes(self.pick_seconds)}" if self.pick_seconds else ""
            times = f", its full training about {training_time.minutes(self.seconds)}{pick}"
        return (f"Probes trained on {self.sample.train_images} of {self.sample.train_total} train images: on data this "
                "many times their sample a larger imgsz can train better than its probe says (README, \"A larger imgsz "
                f"on large data\"). The most accurate stable config larger than the pick: {params} -> "
                f"{self.config.value:.4f} (trial {self.config.first.number}; the pick {pick}){times}. "
                "A full training decides it.")  # fmt: skip


def of(found: Findings) -> Larger | None:
    """The larger config of the study `found` reads, within its training time; None where there is none."""
    record, best = found.record, found.best
    if best is None or record.stable_limit_mb is None:
        return None
    train_time = record.config.train_time if record.config else None
    slow = selection.too_slow(found.trials, record.stable_limit_mb, found.predicted, train_time)
    config = selection.larger_on_more_data(found.trials, record.stable_limit_mb, best.params, record.sample,
                                           exclude=frozenset(slow))  # fmt: skip
    if config is None:
        return None
    pick = next((trial for trial in found.trials if trial.number == best.trial), None)
    yaml_path = found.results_dir / found.study_name / LARGER_YAML
    return Larger(config, found.predicted(config.first), best.value, None if pick is None else found.predicted(pick),
                  record.sample, yaml_path, f"{found.command} --config {relative(yaml_path)} --run {LARGER_RUN}")  # fmt: skip
