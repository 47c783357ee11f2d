"""The search space as Optuna suggestions: imgsz an ordered grid (or choices), batch choices, mosaic and mixup
ranges, and the startup design that spreads a fresh study's first trials over it (a point of it is
`tuner.params.Params`).

imgsz is suggested as an int in its grid's steps when the sizes are evenly spaced (a derived space always is:
tuner.study.derive), so TPE knows that 416 lies between 384 and 448 and can propose a size between two good ones
instead of proposing the best size tried again; an irregular list (--imgsz 320,416,640) stays categorical. A
study whose trials already hold a categorical imgsz (one an older tuner started) keeps it: Optuna refuses another
kind of distribution for a parameter the study holds ("Cannot set different distribution kind to the same
parameter name").

batch stays categorical. Its useful values are powers of 2 (or whatever list the user gave), and every reader
(records, dominance, the memory model, train-best, optuna-dashboard) wants the batch itself: an int on a log
scale would propose 3, 5, 7, and the exponent under another name would put 3 where 8 is meant in the dashboard
and in every record. Its few choices are cut further by the memory frontier, and what batch trades is mostly
memory, which the pre-flights map without the sampler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial

from tuner.config import ProbeConfig, Space

if TYPE_CHECKING:
    from tuner.study.limits import Limits

STEP = 0.05  # mosaic/mixup in steps of 0.05 where the range allows: readable, and repeats match exactly


def grid_step(choices: Sequence[int]) -> int | None:
    """The step between `choices` (sorted, as config checks them) when at least two are evenly spaced, else None."""
    steps = {later - earlier for earlier, later in zip(choices, choices[1:])}
    return steps.pop() if len(steps) == 1 and min(steps) > 0 else None


def imgsz_distribution(choices: Sequence[int], trials: Iterable[FrozenTrial] = ()) -> IntDistribution | CategoricalDistribution:
    """How imgsz is suggested: an int in the grid's steps where `choices` are evenly spaced, categorical for an
    irregular list or where the study's `trials` already hold it categorical (Optuna refuses a change of kind)."""
    held = next((t.distributions["imgsz"] for t in trials if "imgsz" in t.distributions), None)
    step = grid_step(choices)
    if step is None or isinstance(held, CategoricalDistribution):
        return CategoricalDistribution(list(choices))
    return IntDistribution(choices[0], choices[-1], step=step)


def suggest(trial: optuna.Trial, space: Space, trials: Iterable[FrozenTrial] = ()) -> dict[str, Any]:
    """One point of `space` for `trial`; `trials` are the study's, to keep the kind of imgsz its trials hold."""
    return {
        "imgsz": _suggest_imgsz(trial, imgsz_distribution(space.imgsz, trials)),
        "batch": trial.suggest_categorical("batch", list(space.batch)),
        "mosaic": _suggest_range(trial, "mosaic", space.mosaic),
        "mixup": _suggest_range(trial, "mixup", space.mixup),
    }


def _suggest_imgsz(trial: optuna.Trial, distribution: IntDistribution | CategoricalDistribution) -> int:
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int("imgsz", distribution.low, distribution.high, step=distribution.step)
    return trial.suggest_categorical("imgsz", distribution.choices)


def _suggest_range(trial: optuna.Trial, name: str, bounds: tuple[float, float]) -> float:
    low, high = bounds
    steps = (high - low) / STEP
    step = STEP if abs(steps - round(steps)) < 1e-9 and high > low else None
    return round(trial.suggest_float(name, low, high, step=step), 4)


DESIGN_BATCH = 2  # the startup design's batch where it fits: see startup_design


def startup_design(space: Space, count: int, largest: dict[int, int | None] | None = None) -> list[dict[str, int]]:
    """imgsz and batch for a fresh study's first trials: imgsz spread evenly (up to `count` sizes), each at a small
    batch, DESIGN_BATCH where it fits (else the largest batch under it that fits, else the smallest that does).
    `largest` is the frontier (each batch's largest stable imgsz, None where none is): cells beyond it are left
    out. Where the space has fewer sizes than `count`, the other batches at those sizes fill the design, nearest
    the design batch first. mosaic and mixup are left to the sampler.

    Why small batches: the pre-flights have mapped the memory already, so the design's trials are for accuracy,
    and under train-best's recipe (one optimizer step per batch, a fixed number of epochs) a smaller batch trains
    more steps: batch 2 trained to 0.2645 mAP50-95 against 0.2255 for batch 8 at imgsz 320 on the thin kind (40
    epochs), and the probe ranks them the same way (0.136 against 0.100). A design that paired the smallest imgsz
    with the largest batch (as before 2026-12-05) spent its cells on configs that train worst, and on a small dataset
    the probe budget runs the design and nothing more (README, "The startup design"). Other batches are the
    sampler's to try once the design has run.
    """

    def fits(imgsz: int, batch: int) -> bool:
        return largest is None or (largest.get(batch) is not None and imgsz <= largest[batch])

    def nearness(batch: int) -> tuple[int, int]:  # the design batch, then smaller ones, then larger ones
        return (0, -batch) if batch <= DESIGN_BATCH else (1, batch)

    sizes = [imgsz for imgsz in space.imgsz if any(fits(imgsz, batch) for batch in space.batch)]
    count = min(count, sum(fits(imgsz, batch) for imgsz in sizes for batch in space.batch))
    design: list[dict[str, int]] = []
    spread = min(count, len(sizes))
    for step in range(spread):
        position = step / (spread - 1) if spread > 1 else 0.0
        imgsz = sizes[round(position * (len(sizes) - 1))]
        cell = {"imgsz": imgsz, "batch": min((b for b in space.batch if fits(imgsz, b)), key=nearness)}
        if cell not in design:
            design.append(cell)
    others = sorted(({"imgsz": imgsz, "batch": batch} for imgsz in sizes for batch in space.batch if fits(imgsz, batch)),
                    key=lambda cell: (nearness(cell["batch"]), cell["imgsz"]))  # fmt: skip
    design += [cell for cell in others if cell not in design][: count - len(design)]
    return design


def startup_trials(cfg: ProbeConfig) -> int:
    """Trials before TPE models the results: the startup design (`startup_design`)."""
    return max(2, min(len(cfg.space.imgsz), cfg.n_trials // 2))


def enqueue_startup(study: optuna.Study, cfg: ProbeConfig, found: Limits) -> None:
    """Queue the startup design inside the frontier the pre-flights found, once per study, each cell its own slot
    (tuner.study.workers)."""
    from tuner.study import workers

    for index, cell in enumerate(startup_design(cfg.space, startup_trials(cfg), found.frontier.largest())):
        workers.enqueue(study, cell, f"startup:{index}")
