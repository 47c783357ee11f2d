"""The memory model: each config's peak memory predicted from the peaks pre-flight runs measured, and the frontier
(for each batch, the largest imgsz whose peak stays under the stable limit) confirmed by measuring as few configs
as monotonicity allows. Pure functions: no Optuna, torch or processes; `bisect_frontier` measures by callback.

Peak memory (MiB) follows a + b·batch·imgsz² (activations grow with every pixel of every image in the batch), plus
c·imgsz² (what grows with the image but not the batch) and, where the device shows them, k·mosaic·batch·imgsz² and
its mixup twin. The fit minimises relative, not absolute, residuals: run-to-run noise is a fraction of the peak
(re-runs of one config differ by up to 6.5%), so a 1 GB config weighs as much as a 5 GB one.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

CORE_TERMS = ("const", "batch_px")  # without both, nothing is predicted: fit() returns None
OPTIONAL_TERMS = ("px", "mosaic_px", "mixup_px")  # added in this order, each only where the points pin it down
KNOB_TERMS = ("mosaic_px", "mixup_px")  # need two spare points: a knob the device does not show must stay out
RERUN_SPREAD = 0.065  # re-runs of one config differ by up to 6.5%: every margin adds it
UNTESTED_MARGIN = 0.20  # added instead while no held-out config could be predicted: twice the 10% max-error goal
OUTLIER_FACTOR = 4.0  # an outlier is predicted from the others 4x worse than the median point...
OUTLIER_FLOOR = 0.10  # ...and more than 10% off, beyond what run-to-run noise explains


@dataclass(frozen=True)
class Measurement:
    """One pre-flight run: the config, and its peak (MiB) or the verdict that it ran out of memory."""

    imgsz: int
    batch: int
    mosaic: float = 1.0
    mixup: float = 0.0
    peak_mb: float | None = None
    oom: bool = False
    seconds: float | None = None  # how long the pre-flight took (not used by the model)
    batch_s: float | None = None  # seconds per training batch and per validation batch (tuner.study.cost)
    val_batch_s: float | None = None

    def __post_init__(self) -> None:
        if not self.oom and self.peak_mb is None:
            raise ValueError(f"The measurement at imgsz {self.imgsz}, batch {self.batch} has no `peak_mb`, "
                             "but must have one unless `oom` is True.")


def _term_values(imgsz: int, batch: int, mosaic: float, mixup: float) -> dict[str, float]:
    """The terms by the names `MemoryModel.coefficients` uses."""
    pixels = float(imgsz) ** 2
    return {"const": 1.0, "batch_px": batch * pixels, "px": pixels,
            "mosaic_px": mosaic * batch * pixels, "mixup_px": mixup * batch * pixels}


@functools.lru_cache(maxsize=65536)  # leave-one-out refits the same points thousands of times
def _row(point: Measurement, terms: tuple[str, ...]) -> tuple[float, ...]:
    values = _term_values(point.imgsz, point.batch, point.mosaic, point.mixup)
    return tuple(values[term] for term in terms)


def _predict(coefficients: dict[str, float], imgsz: int, batch: int, mosaic: float = 1.0, mixup: float = 0.0) -> float:
    values = _term_values(imgsz, batch, mosaic, mixup)
    return sum(coefficient * values[term] for term, coefficient in coefficients.items())


def _predict_at(coefficients: dict[str, float], point: Measurement) -> float:
    return _predict(coefficients, point.imgsz, point.batch, point.mosaic, point.mixup)


def _without(points: Sequence[Measurement], index: int) -> list[Measurement]:
    return [*points[:index], *points[index + 1 :]]


def _weighted_lstsq(points: Sequence[Measurement], terms: Sequence[str]) -> dict[str, float] | None:
    """Least squares on relative residuals (each row divided by its peak); None unless the points pin every
    term down (at one batch, imgsz² and batch·imgsz² are one column: lstsq's rank says so)."""
    peaks = np.array([point.peak_mb for point in points])
    design = np.array([_row(point, tuple(terms)) for point in points]) / peaks[:, None]
    scale = np.linalg.norm(design, axis=0)  # columns span 1 to 1e7: scaled, or lstsq's rank cut-off drops some
    if not scale.all():
        return None
    solution, _, rank, _ = np.linalg.lstsq(design / scale, np.ones(len(points)), rcond=None)
    return dict(zip(terms, (solution / scale).tolist())) if rank == len(terms) else None


def _solve(points: Sequence[Measurement], terms: Sequence[str]) -> dict[str, float] | None:
    """No coefficient may be negative: memory never shrinks as a config grows, and a negative baseline makes
    small configs predict below zero, which no margin turns into a bound. A negative optional term (noise, or a
    knob the device does not show) is dropped, the last added first, then a negative baseline, and the rest
    refitted; a negative batch·imgsz² means the points contradict the law, and nothing is fitted."""
    active = list(terms)
    while True:
        coefficients = _weighted_lstsq(points, active)
        negative = [term for term in active if coefficients is not None and coefficients[term] < 0]
        if not negative:
            return coefficients
        if negative == ["batch_px"]:
            return None
        active.remove([term for term in ("const", *OPTIONAL_TERMS) if term in negative][-1])


def _plain_fit(points: Sequence[Measurement]) -> dict[str, float] | None:
    """The core terms plus each optional one the points pin down with a point to spare (fewer points, fewer
    terms), fitted. A term the points only just determine passes exactly through them, and extrapolates
    without a check: on a roomy machine's four pre-flights, a leave-one-out fold of three points through three
    terms put imgsz 640 / batch 1 at 87% over its measured peak."""
    if _weighted_lstsq(points, CORE_TERMS) is None:
        return None
    terms = list(CORE_TERMS)
    for term in OPTIONAL_TERMS:
        spare = 2 if term in KNOB_TERMS else 1
        if len(points) >= len(terms) + 1 + spare and _weighted_lstsq(points, [*terms, term]) is not None:
            terms.append(term)
    return _solve(points, terms)


def _outlier(points: Sequence[Measurement], terms: Sequence[str]) -> int | None:
    """The index of the one point that, predicted from the others with the same terms, is off far beyond the
    rest; None if none is, or too few points to tell an outlier from the law. A point without which the others
    cannot pin the terms down cannot be checked, so is never dropped."""
    if len(points) < len(terms) + 2:
        return None
    errors = {}
    for index, point in enumerate(points):
        coefficients = _solve(_without(points, index), terms)
        if coefficients is not None:
            errors[index] = abs(_predict_at(coefficients, point) - point.peak_mb) / point.peak_mb
    if len(errors) < 2:
        return None
    worst = max(errors, key=errors.__getitem__)
    typical = statistics.median(error for index, error in errors.items() if index != worst)
    return worst if errors[worst] > max(OUTLIER_FLOOR, OUTLIER_FACTOR * typical) else None


@dataclass(frozen=True)
class _Fit:
    coefficients: dict[str, float]
    kept: tuple[Measurement, ...]
    dropped: Measurement | None = None


def _fit_points(points: Sequence[Measurement]) -> _Fit | None:
    """Fit, drop at most one point (one predicted from the others far worse than the rest), refit.

    Why predicted from the others: a config measured high pulls an in-sample fit toward itself (most at the grid's
    corners, where one point has the most leverage) and hides its own residual. Why not a trimmed or Huber fit:
    trimming discards good points in every study, and Huber still lets a corner outlier bend the line; the noise
    is a few % everywhere, so one point far beyond it is the case to handle, and it is reported.
    """
    coefficients = _plain_fit(points)
    outlier = _outlier(points, list(coefficients)) if coefficients is not None else None
    refit = _plain_fit(_without(points, outlier)) if outlier is not None else None
    if refit is not None:
        return _Fit(refit, tuple(_without(points, outlier)), points[outlier])
    return _Fit(coefficients, tuple(points)) if coefficients is not None else None


@dataclass(frozen=True)
class MemoryModel:
    """Peak memory (MiB) = Σ coefficient · term (see `_term_values`); `margin` is the relative error bound."""

    coefficients: dict[str, float]
    margin: float
    median_error: float | None  # leave-one-out, fractions of the measured peak; None when no fold could fit
    max_error: float | None
    points: int
    dropped: Measurement | None = None  # the one outlier left out of the fit, if any

    def predict(self, imgsz: int, batch: int, mosaic: float = 1.0, mixup: float = 0.0) -> float:
        """Defaults are Ultralytics' (mosaic 1.0, mixup 0.0); pass the space's largest for a worst case."""
        return _predict(self.coefficients, imgsz, batch, mosaic, mixup)

    def upper(self, imgsz: int, batch: int, mosaic: float = 1.0, mixup: float = 0.0) -> float:
        """The prediction plus its error bound: what "predicted stable" decisions compare with the limit."""
        return self.predict(imgsz, batch, mosaic, mixup) * (1.0 + self.margin)

    def quality(self) -> dict[str, Any]:
        return {"median_error": self.median_error, "max_error": self.max_error, "points": self.points}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryModel:
        dropped = Measurement(**data["dropped"]) if data.get("dropped") else None
        return cls(**{**data, "coefficients": dict(data["coefficients"]), "dropped": dropped})

    def describe(self) -> str:
        law = " + ".join(f"{value:.3g}" + ("" if term == "const" else f"·{term}") for term, value in self.coefficients.items())
        checked = (f"leave-one-out error median {self.median_error:.1%}, max {self.max_error:.1%}"
                   if self.median_error is not None else "no held-out check")
        outlier = f"; left out imgsz {self.dropped.imgsz} batch {self.dropped.batch} as an outlier" if self.dropped else ""
        return f"peak ≈ {law} MiB (±{self.margin:.1%}), {checked} over {self.points} points{outlier}"


def _held_out(points: Sequence[Measurement], fitted: _Fit) -> list[tuple[Measurement, float]]:
    """Each kept point with its prediction by the whole procedure (terms, outlier and all) run on the others.
    The dropped outlier is not among them: its error is the noise's, not the model's."""
    pairs = []
    for index, point in enumerate(points):
        fold = None if point is fitted.dropped else _fit_points(_without(points, index))
        if fold is not None:
            pairs.append((point, _predict_at(fold.coefficients, point)))
    return pairs


def fit(measurements: Iterable[Measurement]) -> MemoryModel | None:
    """The memory model of these measurements (OOM verdicts carry no peak and are left out), or None when the
    peaks cannot pin down a + b·batch·imgsz² (fewer than two configs, or peaks that contradict growth)."""
    points = [measurement for measurement in measurements if not measurement.oom]
    fitted = _fit_points(points)
    if fitted is None:
        return None
    held_out = _held_out(points, fitted)
    errors = [abs(predicted - point.peak_mb) / point.peak_mb for point, predicted in held_out]
    # The margin covers every peak the fit was fitted on, the worst held-out miss either way (an over-prediction
    # at one config is the law's shape being off, which elsewhere can be an under-prediction by as much), and on
    # top the re-run spread: any measured peak may recur that much higher.
    in_sample = [point.peak_mb / max(_predict_at(fitted.coefficients, point), 1e-9) - 1.0 for point in fitted.kept]
    misses = [max(predicted, point.peak_mb) / max(min(predicted, point.peak_mb), 1e-9) - 1.0 for point, predicted in held_out]
    return MemoryModel(
        coefficients=fitted.coefficients,
        margin=(RERUN_SPREAD if errors else UNTESTED_MARGIN) + max([0.0, *in_sample, *misses]),
        median_error=statistics.median(errors) if errors else None,
        max_error=max(errors) if errors else None,
        points=len(fitted.kept),
        dropped=fitted.dropped,
    )


@dataclass(frozen=True)
class FrontierEntry:
    """The largest stable imgsz of one batch (None: not even the smallest). `peak_mem_mb` was measured there,
    or is the model's prediction when `measured` is False: the verdict was inferred by monotonicity."""

    batch: int
    imgsz: int | None
    peak_mem_mb: float | None
    measured: bool


@dataclass(frozen=True)
class Frontier:
    entries: tuple[FrontierEntry, ...]
    measurements: tuple[Measurement, ...]  # every measurement taken, in order

    def largest(self) -> dict[int, int | None]:
        return {entry.batch: entry.imgsz for entry in self.entries}

    def to_list(self) -> list[dict[str, Any]]:
        """The format `tuner probe --json` prints: one {"batch", "imgsz", "peak_mem_mb", "measured"} per batch."""
        return [dataclasses.asdict(entry) for entry in self.entries]


class _Evidence:
    """What the measurements so far decide, by monotonicity: a config fits if one at least as large in both
    imgsz and batch fitted (its peak under the limit), and does not if one no larger in both did not. Only
    undecided configs are measured, so no measurement can contradict an earlier one."""

    def __init__(self, limit_mb: float, measure: Callable[[int, int], Measurement],
                 ruled_out: Iterable[tuple[int, int]] = ()) -> None:  # fmt: skip
        self.limit_mb, self.measure_config = limit_mb, measure
        self.taken: list[Measurement] = []
        self.ruled_out = tuple(ruled_out)  # (imgsz, batch) known not to fit without a measurement of this model

    def fits(self, measurement: Measurement) -> bool:
        return not measurement.oom and measurement.peak_mb < self.limit_mb

    def verdict(self, imgsz: int, batch: int) -> bool | None:
        for taken in self.taken:  # this model's own measurements first: they outrank another model's
            if self.fits(taken) and taken.imgsz >= imgsz and taken.batch >= batch:
                return True
            if not self.fits(taken) and taken.imgsz <= imgsz and taken.batch <= batch:
                return False
        if any(size <= imgsz and count <= batch for size, count in self.ruled_out):
            return False
        return None

    def bracket(self, sizes: Sequence[int], batch: int) -> tuple[int, int]:
        """Indices into `sizes` of the largest imgsz known to fit at this batch (-1 if none) and of the smallest
        known not to (len(sizes) if none): the frontier is decided when they are adjacent."""
        verdicts = [self.verdict(imgsz, batch) for imgsz in sizes]
        fitting = [index for index, verdict in enumerate(verdicts) if verdict is True]
        failing = [index for index, verdict in enumerate(verdicts) if verdict is False]
        return max(fitting, default=-1), min(failing, default=len(sizes))

    def measure(self, imgsz: int, batch: int) -> bool:
        self.taken.append(self.measure_config(imgsz, batch))
        return self.fits(self.taken[-1])


def _search_batch(evidence: _Evidence, sizes: Sequence[int], batch: int, guess: int | None) -> None:
    """Measure until the largest fitting imgsz of this batch is decided. With a guess: measure it, then its
    neighbour on the side that would confirm it (two measurements when it is right), then bisect what is left."""
    low, high = evidence.bracket(sizes, batch)
    if guess is not None and high - low > 1:
        first = min(max(guess, low + 1), high - 1)
        neighbour = first + 1 if evidence.measure(sizes[first], batch) else first - 1
        low, high = evidence.bracket(sizes, batch)
        if low < neighbour < high:
            evidence.measure(sizes[neighbour], batch)
            low, high = evidence.bracket(sizes, batch)
    while high - low > 1:
        evidence.measure(sizes[(low + high) // 2], batch)
        low, high = evidence.bracket(sizes, batch)


def _guide(model: MemoryModel | None, evidence: _Evidence) -> dict[str, float] | None:
    """The model's coefficients, or without one those of the peaks measured so far (no leave-one-out: a guess)."""
    if model is not None:
        return model.coefficients
    fitted = _fit_points([taken for taken in evidence.taken if not taken.oom])
    return fitted.coefficients if fitted else None


def _guess(guide: dict[str, float] | None, sizes: Sequence[int], batch: int, limit_mb: float) -> int | None:
    """Index of the largest imgsz the guide predicts under the limit (its centre, not its upper bound: a guess is
    meant to be right, not safe); -1 when none is."""
    if guide is None:
        return None
    return max((index for index, imgsz in enumerate(sizes) if _predict(guide, imgsz, batch) < limit_mb), default=-1)


def _entry(evidence: _Evidence, sizes: Sequence[int], batch: int, guide: dict[str, float] | None) -> FrontierEntry:
    index = evidence.bracket(sizes, batch)[0]
    imgsz = sizes[max(index, 0)]  # when nothing fits, "measured" says whether the smallest was
    taken = next((taken for taken in evidence.taken if (taken.imgsz, taken.batch) == (imgsz, batch)), None)
    if index < 0:
        return FrontierEntry(batch, None, None, measured=taken is not None)
    if taken is not None:
        return FrontierEntry(batch, imgsz, taken.peak_mb, measured=True)
    return FrontierEntry(batch, imgsz, _predict(guide, imgsz, batch) if guide else None, measured=False)


def bisect_frontier(sizes: Iterable[int], batches: Iterable[int], limit_mb: float,
                    measure: Callable[[int, int], Measurement], model: MemoryModel | None = None,
                    ruled_out: Iterable[tuple[int, int]] = ()) -> Frontier:  # fmt: skip
    """For each batch, the largest imgsz whose peak is under `limit_mb`, decided by measuring (`measure(imgsz,
    batch)` runs one pre-flight) only configs that monotonicity leaves undecided, first where the model (or,
    without one, a fit of the peaks measured so far) predicts the frontier. The largest config comes first
    unless the model puts it over the limit: when the whole space fits (a roomy machine) that one measurement
    decides everything, and when it does not, its OOM comes within seconds. Then batches go smallest first,
    so an OOM rules out that imgsz and above for every larger batch. `ruled_out` configs (a smaller model's that
    did not fit: tuner.study.limits.ruled_out_by) rule out the same way, unmeasured."""
    sizes, batches = sorted(set(sizes)), sorted(set(batches))
    evidence = _Evidence(limit_mb, measure, ruled_out)
    corner = _guess(_guide(model, evidence), sizes, batches[-1], limit_mb)
    undecided = evidence.verdict(sizes[-1], batches[-1]) is None
    if undecided and (corner is None or corner == len(sizes) - 1):  # the largest may fit: if it does, everything does
        evidence.measure(sizes[-1], batches[-1])
    for batch in batches:
        _search_batch(evidence, sizes, batch, _guess(_guide(model, evidence), sizes, batch, limit_mb))
    guide = _guide(model, evidence)
    return Frontier(tuple(_entry(evidence, sizes, batch, guide) for batch in batches), tuple(evidence.taken))
