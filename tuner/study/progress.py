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
        self.done = 0  # main trials the study has done (a continued study's earlier runs and other workers' included)
        self.best: float | None = None  # the study's best value so far (tuner.study.search sets it from the study)
        self._prefix = ""
        self._first_start: float | None = None  # this run's first trial's start, and how many were done by then:
        self._done_before = 0  # the ETA is this run's pace, not the study's count over this run's time
        self.ends_at: float | None = None  # when the probe budget ends the run (time.monotonic), once the floor has
        # run and the budget is kept (tuner.study.deadlines sets it): the ETA is no later than that

    def say(self, text: str, *, important: bool = False) -> None:
        if self.quiet and not important:
            return
        self._clear()
        print(text, file=self.stream, flush=True)

    def trial_start(self, number: int, params: Params, note: str = "") -> None:
        if self._first_start is None:
            self._first_start, self._done_before = time.monotonic(), self.done
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
        ran = self.done - self._done_before
        eta = ""
        if self._first_start is not None and ran > 0 and self.done < self.total:
            now = time.monotonic()
            left = (now - self._first_start) / ran * (self.total - self.done)  # the plan's count at this run's pace
            if self.ends_at is not None:  # a budget that fell (a share following a cheaper pick) ends it sooner
                left = min(left, max(0.0, self.ends_at - now))
            eta = f" | ETA {left / 60:.0f} min"
        best = f" | best {self.best:.3f}" if self.best is not None else ""
        self.say(f"{self._prefix} -> {result}{peak}{why}{best}{eta}")

    def _live(self, text: str) -> None:
        width = 160
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r" + " " * 160 + "\r")
