"""Run one probe in its own process under the memory watchdog, and classify how it ended.

A file in (`spec.json`), a file out (`result.json`), the log in `log.txt`, one JSON line per epoch
in `progress.jsonl`. The end is classified from facts, in this order:
1. the watchdog killed it                      -> oom   (reason: the measured memory and budget)
2. tuner stopped it (pruner, trial timeout)     -> pruned / error
3. result.json says ok / oom / error            -> that (ok with a smaller batch than asked -> oom)
4. no result and killed by SIGKILL (-9 / 137)   -> oom   (the OS OOM killer, macOS jetsam)
5. no result otherwise                          -> error (with the log's tail)
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import psutil

from tuner import child, offline
from tuner.device import Device
from tuner.memory import MB, Watchdog, kill_tree

SIGKILL_CODES = (-signal.SIGKILL, 128 + signal.SIGKILL)
LOG_TAIL_LINES = 15


@dataclasses.dataclass(frozen=True)
class Outcome:
    outcome: str  # "ok" | "oom" | "error" | "pruned"
    value: float | None
    reason: str | None  # oom_reason, the error message, or why it was stopped
    cause: str | None  # see Classified.cause
    peak_mb: float
    peak_rss_mb: float
    peak_device_mb: float
    returncode: int | None
    duration_s: float
    epochs_done: int
    batch_used: int | None
    imgsz_used: int | None
    log: Path

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class Classified(NamedTuple):
    outcome: str  # "ok" | "oom" | "error" | "pruned"
    reason: str | None
    # For OOMs, what says so: "watchdog", "exception", "batch-halving" (each measured against this
    # trial's own budget) or "os-kill" (a SIGKILL from outside, which other processes may have caused).
    cause: str | None = None


def classify(
    *,
    returncode: int | None,
    result: dict[str, Any] | None,
    watchdog_reason: str | None,
    stopped: str | None,
    asked_batch: int,
) -> Classified:
    """How a finished trial process ended, from its facts; see the module docstring."""
    if watchdog_reason:
        return Classified("oom", watchdog_reason, "watchdog")
    if stopped == "pruned":
        return Classified("pruned", "stopped by the pruner: its metric was below the median of earlier trials")
    if stopped:
        return Classified("error", stopped)
    if result is not None:
        status = result.get("status")
        if status == "ok":
            used = result.get("batch_used")
            if used is not None and used < asked_batch:
                reason = f"Ultralytics halved batch {asked_batch} -> {used} after an out-of-memory error"
                return Classified("oom", reason, "batch-halving")
            return Classified("ok", None)
        if status == "oom":
            cause = "batch-halving" if result.get("halved") else "exception"
            return Classified("oom", result.get("reason") or "out of memory", cause)
        return Classified("error", result.get("message") or "the trial reported an error")
    if returncode in SIGKILL_CODES:
        reason = "killed by SIGKILL from outside the trial (the OS out-of-memory killer or jetsam)"
        return Classified("oom", reason, "os-kill")
    if returncode is not None and returncode < 0:
        return Classified("error", f"killed by signal {signal.Signals(-returncode).name}")
    return Classified("error", f"the trial process exited with code {returncode} without a result")


def run_probe_process(
    spec: dict[str, Any],
    trial_dir: Path,
    device: Device,
    budget: int,
    timeout: float,
    on_epoch: Callable[[dict[str, Any]], bool] | None = None,
    module: str = "tuner.probe",
) -> Outcome:
    """Run `python -m <module> spec.json` to its end; `on_epoch(record)` returning True prunes it."""
    trial_dir = Path(trial_dir).resolve()
    trial_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: trial_dir / name for name in ("spec.json", "result.json", "progress.jsonl", "log.txt")}
    device_file = trial_dir / "device_bytes" if device.kind != "cpu" else None
    for path in (paths["result.json"], paths["progress.jsonl"]):
        path.unlink(missing_ok=True)
    spec = {
        **spec,
        "result": str(paths["result.json"]),
        "progress": str(paths["progress.jsonl"]),
        "device_file": str(device_file) if device_file else None,
        "project": str(trial_dir),
    }
    child.write_json_atomic(paths["spec.json"], spec)

    started = time.monotonic()
    stopped: str | None = None
    epochs_seen = 0
    with open(paths["log.txt"], "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(paths["spec.json"])],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=offline.child_env(device.child_env(budget)),
            cwd=trial_dir,
            start_new_session=True,  # Ctrl-C reaches tuner, which then stops the trial itself
        )
        try:
            with Watchdog(process.pid, budget, device.measured, device_file) as watchdog:
                while process.poll() is None:
                    time.sleep(0.2)
                    for record in _new_records(paths["progress.jsonl"], epochs_seen):
                        epochs_seen += 1
                        record["peak_mb"] = round(watchdog.peak / MB, 1)
                        if on_epoch and on_epoch(record) and not stopped:
                            stopped = "pruned"
                    if not stopped and time.monotonic() - started > timeout:
                        stopped = f"the trial ran longer than its {timeout:.0f} s timeout (probe.trial_timeout)"
                    if stopped and process.poll() is None:
                        kill_tree(psutil.Process(process.pid))
                process.wait()
        except BaseException:
            _kill_quietly(process)
            raise
    for record in _new_records(paths["progress.jsonl"], epochs_seen):
        epochs_seen += 1
        if on_epoch and stopped is None:
            on_epoch(record)
    result = _read_result(paths["result.json"])
    outcome, reason, cause = classify(
        returncode=process.returncode,
        result=result,
        watchdog_reason=watchdog.killed_reason,
        stopped=stopped,
        asked_batch=spec["params"]["batch"],
    )
    device_peak = max(watchdog.peak_device, (result or {}).get("device_peak") or 0)
    peak = max(watchdog.peak, device.measured(watchdog.peak_rss, device_peak))
    return Outcome(
        outcome=outcome,
        value=result.get("value") if result and outcome == "ok" else None,
        reason=reason,
        cause=cause,
        peak_mb=round(peak / MB, 1),
        peak_rss_mb=round(watchdog.peak_rss / MB, 1),
        peak_device_mb=round(device_peak / MB, 1),
        returncode=process.returncode,
        duration_s=round(time.monotonic() - started, 2),
        epochs_done=epochs_seen,
        batch_used=(result or {}).get("batch_used"),
        imgsz_used=(result or {}).get("imgsz_used"),
        log=paths["log.txt"],
    )


def _new_records(path: Path, seen: int) -> list[dict[str, Any]]:
    """Complete JSON lines of the progress file after the first `seen` ones."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = [line for line in text.split("\n")[:-1] if line.strip()]  # the last piece may be half-written
    return [json.loads(line) for line in lines[seen:]]


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _kill_quietly(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            kill_tree(psutil.Process(process.pid))
        except psutil.NoSuchProcess:
            pass
        process.wait()
