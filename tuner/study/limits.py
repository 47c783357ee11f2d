"""Where the memory limit lies: pre-flights over the study's imgsz x batch space, bisected per batch.

A pre-flight (tuner.study.probe_child with `preflight_batches`) trains a config for a few batches and validates
one batch, in the same isolated process and under the same watchdog as a probe, and so measures its
peak in seconds instead of a probe's minutes. It trains the worst case of the config: mosaic and
mixup at the top of their ranges, which build the densest batches. `tuner.memory.model.bisect_frontier`
decides which configs to pre-flight (monotonicity in imgsz and batch decides the rest), and a
memory model is fitted to the peaks it measured. `tuner probe --limits-only` stops here: the
frontier (for each batch, the largest imgsz under the stable limit) and the model are stored in the
study (tuner.study.records), printed, and reported. A config is on the inside when its pre-flight peak stays
under the stable limit by the re-run spread (tuner.memory.model.RERUN_SPREAD): re-runs of one config peak up
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
from tuner.process.contract import PROBE_CHILD, Cause, Outcome
from tuner.process.trial import Attempt, run_child
from tuner.study import dominance
from tuner.study import cost
from tuner.study.inputs import Inputs
from tuner.study.progress import Progress

Runner = Callable[..., Attempt]  # tuner.process.trial.run_child's signature

PREFLIGHT_BATCHES = 3  # the peak is reached by the second iteration in 30 of 32 configs measured here
MODEL_POINTS = 4  # peaks the memory model is fitted to at least, where the space has that many configs that fit


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the pre-flights found: the frontier, every measurement, the model fitted to them, and the peak at which
    pre-flights were consistently killed from outside (None: they were not; else `stable_limit_mb` is under it)."""

    stable_limit_mb: float
    frontier: Frontier
    model: MemoryModel | None
    seconds: float
    outside_kill_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as stored in the study (figures in MiB)."""
        return {
            "stable_limit_mb": self.stable_limit_mb,
            "frontier": self.frontier.to_list(),
            "model": None if self.model is None else self.model.to_dict(),
            "preflights": [dataclasses.asdict(measurement) for measurement in self.frontier.measurements],
            "seconds": self.seconds,
            "outside_kill_mb": self.outside_kill_mb,
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
            "outside_kill_mb": self.outside_kill_mb,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Limits:
        entries = tuple(FrontierEntry(**entry) for entry in values["frontier"])
        measurements = tuple(Measurement(**taken) for taken in values["preflights"])
        model = MemoryModel.from_dict(values["model"]) if values.get("model") else None
        frontier = Frontier(entries, measurements)
        return cls(values["stable_limit_mb"], frontier, model, values.get("seconds", 0.0), values.get("outside_kill_mb"))


@dataclasses.dataclass(frozen=True)
class Mapping:
    """A mapping so far: every pre-flight that finished, and the peak at which pre-flights were consistently killed
    from outside (None: not so). Stored in the study as each pre-flight finishes (StudyRecord.mapping), so that a
    mapping whose tuner died goes on from there: what was measured is not measured again."""

    measurements: tuple[Measurement, ...] = ()
    outside_kill_mb: float | None = None

    def measured(self, imgsz: int, batch: int) -> Measurement | None:
        return next((taken for taken in self.measurements if (taken.imgsz, taken.batch) == (imgsz, batch)), None)

    def to_dict(self) -> dict[str, Any]:
        return {"preflights": [dataclasses.asdict(taken) for taken in self.measurements], "outside_kill_mb": self.outside_kill_mb}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Mapping:
        if not values:
            return cls()
        return cls(tuple(Measurement(**taken) for taken in values["preflights"]), values.get("outside_kill_mb"))


def worst_case(space: Space, imgsz: int, batch: int) -> Params:
    """The config with mosaic and mixup at the top of their ranges: the densest batches it can build."""
    return Params(imgsz, batch, space.mosaic[1], space.mixup[1])


class Preflight:
    """`measure(imgsz, batch)` for the bisection: one pre-flight process, its peak or its OOM verdict; a config
    measured before (in this mapping, or in `before`, one that was interrupted) is not run again, and each one
    measured is handed to `store` as it finishes.

    A pre-flight killed from outside (SIGKILL, no result) is run once more, as a probe would be: one such kill says
    nothing about the config (another process may have caused it). Killed again at about the same peak
    (tuner.study.dominance.kill_level), it did not fit, and that peak is the machine's limit: `stable_limit_mb`
    is lowered under it, as kills of trials lower it."""

    def __init__(self, inputs: Inputs, progress: Progress, runner: Runner = run_child, before: Mapping = Mapping(),
                 store: Callable[[Mapping], None] | None = None) -> None:  # fmt: skip
        self.inputs = inputs
        self.progress = progress
        self.runner = runner
        self.mapping = before
        self.store = store

    def __call__(self, imgsz: int, batch: int) -> Measurement:
        taken = self.mapping.measured(imgsz, batch)
        if taken is None:
            taken = self._measure(worst_case(self.inputs.cfg.space, imgsz, batch))
            self.mapping = dataclasses.replace(self.mapping, measurements=(*self.mapping.measurements, taken))
            if self.store is not None:
                self.store(self.mapping)
        return taken

    def stable_limit_mb(self) -> float:
        """The inputs' stable limit, or the safety margin under the peak at which kills from outside came."""
        limit, level = self.inputs.stable_limit_mb, self.mapping.outside_kill_mb
        return limit if level is None else min(limit, level * (1 - self.inputs.cfg.safety_margin))

    def _measure(self, params: Params) -> Measurement:
        attempt = self._run(params)
        if attempt.cause == Cause.OS_KILL:
            self._say(params, attempt, f"killed from outside at {attempt.peak_mb:.0f} MiB", "; running it once more "
                      "(one kill says nothing of the limit)")  # fmt: skip
            first, attempt = attempt, self._run(params, again=True)
            if attempt.cause == Cause.OS_KILL:
                return self._killed_twice(params, first, attempt)
        if attempt.outcome == Outcome.ERROR:
            raise StudyFailed(
                f"The pre-flight of {params} failed: {attempt.reason}. See {attempt.log}; fix the cause, then re-run."
            )
        oom = attempt.outcome == Outcome.OOM
        verdict = f"out of memory ({attempt.reason})" if oom else f"peak {attempt.peak_mb:.0f} MiB{_done(attempt)}"
        self._say(params, attempt, verdict)
        speed = attempt.result.preflight if attempt.result is not None else None
        return Measurement(params.imgsz, params.batch, params.mosaic, params.mixup, attempt.peak_mb, oom,
                           round(attempt.duration_s, 1), speed and speed.train_batch_s, speed and speed.val_batch_s)  # fmt: skip

    def _run(self, params: Params, again: bool = False) -> Attempt:
        inputs = self.inputs
        spec = inputs.spec(params, inputs.cfg.seed, preflight_batches=PREFLIGHT_BATCHES)
        folder = inputs.trials_dir / "preflight" / f"imgsz{params.imgsz}-batch{params.batch}{'-again' if again else ''}"
        timeout = cost.trial_timeout(inputs.cfg.probe.trial_timeout, None)  # a few batches: no prediction needed
        return self.runner(PROBE_CHILD, spec, folder, inputs.device, inputs.budget, timeout)

    def _killed_twice(self, params: Params, first: Attempt, again: Attempt) -> Measurement:
        """Both runs of `params` were killed from outside: at one peak, the machine's limit (the config does not
        fit); at peaks far apart, something else stops tuner's processes, and nothing here can say what."""
        held = max((taken.peak_mb for taken in self.mapping.measurements if not taken.oom), default=0.0)
        level = dominance.kill_level([first.peak_mb, again.peak_mb], held)
        if level is None:
            raise StudyFailed(
                f"The pre-flight of {params} was killed from outside twice, at {first.peak_mb:.0f} and "
                f"{again.peak_mb:.0f} MiB: not at one peak, so not at a memory limit. Find what stops tuner's processes "
                "(the system log shows the OOM killer's), then re-run: the pre-flights measured so far are kept in the study."
            )
        lowest = level if self.mapping.outside_kill_mb is None else min(level, self.mapping.outside_kill_mb)
        self.mapping = dataclasses.replace(self.mapping, outside_kill_mb=round(lowest, 1))
        self._say(params, again, f"killed from outside again at {again.peak_mb:.0f} MiB", ": out of memory, at the "
                  "machine's limit")  # fmt: skip
        return Measurement(params.imgsz, params.batch, params.mosaic, params.mixup, again.peak_mb, True,
                           round(first.duration_s + again.duration_s, 1))  # fmt: skip

    def _say(self, params: Params, attempt: Attempt, verdict: str, then: str = "") -> None:
        self.progress.say(f"pre-flight imgsz {params.imgsz} batch {params.batch}: {verdict} in {attempt.duration_s:.0f} s{then}")


def _done(attempt: Attempt) -> str:
    """What a finished pre-flight trained and validated, where its result says (ChildResult.preflight)."""
    done = attempt.result.preflight if attempt.result is not None else None
    if done is None:
        return ""
    return (f" ({done.trained} training batches, {done.validated} validation batch of {done.images} images "
            f"at {done.height}x{done.width})")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RuledOut:
    """Configs a smaller model did not fit under `limit_mb` (its pre-flights' OOMs and peaks over the bisection's
    line): a larger model at the same imgsz and batch needs at least as much memory, so under a stable limit no
    higher it does not fit them either, nor any config at least as large in both (tuner.commands.probe_models)."""

    model: str
    limit_mb: float
    configs: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, model: str, stored: dict[str, Any]) -> RuledOut:
        """From the smaller model's stored limits (Limits.to_dict)."""
        line = stored["stable_limit_mb"] / (1 + RERUN_SPREAD)
        out = tuple((taken["imgsz"], taken["batch"]) for taken in stored["preflights"]
                    if taken["oom"] or taken["peak_mb"] >= line)  # fmt: skip
        return cls(model, stored["stable_limit_mb"], out)


def map_limits(inputs: Inputs, progress: Progress, runner: Runner = run_child, before: Mapping = Mapping(),
               store: Callable[[Mapping], None] | None = None, ruled_out: tuple[RuledOut, ...] = ()) -> Limits:  # fmt: skip
    """Pre-flight the configs the bisection needs, and fit the memory model to what they measured; the pre-flights
    of `before` (a mapping that was interrupted) are not run again, and `store` gets the mapping after each one.
    Where kills from outside lower the stable limit, the frontier is bisected again under the lowered limit (the
    configs measured before answer at once). `ruled_out` (smaller models') decide configs without a pre-flight
    where their limit was no lower than this one."""
    space, started = inputs.cfg.space, time.monotonic()
    preflight = Preflight(inputs, progress, runner, before, store)
    limit = preflight.stable_limit_mb()
    progress.say(f"Mapping the memory limit: imgsz {list(space.imgsz)} x batch {list(space.batch)}, "
                 f"stable below {limit:.0f} MiB")  # fmt: skip
    if before.measurements:
        progress.say(f"Continuing the mapping: {len(before.measurements)} pre-flight(s) measured before, stored in the study.")
    if ruled_out:
        out = {config for smaller in ruled_out if smaller.limit_mb >= limit for config in smaller.configs}
        names = ", ".join(smaller.model for smaller in ruled_out if smaller.limit_mb >= limit) or "a smaller model"
        progress.say(f"{len(out)} config(s) that {names} did not fit rule this larger model out there and beyond, "
                     "without a pre-flight." if out else f"Nothing {names} did not fit rules this model out.")  # fmt: skip
    while True:
        out = tuple({config for smaller in ruled_out if smaller.limit_mb >= limit for config in smaller.configs})
        frontier = bisect_frontier(space.imgsz, space.batch, limit / (1 + RERUN_SPREAD), preflight, ruled_out=out)
        frontier = dataclasses.replace(frontier, measurements=preflight.mapping.measurements)
        _model_points(frontier, space, preflight)
        if preflight.stable_limit_mb() >= limit:
            break
        limit = preflight.stable_limit_mb()
        progress.say(f"Pre-flights were killed from outside at about {preflight.mapping.outside_kill_mb:.0f} MiB: the "
                     f"machine's limit is lower than the budget. The stable limit is now {limit:.0f} MiB; the frontier "
                     "is mapped again under it.")  # fmt: skip
    measurements = preflight.mapping.measurements
    frontier = dataclasses.replace(frontier, measurements=measurements)
    return Limits(limit, frontier, fit(measurements), round(time.monotonic() - started, 1), preflight.mapping.outside_kill_mb)


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
    if not limits.frontier.measurements:  # every config ruled out by a smaller model's (RuledOut)
        return (f"A smaller model did not fit the smallest config under the same stable limit of "
                f"{limits.stable_limit_mb:.0f} MiB, so this one does not either. Raise --memory-budget (or lower "
                "--safety-margin), or add smaller --imgsz/--batch choices.")  # fmt: skip
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
    if limits.outside_kill_mb is not None:
        lines.append(f"Pre-flights were killed from outside at about {limits.outside_kill_mb:.0f} MiB, below the budget: "
                     "the stable limit is the safety margin under that.")  # fmt: skip
    if limits.model is not None:
        lines.append(f"Memory model: {limits.model.describe()}")
    count = len(limits.frontier.measurements)
    lines.append(f"{count} pre-flight(s) in {limits.seconds:.0f} s.")
    return "\n".join(lines)
