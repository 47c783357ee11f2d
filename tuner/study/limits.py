"""Where the memory limit lies: pre-flights over the study's imgsz x batch space, bisected per batch.

A pre-flight (tuner.study.probe_child with `preflight_batches`) trains a config for a few batches and validates
one batch, in the same isolated process and under the same watchdog as a probe, and so measures its
peak in seconds instead of a probe's minutes. It trains the worst case of the config: mosaic and
mixup at the top of their ranges, which build the densest batches. `memory_model.bisect_frontier`
decides which configs to pre-flight (monotonicity in imgsz and batch decides the rest), and a
memory model is fitted to the peaks it measured. `tuner probe --limits-only` stops here: the
frontier (for each batch, the largest imgsz under the stable limit) and the model are stored in the
study (tuner.study.records), printed, and reported. A config is on the inside when its pre-flight peak stays
under the stable limit by the re-run spread (memory_model.RERUN_SPREAD): re-runs of one config peak up
to that much apart, and a config measured just under the limit once went over it in its probe.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from tuner.config import Space
from tuner.errors import StudyFailed
from tuner.memory.model import RERUN_SPREAD, Frontier, FrontierEntry, Measurement, MemoryModel, bisect_frontier, fit
from tuner.params import Params
from tuner.process.contract import PROBE_CHILD, Outcome
from tuner.process.trial import Attempt, run_child
from tuner.study.inputs import Inputs
from tuner.study.progress import Progress

Runner = Callable[..., Attempt]  # tuner.process.trial.run_child's signature

PREFLIGHT_BATCHES = 3  # the peak is reached by the second iteration in 30 of 32 configs measured here
MODEL_POINTS = 4  # peaks the memory model is fitted to at least, where the space has that many configs that fit


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the pre-flights found: the frontier, every measurement, the model fitted to them."""

    stable_limit_mb: float
    frontier: Frontier
    model: MemoryModel | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as stored in the study (figures in MiB)."""
        return {
            "stable_limit_mb": self.stable_limit_mb,
            "frontier": self.frontier.to_list(),
            "model": None if self.model is None else self.model.to_dict(),
            "preflights": [dataclasses.asdict(measurement) for measurement in self.frontier.measurements],
            "seconds": self.seconds,
        }

    def summary(self) -> dict[str, Any]:
        """What `--json` prints: the limit, the frontier, how well the model predicts unseen configs."""
        quality = None if self.model is None else {**self.model.quality(), "describe": self.model.describe()}
        return {
            "stable_limit_mb": self.stable_limit_mb,
            "frontier": self.frontier.to_list(),
            "memory_model": quality,
            "preflights": len(self.frontier.measurements),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Limits:
        entries = tuple(FrontierEntry(**entry) for entry in values["frontier"])
        measurements = tuple(Measurement(**taken) for taken in values["preflights"])
        model = MemoryModel.from_dict(values["model"]) if values.get("model") else None
        return cls(values["stable_limit_mb"], Frontier(entries, measurements), model, values.get("seconds", 0.0))


def worst_case(space: Space, imgsz: int, batch: int) -> Params:
    """The config with mosaic and mixup at the top of their ranges: the densest batches it can build."""
    return Params(imgsz, batch, space.mosaic[1], space.mixup[1])


class Preflight:
    """`measure(imgsz, batch)` for the bisection: one pre-flight process, its peak or its OOM verdict."""

    def __init__(self, inputs: Inputs, progress: Progress, runner: Runner = run_child) -> None:
        self.inputs = inputs
        self.progress = progress
        self.runner = runner

    def __call__(self, imgsz: int, batch: int) -> Measurement:
        inputs = self.inputs
        params = worst_case(inputs.cfg.space, imgsz, batch)
        spec = dataclasses.replace(inputs.spec(params, inputs.cfg.seed), preflight_batches=PREFLIGHT_BATCHES)
        folder = inputs.trials_dir / "preflight" / f"imgsz{imgsz}-batch{batch}"
        attempt = self.runner(PROBE_CHILD, spec, folder, inputs.device, inputs.budget, inputs.cfg.probe.trial_timeout)
        if attempt.outcome == Outcome.ERROR:
            raise StudyFailed(
                f"The pre-flight of {params} failed: {attempt.reason}. See {attempt.log}; fix the cause, then re-run."
            )
        oom = attempt.outcome == Outcome.OOM
        verdict = f"out of memory ({attempt.reason})" if oom else f"peak {attempt.peak_mb:.0f} MiB"
        self.progress.say(f"pre-flight imgsz {imgsz} batch {batch}: {verdict} in {attempt.duration_s:.0f} s")
        return Measurement(imgsz, batch, params.mosaic, params.mixup, attempt.peak_mb, oom, round(attempt.duration_s, 1))


def map_limits(inputs: Inputs, progress: Progress, runner: Runner = run_child) -> Limits:
    """Pre-flight the configs the bisection needs, and fit the memory model to what they measured."""
    space, limit = inputs.cfg.space, inputs.stable_limit_mb
    started = time.monotonic()
    progress.say(f"Mapping the memory limit: imgsz {list(space.imgsz)} x batch {list(space.batch)}, "
                 f"stable below {limit:.0f} MiB")  # fmt: skip
    preflight = Preflight(inputs, progress, runner)
    frontier = bisect_frontier(space.imgsz, space.batch, limit / (1 + RERUN_SPREAD), preflight)
    frontier = dataclasses.replace(frontier, measurements=frontier.measurements + _model_points(frontier, space, preflight))
    return Limits(limit, frontier, fit(frontier.measurements), round(time.monotonic() - started, 1))


def _model_points(frontier: Frontier, space: Space, preflight: Preflight) -> tuple[Measurement, ...]:
    """Pre-flights of small configs the bisection did not need, until MODEL_POINTS peaks were measured: when
    the largest config fits, it alone decides the frontier, but a memory model needs a few peaks to fit to
    (and one held out to be checked). Small configs take a few seconds each."""
    measured = {(taken.imgsz, taken.batch) for taken in frontier.measurements}
    fitted = [taken for taken in frontier.measurements if not taken.oom]
    largest = frontier.largest()
    extra: list[Measurement] = []
    for imgsz, batch in ((space.imgsz[0], space.batch[0]), (space.imgsz[-1], space.batch[0]),
                         (space.imgsz[0], space.batch[-1]), (space.imgsz[len(space.imgsz) // 2], space.batch[0])):  # fmt: skip
        if len(fitted) + len(extra) >= MODEL_POINTS:
            break
        if (imgsz, batch) in measured or largest.get(batch) is None or imgsz > largest[batch]:
            continue
        measured.add((imgsz, batch))
        extra.append(preflight(imgsz, batch))
    return tuple(extra)


def beyond_frontier(limits: Limits, params: Params) -> str | None:
    """Why `params` will not fit, where the frontier says so (its batch's largest stable imgsz is smaller)."""
    entry = next((entry for entry in limits.frontier.entries if entry.batch == params.batch), None)
    if entry is None or (entry.imgsz is not None and params.imgsz <= entry.imgsz):
        return None
    largest = "no imgsz" if entry.imgsz is None else f"imgsz {entry.imgsz}"
    return (
        f"inferred: the pre-flights put the stable limit ({limits.stable_limit_mb:.0f} MiB) of batch {params.batch} "
        f"at {largest}"
    )


def smallest_needs(limits: Limits) -> str:
    """Why nothing fits, in one line: what the smallest config measured against the limit."""
    smallest = min(limits.frontier.measurements, key=lambda taken: (taken.batch, taken.imgsz))
    if smallest.oom:
        verdict = f"ran out of memory in its pre-flight, over the stable limit of {limits.stable_limit_mb:.0f} MiB"
    else:
        verdict = (f"peaked at {smallest.peak_mb:.0f} MiB in its pre-flight, without the {RERUN_SPREAD:.1%} a config "
                   f"needs to spare under the stable limit of {limits.stable_limit_mb:.0f} MiB")  # fmt: skip
    return (
        f"The smallest config, imgsz {smallest.imgsz} batch {smallest.batch}, {verdict}. Raise --memory-budget "
        "(or lower --safety-margin), or add smaller --imgsz/--batch choices."
    )


def describe(limits: Limits) -> str:
    """The frontier and the model, for the console."""
    lines = [f"Largest stable imgsz per batch (stable limit {limits.stable_limit_mb:.0f} MiB, "
             f"with {RERUN_SPREAD:.1%} to spare for run-to-run variation):"]
    for entry in limits.frontier.entries:
        if entry.imgsz is None:
            lines.append(f"  batch {entry.batch}: none fits")
            continue
        peak = "" if entry.peak_mem_mb is None else f", peak {entry.peak_mem_mb:.0f} MiB"
        how = "measured" if entry.measured else "inferred"
        lines.append(f"  batch {entry.batch}: imgsz {entry.imgsz}{peak} ({how})")
    if limits.model is not None:
        lines.append(f"Memory model: {limits.model.describe()}")
    count = len(limits.frontier.measurements)
    lines.append(f"{count} pre-flight(s) in {limits.seconds:.0f} s.")
    return "\n".join(lines)
