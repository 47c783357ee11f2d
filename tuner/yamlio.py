"""YAML files that must never be half-written: temp file, fsync, `os.replace`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def write_yaml_atomic(path: Path, payload: dict[str, Any], header: list[str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header or [])
    text += yaml.safe_dump(payload, sort_keys=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
