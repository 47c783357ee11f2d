"""The supervisor's step-downs across stages, and the budget a run trains under, with a fake training process
(tests/train/test_train.py's FakeRunner) and real checkpoints; studies are real SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.train.test_train import FakeRunner, assert_one_line_error, make_study, state_of, train_dir, write_best_yaml
from tuner.memory import device as devices
from tuner.memory.budget import MIB
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
    assert [(step.stage, step.to_params.batch) for step in state.step_downs] == [(1, 4)]
    fine_tune = [spec.params for spec in runner.specs if spec.save_dir == str(train_dir(workdir, "batch").resolve())]
    assert fine_tune == [Params(96, 4, 0.8, 0.2)]  # the best's mosaic and mixup, at the size that worked
    assert [failure.stage for failure in state.failures] == [1, 1]


def study_on_a_machine_of(workdir, data, name: str, usable_mb: float, budget_mb: float) -> None:
    """A study as `tuner probe` leaves it on a machine with `usable_mb` of usable memory, under `budget_mb`."""
    make_study(workdir, name, data, [({"imgsz": 64, "batch": 2, "mosaic": 0.5, "mixup": 0.0}, 0.3, 900.0)])
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / f'{name}.db'}")
    study.set_user_attr("usable_memory_mb", usable_mb)
    study.set_user_attr("budget_mb", budget_mb)
    study.set_user_attr("stable_limit_mb", budget_mb * 0.9)


def test_a_machine_with_less_memory_than_the_study_s_trains_under_the_study_s_share_of_it(workdir, tiny_data, train_with):
    """The study's budget is absolute: 0.75 of a machine four times this one's is three times this machine's
    memory, which no watchdog can hold. train-best trains under 0.75 of this machine's memory, and says so."""
    usable = devices.resolve("cpu").total_memory
    study_on_a_machine_of(workdir, tiny_data, "roomy", 4 * usable / MIB, 3 * usable / MIB)
    runner = FakeRunner(oom_imgsz=10**6, oom_after=0)
    code, _, err = train_with(runner, study_name="roomy", epochs=1)
    assert code == 0, err
    assert [spec.budget for spec in runner.specs] == [pytest.approx(0.75 * usable, rel=1e-3)]
    assert state_of(train_dir(workdir, "roomy")).budget_mb == pytest.approx(0.75 * usable / MIB, rel=1e-3)
    assert "less than the" in err and "Pass --memory-budget" in err


def test_the_study_s_budget_is_kept_on_a_machine_like_the_study_s(workdir, tiny_data, train_with):
    usable = devices.resolve("cpu").total_memory
    study_on_a_machine_of(workdir, tiny_data, "same", round(usable / MIB, 1), round(0.9 * usable / MIB, 1))
    runner = FakeRunner(oom_imgsz=10**6, oom_after=0)
    code, _, err = train_with(runner, study_name="same", epochs=1)
    assert code == 0, err
    assert runner.specs[0].budget == int(round(0.9 * usable / MIB, 1) * MIB) and "less than the" not in err


def test_a_memory_budget_over_the_machine_s_memory_is_refused(workdir, tiny_data, train_with):
    best = write_best_yaml(workdir / "results" / "huge" / "best.yaml", tiny_data)
    runner = FakeRunner(oom_imgsz=10**6, oom_after=0)
    code, _, err = train_with(runner, config=best, epochs=1, memory_budget="1000TB")
    assert_one_line_error(code, err, "--memory-budget 1000TB", "more than the device's usable memory",
                          "Pass a smaller --memory-budget")
    assert not runner.specs and not train_dir(workdir, "huge").exists()


class OomWithModel(FakeRunner):
    """Runs out of memory with one model at every config, from the stage's start; the other trains."""

    def __init__(self, model: str) -> None:
        super().__init__(oom_imgsz=0, oom_after=0)
        self.model = model

    def __call__(self, module, spec, folder, device, budget, timeout, on_epoch):
        self.runs_out = lambda params: spec.model == self.model
        return super().__call__(module, spec, folder, device, budget, timeout, on_epoch)


N_BEST = (({"imgsz": 64, "batch": 1, "mosaic": 0.2, "mixup": 0.0}, 0.30, 900.0),)


S_BEST = (({"imgsz": 64, "batch": 1, "mosaic": 0.5, "mixup": 0.0}, 0.35, 1500.0),)


def two_model_studies(workdir, data, smallest_first: bool = True, smaller=N_BEST, larger=S_BEST) -> None:
    """As `tuner probe --model yolov8n.yaml,yolov8s.yaml` leaves them; yolov8s's trials are `larger` (by default its
    best is its smallest config), and yolov8n's are `smaller` (the most accurate first)."""
    make_study(workdir, "fam-yolov8n", data, list(smaller))
    make_study(workdir, "fam-yolov8s", data, list(larger))
    family = {"name": "fam", "models": ["yolov8n.yaml", "yolov8s.yaml"], "studies": ["fam-yolov8n", "fam-yolov8s"],
              "smallest_first": smallest_first}  # fmt: skip
    for name, model in (("fam-yolov8n", "yolov8n.yaml"), ("fam-yolov8s", "yolov8s.yaml")):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / f'{name}.db'}")
        study.set_user_attr("family", family)
        study.set_user_attr("model_path", model)


def test_a_pick_with_nothing_smaller_falls_back_to_the_smaller_models_best(workdir, tiny_data, train_with):
    """The seed note's fallback: yolov8s runs out of memory at its smallest config twice; train-best trains yolov8n's
    best stable config instead, as a run of its own, and keeps yolov8s's run as it was."""
    two_model_studies(workdir, tiny_data)
    runner = OomWithModel("yolov8s.yaml")
    code, _, err = train_with(runner, study_name="fam-yolov8s", epochs=2)
    assert code == 0, err
    assert [(spec.model, spec.params.imgsz) for spec in runner.specs] == [("yolov8s.yaml", 64), ("yolov8s.yaml", 64),
                                                                          ("yolov8n.yaml", 64)]  # fmt: skip
    assert "no smaller config to step down to. Falling back to the smaller model yolov8n.yaml" in err
    summary = json.loads((train_dir(workdir, "fam-yolov8n") / "summary.json").read_text())
    assert summary["study"] == "fam-yolov8n" and summary["epochs"] == 2
    assert state_of(train_dir(workdir, "fam-yolov8s")).epochs_done == 0  # kept: a re-run goes on from there


def test_the_fallback_of_a_run_named_with_run_goes_to_the_same_run_name_of_the_smaller_models_study(
    workdir, tiny_data, train_with
):
    """`--run second`: the fallback trains in results/fam-yolov8n/second/, not in that study's own pick run (train/)."""
    two_model_studies(workdir, tiny_data)
    code, _, err = train_with(OomWithModel("yolov8s.yaml"), study_name="fam-yolov8s", epochs=2, run="second")
    assert code == 0, err
    second = workdir / "results" / "fam-yolov8n" / "second"
    assert f"trained as a run of its own in {Path('results') / 'fam-yolov8n' / 'second'}" in err
    assert json.loads((second / "summary.json").read_text())["study"] == "fam-yolov8n"
    assert not train_dir(workdir, "fam-yolov8n").exists() and not train_dir(workdir, "fam-yolov8s").exists()


def test_the_larger_model_steps_down_within_its_own_study_before_it_falls_back(workdir, tiny_data, train_with):
    """yolov8s's best (96/2) runs out of memory twice: train-best steps down to yolov8s's next stable config (64/1)
    first, as a one-model study would, and only when that runs out too falls back to yolov8n."""
    larger = [({"imgsz": 96, "batch": 2, "mosaic": 0.5, "mixup": 0.0}, 0.38, 1700.0), *S_BEST]
    two_model_studies(workdir, tiny_data, larger=larger)
    runner = OomWithModel("yolov8s.yaml")
    code, _, err = train_with(runner, study_name="fam-yolov8s", epochs=2)
    assert code == 0, err
    tried = [(spec.model, spec.params.imgsz, spec.params.batch) for spec in runner.specs]
    assert tried == [("yolov8s.yaml", 96, 2)] * 2 + [("yolov8s.yaml", 64, 1)] * 2 + [("yolov8n.yaml", 64, 1)]
    assert "Falling back to the smaller model yolov8n.yaml" in err


@pytest.mark.parametrize("second, start", [((64, 1), (64, 1)), ((80, 2), (80, 2))])
def test_the_fallback_starts_at_the_smaller_models_best_config_no_larger_than_the_one_that_ran_out(
    workdir, tiny_data, train_with, second, start
):
    """yolov8n's best (96/2) needs more than yolov8s's 64/1 that ran out of memory: the fallback trains yolov8n's
    next config no larger than 64/1 in imgsz and batch, not its best (which would only run out and step down); where
    none is no larger, its config with the fewest pixels a batch (80/2 before 96/2). The run's config.yaml says so."""
    smaller = [({"imgsz": 96, "batch": 2, "mosaic": 0.2, "mixup": 0.0}, 0.40, 1200.0),
               ({"imgsz": second[0], "batch": second[1], "mosaic": 0.7, "mixup": 0.1}, 0.30, 900.0)]  # fmt: skip
    two_model_studies(workdir, tiny_data, smaller=smaller)
    runner = OomWithModel("yolov8s.yaml")
    code, _, err = train_with(runner, study_name="fam-yolov8s", epochs=2)
    assert code == 0, err
    fallback = [spec.params for spec in runner.specs if spec.model == "yolov8n.yaml"]
    assert [(p.imgsz, p.batch, p.mosaic) for p in fallback] == [(*start, 0.7)]
    assert "no larger than 64/1 (imgsz/batch), else at its smallest" in err
    origin = (train_dir(workdir, "fam-yolov8n") / "config.yaml").read_text()
    assert ("its first stable config no larger than 64/1" if second == (64, 1) else "its smallest stable config") in origin


@pytest.mark.parametrize("study", ["fam-yolov8n", "fam-yolov8s-unordered"])
def test_without_a_smaller_model_nothing_smaller_stays_an_error(workdir, tiny_data, train_with, study):
    """The smallest model has nothing to fall back to; nor has a model where which is smaller is unknown (weights)."""
    two_model_studies(workdir, tiny_data, smallest_first=study == "fam-yolov8n")
    runner = OomWithModel("yolov8n.yaml" if study == "fam-yolov8n" else "yolov8s.yaml")
    code, _, err = train_with(runner, study_name=study.removesuffix("-unordered"), epochs=2)
    assert code == 1 and "no smaller config to step down to" in err and "Falling back" not in err
    assert err.strip().splitlines()[-1].startswith("tuner: error: stage 1/1 best after epoch 0: out of memory twice")
