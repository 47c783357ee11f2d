"""What a config's full training will take, as its own probe measured it.

A probe times each epoch's training and validation over the study's sample (tuner.study.probe_child), and says
how many batches each was (EpochRecord.train_s / train_batches, val_s / val_batches). Seconds per batch carry
over to the whole splits: the full training of the config is, per epoch, its training batches over the whole
train split and its validation batches (twice the batch, as Ultralytics validates) over the whole val split,
times the epochs train-best plans, plus a process's start. The first epoch is left out where later ones were
timed: it pays for the loaders' start and the first allocations, which the full training pays once.

`best.yaml` carries the pick's prediction in a comment (Ultralytics refuses keys it does not know, and
`yolo train cfg=best.yaml` must still work): a line for people and a `# tuner-prediction: {json}` line that
train-best reads back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from typing import Any, Iterable

from tuner import config as configs
from tuner.errors import TunerError
from tuner.process.contract import EpochRecord
from tuner.study.cost import START_S

COMMENT_KEY = "tuner-prediction:"


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A full training's predicted wall time: `seconds` in all for `epochs` epochs of `epoch_s` each."""

    seconds: float
    epochs: int
    epoch_s: float

    @classmethod
    def of(cls, epoch_s: float, epochs: int) -> Prediction:
        return cls(round(START_S + epochs * epoch_s, 1), epochs, round(epoch_s, 2))

    def for_epochs(self, epochs: int) -> Prediction:
        """The same config trained for `epochs` epochs instead."""
        return Prediction.of(self.epoch_s, epochs)

    def describe(self) -> str:
        return f"about {minutes(self.seconds)} for {self.epochs} epochs"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: Any) -> Prediction | None:
        """The prediction `values` holds; None where it is not one (a hand-edited comment, an older tuner)."""
        try:
            prediction = cls(float(values["seconds"]), int(values["epochs"]), float(values["epoch_s"]))
        except (KeyError, TypeError, ValueError):
            return None
        return prediction if prediction.epochs > 0 and prediction.epoch_s > 0 else None


def epochs_within(prediction: Prediction, limit_s: float) -> int:
    """How many epochs of `prediction`'s config are predicted to fit in `limit_s`, its process's start included."""
    return max(0, math.floor((limit_s - START_S) / prediction.epoch_s + 1e-9))


def minutes(seconds: float) -> str:
    """`seconds` as a person reads a duration: "90 s", "23 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _per_batch(records: list[EpochRecord], seconds: str, batches: str) -> float | None:
    timed = [getattr(r, seconds) / getattr(r, batches) for r in records if getattr(r, seconds) and getattr(r, batches)]
    if not timed:
        return None
    return statistics.median(timed[1:] if len(timed) > 1 else timed)


def predict(records: Iterable[EpochRecord], batch: int, train_images: int, val_images: int, epochs: int) -> Prediction | None:
    """The full training of a config at `batch` on `train_images` x `val_images` (the whole splits) for `epochs`
    epochs, from the epochs its probe timed (`records`); None where the probe timed none."""
    records = list(records)
    train_s = _per_batch(records, "train_s", "train_batches")
    val_s = _per_batch(records, "val_s", "val_batches")
    if train_s is None or val_s is None:
        return None
    epoch_s = math.ceil(train_images / batch) * train_s + math.ceil(val_images / (2 * batch)) * val_s
    return Prediction.of(epoch_s, epochs)


def planned_epochs() -> int:
    """The epochs train-best would plan from here (configs/train.yaml, if here); its default where that is malformed."""
    try:
        return configs.load_train(None, {}).epochs
    except TunerError:
        return configs.TRAIN_DEFAULTS["epochs"]


def comment_lines(prediction: Prediction) -> list[str]:
    """best.yaml's header lines (without "# ") that carry `prediction`."""
    return [f"Predicted full training: {prediction.describe()} (as its probe measured it).",
            f"{COMMENT_KEY} {json.dumps(prediction.to_json())}"]  # fmt: skip


def from_comment(text: str) -> Prediction | None:
    """The prediction a best.yaml's comment carries (`comment_lines`); None where it has none or a broken one."""
    for line in text.splitlines():
        stripped = line.lstrip("# ").strip()
        if line.startswith("#") and stripped.startswith(COMMENT_KEY):
            try:
                return Prediction.from_json(json.loads(stripped[len(COMMENT_KEY) :]))
            except json.JSONDecodeError:
                return None
    return None
