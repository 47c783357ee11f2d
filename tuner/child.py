"""What every tuner training process (probe trial, train-best run) does before and around training.

- `write_json_atomic`: results and state files are written to a temp name and `os.replace`d, so a
  reader never sees half a file, even if the writer is killed mid-write.
- `exit_with_parent`: a training whose tuner was killed must not keep eating memory as an orphan.
- `DeviceMemoryReporter`: the parent's watchdog sees RSS itself, but device memory (CUDA reserved,
  MPS driver-allocated) only the child can read; it writes the figure to a small file.
- `import_ultralytics`: the offline settings, and on CUDA no AMP self-test download.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from tuner import device as devices
from tuner import offline


def write_json_atomic(path: Path, payload: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One JSON object per line; the parent reads whole lines only."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()


def exit_with_parent(interval: float = 0.5) -> None:
    """Exit hard as soon as the process that started us is gone (works on Linux and macOS)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(interval)

    threading.Thread(target=watch, name="tuner-parent-watch", daemon=True).start()


class DeviceMemoryReporter:
    """Writes this process's device memory to `path` every `interval` s and keeps the peak."""

    def __init__(self, kind: str, path: Path | None, interval: float = 0.1) -> None:
        self.kind = kind
        self.path = path
        self.interval = interval
        self.peak = 0

    def start(self) -> DeviceMemoryReporter:
        if self.kind != "cpu" and self.path is not None:
            threading.Thread(target=self._run, name="tuner-device-memory", daemon=True).start()
        return self

    def read(self) -> int:
        current = devices.device_memory(self.kind)
        self.peak = max(self.peak, current)
        return current

    def _run(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        while True:
            try:
                tmp.write_text(str(self.read()))
                os.replace(tmp, self.path)
            except Exception:  # a reading must never kill the training it watches
                pass
            time.sleep(self.interval)


class BatchHalved(Exception):
    """Ultralytics hit an OOM in the first epoch and silently halved the batch (raised from a callback)."""


def train(model_source: str, callbacks: dict[str, Callable], arguments: dict[str, Any]) -> dict[str, Any]:
    """Train with Ultralytics and say how it ended: ok, oom (with a reason) or error (with a message).

    The traceback of any failure goes to this process's log, which the parent shows.
    """
    from ultralytics import YOLO

    try:
        model = YOLO(model_source)
        for event, callback in callbacks.items():
            model.add_callback(event, callback)
        model.train(**arguments)
    except BatchHalved as exc:
        return {"status": "oom", "reason": str(exc), "halved": True}
    except BaseException as exc:  # classified here; the parent decides what it means for the study
        traceback.print_exc()
        reason = devices.oom_reason(exc)
        if reason:
            return {"status": "oom", "reason": reason}
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
    return {"status": "ok"}


def main_for(run: Callable[[dict[str, Any]], dict[str, Any]], argv: list[str] | None = None) -> int:
    """The entry point of a training process: `python -m MODULE spec.json` -> result.json."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    exit_with_parent()
    write_json_atomic(Path(spec["result"]), run(spec))
    return 0


def use_all_cores(kind: str) -> None:
    """On CPU, train with one torch thread per core.

    Ultralytics' select_device() sets min(8, cores - 1) threads, keeping a core for dataloader
    workers; on CPU it runs no workers, so on a 2-core machine that leaves half the CPU idle.
    Call this from `on_pretrain_routine_start`, which runs after select_device().
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
