"""The pre-flight (tuner.study.probe_child with `preflight_batches`): a few training batches and one validation
batch in the trial's own process under the watchdog, measuring the config's peak memory.

Real tiny trainings on CPU (yolov8n from its YAML, the 8 + 4 image dataset), and a fast unit test
of which validation batch a pre-flight runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tuner import config
from tuner.memory import device as devices
from tuner.params import Params
from tuner.process import child
from tuner.process.contract import ChildResult, Outcome, PreflightCounts
from tuner.process.trial import Attempt, run_child
from tuner.study import probe_child
from tuner.study.inputs import Inputs

MIB = 2**20
PREFLIGHT_BATCHES = 3
# imgsz 64 / batch 2 on 8 training images: an epoch of 4 batches, one more than the pre-flight trains.
SMALL = Params(imgsz=64, batch=2, mosaic=1.0, mixup=0.3)


def inputs(data_yaml: Path, trials_dir: Path, budget_mb: int = 8000) -> Inputs:
    cfg = config.load(None, {"probe": {"epochs": 1}})
    return Inputs(cfg, devices.resolve("cpu"), budget_mb * MIB, data_yaml, "yolov8n.yaml", trials_dir)


def run(trials: Inputs, params: Params, name: str, preflight: bool = True, module: str = "tuner.study.probe_child") -> Attempt:
    spec = trials.spec(params, seed=0)
    if preflight:
        spec = dataclasses.replace(spec, preflight_batches=PREFLIGHT_BATCHES)
    return run_child(module, spec, trials.trials_dir / name, trials.device, trials.budget, timeout=600)


def report(attempt: Attempt) -> dict[str, int]:
    """What the pre-flight says it did, from its result."""
    assert attempt.result is not None and attempt.result.preflight is not None, attempt.result
    return dataclasses.asdict(attempt.result.preflight)


@pytest.fixture(scope="module")
def small(tiny_data, tmp_path_factory) -> SimpleNamespace:
    """A pre-flight and a full 1-epoch probe of the same small config, one after the other."""
    trials = inputs(tiny_data, tmp_path_factory.mktemp("trials"))
    return SimpleNamespace(preflight=run(trials, SMALL, "preflight"), full=run(trials, SMALL, "probe", preflight=False))


@pytest.mark.integration
def test_a_preflight_ends_ok_with_a_peak_after_fewer_batches_than_an_epoch(small):
    preflight, full = small.preflight, small.full
    assert preflight.outcome == Outcome.OK, preflight.log_tail()
    assert preflight.peak_mb > 200
    assert (preflight.result.status, preflight.result.value, preflight.result.epochs_done) == ("ok", None, 0)
    done = report(preflight)
    assert done["trained"] == PREFLIGHT_BATCHES < done["per_epoch"] == 4
    folder = preflight.log.parent
    assert not (folder / "progress.jsonl").exists()  # nothing for Optuna: a pre-flight has no value
    assert not (folder / "run" / "weights").exists()  # its checkpoint is deleted: nothing reads it
    assert full.outcome == Outcome.OK and full.epochs_done == 1 and full.value is not None


@pytest.mark.integration
def test_a_preflight_peaks_close_to_the_full_probe_of_the_same_config(small):
    preflight, full = small.preflight, small.full
    assert preflight.outcome == Outcome.OK and full.outcome == Outcome.OK
    assert abs(preflight.peak_mb - full.peak_mb) <= 0.15 * full.peak_mb, (preflight.peak_mb, full.peak_mb)


@pytest.mark.integration
def test_the_preflight_runs_one_validation_batch_of_twice_the_training_batch(small):
    done = report(small.preflight)
    # 2 x batch 2 = all 4 validation images, padded as Ultralytics pads validation (imgsz + half a stride)
    assert (done["validated"], done["images"]) == (1, 4)
    assert done["height"] >= SMALL.imgsz and done["width"] >= SMALL.imgsz
    with open(small.preflight.log.parent / "run" / "results.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["val/box_loss"]) > 0  # the validator's loss over that batch reached the epoch's metrics


@pytest.mark.integration
def test_a_preflight_over_the_budget_is_an_oom_verdict_from_the_watchdog(tiny_data, workdir):
    # Measured on CPU: imgsz 320 / batch 8 trains at 1260-1290 MiB; before training the process holds
    # about 815 MiB, with short spikes near 950 while it imports.
    attempt = run(inputs(tiny_data, workdir, budget_mb=1100), Params(320, 8, 1.0, 0.3), "preflight")
    assert attempt.outcome == Outcome.OOM
    assert attempt.cause == "watchdog" and attempt.reason.startswith("watchdog:")
    assert attempt.peak_mb > 1100
    assert attempt.result is None  # killed: no result, no value
    assert "Starting training" in attempt.log.read_text()  # killed while training, not while importing


FAULTY_PROBE = '''
"""tuner.study.probe_child with one out-of-memory error injected, where TUNER_TEST_FAULT says."""
import os
import sys

import torch
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator

from tuner.study import probe_child


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")


if os.environ["TUNER_TEST_FAULT"] == "validation":
    DetectionValidator.postprocess = out_of_memory
else:  # the first training batch: Ultralytics halves the batch and starts the epoch again
    preprocess = DetectionTrainer.preprocess_batch
    failed = []

    def preprocess_once_out_of_memory(self, batch):
        if not failed:
            failed.append(True)
            out_of_memory()
        return preprocess(self, batch)

    DetectionTrainer.preprocess_batch = preprocess_once_out_of_memory
sys.exit(probe_child.main())
'''


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["validation", "training"], ids=["in-validation", "halved"])
def test_an_out_of_memory_error_in_a_preflight_is_an_oom_verdict(tiny_data, workdir, monkeypatch, fault):
    (workdir / "faulty_probe.py").write_text(FAULTY_PROBE)
    monkeypatch.setenv("PYTHONPATH", str(workdir))
    monkeypatch.setenv("TUNER_TEST_FAULT", fault)
    attempt = run(inputs(tiny_data, workdir), SMALL, "preflight", module="faulty_probe")
    assert attempt.outcome == Outcome.OOM, attempt.log_tail()
    assert attempt.result.status == "oom"
    if fault == "validation":
        assert attempt.cause == "exception" and not attempt.result.halved
        assert "injected by the test" in attempt.log.read_text()  # the traceback of the fault
    else:  # Ultralytics took the error in its stride and went on at batch 1: tuner's check stopped it
        assert attempt.cause == "batch-halving" and attempt.result.halved
        assert attempt.result.batch_used == SMALL.batch // 2


class RectDataset:
    """The parts of an Ultralytics validation dataset a pre-flight reads: a shape per batch, labels per image."""

    rect = True
    imgsz = 640

    def __init__(self, shapes: list[tuple[int, int]], labels: list[int], per_batch: int) -> None:
        self.batch = np.arange(len(labels)) // per_batch
        self.batch_shapes = np.array(shapes)
        self.labels = [{"cls": np.zeros((boxes, 1))} for boxes in labels]

    def __len__(self) -> int:
        return len(self.labels)


def test_the_validation_batch_of_a_preflight_is_the_largest_not_the_first():
    # in Ultralytics' order, by aspect ratio: flat, square, tall; the last batch is short
    dataset = RectDataset([(352, 672), (672, 672), (672, 512)], [1] * 5, per_batch=2)
    assert probe_child.largest_batch(dataset, batch_size=2) == [2, 3]
    # equal pixels: the batch with the most labels in one image
    dataset = RectDataset([(672, 672)] * 3, [1, 1, 2, 3, 9, 1], per_batch=2)
    assert probe_child.largest_batch(dataset, batch_size=2) == [4, 5]


def test_a_finished_preflight_says_what_it_trained_in_fields_of_its_result(tmp_path, monkeypatch):
    """The counts travel as typed fields of result.json, not as text for the parent to parse."""
    monkeypatch.setattr(probe_child, "OneBatch", lambda loader: SimpleNamespace(shape=(4, 96, 64)))
    times = iter([10.0, 10.5, 11.1, 12.0, 12.3])  # three batches ended, the validation batch started and ended
    preflight = probe_child.Preflight(batches=3, clock=lambda: next(times))
    trainer = SimpleNamespace(stop=False, train_loader=[None] * 4, test_loader=None, validator=SimpleNamespace(),
                              wdir=tmp_path / "weights")  # fmt: skip
    for _ in range(3):
        preflight.on_train_batch_end(trainer)
    assert trainer.stop
    preflight.on_train_epoch_end(trainer)
    preflight.on_val_batch_start(trainer.validator)
    preflight.on_val_batch_end(trainer.validator)
    with pytest.raises(child.EndedEarly) as ended:
        preflight.on_train_end(trainer)
    result = probe_child.ended_preflight(ChildResult("ok", message=str(ended.value)), preflight)
    read = ChildResult.from_json(json.loads(json.dumps(result.to_json())))  # as the parent reads result.json
    assert read.preflight == PreflightCounts(trained=3, per_epoch=4, validated=1, images=4, height=96, width=64,
                                             train_batch_s=0.55, val_batch_s=0.3)  # the first batch's start left out
    assert read.message is None
    oom = ChildResult("oom", message="CUDA out of memory")
    assert probe_child.ended_preflight(oom, preflight) == oom
