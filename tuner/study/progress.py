"""What a person watching `tuner probe` sees: one live line per trial on a terminal, plain lines
otherwise (CI, logs), nothing but warnings and the result with --quiet.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tuner.memory.budget import MIB
from tuner.params import Params
from tuner.process.contract import EpochRecord


class Progress:
    def __init__(self, total: int, budget: int, metric_name: str, *, quiet: bool = False, stream: TextIO | None = None):
        self.total = total
        self.budget = budget
        self.metric_name = metric_name
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() and not quiet
        self.started = time.monotonic()
        self.done = 0
        self.best: float | None = None
        self._prefix = ""

    def say(self, text: str, *, important: bool = False) -> None:
        if self.quiet and not important:
            return
        self._clear()
        print(text, file=self.stream, flush=True)

    def trial_start(self, number: int, params: Params, note: str = "") -> None:
        self._prefix = f"trial {number} [{self.done + 1}/{self.total}] {params}{note}"
        if self.live:
            self._live(f"{self._prefix} | starting")
        elif not self.quiet:
            self.say(f"{self._prefix} | started")

    def epoch(self, record: EpochRecord, epochs: int) -> None:
        text = f"{self._prefix} | epoch {record.epoch}/{epochs} {self.metric_name} {record.value:.3f}"
        if record.peak_mb is not None:
            text += f" | peak {record.peak_mb:.0f}/{self.budget / MIB:.0f} MiB"
        if self.live:
            self._live(text)
        elif not self.quiet:
            self.say(text)

    def trial_end(
        self, outcome: str, value: float | None, peak_mb: float | None, reason: str | None, counted: bool = True
    ) -> None:
        self.done += counted
        if value is not None and (self.best is None or value > self.best):
            self.best = value
        result = f"{self.metric_name} {value:.3f}" if value is not None else outcome.upper()
        peak = f" | peak {peak_mb:.0f} MiB" if peak_mb else ""
        why = f" | {reason}" if reason and outcome != "ok" else ""
        elapsed = time.monotonic() - self.started
        eta = ""
        if 0 < self.done < self.total:
            eta = f" | ETA {elapsed / self.done * (self.total - self.done) / 60:.0f} min"
        best = f" | best {self.best:.3f}" if self.best is not None else ""
        self.say(f"{self._prefix} -> {result}{peak}{why}{best}{eta}")

    def _live(self, text: str) -> None:
        width = 160
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r" + " " * 160 + "\r")
