"""The search space as Optuna suggestions: imgsz and batch are choices, mosaic and mixup ranges, and the
startup design that spreads a fresh study's first trials over it (a point of it is `tuner.params.Params`).
"""

from __future__ import annotations

from typing import Any

import optuna

from tuner.config import Space

STEP = 0.05  # mosaic/mixup in steps of 0.05 where the range allows: readable, and repeats match exactly


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    return {
        "imgsz": trial.suggest_categorical("imgsz", list(space.imgsz)),
        "batch": trial.suggest_categorical("batch", list(space.batch)),
        "mosaic": _suggest_range(trial, "mosaic", space.mosaic),
        "mixup": _suggest_range(trial, "mixup", space.mixup),
    }


def _suggest_range(trial: optuna.Trial, name: str, bounds: tuple[float, float]) -> float:
    low, high = bounds
    steps = (high - low) / STEP
    step = STEP if abs(steps - round(steps)) < 1e-9 and high > low else None
    return round(trial.suggest_float(name, low, high, step=step), 4)


def startup_design(space: Space, count: int, largest: dict[int, int | None] | None = None) -> list[dict[str, int]]:
    """imgsz and batch for a fresh study's first trials: imgsz spread evenly (up to `count`), paired with
    batches in the opposite order, so the first trials cover the accuracy axis and both ends of the memory
    frontier instead of whatever cells random sampling repeats. `largest` is the frontier (each batch's
    largest stable imgsz, None where none is): cells beyond it are left out, and each imgsz is paired only
    with batches it fits. mosaic and mixup are left to the sampler.
    """
    def fits(imgsz: int, batch: int) -> bool:
        return largest is None or (largest.get(batch) is not None and imgsz <= largest[batch])

    sizes = [imgsz for imgsz in space.imgsz if any(fits(imgsz, batch) for batch in space.batch)]
    count = min(count, sum(fits(imgsz, batch) for imgsz in sizes for batch in space.batch))
    design: list[dict[str, int]] = []
    for step in range(count):
        position = step / (count - 1) if count > 1 else 0.0
        imgsz = sizes[round(position * (len(sizes) - 1))]
        batches = [batch for batch in space.batch if fits(imgsz, batch)]
        batch = batches[round((1 - position) * (len(batches) - 1))]
        if {"imgsz": imgsz, "batch": batch} not in design:
            design.append({"imgsz": imgsz, "batch": batch})
    return design
