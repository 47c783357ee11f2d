import subprocess
import sys

import pytest

from tuner.errors import ConfigError
from tuner.memory.budget import MIB, parse_budget
from tuner.memory.watchdog import Watchdog

GIB = 2**30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("800MB", 800 * 10**6),
        ("3GB", 3 * 10**9),
        ("2.5GiB", int(2.5 * GIB)),
        ("512 MiB", 512 * 2**20),
        ("0.7", int(0.7 * 16 * GIB)),
        (0.5, 8 * GIB),
        (1, 16 * GIB),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text, 16 * GIB) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "is not a size"),
        ("-1GB", "is not a size"),
        ("0", "greater than 0"),
        ("5", "has no unit"),
        ("3 parsecs", "unknown unit"),
        (True, "is not a size"),
    ],
)
def test_parse_budget_rejects(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_budget(text, 16 * GIB)


def _hog(megabytes: int, seconds: float) -> subprocess.Popen:
    code = f"import time; block = b'x' * ({megabytes} * 1024 * 1024); time.sleep({seconds})"  # pages written
    return subprocess.Popen([sys.executable, "-c", code])


def test_watchdog_kills_a_process_over_budget_and_records_its_peak():
    process = _hog(400, 30)
    with Watchdog(process.pid, budget=200 * MIB, measure=lambda rss, device, footprint: rss) as watchdog:
        process.wait(timeout=20)
    assert process.returncode == -9
    assert watchdog.killed_reason.startswith("watchdog:")
    assert watchdog.peak > 200 * MIB


def test_watchdog_counts_the_whole_process_tree():
    # a parent holding little, whose child holds 300 MB: only the tree total goes over 250 MB
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; b = bytes(1) * (300 * 2**20); time.sleep(30)']); "
        "time.sleep(30)"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    with Watchdog(process.pid, budget=250 * MIB, measure=lambda rss, device, footprint: rss) as watchdog:
        process.wait(timeout=20)
    assert watchdog.killed_reason is not None  # the parent alone holds about 10 MB
    assert watchdog.peak_rss > 250 * MIB


def test_watchdog_leaves_a_process_within_budget_alone():
    process = _hog(50, 1)
    with Watchdog(process.pid, budget=1000 * MIB, measure=lambda rss, device, footprint: rss) as watchdog:
        process.wait(timeout=20)
    assert process.returncode == 0
    assert watchdog.killed_reason is None
    assert 50 * MIB < watchdog.peak < 1000 * MIB


def test_watchdog_adds_reported_device_memory(tmp_path):
    device_file = tmp_path / "device_bytes"
    device_file.write_text(str(900 * MIB))
    process = _hog(10, 30)
    with Watchdog(process.pid, 500 * MIB, measure=lambda rss, device, footprint: rss + device, device_file=device_file) as dog:
        process.wait(timeout=20)
    assert dog.killed_reason is not None
    assert dog.peak_device == 900 * MIB
