"""Mapping the memory limit with pre-flights: the wiring around memory_model, with a fake pre-flight runner
(the real pre-flight process is tested in test_preflight.py, the whole command in test_probe_integration.py)."""

from __future__ import annotations

import optuna
import pytest

from tests.fakes import FakePreflight, inputs, law, quiet
from tuner.errors import StudyFailed
from tuner.memory.model import RERUN_SPREAD
from tuner.review.findings import read
from tuner.review.report import render_markdown
from tuner.study import limits
from tuner.study.records import StudyRecord


def test_the_frontier_is_where_the_worst_case_stays_under_the_stable_limit(tmp_path):
    trials = inputs(tmp_path, budget_mb=2000)
    fake = FakePreflight(2000)
    found = limits.map_limits(trials, quiet(), runner=fake)
    limit = trials.stable_limit_mb  # 1800 MiB
    for entry in found.frontier.entries:
        fitting = [size for size in trials.cfg.space.imgsz if law(size, entry.batch) * (1 + RERUN_SPREAD) < limit]
        assert entry.imgsz == (max(fitting) if fitting else None)
    assert len(fake.specs) < len(trials.cfg.space.imgsz) * len(trials.cfg.space.batch)  # bisection, not the grid
    for spec in fake.specs:  # the worst case of each config, and only a few batches of it
        assert (spec.params.mosaic, spec.params.mixup, spec.preflight_batches) == (1.0, 0.2, limits.PREFLIGHT_BATCHES)
    assert found.model is not None and found.model.median_error < 0.05


def test_a_roomy_budget_is_decided_by_the_largest_config_and_small_ones_feed_the_model(tmp_path):
    trials = inputs(tmp_path, budget_mb=100000)
    fake = FakePreflight(100000)
    found = limits.map_limits(trials, quiet(), runner=fake)
    asked = [(spec.params.imgsz, spec.params.batch) for spec in fake.specs]
    assert asked[0] == (384, 16)  # the largest config first: it fits, so everything does
    assert len(asked) == limits.MODEL_POINTS and all(imgsz == 160 or batch == 2 for imgsz, batch in asked[1:])
    assert found.frontier.largest() == {2: 384, 4: 384, 8: 384, 16: 384}
    assert found.model is not None and found.model.median_error < 0.05  # held out and checked


def test_limits_round_trip_through_the_study(tmp_path):
    found = limits.map_limits(inputs(tmp_path, 2000), quiet(), runner=FakePreflight(2000))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    StudyRecord(budget_mb=2000.0, limits=found.to_dict()).save(study)
    loaded = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    again = limits.Limits.from_dict(StudyRecord.of(loaded).limits)
    assert again.frontier == found.frontier and again.model == found.model
    summary = found.summary()
    assert set(summary) >= {"stable_limit_mb", "frontier", "memory_model"}
    assert set(summary["frontier"][0]) == {"batch", "imgsz", "peak_mem_mb", "measured"}
    assert set(summary["memory_model"]) >= {"median_error", "max_error"}


def test_the_report_shows_the_frontier(tmp_path):
    found = limits.map_limits(inputs(tmp_path, 2000), quiet(), runner=FakePreflight(2000))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")
    StudyRecord(budget_mb=2000.0, stable_limit_mb=1800.0, limits=found.to_dict()).save(study)
    text = render_markdown(read(study, tmp_path), [])
    assert "## Memory limits" in text and "| batch | largest stable imgsz | peak | how |" in text
    largest = found.frontier.entries[0]
    assert f"| {largest.batch} | {largest.imgsz} |" in text and "Memory model: peak ≈" in text


def test_when_nothing_fits_the_message_says_what_the_smallest_config_needs(tmp_path):
    found = limits.map_limits(inputs(tmp_path, 500), quiet(), runner=FakePreflight(500))
    assert all(entry.imgsz is None for entry in found.frontier.entries)
    message = limits.smallest_needs(found)
    assert "imgsz 160 batch 2" in message and "stable limit of 450 MiB" in message and "--memory-budget" in message


def test_a_preflight_that_fails_for_another_reason_stops_with_its_message(tmp_path):
    with pytest.raises(StudyFailed, match="pre-flight of imgsz .* failed: ValueError: could not convert"):
        limits.map_limits(inputs(tmp_path, 2000), quiet(), runner=FakePreflight(2000, error=True))


def test_configs_beyond_the_frontier_are_known_not_to_fit(tmp_path):
    from tuner.params import Params

    found = limits.map_limits(inputs(tmp_path, 2000), quiet(), runner=FakePreflight(2000))
    largest = found.frontier.largest()  # e.g. batch 16: imgsz 320
    for batch, imgsz in largest.items():
        if imgsz is not None:
            assert limits.beyond_frontier(found, Params(imgsz, batch, 0.5, 0.1)) is None
        above = Params((imgsz or 0) + 32, batch, 0.5, 0.1)
        reason = limits.beyond_frontier(found, above)
        assert reason is not None and f"batch {batch}" in reason and reason.startswith("inferred:")
    assert limits.beyond_frontier(found, Params(160, 64, 0.5, 0.1)) is None  # a batch the pre-flights never saw
