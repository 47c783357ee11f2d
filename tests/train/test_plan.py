"""What train-best plans from a study: the frontier it steps down and grows within, the step-down ladder, the
two-stage run's conservative stage. Studies are real SQLite, made by the search with fake processes
(tests/study/test_search.py) or by hand (tests/train/test_train.py's make_study)."""

from __future__ import annotations

import dataclasses

from tests.study.test_search import searched
from tests.train.test_train import settings, source
from tuner.params import Params
from tuner.study.dominance import StableSizes
from tuner.study.records import StudyRecord
from tuner.train.plan import plan_stages, step_down


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
    assert stages[-1]["params"]["imgsz"] == 192  # grows to the lowered frontier, not to 384
