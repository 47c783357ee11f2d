"""Fakes that several test modules share: training processes that stand in for the real ones where a test
needs a given peak or score quickly (the real processes are tested in the integration tests)."""

from __future__ import annotations

import dataclasses
import io
import types
from pathlib import Path

from tuner import config
from tuner.memory import device as devices
from tuner.process.contract import ChildResult, EpochRecord, Outcome, PreflightCounts
from tuner.process.trial import Attempt
from tuner.study.inputs import Inputs
from tuner.study.progress import Progress

MIB = 2**20


def law(imgsz: int, batch: int) -> float:
    """A fake peak in MiB: 600 + batch x pixels, as activations grow."""
    return 600 + 0.0004 * batch * imgsz**2


class FakePreflight:
    """Stands in for the pre-flight process: a peak from `law`, an OOM over the budget. Records every spec."""

    def __init__(self, budget_mb: float, error: bool = False) -> None:
        self.budget_mb, self.error = budget_mb, error
        self.specs = []

    def __call__(self, module, spec, folder, device, budget, timeout, on_epoch=None) -> Attempt:
        self.specs.append(spec)
        peak = law(spec.params.imgsz, spec.params.batch)
        if self.error:
            outcome, reason = Outcome.ERROR, "ValueError: could not convert string to int"
        elif peak > self.budget_mb:
            outcome, reason = Outcome.OOM, f"watchdog: {peak:.0f} MB is over the budget"
        else:
            outcome, reason = Outcome.OK, None
        return Attempt(outcome, reason, "watchdog" if outcome == Outcome.OOM else None, min(peak, self.budget_mb + 1),
                       peak, 0.0, 0, 4.0, 0, None, Path(folder) / "log.txt")  # fmt: skip


def inputs(tmp_path: Path, budget_mb: float, imgsz=(160, 192, 224, 256, 288, 320, 352, 384), batch=(2, 4, 8, 16),
           mosaic=(0.0, 1.0), mixup=(0.0, 0.2)):  # fmt: skip
    space = {"imgsz": list(imgsz), "batch": list(batch), "mosaic": list(mosaic), "mixup": list(mixup)}
    cfg = config.load(None, {"space": space, "safety_margin": 0.1})
    return Inputs(cfg, devices.resolve("cpu"), int(budget_mb * MIB), tmp_path / "d.yaml", "yolov8n.yaml", tmp_path)


def quiet() -> Progress:
    return Progress(1, 1, "mAP50-95", quiet=True, stream=io.StringIO())



class FakeProbe:
    """A probe process: larger configs score higher, every epoch a little more; it peaks `excess` above the
    pre-flight's law (a probe's peak scatters around its pre-flight's), and over the budget it runs out of memory."""

    def __init__(self, budget_mb: float, excess: float = 1.08, killed_at: float | None = None, noise: float = 0.0,
                 curves: dict[int, tuple[float, ...]] | None = None,
                 scores: dict[tuple[int, int], tuple[float, ...]] | None = None) -> None:  # fmt: skip
        self.budget_mb, self.excess, self.killed_at, self.noise = budget_mb, excess, killed_at, noise
        self.curves = curves or {}  # imgsz: the metric after each epoch, where a test needs a given course
        self.scores = scores or {}  # (imgsz, batch): the metric of its first run, its second, ..., at every epoch
        self.ran: list = []

    def __call__(self, module, spec, folder, device, budget, timeout, on_epoch=None) -> Attempt:
        params = spec.params
        self.ran.append(params)
        peak = law(params.imgsz, params.batch) * self.excess
        log = Path(folder) / "log.txt"
        if self.killed_at is not None and peak > self.killed_at:  # the OS, at a limit below the budget
            seen = self.killed_at * (1 - 0.01 * (len(self.ran) % 3))  # the watchdog's last sample before the kill
            return Attempt(Outcome.OOM, "killed by SIGKILL from outside", "os-kill", seen, seen, 0.0, -9, 3.0, 0, None, log)
        if peak > self.budget_mb:
            return Attempt(Outcome.OOM, "watchdog: over the budget", "watchdog", peak, peak, 0.0, -9, 3.0, 0, None, log)
        value = 0.0
        for epoch in range(1, spec.probe.epochs + 1):
            value = params.imgsz / 1000 + params.batch / 100 + params.mosaic / 100 + 0.01 * epoch + self.noise * ((spec.seed * 7919) % 11 / 10 - 0.5)
            value = self.curves[params.imgsz][epoch - 1] if params.imgsz in self.curves else value
            if (params.imgsz, params.batch) in self.scores:
                runs = sum((p.imgsz, p.batch) == (params.imgsz, params.batch) for p in self.ran)
                value = self.scores[params.imgsz, params.batch][runs - 1]
            if on_epoch(timed_epoch(EpochRecord(epoch, value, params.imgsz, params.batch, 1.0))):
                return Attempt(Outcome.PRUNED, "pruned", None, peak, peak, 0.0, None, 2.0, epoch, None, log)
        result = ChildResult("ok", value=value, epochs_done=spec.probe.epochs, batch_used=params.batch,
                             imgsz_used=params.imgsz)  # fmt: skip
        return Attempt(Outcome.OK, None, None, peak, peak, 0.0, 0, 5.0, spec.probe.epochs, result, log)


class FakeCuda:
    """torch.cuda with `cards` (total bytes each), patched in by `install`. As in torch, a call without a device
    acts on the current card, card 0 until `set_device`; `reserved` (now) and `peaks` (the allocator's high-water
    mark) per card. Records the fraction each card was capped at."""

    def __init__(self, cards: tuple[int, ...], reserved: dict[int, int] | None = None,
                 peaks: dict[int, int] | None = None) -> None:  # fmt: skip
        self.cards, self.current, self.fractions = cards, 0, {}
        self.reserved, self.peaks = reserved or {}, peaks or {}

    def install(self, monkeypatch, torch) -> FakeCuda:
        on = self._on
        calls = {
            "is_available": lambda: True,
            "device_count": lambda: len(self.cards),
            "current_device": lambda: self.current,
            "set_device": lambda device: setattr(self, "current", on(device)),
            "get_device_properties": lambda device=None: types.SimpleNamespace(name=f"Fake card {on(device)}",
                                                                                total_memory=self.cards[on(device)]),
            "memory_reserved": lambda device=None: self.reserved.get(on(device), 0),
            "max_memory_reserved": lambda device=None: self.peaks.get(on(device), 0),
            "set_per_process_memory_fraction": lambda fraction, device=None: self.fractions.update({on(device): fraction}),
        }  # fmt: skip
        for name, call in calls.items():
            monkeypatch.setattr(torch.cuda, name, call)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        return self

    def _on(self, device) -> int:
        return self.current if device is None else int(str(device).removeprefix("cuda:"))


def batch_s(imgsz: int, batch: int) -> float:
    return 0.05 + 2e-6 * batch * imgsz**2


def val_batch_s(imgsz: int, batch: int) -> float:
    return 0.02 + 1e-6 * 2 * batch * imgsz**2


class TimedPreflight(FakePreflight):
    """FakePreflight whose finished pre-flights timed their batches, as the real one does."""

    def __call__(self, module, spec, folder, device, budget, timeout, on_epoch=None):
        attempt = super().__call__(module, spec, folder, device, budget, timeout, on_epoch)
        if attempt.outcome.value != "ok":
            return attempt
        counts = PreflightCounts(3, 4, 1, 2, 64, 64, batch_s(spec.params.imgsz, spec.params.batch),
                                 val_batch_s(spec.params.imgsz, spec.params.batch))  # fmt: skip
        return dataclasses.replace(attempt, result=ChildResult("ok", preflight=counts))


TRAIN_BATCHES, VAL_BATCHES = 10, 5  # a fake probe's batches over the study's sample


def timed_epoch(record: EpochRecord) -> EpochRecord:
    """`record` with the training and validation it timed, as the probe child reports them: `batch_s` and
    `val_batch_s` a batch, the first epoch twice as slow (the loaders' start)."""
    slow = 2.0 if record.epoch == 1 else 1.0
    return dataclasses.replace(
        record, train_s=slow * TRAIN_BATCHES * batch_s(record.imgsz, record.batch), train_batches=TRAIN_BATCHES,
        val_s=slow * VAL_BATCHES * val_batch_s(record.imgsz, record.batch), val_batches=VAL_BATCHES,
    )  # fmt: skip
