"""What train-best plans from a study: the frontier it steps down and grows within, the step-down ladder, the
two-stage run's conservative stage. Studies are real SQLite, made by the search with fake processes
(tests/study/test_search.py) or by hand (tests/train/test_train.py's make_study)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest

from tests.study.test_search import searched
from tests.train.test_train import candidate, make_study, settings, source
from tuner.params import Params
from tuner.study import selection
from tuner.study.dominance import StableSizes
from tuner.study.records import StudyRecord
from tuner.train.plan import plan_stages, step_down
from tuner.train.source import source_from_study

A, B, C = ({"imgsz": 352, "batch": 8, "mosaic": 0.5, "mixup": 0.1}, {"imgsz": 288, "batch": 4, "mosaic": 0.9, "mixup": 0.0},
           {"imgsz": 160, "batch": 2, "mosaic": 0.2, "mixup": 0.3})  # fmt: skip


def tied_study(workdir: Path, data: Path, name: str = "tied") -> optuna.Study:
    """A (0.600, repeated at 0.580: noise 0.02) and B (0.585) tie within the noise, and B needs less than half
    A's memory, so the probe picks B; C is far behind."""
    make_study(workdir, name, data, [(A, 0.600, 2000.0), (B, 0.585, 900.0), (C, 0.300, 700.0)])
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / f'{name}.db'}")
    first = study.get_trials()[0]
    study.add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions, value=0.580,
                                              user_attrs={"outcome": "ok", "peak_mem_mb": 2010.0, "repeat_of": 0}))  # fmt: skip
    return study


def test_after_kills_from_outside_the_frontier_is_the_lowered_limit_s(tmp_path):
    """The pre-flights put batch 16 up to imgsz 384 under the budget's stable limit (1800 MiB); kills from outside
    at about 1000 MiB lowered it to 891 MiB. train-best's frontier follows the lowered limit: 192, where the
    pre-flight at 160 and the memory model say the peak stays under it, not the 384 of the mapping."""
    study, found, _ = searched(tmp_path, n_trials=12, killed_at=1000, excess=1.0, space={"batch": (16,)})
    record = StudyRecord.of(study)
    assert record.stable_limit_mb < record.limits["stable_limit_mb"] and found.frontier.largest() == {16: 384}
    frontier = StableSizes.of(record)
    assert frontier.largest == {16: 192}
    assert found.model.upper(192, 16, 1.0, 0.2) < record.stable_limit_mb < found.model.upper(224, 16, 1.0, 0.2)
    new, _ = step_down(Params(384, 16, 1.0, 0.2), (), frontier)
    assert new.imgsz == 192  # not 352, over the real limit
    stages = plan_stages(dataclasses.replace(source(Params(160, 16, 0.5, 0.1)), frontier=frontier), settings("progressive", 4))
    assert stages[-1].params.imgsz == 192  # grows to the lowered frontier, not to 384


def test_the_step_down_ladder_is_the_order_the_probe_picks_in(workdir, tiny_data):
    """Ties within the noise go to the config with more memory headroom, as `tuner probe` picks its best: the
    ladder is the probe's pick, then its pick among the rest, and so on (most accurate first would put A first)."""
    study = tied_study(workdir, tiny_data)
    record = StudyRecord.of(study)
    pick = selection.best_stable(study.get_trials(), record.stable_limit_mb, selection.noise(study.get_trials()).spread,
                                 record.budget_mb)  # fmt: skip
    ladder = source_from_study("tied", None, workdir / "studies").candidates
    assert pick.params == B
    assert [c.params for c in ladder] == [Params.of(B), Params.of(A), Params.of(C)]
    assert (ladder[0].value, ladder[0].peak_mb, ladder[0].trial) == (pick.value, pick.peak_mb, pick.trial.number)
    assert ladder[1].value == pytest.approx(0.59) and ladder[1].peak_mb == 2010.0 and ladder[1].trial == 0
    new, why = step_down(Params(384, 8, 0.5, 0.1), ladder)
    assert new == Params.of(B) and "trial 1" in why  # A is more accurate, but within the noise and twice the memory


def test_the_conservative_stage_is_the_next_stable_config_of_the_study():
    """Two-stage's first stage is measured: the config the probe would pick among the stable ones smaller than
    the best (B, smaller than A in imgsz and batch), with the mosaic and mixup it was measured with."""
    ladder = (candidate(352, 8, 0.60, 0), candidate(352, 16, 0.58, 3), candidate(256, 4, 0.55, 1))
    first, second = plan_stages(source(Params(352, 8, 0.5, 0.1), ladder), settings("two-stage", 40))
    assert first.params == candidate(256, 4, 0.55, 1).params and first.nbs == 4
    assert second.params == Params(352, 8, 0.5, 0.1) and second.nbs == 8


def test_without_a_smaller_stable_config_the_conservative_stage_keeps_the_best_size():
    """The arithmetic imgsz - 64 would go below the space (160) and to a size no probe measured; the best's own
    size was measured, so the conservative stage keeps it and trains with lighter augmentation."""
    ladder = (candidate(192, 8, 0.60, 0), candidate(160, 16, 0.50, 1))
    first, _ = plan_stages(source(Params(192, 8, 0.8, 0.2), ladder), settings("two-stage", 40))
    assert first.params == Params(192, 8, 0.4, 0.0)
