"""A process's physical footprint: the memory macOS charges it for, and kills it on.

On macOS the OS (jetsam, Activity Monitor's Memory column, footprint(1)) counts a process's phys_footprint: its
dirty anonymous pages, their compressed copies, and wired and IOKit memory. RSS misses the compressed pages (an
idle or swapped process shows half of what it is charged) and counts clean file pages that the footprint does not.
psutil returns the footprint from `memory_info_ex()` where it has it (its releases after 7.2); before that, tuner
reads it as psutil does, with libproc's `proc_pid_rusage()`, which succeeds for every process of the same user.
Elsewhere there is no footprint (0), and the budget bounds RSS alone (tuner.memory.device).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any

import psutil

RUSAGE_INFO_V2 = 2  # <sys/resource.h>: the first flavor with ri_phys_footprint


class RusageInfoV2(ctypes.Structure):
    """`struct rusage_info_v2` of <sys/resource.h>."""

    _fields_ = [
        ("ri_uuid", ctypes.c_uint8 * 16),
        *((name, ctypes.c_uint64) for name in (
            "ri_user_time", "ri_system_time", "ri_pkg_idle_wkups", "ri_interrupt_wkups", "ri_pageins",
            "ri_wired_size", "ri_resident_size", "ri_phys_footprint", "ri_proc_start_abstime",
            "ri_proc_exit_abstime", "ri_child_user_time", "ri_child_system_time", "ri_child_pkg_idle_wkups",
            "ri_child_interrupt_wkups", "ri_child_pageins", "ri_child_elapsed_abstime", "ri_diskio_bytesread",
            "ri_diskio_byteswritten",
        )),  # fmt: skip
    ]


def footprint(process: psutil.Process) -> int:
    """The physical footprint of `process` in bytes; 0 where the platform has none (every OS but macOS), or where it
    cannot be read (the caller then has RSS). Raises psutil.NoSuchProcess for a process that has ended."""
    info = getattr(process, "memory_info_ex", None)
    if info is not None:
        found = getattr(info(), "phys_footprint", None)
        if found is not None:
            return int(found)
    if sys.platform != "darwin":
        return 0
    return _rusage_footprint(process.pid, _libproc())


@functools.lru_cache(maxsize=1)
def _libproc() -> Any:
    name = ctypes.util.find_library("proc") or "/usr/lib/libproc.dylib"
    try:
        library = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    library.proc_pid_rusage.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
    library.proc_pid_rusage.restype = ctypes.c_int
    return library


def _rusage_footprint(pid: int, libproc: Any) -> int:
    if libproc is None:
        return 0
    info = RusageInfoV2()
    if libproc.proc_pid_rusage(pid, RUSAGE_INFO_V2, ctypes.byref(info)) != 0:
        if not psutil.pid_exists(pid):
            raise psutil.NoSuchProcess(pid)
        return 0  # another user's process, say: RSS stands alone
    return int(info.ri_phys_footprint)
