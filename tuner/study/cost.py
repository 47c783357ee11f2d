"""What a probe costs, known before it is spent: the pre-flights time their batches, and a probe is so many batches.

A pre-flight trains a few batches of its config and validates one (tuner.study.probe_child.Preflight), timing
each; seconds per batch grow with the pixels of a batch, so `Speed` fits `a + b·batch·imgsz²` to them (training
and validation apart) and predicts every config of the space. A probe then costs its process's start plus, per
epoch, its training batches over the study's sample and its validation batches (twice the batch, as Ultralytics
validates). With `probe.trial_timeout: auto` (the default) a probe's timeout is a generous multiple of that, so a
large config on a large dataset is not cut off by a constant, and a hung one is not waited on for ten minutes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import numpy as np

from tuner.memory.model import Measurement
from tuner.params import Params

AUTO = "auto"
START_S = 20.0  # a probe process's start: imports (about 2 s), the model's build, the dataset's scan, the loaders
TIMEOUT_FACTOR = 4.0  # batches scatter, a poor model validates slower (NMS over many boxes), the machine is shared
TIMEOUT_FLOOR_S = 120.0
FALLBACK_TIMEOUT_S = 600.0  # where no pre-flight timed its batches (a study mapped by an older tuner)
SHARED_SLOWDOWN = 4.0  # per other worker on the device: the pre-flights ran alone (two on 2 CPU cores: over 7x, README)


@dataclasses.dataclass(frozen=True)
class Law:
    """Seconds per batch ≈ a + b·pixels, pixels = images x imgsz²."""

    a: float
    b: float

    def at(self, pixels: float) -> float:
        return self.a + self.b * pixels


@dataclasses.dataclass(frozen=True)
class Speed:
    train: Law
    val: Law

    def batch_s(self, params: Params) -> float:
        return self.train.at(params.batch * params.imgsz**2)

    def val_batch_s(self, params: Params) -> float:
        return self.val.at(2 * params.batch * params.imgsz**2)


def _fit(points: list[tuple[float, float]]) -> Law:
    """a, b >= 0 by least squares; one point (or points at one size) through the origin."""
    pixels = np.array([p for p, _ in points], dtype=float)
    seconds = np.array([s for _, s in points], dtype=float)
    if len(set(pixels)) > 1:
        b, a = np.polyfit(pixels, seconds, 1)
        if a >= 0 and b > 0:
            return Law(float(a), float(b))
    return Law(0.0, float(seconds.sum() / pixels.sum()))


def fit_speed(measurements: Iterable[Measurement]) -> Speed | None:
    """The speed law of the pre-flights that timed their batches; None where none did."""
    timed = [m for m in measurements if not m.oom and m.batch_s and m.val_batch_s]
    if not timed:
        return None
    train = _fit([(m.batch * m.imgsz**2, m.batch_s) for m in timed])
    val = _fit([(2 * m.batch * m.imgsz**2, m.val_batch_s) for m in timed])
    return Speed(train, val)


def probe_seconds(params: Params, speed: Speed, train_images: int, val_images: int, epochs: int) -> float:
    """The predicted wall time of one probe of `params` on `train_images` x `val_images` for `epochs` epochs."""
    train_batches = math.ceil(train_images / params.batch)
    val_batches = math.ceil(val_images / (2 * params.batch))
    per_epoch = train_batches * speed.batch_s(params) + val_batches * speed.val_batch_s(params)
    return START_S + epochs * per_epoch


def contention(sharing: int) -> float:
    """How much slower a probe runs beside `sharing` - 1 other workers' probes on one device than the pre-flights
    (alone, under the mapping lease) timed it: an allowance, not a measurement."""
    return 1.0 if sharing <= 1 else SHARED_SLOWDOWN * (sharing - 1)


def trial_timeout(setting: float | str, predicted_s: float | None) -> float:
    """The timeout of a probe: the setting where it is a number, else a multiple of its predicted time."""
    if setting != AUTO:
        return float(setting)
    if predicted_s is None:
        return FALLBACK_TIMEOUT_S
    return max(TIMEOUT_FLOOR_S, TIMEOUT_FACTOR * predicted_s)
