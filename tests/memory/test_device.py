"""Devices: cpu is real here; MPS and CUDA are reached through fakes of the torch calls tuner makes."""

import json
import subprocess
import sys
import types

import pytest
import torch

from tests.fakes import FakeCuda
from tuner.errors import DeviceError
from tuner.memory import device as devices


def test_cpu():
    dev = devices.resolve("cpu")
    assert (dev.kind, dev.torch, dev.ultralytics) == ("cpu", "cpu", "cpu")
    assert dev.total_memory > 0
    assert dev.measured(rss=100, device_bytes=50) == 100
    assert dev.measured(rss=100, device_bytes=50, footprint=180) == 180  # on macOS, what the OS kills on
    assert dev.child_env(10**9) == {}


def test_auto_falls_back_to_cpu_without_accelerators():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert devices.resolve("auto").kind == "cpu"


def test_looking_for_a_device_keeps_torch_out_of_tuners_own_process():
    """torch costs the process that imports it about 600 MB: the trials would lack it on a tight machine."""
    code = (
        "import sys, json; from tuner import cli; from tuner.commands import probe, train_best; "
        "from tuner.study import search; from tuner.memory import device; "
        "found = device.resolve('auto'); print(json.dumps([found.kind, 'torch' in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kind, imported = json.loads(done.stdout)
    assert kind in ("cpu", "cuda", "mps") and imported is False


def test_the_child_answers_with_the_device_or_the_error():
    found = subprocess.run([sys.executable, "-m", "tuner.memory.device", "auto"], capture_output=True, text=True)
    assert devices.Device(**json.loads(found.stdout)["device"]) == devices.resolve("auto")
    if not torch.backends.mps.is_available():
        missing = subprocess.run([sys.executable, "-m", "tuner.memory.device", "mps"], capture_output=True, text=True)
        assert "MPS is not available" in json.loads(missing.stdout)["error"]
        with pytest.raises(DeviceError, match="MPS is not available"):
            devices.resolve("mps")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", "mps:1"])
def test_unknown_device(name):
    with pytest.raises(DeviceError, match="Unknown device"):
        devices.resolve(name)


def test_missing_devices_are_errors_not_a_silent_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS is not available"):
        devices.detect("mps")
    with pytest.raises(DeviceError, match="no CUDA device"):
        devices.detect("cuda")


@pytest.fixture
def fake_mps(monkeypatch):
    """A torch.mps that reports 16 GiB recommended and 3 GiB driver-allocated."""
    fake = types.SimpleNamespace(
        recommended_max_memory=lambda: 16 * 2**30, driver_allocated_memory=lambda: 3 * 2**30
    )
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch, "mps", fake)
    return fake


def test_mps_is_preferred_and_its_allocator_is_capped_at_the_budget(fake_mps):
    dev = devices.detect("auto")
    assert (dev.kind, dev.torch, dev.ultralytics) == ("mps", "mps", "mps")
    env = dev.child_env(budget=8 * 2**30)
    high = float(env["PYTORCH_MPS_HIGH_WATERMARK_RATIO"])
    low = float(env["PYTORCH_MPS_LOW_WATERMARK_RATIO"])
    assert high == pytest.approx(0.5)  # 8 GiB of the 16 GiB recommended working set
    assert low <= high  # torch refuses to start otherwise
    assert dev.measured(rss=2 * 2**30, device_bytes=3 * 2**30) == 5 * 2**30  # unified memory: both count
    # macOS's footprint counts compressed pages and Metal's IOKit memory: the larger of the two accounts, not both
    assert dev.measured(rss=2 * 2**30, device_bytes=3 * 2**30, footprint=6 * 2**30) == 6 * 2**30
    assert dev.measured(rss=2 * 2**30, device_bytes=3 * 2**30, footprint=4 * 2**30) == 5 * 2**30
    assert devices.device_memory("mps", None) == 3 * 2**30


def test_mps_out_of_memory_is_recognised():
    exc = RuntimeError("MPS backend out of memory (MPS allocated: 5.00 GB, other allocations: 1.2 GB)")
    assert devices.oom_reason(exc) == "MPS backend out of memory"


GIB = 2**30


@pytest.fixture
def fake_cuda(monkeypatch) -> FakeCuda:
    """Two cards, 4 and 8 GiB; card 1 holds 1 GiB now and held 3 GiB at its peak."""
    return FakeCuda((4 * GIB, 8 * GIB), reserved={1: GIB}, peaks={1: 3 * GIB}).install(monkeypatch, torch)


def test_cuda_budget_is_enforced_by_the_allocator(fake_cuda):
    dev = devices.detect("auto")
    assert (dev.kind, dev.torch, dev.ultralytics, dev.total_memory, dev.count) == ("cuda", "cuda:0", "0", 4 * GIB, 2)
    assert devices.detect("cuda:0") == devices.detect("0") == dev
    with pytest.raises(DeviceError, match="2 CUDA device"):
        devices.detect("cuda:2")
    index = devices.select("cuda", "0")
    devices.apply_budget("cuda", 2 * GIB, index)
    assert fake_cuda.fractions == {0: pytest.approx(0.5)}
    assert dev.measured(rss=10**9, device_bytes=3 * GIB) == 3 * GIB  # the card is what the budget bounds


def test_cuda_card_n_is_the_one_capped_and_read(fake_cuda):
    """--device cuda:1: torch's calls without a device act on card 0 until Ultralytics' select_device() makes
    card 1 current, inside model.train(), after the budget was applied."""
    dev = devices.detect("cuda:1")
    assert (dev.ultralytics, dev.total_memory) == ("1", 8 * GIB)
    index = devices.select("cuda", dev.ultralytics)
    devices.apply_budget("cuda", 2 * GIB, index)
    assert (index, fake_cuda.current) == (1, 1)
    assert fake_cuda.fractions == {1: pytest.approx(0.25)}  # 2 GiB of card 1's 8, card 0 untouched
    assert devices.device_memory("cuda", index) == 3 * GIB


def test_cuda_memory_is_the_allocators_high_water_mark(fake_cuda):
    """A fast card's peak can last less than the 0.1 s between readings: the allocator's own peak cannot miss it."""
    fake_cuda.current = 1
    assert devices.device_memory("cuda", 1) == 3 * GIB  # not the 1 GiB reserved now
    assert devices.select("cpu", "cpu") is None and devices.device_memory("cpu", None) == 0


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "CUDA out of memory"),
        (MemoryError(), "MemoryError"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "CPU allocator"),
        (RuntimeError("shape mismatch"), None),
        (ValueError("out of memory"), None),  # only RuntimeErrors carry OOMs by message
    ],
)
def test_oom_reason(exc, expected):
    reason = devices.oom_reason(exc)
    assert (reason is None) if expected is None else reason.startswith(expected)
