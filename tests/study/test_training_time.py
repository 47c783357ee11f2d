"""A config's full training predicted from its own probe's epochs (tuner.study.training_time), and best.yaml's
comment that carries the pick's prediction to train-best."""

from __future__ import annotations

import types

import pytest
import yaml

from tuner import files
from tuner.process.contract import EpochRecord
from tuner.study import training_time
from tuner.study.probe_child import EpochTimer
from tuner.study.training_time import Prediction


def epoch(number: int, train_s: float | None, val_s: float | None, batches=(10, 5)) -> EpochRecord:
    return EpochRecord(number, 0.3, 320, 8, 1.0, train_s=train_s, train_batches=batches[0], val_s=val_s,
                       val_batches=batches[1])  # fmt: skip


def test_per_batch_seconds_of_the_probe_carry_over_to_the_whole_splits_the_first_epoch_left_out():
    """Epochs 2 and 3 at 0.2 s a training batch and 0.1 s a validation batch (the first, loaders starting, slower):
    960 train images are 120 batches of 8, 96 val images 6 batches of 16."""
    records = [epoch(1, 9.0, 2.0), epoch(2, 2.0, 0.5), epoch(3, 2.0, 0.5)]
    prediction = training_time.predict(records, 8, 960, 96, 40)
    assert prediction.epoch_s == pytest.approx(120 * 0.2 + 6 * 0.1)
    assert prediction.seconds == pytest.approx(20 + 40 * (120 * 0.2 + 6 * 0.1), abs=0.1)
    assert prediction.epochs == 40
    one = training_time.predict([epoch(1, 2.0, 0.5)], 8, 960, 96, 40)  # a probe of one epoch: that epoch
    assert one.epoch_s == prediction.epoch_s


def test_no_prediction_without_timed_epochs():
    assert training_time.predict([], 8, 960, 96, 40) is None
    assert training_time.predict([EpochRecord(1, 0.3, 320, 8, 1.0)], 8, 960, 96, 40) is None  # an older child
    assert training_time.predict([epoch(1, 2.0, None)], 8, 960, 96, 40) is None  # validation untimed


def test_a_prediction_rescales_to_other_epochs_and_round_trips_through_json():
    prediction = Prediction.of(30.0, 40)
    assert prediction.for_epochs(10) == Prediction.of(30.0, 10) and prediction.for_epochs(10).seconds == 320.0
    assert Prediction.from_json(prediction.to_json()) == prediction
    assert Prediction.from_json(None) is None and Prediction.from_json({"seconds": 1}) is None
    assert prediction.describe() == "about 20 min for 40 epochs"


def test_best_yaml_carries_the_prediction_in_a_comment_that_reads_back_and_yaml_ignores(tmp_path):
    prediction = Prediction.of(34.5, 40)
    path = files.write_yaml(tmp_path / "best.yaml", {"imgsz": 320, "batch": 8}, ["Best stable config.",
                            *training_time.comment_lines(prediction)])  # fmt: skip
    text = path.read_text()
    assert "# Predicted full training: about 23 min for 40 epochs" in text
    assert yaml.safe_load(text) == {"imgsz": 320, "batch": 8}  # Ultralytics sees no key it does not know
    assert training_time.from_comment(text) == prediction
    assert training_time.from_comment("imgsz: 320\n") is None
    assert training_time.from_comment("# tuner-prediction: {broken\nimgsz: 320\n") is None
    assert training_time.from_comment("tuner-prediction: {}\n") is None  # not a comment


def test_the_probe_child_times_training_and_validation_apart_with_their_batches():
    clock = iter([0.0, 4.0, 4.5, 5.5, 10.0, 13.0, 13.0, 14.0]).__next__
    timer = EpochTimer(clock)
    trainer = types.SimpleNamespace(train_loader=[None] * 10)
    validator = types.SimpleNamespace(dataloader=[None] * 5)
    events = timer.callbacks()
    for _ in range(2):
        events["on_train_epoch_start"](trainer)
        events["on_train_epoch_end"](trainer)
        events["on_val_start"](validator)
        events["on_val_end"](validator)
        if _ == 0:
            assert timer.epoch() == {"train_s": 4.0, "train_batches": 10, "val_s": 1.0, "val_batches": 5}
    assert timer.epoch() == {"train_s": 3.0, "train_batches": 10, "val_s": 1.0, "val_batches": 5}
    assert timer.epoch() == {}  # nothing timed since
