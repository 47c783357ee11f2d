"""The physical footprint (tuner.memory.footprint): macOS is reached through a fake libproc, as MPS through a fake
torch.mps; elsewhere the footprint is 0 and the watchdog bounds RSS, as the real process here shows."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import psutil
import pytest

from tuner.memory import footprint as footprints
from tuner.memory.budget import MIB
from tuner.memory.watchdog import Watchdog, tree_memory


class FakeLibproc:
    """proc_pid_rusage as libproc has it: fills `struct rusage_info_v2` for a live pid, returns -1 otherwise."""

    def __init__(self, footprints_by_pid: dict[int, int]):
        self.footprints = footprints_by_pid
        self.flavors: list[int] = []

    def proc_pid_rusage(self, pid, flavor, buffer):
        self.flavors.append(flavor)
        if pid not in self.footprints:
            return -1
        info = ctypes.cast(buffer, ctypes.POINTER(footprints.RusageInfoV2)).contents
        info.ri_resident_size = 1
        info.ri_phys_footprint = self.footprints[pid]
        return 0


@pytest.fixture
def macos(monkeypatch):
    """This process as if on macOS, with a libproc that knows the footprints the test sets."""
    fake = FakeLibproc({})
    monkeypatch.setattr(footprints.sys, "platform", "darwin")
    monkeypatch.setattr(footprints, "_libproc", lambda: fake)
    return fake


def test_on_macos_the_footprint_is_read_with_proc_pid_rusage_v2(macos):
    macos.footprints[os.getpid()] = 3 * 2**30
    assert footprints.footprint(psutil.Process()) == 3 * 2**30
    assert macos.flavors == [2]  # RUSAGE_INFO_V2, the first flavor with ri_phys_footprint
    assert ctypes.sizeof(footprints.RusageInfoV2) == 16 + 18 * 8  # the C struct's layout


def test_an_unreadable_footprint_is_0_and_a_process_that_ended_is_no_such_process(macos):
    assert footprints.footprint(psutil.Process()) == 0  # another user's process, say: RSS stands alone
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(ended.pid)
    ended.wait()
    with pytest.raises(psutil.NoSuchProcess):
        footprints._rusage_footprint(process.pid, macos)


def test_psutils_own_footprint_is_used_where_it_has_one():
    class Process:
        pid = 0

        def memory_info_ex(self):
            return type("pmem", (), {"phys_footprint": 5 * MIB})()

    assert footprints.footprint(Process()) == 5 * MIB


def test_elsewhere_there_is_no_footprint_and_the_watchdog_bounds_rss():
    if sys.platform == "darwin":
        pytest.skip("this machine is a Mac: its footprint is real")
    assert footprints.footprint(psutil.Process()) == 0
    rss, foot = tree_memory(psutil.Process())
    assert rss > 10 * MIB and foot == 0


def test_the_watchdog_kills_on_a_footprint_over_the_budget_that_rss_stays_under(macos):
    """macOS charges compressed pages to the footprint, not to RSS: a process whose RSS is small can be killed by
    the OS. The watchdog sees the footprint (here a fake's 900 MiB for a 10 MiB process) and kills first."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    macos.footprints[process.pid] = 900 * MIB
    with Watchdog(process.pid, 500 * MIB, measure=lambda rss, device, foot: max(rss, foot)) as dog:
        process.wait(timeout=20)
    assert process.returncode == -9 and dog.killed_reason.startswith("watchdog: 900 MiB")
    assert dog.peak_footprint == 900 * MIB and dog.peak_rss < 500 * MIB
