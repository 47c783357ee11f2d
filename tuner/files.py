"""Files that a reader never sees half-written, even when the writer is killed mid-write.

Every state, result, config and report file of tuner goes through `replacing()`: the content is
written to a temporary sibling (same folder, so the rename stays on one filesystem), flushed to disk,
then `os.replace`d over the target, which readers see as one step. The temporary file is created
with a plain `open()`, so the result has the permissions the user's umask gives, like any other file
the user makes (`tempfile.mkstemp` would leave 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

import yaml


@contextlib.contextmanager
def replacing(path: Path, *, sync: bool = True) -> Iterator[Path]:
    """A temporary sibling of `path` to write to; it replaces `path` when the block ends without error.

    For writers that want a file name (matplotlib's savefig, Ultralytics' strip_optimizer). On an
    error, or a kill, `path` keeps its previous content and the temporary file is removed (or, after
    a kill, left behind under a dot-name that no reader opens). A writer that wrote nothing leaves
    `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            return
        if sync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes, *, sync: bool = True) -> Path:
    with replacing(path, sync=sync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str, *, sync: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), sync=sync)


def write_json(path: Path, payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, default=str))


def write_yaml(path: Path, payload: dict[str, Any], header: list[str] | None = None) -> Path:
    """YAML with an optional comment header (one `# ` line each)."""
    text = "".join(f"# {line}\n" for line in header or [])
    return write_text(path, text + yaml.safe_dump(payload, sort_keys=False))


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None where there is no such file or it does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One JSON object per line, flushed at once; readers take whole lines only."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()


def read_jsonl(path: Path, skip: int = 0) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file after the first `skip`; a half-written last line is left out."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    lines = [line for line in text.split("\n")[:-1] if line.strip()]
    return [json.loads(line) for line in lines[skip:]]


def check_writable(folder: Path, flag: str) -> None:
    """Write (and remove) a small file in `folder`, or in its nearest existing parent when it does not exist yet
    (creating nothing); one ConfigError line when the disk says no. Run before any work, so that a read-only or
    full disk stops a run at its start rather than at its end."""
    from tuner.errors import ConfigError

    folder = Path(folder)
    there = folder.absolute()
    while not there.exists() and there != there.parent:
        there = there.parent
    probe = there / f".tuner-write-check.{os.getpid()}"
    try:
        try:
            probe.write_bytes(b"\0" * 4096)
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"Cannot write to {folder} ({reason}); free space or fix its permissions, or pass {flag} "
                          "with a writable folder.") from None  # fmt: skip
