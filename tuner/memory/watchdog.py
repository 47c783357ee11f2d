"""The watchdog that enforces the memory budget over a trial's whole process tree (psutil), and the kill
of that tree."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import psutil

from tuner.memory.budget import MIB
from tuner.memory.footprint import footprint


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """Resident memory (RSS) and physical footprint (macOS; 0 elsewhere: tuner.memory.footprint) of a process and
    all its descendants (dataloader workers included)."""
    rss = foot = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            rss += member.memory_info().rss
            foot += footprint(member)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return rss, foot


def kill_tree(process: psutil.Process) -> None:
    """SIGKILL a process and everything it started, children first.

    Descendants are waited for here; the root is left for its own parent to reap (a `Popen.wait()`
    that finds it already reaped would report exit code 0 instead of -9).
    """
    try:
        descendants = process.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for member in [*descendants, process]:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(descendants, timeout=5)


def read_device_bytes(path: Path | None) -> int:
    """The device memory a trial process last reported in its small status file (0 if none yet)."""
    if path is None:
        return 0
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


class Watchdog:
    """Samples a process tree (and the device memory it reports) and kills it over the budget.

    `measure(rss, device_bytes, footprint)` gives the budgeted quantity (see tuner.memory.device.Device.measured).
    Peaks are kept for every sample; `killed_reason` is set when the watchdog killed the tree.
    """

    def __init__(
        self,
        pid: int,
        budget: int,
        measure: Callable[[int, int, int], int],
        device_file: Path | None = None,
        interval: float = 0.1,
    ) -> None:
        self.process = psutil.Process(pid)
        self.budget = budget
        self.measure = measure
        self.device_file = device_file
        self.interval = interval
        self.peak = 0
        self.peak_rss = 0
        self.peak_footprint = 0
        self.peak_device = 0
        self.killed_reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuner-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        rss, foot = tree_memory(self.process)
        device_bytes = read_device_bytes(self.device_file)
        current = self.measure(rss, device_bytes, foot)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_footprint = max(self.peak_footprint, foot)
        self.peak_device = max(self.peak_device, device_bytes)
        self.peak = max(self.peak, current)
        return current

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                current = self.sample()
            except psutil.NoSuchProcess:
                return
            if current > self.budget:
                self.killed_reason = (
                    f"watchdog: {current / MIB:.0f} MiB is over the {self.budget / MIB:.0f} MiB budget"
                )
                kill_tree(self.process)
                return
            time.sleep(self.interval)
