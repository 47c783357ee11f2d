"""The memory budget: a size or a share of the device's usable memory, in bytes (MiB for people).
The watchdog that enforces it is tuner.memory.watchdog."""

from __future__ import annotations

import re

from tuner.errors import ConfigError

MIB = 1024 * 1024
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_budget(value: str | float | int, usable: int) -> int:
    """`800MB`, `3GB`, `2.5GiB` (GB = 10^9, GiB = 2^30) or a fraction such as `0.7` of `usable` bytes."""
    hint = "a size like 800MB, 3GB or 2.5GiB, or a fraction of usable memory like 0.7"
    if isinstance(value, bool):
        raise ConfigError(f"The memory budget {value!r} is not {hint}.")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(f"The memory budget {value!r} is not {hint}.")
        number, unit = float(match.group(1)), match.group(2).lower()
    if number <= 0:
        raise ConfigError(f"The memory budget {value!r} must be greater than 0; use {hint}.")
    if not unit:
        if number > 1:
            raise ConfigError(f"The memory budget {value!r} has no unit; write e.g. {value}GB, or a fraction <= 1.")
        return int(number * usable)
    if unit not in _UNITS:
        raise ConfigError(f"The memory budget {value!r} has an unknown unit {unit!r}; use MB, GB, MiB or GiB.")
    return int(number * _UNITS[unit])


def describe_budget(given: str | float | int, budget: int, usable: int) -> str:
    """The budget as the user gave it, and in MiB, the unit of every figure tuner prints and stores."""
    if isinstance(given, str) and _SIZE.match(given) and _SIZE.match(given).group(2):
        return f"{given.strip()} ({budget / MIB:.0f} MiB)"
    return f"{budget / MIB:.0f} MiB ({float(given):g} of {usable / MIB:.0f} MiB usable)"
