"""What every training process does around its training (tuner.process.child), in real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.fakes import FakeCuda
from tuner.params import Params
from tuner.process import child
from tuner.process.child import PARENT_ENV
from tuner.process.contract import ChildSpec


def test_a_process_whose_tuner_died_before_it_looked_exits_at_once():
    """The tuner can be killed while its trial process is still importing: by the time the process asks
    who its parent is, init has adopted it. It must compare against the tuner it was started by."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs: the "tuner" that died
    code = "from tuner.process.child import exit_with_parent; import time; exit_with_parent(0.05); time.sleep(30)"
    started = time.monotonic()
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, PARENT_ENV: str(gone.pid)}, timeout=60)
    assert child.returncode == 3 and time.monotonic() - started < 20


def test_a_training_process_ends_right_after_writing_its_result(tmp_path):
    """Python's own shutdown after torch grows RSS by 110-125 MB in its last 0.3 s (a watchdog kill of a
    finished process): nothing of it runs once the result is written."""
    marker = tmp_path / "shutdown-ran"
    spec = {"model": "m", "data": "d", "device": "cpu", "device_kind": "cpu", "budget": 1, "metric": "x",
            "params": {"imgsz": 64, "batch": 2, "mosaic": 0.5, "mixup": 0.0}, "folder": str(tmp_path)}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = (
        "import atexit, sys; from pathlib import Path\n"
        "from tuner.process import child; from tuner.process.contract import ChildResult, ChildSpec\n"
        f"atexit.register(lambda: Path({str(marker)!r}).write_text('ran'))\n"
        "child.main_for(ChildSpec, lambda spec: ChildResult(status='ok', epochs_done=1), [sys.argv[1]])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "spec.json")], timeout=60)
    assert done.returncode == 0
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "ok"
    assert not marker.exists()  # the interpreter's shutdown never ran


def test_a_training_on_cuda_card_n_caps_and_reads_card_n(tmp_path, monkeypatch):
    """--device cuda:1: Ultralytics makes card 1 current only inside model.train(); the budget and the readings come
    first, and torch's calls without a device would cap and read card 0."""
    cards = FakeCuda((8 * 2**30, 4 * 2**30), reserved={0: 2**30, 1: 2**30}, peaks={1: 3 * 2**30}).install(monkeypatch, torch)
    monkeypatch.setattr(child, "import_ultralytics", lambda kind: None)
    monkeypatch.setattr(child.DeviceMemoryReporter, "start", lambda reporter: reporter)  # read on demand, no thread
    spec = ChildSpec(model="m.pt", data="d.yaml", device="1", device_kind="cuda", budget=2 * 2**30,
                     params=Params(64, 2, 0.5, 0.0), metric="x", folder=str(tmp_path))  # fmt: skip
    training = child.Training(spec)
    assert cards.current == 1 and cards.fractions == {1: pytest.approx(0.5)}  # 2 GiB of card 1's 4; card 0 untouched
    assert training.device_peak() == 3 * 2**30  # card 1's high-water mark, not what it or card 0 holds now
