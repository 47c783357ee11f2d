"""Shared fixtures: a tiny real dataset, in-process CLI runs, and a hook on trial processes."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Callable

import optuna
import psutil
import pytest
import sqlalchemy

from tuner.cli import main
from tuner.data import shapes
from tuner.params import config_key
from tuner.process.contract import PROBE_CHILD, STAGE_CHILD
from tuner.study.records import TrialRecord

TINY = shapes.ShapesSpec(seed=7, n_train=8, n_val=4, image_size=160)
TINY_NAME = f"{TINY.key}-yolov8n-cpu"  # the default study name of the tiny dataset, yolov8n.yaml and the CPU


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """An 8 + 4 image shapes dataset: a probe at imgsz 64 trains on it in a few seconds."""
    return shapes.build_shapes(TINY, root=tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Each test runs tuner in its own folder, so studies/ and results/ start empty."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run_cli(capsys):
    """`tuner ...` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def trial_processes(preflights: bool = False) -> list[psutil.Process]:
    """The probe/train processes started by this test process; pre-flights (tuner.study.limits) only if asked."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            command = process.cmdline()
            if not preflights and any(f"{os.sep}preflight{os.sep}" in part for part in command):
                continue
            if any(part in (PROBE_CHILD, STAGE_CHILD) for part in command):
                found.append(process)
        except psutil.Error:
            continue
    return found


class TrialHook:
    """Calls `action(process, index)` on each new trial process, from a background thread.

    With `until`, the action waits until `until(process)` holds (an event of that process, such as
    its memory showing that torch is loaded), or the process ends.
    """

    def __init__(
        self,
        action: Callable[[psutil.Process, int], None],
        until: Callable[[psutil.Process], bool] | None = None,
        limit: int = 1,
    ):
        self.action = action
        self.until = until
        self.limit = limit
        self.seen: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TrialHook:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.is_set() and len(self.seen) < self.limit:
            for process in trial_processes():
                if process.pid not in self.seen:
                    self.seen.add(process.pid)
                    if self.until is None or wait_for(process, self.until):
                        self.action(process, len(self.seen) - 1)
            time.sleep(0.02)


def wait_for(process: psutil.Process, event: Callable[[psutil.Process], bool], timeout: float = 120.0) -> bool:
    """Poll until `event(process)` holds; False if the process ended (or the time ran out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if event(process):
                return True
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.02)
    return False


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    """Poll until `condition()` holds; False if the time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def heartbeat_age(storage: optuna.storages.RDBStorage, trial_id: int) -> float | None:
    """Seconds since the trial's last heartbeat, on the database's own clock (Optuna stamps heartbeats with the
    database's now()); None before its first one."""
    query = sqlalchemy.text("SELECT CURRENT_TIMESTAMP, heartbeat FROM trial_heartbeats WHERE trial_id = :trial")
    with storage.engine.connect() as connection:
        row = connection.execute(query, {"trial": trial_id}).first()
    if row is None:
        return None
    now, beat = (datetime.fromisoformat(value) if isinstance(value, str) else value for value in row)  # SQLite: text
    return (now.replace(tzinfo=None) - beat.replace(tzinfo=None)).total_seconds()


def has_loaded_torch(process: psutil.Process) -> bool:
    """The trial process is past its imports: torch alone takes a few hundred MB."""
    return process.memory_info().rss > 300 * 2**20


@pytest.fixture
def trial_hook():
    return TrialHook


def repeats_owed(trials: list[optuna.trial.FrozenTrial], wanted: int) -> int:
    """The noise repeats a finished study runs for `wanted`: fewer by each config the sampler itself proposed twice
    among the main trials, whose second run measured the noise already (tuner.study.selection.to_repeat). TPE does
    that now and then where every probe scores alike, as tiny probes do (0.000)."""
    main = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and TrialRecord.of(t).repeat_of is None]
    twice = [runs for runs in Counter(config_key(t.params) for t in main).values() if runs >= 2]
    return max(0, wanted - len(twice))


def tiny_probe_args(data_yaml: Path, *extra: str) -> list[str]:
    """A probe small enough for the default test run: random-init yolov8n at imgsz 64, one epoch."""
    return [
        "probe",
        "--data", str(data_yaml),
        "--model", "yolov8n.yaml",
        "--device", "cpu",
        "--imgsz", "64",
        "--batch", "2,4",
        "--probe-epochs", "1",
        "--repeats", "0",
        "--probe-budget", "none",  # a tiny probe's plan is not for the default budget to cut (tests/study/test_budget.py)
        *extra,
    ]



class Ledger:
    """What the reliability tests did to real processes and files, and what they found intact; printed at the
    end of the run (README's reliability section quotes it). A test records only after its checks passed."""

    def __init__(self) -> None:
        self.kills: dict[str, int] = {}
        self.inputs: list[str] = []
        self.intact = 0
        self.outside: list[str] = []  # disk and storage failures survived

    def kill(self, what: str, count: int = 1) -> None:
        self.kills[what] = self.kills.get(what, 0) + count

    def refused(self, what: str) -> None:
        self.inputs.append(what)

    def checked(self, items: int) -> None:
        self.intact += items

    def survived(self, what: str) -> None:
        self.outside.append(what)

    def lines(self) -> list[str]:
        if not (self.kills or self.inputs or self.outside):
            return []
        kills = ", ".join(f"{what} x{count}" for what, count in sorted(self.kills.items()))
        return [
            f"kills survived: {sum(self.kills.values())} ({kills})",
            f"disk and storage failures survived: {len(self.outside)} ({', '.join(self.outside)})",
            f"malformed inputs refused with one line and exit 2, nothing changed: {len(self.inputs)}",
            f"items checked intact after them (trials, files, checkpoints, counts): {self.intact}; items lost: 0",
        ]


LEDGER = Ledger()


@pytest.fixture
def ledger() -> Ledger:
    return LEDGER


def pytest_terminal_summary(terminalreporter) -> None:
    lines = LEDGER.lines()
    if lines:
        terminalreporter.section("reliability")
        for line in lines:
            terminalreporter.write_line(line)
