"""The checkpoints of a train-best run: is one whole, how many epochs it holds, and writing them safely.

Two readers, for two processes:
- the supervising process (tuner.train.supervisor) must stay free of torch (it would cost it hundreds of
  MB and seconds for every run); `verify_checkpoint` checks every CRC of the zip archive a torch
  checkpoint is, and `checkpoint_epochs` reads the epoch from the archive's pickle without building
  anything it holds;
- the training process (tuner.train.stage_child) loads the checkpoint with torch (`checkpoint_facts`)
  before it continues from it; torch and Ultralytics are imported there and only there.

And the writers of the training process: Ultralytics writes last.pt and best.pt with
`Path.write_bytes` and rewrites both in its final `strip_optimizer`; `AtomicPath` and
`atomic_strip` route both through tuner.files, so a kill mid-write keeps the previous whole file.
`trim_results_csv` cuts results.csv back to the epochs a checkpoint holds before a resume.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tuner import files
from tuner.errors import TunerError

if TYPE_CHECKING:
    from tuner.train.records import RunPlan, RunState, StageProgress
    from tuner.train.run_folder import RunFiles


class CheckpointError(TunerError):
    """A checkpoint of this run cannot be used; it is left as it is."""


class CheckpointUnusable(Exception):
    """The training process cannot load the checkpoint it was to continue from; it is left exactly as it is."""


def untouched(path: Path, root: Path) -> str:
    return f"{path} was left untouched; restore it from a backup, or move {root} away to train from scratch"


# ------------------------------------------------------------------------- the supervisor's side (no torch)


def verify_checkpoint(path: Path, root: Path) -> None:
    """A torch checkpoint is a zip archive: every member's CRC must match, or it is corrupt (e.g. cut short)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, zlib.error) as exc:
        raise CheckpointError(f"The checkpoint is corrupt ({str(exc) or type(exc).__name__}): {untouched(path, root)}.") from None
    if bad is not None:
        raise CheckpointError(f"The checkpoint is corrupt (bad CRC in {bad}): {untouched(path, root)}.")


class _Opaque:
    """Whatever a checkpoint's pickle builds besides plain containers: accepted and ignored."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _TopLevelUnpickler(pickle.Unpickler):
    """Reads the plain values of a torch checkpoint without torch: no class is imported, no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        return None


def checkpoint_epochs(path: Path) -> int | None:
    """Epochs trained into an Ultralytics checkpoint, read from its pickle alone; None if unreadable.

    The supervisor records an epoch after the training process has saved it, so a kill in between
    leaves state.json one epoch behind last.pt; the checkpoint is the truth a resume continues from.
    Reading it this way costs milliseconds and keeps torch out of the supervising process's memory.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
            ckpt = _TopLevelUnpickler(io.BytesIO(archive.read(name))).load()
        epoch = ckpt.get("epoch")
        if isinstance(epoch, int) and epoch >= 0:
            return epoch + 1
        epochs = (ckpt.get("train_results") or {}).get("epoch")  # a final, stripped checkpoint: epoch -1
        return len(epochs) if isinstance(epochs, list) else None
    except Exception:  # the training process reads it properly and reports what is wrong
        return None


def catch_up(progress: StageProgress, last: Path) -> StageProgress:
    """The stage with its `epochs_done` caught up with its last.pt, which may be an epoch ahead of state.json."""
    if not last.exists():
        return progress
    return dataclasses.replace(progress, epochs_done=max(progress.epochs_done, checkpoint_epochs(last) or 0))


def checkpoint_to_resume(last: Path, progress: StageProgress, root: Path) -> Path | None:
    """The stage's own last.pt if it has one (checked whole; `catch_up` then reads its epochs), None for a
    stage that starts from its init."""
    if last.exists():
        verify_checkpoint(last, root)
        return last
    if progress.epochs_done > 0:
        raise CheckpointError(
            f"{last} is missing, but {progress.epochs_done} epochs were trained into it; restore it, or move "
            f"{root} away to train from scratch."
        )
    return None


def preflight(run_files: RunFiles, plan: RunPlan, state: RunState) -> RunState:
    """Before anything is written: the checkpoint the run would continue from must be whole.

    The state is returned with its epochs done caught up with it (see checkpoint_epochs)."""
    for index, (stage, progress) in enumerate(zip(plan.stages, state.stages)):
        if not progress.finished:
            last = run_files.last_pt(stage)
            checkpoint_to_resume(last, progress, run_files.root)
            return state.with_stage(index, catch_up(progress, last))
    return state


# ---------------------------------------------------------------------- the training process's side


@dataclasses.dataclass(frozen=True)
class CheckpointFacts:
    """What a stage's last.pt holds, as torch reads it."""

    epochs_done: int
    resumable: bool  # False once Ultralytics' final evaluation stripped its optimizer state
    train_metrics: dict[str, Any]
    imgsz: int | None
    batch: int | None


def checkpoint_facts(path: Path) -> CheckpointFacts:
    """Load `path` with torch (imported here, in the training process only); CheckpointUnusable if it cannot be."""
    from ultralytics.utils.patches import torch_load

    try:
        ckpt = torch_load(path, map_location="cpu")
        if not isinstance(ckpt, dict) or (ckpt.get("ema") or ckpt.get("model")) is None:
            raise ValueError("it holds no model")
    except Exception as exc:  # any failure to read means the same: this file cannot be continued from
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointUnusable(f"{path} cannot be loaded ({first})") from exc
    results = ckpt.get("train_results") or {}
    epochs_done = ckpt.get("epoch", -1) + 1
    resumable = epochs_done > 0 and ckpt.get("optimizer") is not None
    if not resumable:  # stripped by Ultralytics' final evaluation: the stage trained to its end
        epochs_done = len(results.get("epoch") or [])
    train_args = ckpt.get("train_args") or {}
    return CheckpointFacts(
        epochs_done=epochs_done,
        resumable=resumable,
        train_metrics=ckpt.get("train_metrics") or {},
        imgsz=train_args.get("imgsz"),
        batch=train_args.get("batch"),
    )


def trim_results_csv(path: Path, epochs_done: int) -> int:
    """Keep the header and the complete rows of epochs 1..epochs_done; return the rows dropped."""
    if not path.exists():
        return 0
    lines = path.read_text().split("\n")
    header, rows = lines[0], lines[1:]
    kept, dropped = [], 0
    for row in rows:
        if not row.strip():
            continue
        fields = row.split(",")
        complete = len(fields) == len(header.split(","))
        try:
            epoch = int(float(fields[0]))
        except ValueError:
            epoch = None
        if complete and epoch is not None and epoch <= epochs_done and epoch == len(kept) + 1:
            kept.append(row)
        else:
            dropped += 1
    if dropped:
        files.write_text(path, "\n".join([header, *kept]) + "\n")
    return dropped


class AtomicPath(type(Path())):
    """A Path whose `write_bytes` never leaves a partial file: a kill keeps the previous version."""

    def write_bytes(self, data) -> int:
        view = memoryview(data)
        files.write_bytes(self, view.tobytes())
        return view.nbytes


def atomic_strip(strip: Callable[..., dict]) -> Callable[..., dict]:
    """`strip_optimizer(f)` that writes `f` through a temp file (it rewrites last.pt and best.pt at the end)."""
    if getattr(strip, "atomic", False):
        return strip

    def strip_optimizer(f="best.pt", s="", updates=None):
        if s:
            return strip(f, s, updates)
        with files.replacing(Path(f)) as tmp:  # where Ultralytics skips an unreadable `f`, it stays as it is
            return strip(f, str(tmp), updates)

    strip_optimizer.atomic = True
    return strip_optimizer
