"""Mapping the memory limit with pre-flights: the wiring around memory_model, with a fake pre-flight runner
(the real pre-flight process is tested in test_preflight.py, the whole command in test_probe_integration.py)."""

from __future__ import annotations

import dataclasses
import io

import optuna
import pytest

from tests.fakes import FakePreflight, inputs, law, quiet
from tuner.errors import ConfigError, StudyFailed
from tuner.memory.model import RERUN_SPREAD
from tuner.process.contract import Cause, ChildResult, Outcome, PreflightCounts
from tuner.review.findings import read
from tuner.review.report import render_markdown
from tuner.study import limits
from tuner.study.open import open_study
from tuner.study.progress import Progress
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


class KilledFromOutside(FakePreflight):
    """FakePreflight whose runs are SIGKILLed from outside, without a result: each run of a config in `kills` at the
    next of its peaks there, and every run peaking over `limit_mb` (the machine's real limit, below the budget) just
    under that limit."""

    def __init__(self, budget_mb: float, kills: dict[tuple[int, int], list[float]] | None = None,
                 limit_mb: float | None = None) -> None:  # fmt: skip
        super().__init__(budget_mb)
        self.kills = {config: list(peaks) for config, peaks in (kills or {}).items()}
        self.limit_mb = limit_mb

    def __call__(self, module, spec, folder, device, budget, timeout, on_epoch=None):
        attempt = super().__call__(module, spec, folder, device, budget, timeout, on_epoch)
        config = (spec.params.imgsz, spec.params.batch)
        if self.kills.get(config):
            seen = self.kills[config].pop(0)
        elif self.limit_mb is not None and law(*config) > self.limit_mb:
            seen = self.limit_mb * (1 - 0.01 * (len(self.specs) % 3))  # the watchdog's last sample before the kill
        else:
            return attempt
        return dataclasses.replace(attempt, outcome=Outcome.OOM, reason="killed by SIGKILL from outside the trial",
                                   cause=Cause.OS_KILL, peak_mb=seen, returncode=-9, result=None)  # fmt: skip

    def runs(self, config: tuple[int, int]) -> int:
        return sum((spec.params.imgsz, spec.params.batch) == config for spec in self.specs)


def test_one_kill_from_outside_of_a_preflight_is_run_again_and_says_nothing_of_the_limit(tmp_path):
    trials = inputs(tmp_path, 1200)
    clean = limits.map_limits(trials, quiet(), runner=FakePreflight(1200))
    first_fit = next(taken for taken in clean.frontier.measurements if not taken.oom)
    config = (first_fit.imgsz, first_fit.batch)
    killed = KilledFromOutside(1200, kills={config: [first_fit.peak_mb * 0.5]})
    found = limits.map_limits(trials, quiet(), runner=killed)
    assert killed.runs(config) == 2 and found.frontier == clean.frontier and found.outside_kill_mb is None
    assert found.stable_limit_mb == trials.stable_limit_mb
    # the smallest config alone, killed once: it fits, where counting the kill as an OOM left nothing that fits
    one = inputs(tmp_path, 1200, imgsz=(160,), batch=(2,))
    found = limits.map_limits(one, quiet(), runner=KilledFromOutside(1200, kills={(160, 2): [650.0]}))
    assert found.frontier.largest() == {2: 160}


def test_preflights_killed_from_outside_at_one_peak_set_the_limit_and_the_frontier_under_it(tmp_path, monkeypatch):
    from tuner.study import open as study_open

    trials = inputs(tmp_path, 2000)  # stable below 1800 MiB; the machine kills whatever goes over 1300 MiB
    found = limits.map_limits(trials, quiet(), runner=KilledFromOutside(2000, limit_mb=1300))
    assert found.outside_kill_mb is not None and 1300 * 0.97 <= found.outside_kill_mb <= 1300
    assert found.stable_limit_mb == pytest.approx(found.outside_kill_mb * (1 - trials.cfg.safety_margin))
    for entry in found.frontier.entries:
        fitting = [size for size in trials.cfg.space.imgsz if law(size, entry.batch) * (1 + RERUN_SPREAD) < found.stable_limit_mb]
        assert entry.imgsz == (max(fitting) if fitting else None), entry
    assert "killed from outside at about" in limits.describe(found)
    assert limits.Limits.from_dict(found.to_dict()).outside_kill_mb == found.outside_kill_mb
    # stored on the study as the trials' kills are: the search, and a continued study, work under the lowered limit
    real_map = limits.map_limits
    monkeypatch.setattr(limits, "map_limits",
                        lambda inputs, progress, **kw: real_map(inputs, progress, runner=KilledFromOutside(2000, limit_mb=1300), **kw))
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000, stable_limit_mb=trials.stable_limit_mb)
    study, created = open_study("s", f"sqlite:///{tmp_path / 's.db'}", trials.cfg, record)
    study_open.mapped_limits(study, trials, quiet(), created=created)
    after = StudyRecord.of(study)
    assert after.outside_kill_mb == found.outside_kill_mb and after.stable_limit_mb == pytest.approx(found.stable_limit_mb, abs=0.1)


def test_a_mapping_gone_on_from_keeps_the_limit_its_kills_from_outside_set(tmp_path):
    trials = inputs(tmp_path, 2000)
    stored: list[limits.Mapping] = []
    whole = limits.map_limits(trials, quiet(), runner=KilledFromOutside(2000, limit_mb=1300), store=stored.append)
    assert [len(mapping.measurements) for mapping in stored] == list(range(1, len(whole.frontier.measurements) + 1))
    before = limits.Mapping.from_dict(stored[2].to_dict())  # its tuner died after three pre-flights
    assert before.outside_kill_mb == whole.outside_kill_mb
    again = limits.map_limits(trials, quiet(), runner=FakePreflight(2000), before=before)  # no more kills
    assert again.stable_limit_mb == whole.stable_limit_mb and again.frontier.largest() == whole.frontier.largest()


def test_a_preflight_killed_from_outside_twice_at_peaks_far_apart_stops_with_one_line(tmp_path):
    killed = KilledFromOutside(2000, kills={(384, 16): [300.0, 1500.0]})
    with pytest.raises(StudyFailed, match="killed from outside twice, at 300 and 1500 MiB") as info:
        limits.map_limits(inputs(tmp_path, 2000), quiet(), runner=killed)
    assert "\n" not in str(info.value)


def test_a_study_continued_with_another_safety_margin_is_refused(tmp_path):
    """Its frontier was mapped under the stable limit of the margin it was created with."""
    trials = inputs(tmp_path, 2000)
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000, stable_limit_mb=trials.stable_limit_mb)
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study("s", url, trials.cfg, record)
    wider = dataclasses.replace(trials.cfg, safety_margin=0.2)
    with pytest.raises(ConfigError, match="created with safety_margin = 0.1, but this run asks for 0.2"):
        open_study("s", url, wider, dataclasses.replace(record, config=wider))
    open_study("s", url, trials.cfg, record)  # the same margin continues it


class Counted(FakePreflight):
    """FakePreflight whose finished runs say what they trained, as the real pre-flight's result does."""

    def __call__(self, *args, **kwargs):
        attempt = super().__call__(*args, **kwargs)
        if attempt.outcome != Outcome.OK:
            return attempt
        return dataclasses.replace(attempt, result=ChildResult("ok", preflight=PreflightCounts(3, 4, 1, 8, 352, 320)))


def test_the_console_says_what_each_preflight_trained_and_validated(tmp_path):
    said = io.StringIO()
    limits.map_limits(inputs(tmp_path, 2000), Progress(1, 1, "mAP50-95", stream=said), runner=Counted(2000))
    assert "(3 training batches, 1 validation batch of 8 images at 352x320)" in said.getvalue()


class LargerModel(FakePreflight):
    """A larger model's pre-flights: 1.6x the smaller one's peak at every config."""

    def __call__(self, module, spec, folder, device, budget, timeout, on_epoch=None):
        attempt = super().__call__(module, spec, folder, device, budget, timeout, on_epoch)
        peak = 1.6 * law(spec.params.imgsz, spec.params.batch)
        outcome = Outcome.OOM if peak > self.budget_mb else Outcome.OK
        return dataclasses.replace(attempt, outcome=outcome, peak_mb=min(peak, self.budget_mb + 1),
                                   cause="watchdog" if outcome == Outcome.OOM else None)  # fmt: skip


def test_a_config_a_smaller_model_did_not_fit_rules_the_larger_out_without_a_preflight(tmp_path):
    trials = inputs(tmp_path, budget_mb=1200)
    smaller = limits.map_limits(trials, quiet(), runner=FakePreflight(1200))
    ruled = limits.RuledOut.of("yolov8n.yaml", smaller.to_dict())
    line = trials.stable_limit_mb / (1 + RERUN_SPREAD)
    assert ruled.configs and all(law(imgsz, batch) >= line for imgsz, batch in ruled.configs)
    assert not any(taken.peak_mb < line and not taken.oom and (taken.imgsz, taken.batch) in ruled.configs
                   for taken in smaller.frontier.measurements)  # fmt: skip

    alone, helped = LargerModel(1200), LargerModel(1200)
    mapped = limits.map_limits(trials, quiet(), runner=alone)
    found = limits.map_limits(trials, quiet(), runner=helped, ruled_out=(ruled,))
    assert found.frontier.largest() == mapped.frontier.largest()  # the same frontier
    assert len(helped.specs) < len(alone.specs)  # for fewer pre-flights
    for spec in helped.specs:  # none at or beyond a config the smaller model did not fit
        assert not any(imgsz <= spec.params.imgsz and batch <= spec.params.batch for imgsz, batch in ruled.configs)


def test_a_smaller_model_under_a_lower_limit_rules_nothing_out(tmp_path):
    """Its configs did not fit a lower limit; under this higher one they may: nothing is inferred from them."""
    low = limits.map_limits(inputs(tmp_path, budget_mb=800), quiet(), runner=FakePreflight(800))
    ruled = limits.RuledOut.of("yolov8n.yaml", low.to_dict())
    assert ruled.configs and ruled.limit_mb < inputs(tmp_path, budget_mb=1200).stable_limit_mb
    alone, helped = LargerModel(1200), LargerModel(1200)
    limits.map_limits(inputs(tmp_path, budget_mb=1200), quiet(), runner=alone)
    limits.map_limits(inputs(tmp_path, budget_mb=1200), quiet(), runner=helped, ruled_out=(ruled,))
    assert [spec.params for spec in helped.specs] == [spec.params for spec in alone.specs]


def test_every_config_ruled_out_is_one_line_saying_a_smaller_model_did_not_fit(tmp_path):
    ruled = limits.RuledOut("yolov8n.yaml", 1080.0, ((160, 2),))
    found = limits.map_limits(inputs(tmp_path, budget_mb=1200), quiet(), runner=FakePreflight(1200), ruled_out=(ruled,))
    assert found.frontier.largest() == {2: None, 4: None, 8: None, 16: None} and not found.frontier.measurements
    assert "A smaller model did not fit the smallest config" in limits.smallest_needs(found)


def test_the_models_own_measurements_outrank_what_a_smaller_model_ruled_out():
    """A continued mapping where this model measured a config as fitting that a smaller one did not fit: its own
    measurement holds (the smaller model's verdict was an inference about this one)."""
    from tuner.memory.model import Measurement, _Evidence

    evidence = _Evidence(1000.0, lambda imgsz, batch: None, ruled_out=[(160, 2)])
    evidence.taken.append(Measurement(192, 2, 1.0, 0.2, 800.0, False))
    assert evidence.verdict(160, 2) is True and evidence.verdict(192, 2) is True
    assert evidence.verdict(224, 2) is False  # beyond its own: the smaller model's verdict decides
