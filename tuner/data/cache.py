"""What tuner generates into its cache: built once, atomically, and swept when a newer version replaces it.

Layout under `offline.cache_dir()`:

    datasets/shapes-v2-probe-s0-96x96-512/   the embedded dataset (tuner.data.shapes): data.yaml, images/, labels/
    datasets/shapes-v2-base-s1-...           separate data the base checkpoint is trained on (never the embedded val)
    weights/base-v2-....pt                   the base checkpoint (tuner.data.base_model), optimizer stripped
    weights/base-v2-....log                  the log of the process that built it
    resolved/<stem>-<hash>.yaml              checked copies of users' dataset YAMLs (tuner.data.datasets)

Datasets and checkpoints are built under a file lock into a temporary name and moved into place with
`os.replace`, so a killed build leaves no half dataset or checkpoint, and two processes never build the same
thing at once. Once a current version is built, the cache's entries of older versions (`shapes-v1-*`,
`base-v1-*`) are deleted. Single files written whole (the resolved YAMLs) go through `tuner.files` instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

GENERATOR_VERSION = 2  # bump when the shapes rendering or the base recipe changes: every cache key changes with it


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<target>.lock` while deciding whether to build `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Build `target` (a file or folder) once: under a lock, into a temporary sibling, then `os.replace`.

    `build` gets the temporary path; other temporary paths it makes next to it should start with that
    path's name, so that a killed build's leftovers are swept with it by the next build.
    """
    with _build_lock(target):
        if target.exists():
            return target
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
    return target


def remove_older_versions(folder: Path, prefix: str) -> list[Path]:
    """Delete `<prefix>-vN-*` entries of `folder` with N below GENERATOR_VERSION, once a current one is built.

    An older tuner's data and base weights are never used again (every key names its version), and
    each version is a few hundred MB; entries of newer versions are left to the tuner that made them.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}-v(\d+)-")
    removed = []
    for entry in sorted(folder.iterdir()):
        match = pattern.match(entry.name)
        if match is None or int(match.group(1)) >= GENERATOR_VERSION:
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError:  # in use, or not ours to delete: it only costs disk space
            continue
        removed.append(entry)
    return removed
