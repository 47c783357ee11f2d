"""What every tuner training process (probe trial, train-best stage) does before, around and after training.

`Training` is the skeleton a child module fills with its Ultralytics arguments and callbacks:
- device memory: the parent's watchdog sees RSS itself, but device memory (CUDA reserved, MPS
  driver-allocated) only this process can read; `DeviceMemoryReporter` writes it to a small file;
- Ultralytics imported offline (tuner.offline), and on CUDA without its AMP self-test download;
- the spec's CUDA card made current before anything touches it, and the budget applied to the
  allocator where the device allows it (tuner.memory.device.select, apply_budget);
- Ultralytics' silent batch halving after an OOM stopped at the next epoch start (`BatchHalved`);
- one `EpochRecord` per finished epoch appended to progress.jsonl;
- the end classified into a `ChildResult` (ok / oom / error), and an "ok" that trained fewer
  epochs than asked downgraded to an error, unless a callback ended it on purpose (`EndedEarly`).
`main_for` is the entry point: spec.json in, result.json out (atomically), and the process exits
by itself if the tuner that started it dies.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

from tuner import files, offline
from tuner.memory import device as devices
from tuner.process.contract import ChildResult, ChildSpec, EpochRecord

SpecT = TypeVar("SpecT", bound=ChildSpec)


class BatchHalved(Exception):
    """Ultralytics hit an OOM in the first epoch and silently halved the batch (raised from a callback)."""


class EndedEarly(Exception):
    """A callback ends the training on purpose, with what it did as the message: the result is "ok"."""


PARENT_ENV = "TUNER_PARENT_PID"  # set by tuner.process.trial.run_child


def exit_with_parent(interval: float = 0.5) -> None:
    """Exit hard as soon as the process that started us is gone (works on Linux and macOS).

    The parent's pid comes from the environment: a tuner killed while this process was still
    importing has already left it to init, and `os.getppid()` would then name init as the parent.
    """
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(interval)

    threading.Thread(target=watch, name="tuner-parent-watch", daemon=True).start()


class DeviceMemoryReporter:
    """Writes this process's device memory to `path` every `interval` s and keeps the peak (on CUDA card
    `index`, the allocator's own high-water mark: see tuner.memory.device.device_memory)."""

    def __init__(self, kind: str, index: int | None, path: Path, interval: float = 0.1) -> None:
        self.kind = kind
        self.index = index
        self.path = path
        self.interval = interval
        self.peak = 0

    def start(self) -> DeviceMemoryReporter:
        if self.kind != "cpu":
            threading.Thread(target=self._run, name="tuner-device-memory", daemon=True).start()
        return self

    def read(self) -> int:
        current = devices.device_memory(self.kind, self.index)
        self.peak = max(self.peak, current)
        return current

    def _run(self) -> None:
        while True:
            try:
                files.write_text(self.path, str(self.read()), sync=False)  # a reading, not a record: no fsync
            except Exception:  # a reading must never kill the training it watches
                pass
            time.sleep(self.interval)


class Training:
    """One Ultralytics training in this process, under the spec's device, budget and params."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        import_ultralytics(spec.device_kind)
        # The card first: the cap and the readings name it, and torch's default is card 0 until
        # Ultralytics' select_device() makes it current, inside model.train().
        index = devices.select(spec.device_kind, spec.device)
        devices.apply_budget(spec.device_kind, spec.budget, index)
        self.reporter = DeviceMemoryReporter(spec.device_kind, index, spec.files.device_bytes).start()
        self.started = time.monotonic()
        self.epochs_done = 0
        self.batch_used = spec.params.batch
        self.imgsz_used = spec.params.imgsz
        self.last_value: float | None = None

    def device_peak(self) -> int:
        return max(self.reporter.peak, self.reporter.read())

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def record(self, trainer, value: float | None, **extra: Any) -> EpochRecord:
        """Append the epoch that just ended to progress.jsonl (call from `on_fit_epoch_end`)."""
        record = EpochRecord(
            epoch=trainer.epoch + 1,
            value=value,
            imgsz=trainer.args.imgsz,
            batch=trainer.batch_size,
            seconds=self.seconds(),
            device_peak=self.device_peak(),
            **extra,
        )
        self.epochs_done, self.batch_used, self.imgsz_used = record.epoch, record.batch, record.imgsz
        self.last_value = value
        files.append_jsonl(self.spec.files.progress, record.to_json())
        return record

    def train(self, model_source: str, arguments: dict[str, Any], callbacks: dict[str, Callable], epochs: int) -> ChildResult:
        """Train to the end and say how it ended; `epochs` is how many epochs the spec asked for in all.

        The traceback of any failure goes to this process's log, which the parent shows.
        """
        from ultralytics import YOLO

        asked = self.spec.params.batch

        def check_batch(trainer) -> None:
            if trainer.batch_size != asked:
                self.batch_used = trainer.batch_size
                raise BatchHalved(f"Ultralytics halved batch {asked} -> {trainer.batch_size} after an out-of-memory error")

        try:
            model = YOLO(model_source)
            model.add_callback("on_pretrain_routine_start", lambda trainer: use_all_cores(self.spec.device_kind))
            model.add_callback("on_train_epoch_start", check_batch)
            for event, callback in callbacks.items():
                model.add_callback(event, callback)
            model.train(**arguments)
        except BatchHalved as exc:
            return self._result("oom", str(exc), halved=True)
        except EndedEarly as exc:
            return self._result("ok", str(exc))
        except BaseException as exc:  # classified here; the parent decides what it means for the study
            traceback.print_exc()
            reason = devices.oom_reason(exc)
            if reason:
                return self._result("oom", reason)
            return self._result("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        if self.epochs_done < epochs:
            return self._result("error", f"training stopped after {self.epochs_done} epochs")
        return self._result("ok", None)

    def _result(self, status: str, message: str | None, halved: bool = False) -> ChildResult:
        return ChildResult(
            status=status,
            message=message,
            halved=halved,
            epochs_done=self.epochs_done,
            batch_used=self.batch_used,
            imgsz_used=self.imgsz_used,
            device_peak=self.device_peak(),
            seconds=self.seconds(),
        )


def main_for(spec_type: type[SpecT], run: Callable[[SpecT], ChildResult], argv: list[str] | None = None) -> NoReturn:
    """The entry point of a training process: `python -m MODULE spec.json` -> result.json beside it, then exit."""
    argv = sys.argv[1:] if argv is None else argv
    spec = spec_type.from_json(json.loads(Path(argv[0]).read_text()))
    exit_with_parent()
    files.write_json(spec.files.result, run(spec).to_json())
    # Python's own shutdown after torch was imported grows RSS by 110-125 MB in its last 0.3 s: noise in
    # every peak, and a watchdog kill of a process whose result is already written. Nothing is left to do.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def use_all_cores(kind: str) -> None:
    """On CPU, train with one torch thread per core.

    Ultralytics' select_device() sets min(8, cores - 1) threads, keeping a core for dataloader
    workers; on CPU it runs no workers, so on a 2-core machine that leaves half the CPU idle.
    Called from `on_pretrain_routine_start`, which runs after select_device().
    """
    if kind == "cpu":
        import torch

        torch.set_num_threads(min(8, os.cpu_count() or 1))


def import_ultralytics(kind: str) -> None:
    """Import Ultralytics with tuner's offline settings applied (env comes from offline.child_env)."""
    if os.environ.get("YOLO_OFFLINE") != "1":
        os.environ.update(offline.child_env())
    import ultralytics.engine.trainer as trainer_module

    offline.settle()
    if kind == "cuda":
        # check_amp() downloads yolo26n.pt to compare FP32 and AMP outputs; tuner never downloads.
        # AMP stays on, as Ultralytics does when that check cannot run (set amp: false to disable).
        trainer_module.check_amp = lambda model: True
