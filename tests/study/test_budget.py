"""The probe budget (tuner.study.probe_budget, checked by tuner.checks.probe_budget): its setting, the plan fitted
to it before the first trial, and the deadline it becomes."""

from __future__ import annotations

import dataclasses
import time

import pytest
from tests.fakes import FakePreflight, FakeProbe, inputs, quiet
from tests.study.test_search import ran
from tuner import checks
from tuner.errors import ConfigError
from tuner.study import limits, probe_budget
from tuner.study.open import open_study
from tuner.study.probe_budget import Plan
from tuner.study.records import StudyRecord
from tuner.study.search import Search


@pytest.mark.parametrize(
    ("value", "expected"),
    [("6m", 360.0), ("90s", 90.0), ("1h30m", 5400.0), ("1h", 3600.0), ("2m30s", 150.0), ("45", 45.0), (120, 120.0),
     (2.5, 2.5), ("15%", "15%"), (" 7.5 % ", "7.5%"), ("none", "none"), ("None", "none"), (None, "none"), (0, "none"),
     ("0", "none")],
)  # fmt: skip
def test_a_budget_is_a_duration_a_share_of_the_training_or_none(value, expected):
    assert checks.probe_budget(value) == expected


@pytest.mark.parametrize("value", ["soon", "6x", "-5%", "0%", "%", "-3", -3, True, "m", "nan", "inf", float("inf")])
def test_a_bad_budget_is_one_line_naming_what_it_takes(value):
    with pytest.raises(ConfigError) as caught:
        checks.probe_budget(value, "--probe-budget")
    message = str(caught.value)
    assert "`--probe-budget`" in message and "6m, 90s, 1h30m" in message and "15%" in message and "\n" not in message


def test_an_unbounded_budget_keeps_the_plan_whole():
    plan = probe_budget.fit("none", [10.0, 20.0], 8, 2, 2)
    assert (plan.n_trials, plan.repeats, plan.race, plan.cut) == (8, 2, 2, ())
    assert plan.seconds == pytest.approx(10 + 20 + 10 * 15.0) and plan.budget_s is None
    assert probe_budget.deadline_s(plan, 1000.0) is None


def test_the_race_is_cut_first_then_repeats_then_main_trials():
    design = [10.0, 20.0, 30.0]  # each other probe at their mean, 20 s: 8 + 2 + 2 probes cost 60 + 9 x 20 = 240 s
    assert probe_budget.fit(240.0, design, 8, 2, 2).cut == ()
    one_race = probe_budget.fit(220.0, design, 8, 2, 2)
    assert (one_race.race, one_race.repeats, one_race.n_trials, one_race.cut) == (1, 2, 8, ("1 race run",))
    no_race = probe_budget.fit(200.0, design, 8, 2, 2)
    assert (no_race.race, no_race.repeats, no_race.n_trials, no_race.cut) == (0, 2, 8, ("the race",))
    one_repeat = probe_budget.fit(190.0, design, 8, 2, 2)
    assert (one_repeat.race, one_repeat.repeats, one_repeat.n_trials) == (0, 1, 8)
    fewer = probe_budget.fit(170.0, design, 8, 2, 2)  # one repeat stays: the pick needs the noise
    assert (fewer.race, fewer.repeats, fewer.n_trials) == (0, 1, 7)
    assert fewer.cut == ("1 main trial", "1 repeat", "the race") and fewer.seconds <= 170.0
    asked_none = probe_budget.fit(150.0, design, 8, 0, 2)  # --repeats 0: none is kept
    assert (asked_none.repeats, asked_none.n_trials) == (0, 7)


def test_the_plan_never_goes_below_the_startup_design_and_one_noise_repeat():
    plan = probe_budget.fit(5.0, [10.0, 20.0, 30.0], 8, 2, 2)
    assert (plan.n_trials, plan.repeats, plan.race) == (3, 1, 0)
    assert plan.seconds == 80.0 and plan.cut == ("5 main trials", "1 repeat", "the race")
    assert probe_budget.deadline_s(plan, 0.0) == 80.0  # the floor gets its predicted time, not the budget's 5 s
    assert plan.over_budget and plan.describe().endswith(
        "budget 5 s: 5 main trials, 1 repeat and the race cut; the startup design and one noise repeat alone take "
        "longer, and run in full (the sampler needs the design, the pick the noise).")  # fmt: skip
    no_repeats = probe_budget.fit(5.0, [10.0, 20.0, 30.0], 8, 0, 2)
    assert no_repeats.repeats == 0 and no_repeats.describe().endswith("the startup design alone takes longer, and runs "
                                                                      "in full (the sampler needs it).")  # fmt: skip
    assert not probe_budget.fit(240.0, [10.0, 20.0, 30.0], 8, 2, 2).over_budget


def test_a_share_is_of_the_reference_training_and_the_plan_says_so():
    plan = probe_budget.fit("15%", [60.0, 60.0, 60.0], 8, 2, 2, ("480/4", 3300.0, 40))
    assert plan.budget_s == pytest.approx(495.0) and (plan.n_trials, plan.repeats, plan.race) == (7, 1, 0)
    assert plan.describe() == ("Plan: 8 probes, about 8 min, 15% of a 40-epoch training at 480/4 (about 55 min); "
                               "budget 15% (8 min): 1 main trial, 1 repeat and the race cut.")  # fmt: skip
    assert Plan.from_json(plan.to_json()) == plan
    unpredicted = probe_budget.fit("15%", [], 8, 2, 2)  # no pre-flight timed its batches: nothing to plan by
    assert unpredicted.budget_s is None and unpredicted.probes == 12 and "no prediction" in unpredicted.describe()


def test_the_cost_line_sets_the_probe_against_the_picks_training():
    assert probe_budget.cost_line(420.0, 3480.0) == "Probe: 7 min, 12% of the pick's predicted 58 min training."
    assert probe_budget.cost_line(42.0, None) == "Probe: 42 s."


def _searched(tmp_path, plan: Plan | None, done_s: float = 0.0):
    """A study of 6 main trials under `plan`, with one trial of `done_s` seconds from an earlier run of it."""
    trials = inputs(tmp_path, 2000)
    trials = dataclasses.replace(trials, cfg=dataclasses.replace(trials.cfg, n_trials=6))
    found = limits.map_limits(trials, quiet(), runner=FakePreflight(2000))
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000.0, stable_limit_mb=trials.stable_limit_mb,
                         limits=found.to_dict())  # fmt: skip
    study, _ = open_study("s", f"sqlite:///{tmp_path / 's.db'}", trials.cfg, record)
    if done_s:
        earlier = ran(trials.cfg.space, 160, 2, 0.5, 0.2, 700.0)
        earlier.user_attrs = {**earlier.user_attrs, "duration_s": done_s}
        study.add_trial(earlier)
    fake = FakeProbe(2000)
    Search(study, trials, quiet(), found, runner=fake, plan=plan).run()
    return study, fake


def test_the_budget_is_a_deadline_kept_after_every_trial(tmp_path, monkeypatch):
    """Each fake probe takes 1 s of the clock: a 2.5 s budget lets three start, and no more."""
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    fake = FakeProbe(2000)

    def one_second(*args, **kwargs):
        clock[0] += 1.0
        return fake(*args, **kwargs)

    trials = inputs(tmp_path, 2000)
    trials = dataclasses.replace(trials, cfg=dataclasses.replace(trials.cfg, n_trials=6))
    found = limits.map_limits(trials, quiet(), runner=FakePreflight(2000))
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000.0, stable_limit_mb=trials.stable_limit_mb,
                         limits=found.to_dict())  # fmt: skip
    study, _ = open_study("s", f"sqlite:///{tmp_path / 's.db'}", trials.cfg, record)
    plan = Plan(2.5, 2.5, 6, 2, 0, 2.0)
    Search(study, trials, quiet(), found, runner=one_second, plan=plan).run()
    assert len(fake.ran) == 3
    _, ran_all = _searched(tmp_path / "free", None)
    assert len(ran_all.ran) >= 6  # without a budget every trial runs, and the repeats


def test_a_continued_study_counts_the_probe_time_already_spent(tmp_path):
    """The budget is the study's, over every run of it: 100 s of 60 already spent leaves none for a new trial."""
    plan = Plan(60.0, 60.0, 6, 2, 0, 50.0)
    study, fake = _searched(tmp_path, plan, done_s=100.0)
    assert fake.ran == [] and len(study.get_trials()) == 1
    assert probe_budget.spent(study.get_trials()) == 100.0
    _, fake = _searched(tmp_path / "room", Plan(600.0, 600.0, 6, 2, 0, 50.0), done_s=100.0)
    assert fake.ran  # 500 s left: the search goes on
