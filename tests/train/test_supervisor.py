"""The supervisor's step-downs across stages, with a fake training process (tests/train/test_train.py's FakeRunner)
and real checkpoints; studies are real SQLite."""

from __future__ import annotations

import json

from tests.train.test_train import FakeRunner, make_study, state_of, train_dir, write_best_yaml
from tuner.params import Params


class OomAtBatch(FakeRunner):
    """Runs out of memory at batch >= `batch`, whatever the imgsz, from the stage's start."""

    def __init__(self, batch: int) -> None:
        super().__init__(oom_imgsz=0, oom_after=0)
        self.batch = batch

    def runs_out(self, params: Params) -> bool:
        return params.batch >= self.batch


def test_a_progressive_step_down_holds_for_the_later_stages(workdir, tiny_data, train_with):
    """Planned 64/96/128/160 where 128 and up run out of memory: stage 3 steps down to 96, and stage 4 starts
    there instead of at 160 (which would step down to 128, out of memory twice already, and use up the restarts)."""
    runner = FakeRunner(oom_imgsz=128, oom_after=0)
    best = write_best_yaml(workdir / "results" / "grow" / "best.yaml", tiny_data, imgsz=160, batch=2)
    code, _, err = train_with(runner, config=best, epochs=4, strategy="progressive")
    assert code == 0, err
    assert [spec.params.imgsz for spec in runner.specs] == [64, 96, 128, 128, 96, 96]
    summary = json.loads((train_dir(workdir, "grow") / "summary.json").read_text())
    assert [stage["trained_with"]["imgsz"] for stage in summary["stages"]] == [64, 96, 96, 96]
    assert [stage["planned"]["imgsz"] for stage in summary["stages"]] == [64, 96, 128, 160]
    (step,) = summary["step_downs"]
    assert step["stage"] == 3 and step["capped"] == [4] and summary["restarts"] == 2
    assert "Stage 4 trains no larger in imgsz and batch" in err


def test_a_batch_step_down_in_the_conservative_stage_holds_for_the_fine_tune(workdir, tiny_data, train_with):
    make_study(workdir, "batch", tiny_data, [({"imgsz": 160, "batch": 8, "mosaic": 0.8, "mixup": 0.2}, 0.6, 1500.0),
                                            ({"imgsz": 128, "batch": 8, "mosaic": 0.5, "mixup": 0.0}, 0.5, 1200.0),
                                            ({"imgsz": 96, "batch": 4, "mosaic": 0.5, "mixup": 0.0}, 0.4, 1000.0)])  # fmt: skip
    runner = OomAtBatch(8)
    code, _, err = train_with(runner, study_name="batch", epochs=4, strategy="two-stage")
    assert code == 0, err
    state = state_of(train_dir(workdir, "batch"))
    assert [(step["stage"], step["to"]["batch"]) for step in state["step_downs"]] == [(1, 4)]
    fine_tune = [spec.params for spec in runner.specs if spec.save_dir == str(train_dir(workdir, "batch").resolve())]
    assert fine_tune == [Params(96, 4, 0.8, 0.2)]  # the best's mosaic and mixup, at the size that worked
    assert [failure["stage"] for failure in state["failures"]] == [1, 1]
