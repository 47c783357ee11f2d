"""Run one training process (a probe trial or a train-best stage) under the memory watchdog, and
classify how it ended.

A file in (`spec.json`), a file out (`result.json`), the log in `log.txt`, one JSON line per epoch
in `progress.jsonl` (tuner.process.contract). The end is classified from facts, in this order:
1. the watchdog killed it                      -> oom   (reason: the measured memory and budget)
2. tuner stopped it (pruner, trial timeout)     -> pruned / error
3. result.json says ok / oom / error / checkpoint -> that (ok with a smaller batch than asked -> oom;
                                                  an unusable checkpoint -> error, cause "checkpoint")
4. no result and killed by SIGKILL (-9 / 137)   -> oom   (the OS OOM killer, macOS jetsam)
5. no result otherwise                          -> error (with the log's tail)
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import psutil

from tuner import files, offline
from tuner.memory.budget import MIB
from tuner.memory.watchdog import Watchdog, kill_tree
from tuner.memory.device import Device
from tuner.process.child import PARENT_ENV
from tuner.process.contract import Cause, ChildFiles, ChildResult, ChildSpec, EpochRecord, Outcome

SIGKILL_CODES = (-signal.SIGKILL, 128 + signal.SIGKILL)
LOG_TAIL_LINES = 15
POLL_S = 0.2


class Classified(NamedTuple):
    outcome: Outcome
    reason: str | None
    # For OOMs, what says so: "watchdog", "exception", "batch-halving" (each measured against this
    # trial's own budget) or "os-kill" (a SIGKILL from outside, which other processes may have caused);
    # for an error, "checkpoint" where the process could not use the checkpoint it was to continue.
    cause: Cause | None = None


@dataclasses.dataclass(frozen=True)
class Attempt:
    """How one training process ended, with what it measured and said."""

    outcome: Outcome
    reason: str | None  # the OOM's reason, the error message, or why it was stopped
    cause: Cause | None  # see Classified.cause
    peak_mb: float
    peak_rss_mb: float
    peak_device_mb: float
    returncode: int | None
    duration_s: float
    epochs_done: int
    result: ChildResult | None  # None when the process wrote none (killed)
    log: Path

    @property
    def value(self) -> float | None:
        return self.result.value if self.result is not None and self.outcome == Outcome.OK else None

    @property
    def batch_used(self) -> int | None:
        return None if self.result is None else self.result.batch_used

    @property
    def imgsz_used(self) -> int | None:
        return None if self.result is None else self.result.imgsz_used

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def classify(
    *,
    returncode: int | None,
    result: ChildResult | None,
    watchdog_reason: str | None,
    stopped: str | None,
    asked_batch: int,
) -> Classified:
    """How a finished training process ended, from its facts; see the module docstring."""
    if watchdog_reason:
        return Classified(Outcome.OOM, watchdog_reason, Cause.WATCHDOG)
    if stopped == "pruned":
        return Classified(Outcome.PRUNED, "stopped by the pruner: its metric trailed the stable trials' at the same epoch")
    if stopped:
        return Classified(Outcome.ERROR, stopped)
    if result is not None:
        return _classify_result(result, asked_batch)
    if returncode in SIGKILL_CODES:
        reason = "killed by SIGKILL from outside the trial (the OS out-of-memory killer or jetsam)"
        return Classified(Outcome.OOM, reason, Cause.OS_KILL)
    if returncode is not None and returncode < 0:
        return Classified(Outcome.ERROR, f"killed by signal {signal.Signals(-returncode).name}")
    return Classified(Outcome.ERROR, f"the trial process exited with code {returncode} without a result")


def _classify_result(result: ChildResult, asked_batch: int) -> Classified:
    if result.status == "ok":
        if result.batch_used is not None and result.batch_used < asked_batch:
            reason = f"Ultralytics halved batch {asked_batch} -> {result.batch_used} after an out-of-memory error"
            return Classified(Outcome.OOM, reason, Cause.BATCH_HALVING)
        return Classified(Outcome.OK, None)
    if result.status == "oom":
        return Classified(Outcome.OOM, result.message or "out of memory", Cause.BATCH_HALVING if result.halved else Cause.EXCEPTION)
    if result.status == "checkpoint":
        return Classified(Outcome.ERROR, result.message or "the checkpoint cannot be used", Cause.CHECKPOINT)
    return Classified(Outcome.ERROR, result.message or "the trial reported an error")


OnEpoch = Callable[[EpochRecord], bool]


def run_child(
    module: str, spec: ChildSpec, folder: Path, device: Device, budget: int, timeout: float, on_epoch: OnEpoch | None = None
) -> Attempt:
    """Run `python -m <module> spec.json` in `folder` to its end under the watchdog.

    `on_epoch(record)` is called for each epoch the process finishes; returning True prunes it.
    """
    child_files = ChildFiles(Path(folder).resolve())
    child_files.folder.mkdir(parents=True, exist_ok=True)
    for stale in (child_files.result, child_files.progress):
        stale.unlink(missing_ok=True)
    spec = dataclasses.replace(spec, folder=str(child_files.folder))
    files.write_json(child_files.spec, spec.to_json())

    started = time.monotonic()
    with open(child_files.log, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(child_files.spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=offline.child_env({**device.child_env(budget), PARENT_ENV: str(os.getpid())}),
            cwd=child_files.folder,
            start_new_session=True,  # Ctrl-C reaches tuner, which then stops the trial itself
        )
        device_file = child_files.device_bytes if device.kind != "cpu" else None
        try:
            with Watchdog(process.pid, budget, device.measured, device_file) as watchdog:
                follower = _Follower(child_files.progress, watchdog, on_epoch)
                stopped = follower.wait(process, started, timeout)
        except BaseException:
            _kill_quietly(process)
            raise
    follower.drain(report=stopped is None)
    raw = files.read_json(child_files.result)
    result = ChildResult.from_json(raw) if isinstance(raw, dict) else None
    classified = classify(
        returncode=process.returncode,
        result=result,
        watchdog_reason=watchdog.killed_reason,
        stopped=stopped,
        asked_batch=spec.params.batch,
    )
    device_peak = max(watchdog.peak_device, result.device_peak if result else 0)
    peak = max(watchdog.peak, device.measured(watchdog.peak_rss, device_peak, watchdog.peak_footprint))
    return Attempt(
        outcome=classified.outcome,
        reason=classified.reason,
        cause=classified.cause,
        peak_mb=round(peak / MIB, 1),
        peak_rss_mb=round(watchdog.peak_rss / MIB, 1),
        peak_device_mb=round(device_peak / MIB, 1),
        returncode=process.returncode,
        duration_s=round(time.monotonic() - started, 2),
        epochs_done=follower.seen,
        result=result,
        log=child_files.log,
    )


class _Follower:
    """Reads the child's progress lines as they come, with the watchdog's peak added to each."""

    def __init__(self, path: Path, watchdog: Watchdog, on_epoch: OnEpoch | None) -> None:
        self.path = path
        self.watchdog = watchdog
        self.on_epoch = on_epoch
        self.seen = 0

    def poll(self) -> bool:
        """Hand on the new records; True when `on_epoch` asked to stop the process."""
        stop = False
        for raw in files.read_jsonl(self.path, self.seen):
            self.seen += 1
            record = dataclasses.replace(EpochRecord.from_json(raw), peak_mb=round(self.watchdog.peak / MIB, 1))
            if self.on_epoch is not None and self.on_epoch(record):
                stop = True
        return stop

    def wait(self, process: subprocess.Popen, started: float, timeout: float) -> str | None:
        """Until the process ends; returns why tuner stopped it ("pruned", a timeout), or None."""
        stopped: str | None = None
        while process.poll() is None:
            time.sleep(POLL_S)
            if self.poll() and not stopped:
                stopped = "pruned"
            if not stopped and time.monotonic() - started > timeout:
                stopped = f"the trial ran longer than its {timeout:.0f} s timeout (probe.trial_timeout)"
            if stopped and process.poll() is None:
                kill_tree(psutil.Process(process.pid))
        process.wait()
        return stopped

    def drain(self, *, report: bool) -> None:
        """Records written after the last poll; handed on only if tuner did not stop the process."""
        if report:
            self.poll()
        else:
            self.seen += len(files.read_jsonl(self.path, self.seen))


def _kill_quietly(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            kill_tree(psutil.Process(process.pid))
        except psutil.NoSuchProcess:
            pass
        process.wait()
