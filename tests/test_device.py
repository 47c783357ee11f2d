"""Devices: cpu is real here; MPS and CUDA are reached through fakes of the torch calls tuner makes."""

import types

import pytest
import torch

from tuner import device as devices
from tuner.errors import DeviceError


def test_cpu():
    dev = devices.resolve("cpu")
    assert (dev.kind, dev.torch, dev.ultralytics) == ("cpu", "cpu", "cpu")
    assert dev.total_memory > 0
    assert dev.measured(rss=100, device_bytes=50) == 100
    assert dev.child_env(10**9) == {}


def test_auto_falls_back_to_cpu_without_accelerators():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert devices.resolve("auto").kind == "cpu"


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", "mps:1"])
def test_unknown_device(name):
    with pytest.raises(DeviceError, match="Unknown device"):
        devices.resolve(name)


def test_missing_devices_are_errors_not_a_silent_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS is not available"):
        devices.resolve("mps")
    with pytest.raises(DeviceError, match="no CUDA device"):
        devices.resolve("cuda")


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
    dev = devices.resolve("auto")
    assert (dev.kind, dev.torch, dev.ultralytics) == ("mps", "mps", "mps")
    env = dev.child_env(budget=8 * 2**30)
    high = float(env["PYTORCH_MPS_HIGH_WATERMARK_RATIO"])
    low = float(env["PYTORCH_MPS_LOW_WATERMARK_RATIO"])
    assert high == pytest.approx(0.5)  # 8 GiB of the 16 GiB recommended working set
    assert low <= high  # torch refuses to start otherwise
    assert dev.measured(rss=2 * 2**30, device_bytes=3 * 2**30) == 5 * 2**30  # unified memory: both count
    assert devices.device_memory("mps") == 3 * 2**30


def test_mps_out_of_memory_is_recognised():
    exc = RuntimeError("MPS backend out of memory (MPS allocated: 5.00 GB, other allocations: 1.2 GB)")
    assert devices.oom_reason(exc) == "MPS backend out of memory"


@pytest.fixture
def fake_cuda(monkeypatch):
    calls = {}
    props = types.SimpleNamespace(name="Fake RTX 3050", total_memory=4 * 2**30)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f: calls.setdefault("fraction", f))
    return calls


def test_cuda_budget_is_enforced_by_the_allocator(fake_cuda):
    dev = devices.resolve("auto")
    assert (dev.kind, dev.torch, dev.ultralytics, dev.total_memory) == ("cuda", "cuda:0", "0", 4 * 2**30)
    assert devices.resolve("cuda:0") == devices.resolve("0") == dev
    with pytest.raises(DeviceError, match="1 CUDA device"):
        devices.resolve("cuda:1")
    devices.apply_budget("cuda", 2 * 2**30)
    assert fake_cuda["fraction"] == pytest.approx(0.5)
    assert dev.measured(rss=10**9, device_bytes=3 * 2**30) == 3 * 2**30  # the card is what the budget bounds
    assert devices.device_memory("cuda") == 3 * 2**30


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
