"""Checks of one setting's value: each returns the value, typed, or raises ConfigError with one line
naming the setting, the value and what it must be (Optuna's shape: "The value of `x` is 3, but must be ...")."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

from tuner.errors import ConfigError
from tuner.params import STRIDE


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"The value of `{name}` is {value!r}, but must be true or false.")
    return value


def text(value: Any, name: str) -> str:
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ConfigError(f"The value of `{name}` is {value!r}, but must be a path or name.")
    return str(value)


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def study_name(value: str, name: str) -> str:
    """A study's name becomes a file and folder name (studies/<name>.db, results/<name>/): no separators, no
    `..`, nothing a shell or another file system reads otherwise."""
    if not SAFE_NAME.fullmatch(value):
        raise ConfigError(
            f"The value of `{name}` is {value!r}, but must be letters, digits, '.', '_' and '-', starting with a "
            "letter or digit: it names the study's file and folders."
        )
    return value


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def run_name(value: str, name: str) -> str:
    """A train-best run's folder under results/<study>/, beside best.yaml and the report's files: no dots, so it
    is never one of those files' names."""
    if not RUN_NAME.fullmatch(value):
        raise ConfigError(
            f"The value of `{name}` is {value!r}, but must be letters, digits, '_' and '-', starting with a letter "
            "or digit: it names the run's folder under the study's results."
        )
    return value


def integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"The value of `{name}` is {value!r}, but must be an integer.")
    return value


def positive_int(value: Any, name: str) -> int:
    if integer(value, name) <= 0:
        raise ConfigError(f"The value of `{name}` is {value}, but must be a positive integer.")
    return value


def non_negative_int(value: Any, name: str) -> int:
    if integer(value, name) < 0:
        raise ConfigError(f"The value of `{name}` is {value}, but must be 0 or more.")
    return value


def numeric(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"The value of `{name}` is {value!r}, but must be a number.")
    return float(value)


def positive_float(value: Any, name: str) -> float:
    if numeric(value, name) <= 0:
        raise ConfigError(f"The value of `{name}` is {value}, but must be greater than 0.")
    return float(value)


def fraction(
    value: Any, name: str, *, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> float:
    number = numeric(value, name)
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"The value of `{name}` is {value}, but must be in {left}{low:g}, {high:g}{right}.")
    return number


def choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        same_but_case = [choice for choice in choices if choice.lower() == str(value).lower()]
        close = same_but_case or difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"The value of `{name}` is {value!r}, but must be one of: {', '.join(choices)}.{hint}")
    return value


def as_list(value: Any, name: str) -> list[Any]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(f"`{name}` needs at least one value.")
    return list(values)


def imgsz_choices(value: Any, name: str = "imgsz") -> tuple[int, ...]:
    sizes = []
    for size in as_list(value, name):
        positive_int(size, name)
        if size % STRIDE:
            raise ConfigError(
                f"The value of `{name}` is {size}, but must be a multiple of {STRIDE} (YOLO's largest stride); "
                f"try {max(STRIDE, round(size / STRIDE) * STRIDE)}."
            )
        sizes.append(size)
    return tuple(sorted(set(sizes)))


def batch_choices(value: Any, name: str = "batch") -> tuple[int, ...]:
    return tuple(sorted({positive_int(batch, name) for batch in as_list(value, name)}))


def range(value: Any, name: str) -> tuple[float, float]:
    values = as_list(value, name)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ConfigError(f"`{name}` must be a range [low, high] or one fixed value, not {value!r}.")
    low, high = (fraction(number, name, low=0.0, high=1.0) for number in values)
    if low > high:
        raise ConfigError(f"`{name}` range is [{low:g}, {high:g}], but low must not exceed high.")
    return (low, high)


def seconds_or_auto(value: Any, name: str) -> float | str:
    """`auto`, or seconds greater than 0 (a flag's text included)."""
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"The value of `{name}` is {value!r}, but must be seconds greater than 0 or auto.") from None
    return positive_float(value, name)


NONE = "none"  # an unbounded probe budget
FLOOR = "floor"  # a probe budget of the floor alone: the startup design and one noise repeat (tuner.study.probe_budget)
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def probe_budget(value: Any, name: str = "probe.budget") -> float | str:
    """`value` as the setting holds it: seconds (a float > 0), a share ("15%"), "floor" or "none"; one line on a bad
    one."""
    fix = (f"The value of `{name}` is {value!r}, but must be a duration (6m, 90s, 1h30m, or seconds), a share of the "
           "full training (15%), floor (the startup design and one noise repeat), or none.")  # fmt: skip
    if isinstance(value, bool):
        raise ConfigError(fix)
    if value is None or value == 0 or str(value).strip().lower() in (NONE, "0"):
        return NONE
    if str(value).strip().lower() == FLOOR:
        return FLOOR
    if isinstance(value, (int, float)):
        if not 0 < value < math.inf:
            raise ConfigError(fix)
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            raise ConfigError(fix) from None
        if not 0 < share <= 1000:  # nan fails too
            raise ConfigError(fix)
        return f"{share:g}%"
    seconds = _seconds(text)
    if seconds is None or not 0 < seconds < math.inf:
        raise ConfigError(fix)
    return seconds


def duration_or_none(value: Any, name: str) -> float | None:
    """Seconds greater than 0 from a duration (90s, 45m, 2h, 1h30m, or seconds), or None for none (or null)."""
    fix = f"The value of `{name}` is {value!r}, but must be a duration (90s, 45m, 2h, 1h30m, or seconds) or none."
    if value is None or str(value).strip().lower() == NONE:
        return None
    if isinstance(value, bool):
        raise ConfigError(fix)
    seconds = float(value) if isinstance(value, (int, float)) else _seconds(str(value).strip().lower().replace(" ", ""))
    if seconds is None or not 0 < seconds < math.inf:
        raise ConfigError(fix)
    return seconds


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not text or match is None:
        return None
    hours, mins, secs = (float(part) if part else 0.0 for part in match.groups())
    return hours * 3600 + mins * 60 + secs
