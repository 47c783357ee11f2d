"""Devices behind one interface: which one to use, how much memory it has, how to cap and read it.

The parent (tuner) calls `resolve()`; the trial process calls `select()`, `apply_budget()`,
`device_memory()` and `oom_reason()`. `resolve()` looks for an accelerator in a short-lived child process
(`python -m tuner.memory.device auto`, which runs `detect()`): importing torch costs the importing process
about 600 MB for as long as it lives, memory the trials would lack on a tight machine.

Ultralytics' own `select_device('mps')` silently falls back to CPU where MPS is missing, which would
make every memory figure wrong, so a device that is not there is an error here.

What the budget bounds, per device (the quantity `measured()` returns):
- cpu:  RAM of the trial's process tree (RSS, dataloader workers included); on macOS the larger of
        that and the tree's physical footprint, what macOS kills on (tuner.memory.footprint).
- mps:  RSS plus `torch.mps.driver_allocated_memory()` (unified memory: both come from the same RAM),
        or the tree's physical footprint where that is larger (it counts compressed pages, and the
        IOKit memory Metal's buffers live in, so it is not added on top);
        the MPS allocator's high watermark is also set to the budget, so MPS raises a clean
        "MPS backend out of memory" there instead of swapping until macOS kills the process.
- cuda: the card's memory reserved by PyTorch (its high-water mark); `set_per_process_memory_fraction`
        makes CUDA raise `torch.OutOfMemoryError` at the budget.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys

import psutil

from tuner.errors import DeviceError

# PyTorch's defaults on unified memory: high 1.7, low 1.4 x the recommended working set. The low
# watermark may not exceed the high one or torch refuses to start, so it keeps the same proportion.
MPS_LOW_TO_HIGH = 1.4 / 1.7


@dataclasses.dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "cuda" | "mps"
    index: int | None
    name: str
    total_memory: int  # bytes a training may use at most: RAM for cpu and mps, the card for cuda
    mps_recommended: int | None = None  # torch.mps.recommended_max_memory(), for the watermark ratio
    count: int = 1  # devices of this kind here (CUDA cards): `tuner probe --workers N` pins one worker to each

    @property
    def torch(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def ultralytics(self) -> str:
        return str(self.index) if self.kind == "cuda" else self.kind

    def measured(self, rss: int, device_bytes: int, footprint: int = 0) -> int:
        """The quantity the budget bounds (see the module docstring); `footprint` is 0 where the OS has none."""
        if self.kind == "cuda":
            return device_bytes
        if self.kind == "mps":
            return max(rss + device_bytes, footprint)
        return max(rss, footprint)

    def child_env(self, budget: int) -> dict[str, str]:
        """Environment for a trial process; on MPS the allocator's watermarks come from the budget."""
        if self.kind != "mps" or not self.mps_recommended:
            return {}
        high = budget / self.mps_recommended
        return {
            "PYTORCH_MPS_HIGH_WATERMARK_RATIO": f"{high:.4f}",
            "PYTORCH_MPS_LOW_WATERMARK_RATIO": f"{high * MPS_LOW_TO_HIGH:.4f}",
        }


DETECT_TIMEOUT_S = 120


def resolve(requested: str | None) -> Device:
    """`auto` (mps > cuda > cpu), `mps`, `cuda`, `cuda:N`, `N` or `cpu` -> a Device that is really there.

    Anything but `cpu` is looked for by `detect()` in a child process, so torch stays out of this one.
    """
    text = _checked(requested)
    if text == "cpu":
        return _cpu()
    command = [sys.executable, "-m", "tuner.memory.device", text]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DETECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"Looking for device {text!r} took over {DETECT_TIMEOUT_S} s; pass --device cpu.") from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise DeviceError(f"Looking for device {text!r} failed ({last}); pass --device cpu, or fix the torch install.") from None
    if "error" in answer:
        raise DeviceError(answer["error"])
    return Device(**answer["device"])


def _checked(requested: str | None) -> str:
    text = (requested or "auto").strip().lower()
    if text != "cpu" and text not in {"auto", "mps", "cuda"} and not text.removeprefix("cuda:").isdigit():
        raise DeviceError(
            f"Unknown device {requested!r}; use --device auto, mps, cuda, cuda:N, N (a CUDA index) or cpu."
        )
    return text


def detect(requested: str | None) -> Device:
    """What `resolve()` answers, found in this process (which imports torch for it)."""
    text = _checked(requested)
    if text == "cpu":
        return _cpu()
    import torch

    if text in {"auto", "mps"}:
        if _mps_available(torch):
            return Device(
                kind="mps",
                index=None,
                name=f"Apple {platform.machine()} GPU (MPS, unified memory)",
                total_memory=psutil.virtual_memory().total,
                mps_recommended=int(torch.mps.recommended_max_memory()),
            )
        if text == "mps":
            raise DeviceError(
                "--device mps was asked for, but MPS is not available here (it needs Apple silicon and a "
                "PyTorch build with MPS); use --device auto or cpu."
            )
    if text == "auto" and not torch.cuda.is_available():
        return _cpu()
    index = 0 if text in {"auto", "cuda"} else int(text.removeprefix("cuda:"))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        found = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise DeviceError(f"--device {requested} was asked for, but there is {found} here; use --device auto or cpu.")
    props = torch.cuda.get_device_properties(index)
    return Device(kind="cuda", index=index, name=props.name, total_memory=int(props.total_memory), count=count)


def _mps_available(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def _cpu() -> Device:
    cores = os.cpu_count() or 1
    name = platform.processor() or platform.machine() or "CPU"
    return Device(kind="cpu", index=None, name=f"{name} ({cores} cores)", total_memory=psutil.virtual_memory().total)


def main(argv: list[str] | None = None) -> int:
    """`python -m tuner.memory.device REQUESTED`: print the device `detect()` finds, or the error, as one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        answer = {"device": dataclasses.asdict(detect(argv[0] if argv else "auto"))}
    except DeviceError as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer), flush=True)
    return 0


# ------------------------------------------------------------------------- inside the trial process


def select(kind: str, device: str) -> int | None:
    """Make the spec's CUDA card (`device` as Ultralytics takes it: "1") this process's current one, and return
    its index (None off CUDA).

    Ultralytics' select_device() does the same (torch.cuda.set_device(N) for an explicit single card), but only
    inside model.train(): the budget is applied and memory read before that, and torch's calls without a device
    act on the current one, card 0, however `--device cuda:N` read.
    """
    if kind != "cuda":
        return None
    import torch

    index = int(device)
    torch.cuda.set_device(index)
    return index


def apply_budget(kind: str, budget: int, index: int | None) -> None:
    """Make the allocator itself stop at the budget where the device allows it (CUDA card `index`)."""
    if kind != "cuda":
        return  # cpu: the watchdog; mps: the watermark env set by the parent
    import torch

    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device=index)


def device_memory(kind: str, index: int | None) -> int:
    """Bytes the device holds for this process (0 on cpu). On CUDA the caching allocator's high-water mark
    on card `index` (max_memory_reserved): a fast card's peak can last less than the reporter's interval, so
    sampling the memory reserved now would miss it; on MPS the driver's allocation now."""
    if kind == "cpu":
        return 0
    import torch

    if kind == "cuda":
        return int(torch.cuda.max_memory_reserved(device=index))
    return int(torch.mps.driver_allocated_memory())


def oom_reason(exc: BaseException) -> str | None:
    """A short reason if `exc` means out of memory, else None.

    Decided by type where there is one; MPS and the CPU allocator raise plain RuntimeErrors, so for
    those the message is the only fact there is.
    """
    if isinstance(exc, MemoryError):
        return "MemoryError (the CPU allocator could not get memory)"
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return "CUDA out of memory (torch.OutOfMemoryError)"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(exc, RuntimeError):
        text = str(exc)
        if "MPS backend out of memory" in text:
            return "MPS backend out of memory"
        lowered = text.lower()
        if "can't allocate memory" in lowered or "not enough memory" in lowered:
            return "CPU allocator out of memory"
        if "out of memory" in lowered:
            return "out of memory: " + text.splitlines()[0][:160]
    return None


if __name__ == "__main__":
    raise SystemExit(main())
