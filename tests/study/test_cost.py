"""What a probe costs, from the pre-flights' speeds (tuner.study.cost): the speed law, a probe's predicted time,
and the timeout that follows from it, down to the timeout the search gives each probe process."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tests.fakes import FakeProbe, TimedPreflight, batch_s, inputs, quiet, val_batch_s
from tuner.data.sample import Sample
from tuner.memory.model import Measurement
from tuner.params import Params
from tuner.study import cost, limits
from tuner.study.open import open_study
from tuner.study.records import StudyRecord
from tuner.study.search import Search


def timed(imgsz: int, batch: int) -> Measurement:
    return Measurement(imgsz, batch, peak_mb=900.0, batch_s=batch_s(imgsz, batch), val_batch_s=val_batch_s(imgsz, batch))


def test_the_speed_law_is_fitted_to_the_preflights_and_predicts_configs_they_did_not_run():
    speed = cost.fit_speed([timed(160, 8), timed(320, 2), timed(640, 1), Measurement(640, 16, oom=True)])
    unmeasured = Params(480, 4, 1.0, 0.0)
    assert speed.batch_s(unmeasured) == pytest.approx(batch_s(480, 4))
    assert speed.val_batch_s(unmeasured) == pytest.approx(val_batch_s(480, 4))
    one = cost.fit_speed([timed(320, 4)])  # one point: through the origin, exact there
    assert one.batch_s(Params(320, 4, 1.0, 0.0)) == pytest.approx(batch_s(320, 4))
    assert cost.fit_speed([Measurement(320, 4, peak_mb=900.0)]) is None  # no pre-flight timed its batches


def test_a_probe_is_its_start_and_its_epochs_of_batches_over_the_sample():
    speed = cost.fit_speed([timed(160, 8), timed(320, 4)])
    params = Params(320, 8, 1.0, 0.0)
    per_epoch = math.ceil(200 / 8) * batch_s(320, 8) + math.ceil(100 / 16) * val_batch_s(320, 8)
    assert cost.probe_seconds(params, speed, 200, 100, 3) == pytest.approx(cost.START_S + 3 * per_epoch)


def test_the_timeout_is_a_multiple_of_the_predicted_time_or_the_setting():
    assert cost.trial_timeout("auto", 100.0) == 400.0
    assert cost.trial_timeout("auto", 10.0) == cost.TIMEOUT_FLOOR_S
    assert cost.trial_timeout("auto", None) == cost.FALLBACK_TIMEOUT_S
    assert cost.trial_timeout(900.0, 10.0) == 900.0


def test_each_probe_gets_the_timeout_its_predicted_time_gives_it(tmp_path):
    trials = inputs(tmp_path, 2000)
    sample = Sample(str(tmp_path / "sample.yaml"), 200, 100, 960, 96)
    probe = dataclasses.replace(trials.cfg.probe, repeats=0)
    trials = dataclasses.replace(trials, cfg=dataclasses.replace(trials.cfg, n_trials=4, probe=probe), sample=sample)
    found = limits.map_limits(trials, quiet(), runner=TimedPreflight(2000))
    assert all(m.batch_s for m in found.frontier.measurements if not m.oom)  # the pre-flights' speeds are kept
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000, stable_limit_mb=trials.stable_limit_mb,
                         limits=found.to_dict())  # fmt: skip
    study, _ = open_study("s", f"sqlite:///{tmp_path / 's.db'}", trials.cfg, record)
    probe, given = FakeProbe(2000), []

    def runner(module, spec, folder, device, budget, timeout, on_epoch=None):
        given.append((spec.params, timeout))
        return probe(module, spec, folder, device, budget, timeout, on_epoch)

    Search(study, trials, quiet(), found, runner=runner).run()
    assert len(given) == 4
    speed = cost.fit_speed(found.frontier.measurements)
    for params, timeout in given:
        expected = cost.TIMEOUT_FACTOR * cost.probe_seconds(params, speed, 200, 100, trials.cfg.probe.epochs)
        assert timeout == pytest.approx(max(cost.TIMEOUT_FLOOR_S, expected))
    assert len({round(timeout) for _, timeout in given}) > 1  # sized to each config, not one constant


def test_probes_that_share_the_device_with_other_workers_get_the_slowdown_allowed_for(tmp_path):
    alone = dataclasses.replace(inputs(tmp_path, 2000), sample=Sample("s.yaml", 200, 100, 960, 96))
    shared = dataclasses.replace(alone, sharing=2)
    preflights = [timed(160, 8), timed(320, 4)]
    params = Params(640, 8, 1.0, 0.0)
    assert shared.probe_timeout(params, preflights) == pytest.approx(cost.SHARED_SLOWDOWN * alone.probe_timeout(params, preflights))
