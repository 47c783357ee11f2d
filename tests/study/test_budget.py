"""The probe budget (tuner.study.probe_budget, checked by tuner.checks.probe_budget): its setting, the plan fitted
to it before the first trial, and the deadline it becomes."""

from __future__ import annotations

import dataclasses
import io
import time

import optuna
import pytest
from tests.fakes import FakePreflight, FakeProbe, inputs, quiet
from tests.study.test_search import ran
from tuner import checks
from tuner.errors import ConfigError
from tuner.study import limits, probe_budget
from tuner.study.open import open_study
from tuner.data.sample import Sample
from tuner.study.deadlines import Deadlines
from tuner.study.probe_budget import Plan, Ran
from tuner.study.progress import Progress
from tuner.study.records import StudyRecord
from tuner.study.search import Search, main_trials_done
from tuner.study.space import enqueue_startup, startup_trials


@pytest.mark.parametrize(
    ("value", "expected"),
    [("6m", 360.0), ("90s", 90.0), ("1h30m", 5400.0), ("1h", 3600.0), ("2m30s", 150.0), ("45", 45.0), (120, 120.0),
     (2.5, 2.5), ("15%", "15%"), (" 7.5 % ", "7.5%"), ("none", "none"), ("None", "none"), (None, "none"), (0, "none"),
     ("0", "none"), ("floor", "floor"), (" Floor ", "floor")],
)  # fmt: skip
def test_a_budget_is_a_duration_a_share_of_the_training_the_floor_or_none(value, expected):
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
    assert probe_budget.deadline_s(plan, 0.0) == 5.0  # the floor runs past it (tuner.study.deadlines), nothing else does
    assert plan.over_budget and plan.describe().endswith(
        "budget 5 s: 5 main trials, 1 repeat and the race cut; the startup design and one noise repeat alone take "
        "longer, and run in full (the sampler needs the design, the pick the noise).")  # fmt: skip
    no_repeats = probe_budget.fit(5.0, [10.0, 20.0, 30.0], 8, 0, 2)
    assert no_repeats.repeats == 0 and no_repeats.describe().endswith("the startup design alone takes longer, and runs "
                                                                      "in full (the sampler needs it).")  # fmt: skip
    assert not probe_budget.fit(240.0, [10.0, 20.0, 30.0], 8, 2, 2).over_budget


def test_a_floor_budget_plans_the_startup_design_and_one_noise_repeat_and_nothing_past_them(tmp_path, monkeypatch):
    plan = probe_budget.fit("floor", [10.0, 20.0, 30.0], 8, 2, 2, ("480/4", 3300.0, 40))
    assert (plan.n_trials, plan.repeats, plan.race, plan.seconds) == (3, 1, 0, 80.0) and not plan.over_budget
    assert plan.describe() == ("Plan: 4 probes, about 80 s, 2% of a 40-epoch training at 480/4 (about 55 min); budget: "
                               "the floor only (the startup design and one noise repeat): 5 main trials, 1 repeat and "
                               "the race cut.")  # fmt: skip
    assert probe_budget.deadline_s(plan, 0.0) == 0.0 and Plan.from_json(plan.to_json()) == plan
    unpredicted = probe_budget.fit("floor", [], 8, 2, 2)  # no plan to cut by: the deadline stops all past the floor
    assert unpredicted.describe().endswith("budget: the floor only (the startup design and one noise repeat).")
    # a search under it, its probes 1 s each (a 3-cell design of 6 main trials): the design and one repeat, no more
    ran = _clocked_search(tmp_path, monkeypatch, Plan("floor", 0.0, 6, 2, 0, 4.0), 1.0)
    assert len(ran) == 4 and ran[-1] in ran[:3]


def test_a_share_is_of_the_reference_training_and_the_plan_says_so():
    plan = probe_budget.fit("15%", [60.0, 60.0, 60.0], 8, 2, 2, ("480/4", 3300.0, 40))
    assert plan.budget_s == pytest.approx(495.0) and (plan.n_trials, plan.repeats, plan.race) == (7, 1, 0)
    assert plan.describe() == ("Plan: 8 probes, about 8 min, 15% of a 40-epoch training at 480/4 (about 55 min); "
                               "budget 15% (8 min): 1 main trial, 1 repeat and the race cut.")  # fmt: skip
    assert Plan.from_json(plan.to_json()) == plan
    unpredicted = probe_budget.fit("15%", [], 8, 2, 2)  # no pre-flight timed its batches: nothing to plan by
    assert unpredicted.budget_s is None and unpredicted.probes == 12 and "no prediction" in unpredicted.describe()


def test_the_pre_flights_count_against_the_budget_and_the_plan_says_so():
    plan = probe_budget.fit("15%", [60.0, 60.0, 60.0], 8, 2, 2, ("480/4", 3300.0, 40), preflight_s=135.0)
    assert (plan.n_trials, plan.repeats, plan.race) == (5, 1, 0)  # 495 s: 135 of pre-flights and 6 probes of 60
    assert plan.seconds == 495.0 and plan.describe().startswith(
        "Plan: 6 probes, about 8 min with the pre-flights' 2 min, 15% of a 40-epoch training at 480/4")
    assert Plan.from_json({key: value for key, value in plan.to_json().items() if key != "preflight_s"}).preflight_s == 0.0


def test_a_share_follows_the_best_config_so_far_and_a_duration_stays_put():
    share = probe_budget.fit("15%", [60.0, 60.0, 60.0], 8, 2, 2, ("480/4", 3300.0, 40))
    assert probe_budget.budget_now(share) == pytest.approx(495.0)  # no best config yet: the plan's reference
    assert probe_budget.budget_now(share, 2000.0) == pytest.approx(300.0)  # the best trains faster: less to spend
    assert probe_budget.deadline_s(share, 100.0, 6000.0) == pytest.approx(800.0)  # slower: more
    duration = probe_budget.fit(400.0, [60.0, 60.0, 60.0], 8, 2, 2, ("480/4", 3300.0, 40))
    assert probe_budget.budget_now(duration, 2000.0) == 400.0
    assert probe_budget.budget_now(probe_budget.fit("none", [60.0], 8, 2, 2), 2000.0) is None


def test_a_start_keeps_a_mean_probe_in_hand_and_the_floors_repeat_while_it_is_owed(tmp_path):
    space = inputs(tmp_path, 2000).cfg.space
    timed = [ran(space, 160, 2, 0.5, 0.2, 700.0) for _ in range(3)]
    for trial, seconds in zip(timed, (30.0, 60.0, 90.0)):
        trial.user_attrs = {**trial.user_attrs, "duration_s": seconds}
    untimed = ran(space, 320, 2, 0.5, 0.2, 700.0)  # no duration (an inferred OOM, which ran nothing): not in the mean
    untimed.user_attrs = {"outcome": "oom", "inferred": True}
    pruned = ran(space, 352, 2, 0.5, 0.2, 700.0)
    pruned.user_attrs = {**pruned.user_attrs, "outcome": "pruned", "duration_s": 20.0}
    assert probe_budget.reserve_s([*timed, untimed]) == pytest.approx(60.0)
    assert probe_budget.reserve_s(timed, owed=1) == pytest.approx(120.0)
    # the next probe may be pruned too (the mean of all four, 50 s); the owed repeat trains to its end (60 s)
    assert probe_budget.reserve_s([*timed, pruned], owed=1) == pytest.approx(50.0 + 60.0)
    assert probe_budget.reserve_s([untimed], owed=1) == 0.0  # nothing timed yet: the design is the floor anyway


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


def _clocked_search(tmp_path, monkeypatch, plan: Plan, probe_s: float, timeout: float | None = None,
                    n_trials: int = 6, queued_from: int | None = None, progress=None, fake: FakeProbe | None = None,
                    ) -> list:  # fmt: skip
    """A search of `n_trials` main trials (6: a 3-cell startup design) and 2 repeats whose fake probes each take
    `probe_s` of the clock; the configs it ran. `queued_from`: the design was queued from a config of that many
    trials, as `tuner probe` queues it before the plan cuts the main trials. Its probes sample 960 train and 96 val
    images, so each ok probe predicts its config's full training (thousands of seconds: tests.fakes.batch_s)."""
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    fake = fake or FakeProbe(2000)

    def clocked(*args, **kwargs):
        clock[0] += probe_s
        return dataclasses.replace(fake(*args, **kwargs), duration_s=probe_s)

    trials = inputs(tmp_path, 2000)
    trials = dataclasses.replace(trials, cfg=dataclasses.replace(trials.cfg, n_trials=n_trials, timeout=timeout),
                                 sample=Sample("s.yaml", 200, 100, 960, 96), planned_epochs=30)  # fmt: skip
    assert trials.cfg.probe.repeats == 2
    found = limits.map_limits(trials, quiet(), runner=FakePreflight(2000))
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000.0, stable_limit_mb=trials.stable_limit_mb,
                         limits=found.to_dict())  # fmt: skip
    study, _ = open_study("s", f"sqlite:///{tmp_path / 's.db'}", trials.cfg, record)
    if queued_from:
        enqueue_startup(study, dataclasses.replace(trials.cfg, n_trials=queued_from), found)
    Search(study, trials, progress or quiet(), found, runner=clocked, plan=plan).run()
    return fake.ran


def test_the_budget_is_a_deadline_kept_after_every_trial_once_the_floor_has_run(tmp_path, monkeypatch):
    """Each fake probe takes 1 s of the clock. A 5.5 s budget: the 3-cell design, the floor's repeat of its best
    (the floor first), then one more main trial (at 4 s, with 1.5 s left: room for a mean probe), and the study ends
    at 5 s, inside the budget; a fifth main trial at 5 s would have ended at 6 s."""
    stream = io.StringIO()
    ran = _clocked_search(tmp_path / "a", monkeypatch, Plan(5.5, 5.5, 6, 2, 0, 5.0), 1.0,
                          progress=Progress(1, 1, "mAP50-95", stream=stream))  # fmt: skip
    assert len(ran) == 5 and ran[3] in ran[:3] and ran[4] not in ran[:4]  # the design, its repeat, one main trial
    assert ("Budget: 4 of the plan's 6 main trials ran; a probe takes about 1 s, which no longer fits in what is "
            "left.") in stream.getvalue()
    assert len(_clocked_search(tmp_path / "c", monkeypatch, Plan(6.5, 6.5, 6, 2, 0, 6.0), 1.0)) == 6  # one more
    assert len(_clocked_search(tmp_path / "b", monkeypatch, Plan(2.5, 2.5, 6, 2, 0, 2.0), 1.0)) == 4  # the floor
    _, ran_all = _searched(tmp_path / "free", None)
    assert len(ran_all.ran) >= 8  # without a budget every trial runs, and the repeats


def test_the_floor_runs_in_full_where_probes_take_longer_than_predicted_and_timeout_still_stops_it(tmp_path, monkeypatch):
    """The plan said the design and one repeat run in full (4 probes, predicted 4 s against a 1 s budget); each takes
    10 s (a slower machine, another job beside it): all four run, and nothing more. `--timeout 15` stops the study
    after its second probe whatever the floor."""
    assert len(_clocked_search(tmp_path / "a", monkeypatch, Plan(1.0, 1.0, 6, 2, 0, 4.0), 10.0)) == 4
    assert len(_clocked_search(tmp_path / "b", monkeypatch, Plan(1.0, 1.0, 6, 2, 0, 4.0), 10.0, timeout=15.0)) == 2


def test_the_floor_is_the_design_queued_not_what_the_plans_cut_of_the_main_trials_leaves(tmp_path, monkeypatch):
    """`tuner probe` queues the design of its 8 trials (4 cells), then the plan cuts the main trials to those 4: the
    floor is the 4 cells and one repeat (startup_trials of 4 trials would say 2)."""
    cut = dataclasses.replace(inputs(tmp_path / "x", 2000).cfg, n_trials=4)
    assert startup_trials(cut) == 2
    ran = _clocked_search(tmp_path, monkeypatch, Plan(1.0, 1.0, 4, 1, 0, 5.0), 10.0, n_trials=4, queued_from=8)
    assert len(ran) == 5 and len(set(ran[:4])) == 4 and ran[4] in ran[:4]


def test_a_continued_study_counts_the_probe_time_already_spent(tmp_path):
    """The budget is the study's, over every run of it: 100 s of 60 already spent leaves none beyond the floor. This
    study queued no design (its one trial is from an earlier run), so only the floor's noise repeat runs."""
    plan = Plan(60.0, 60.0, 6, 2, 0, 50.0)
    study, fake = _searched(tmp_path, plan, done_s=100.0)
    assert len(fake.ran) == 1 and main_trials_done(study) == 1 and len(study.get_trials()) == 2
    _, fake = _searched(tmp_path / "room", Plan(600.0, 600.0, 6, 2, 0, 50.0), done_s=100.0)
    assert fake.ran  # 500 s left: the search goes on
    done = Ran.of(study.get_trials())  # the earlier run's trial, and this run's repeat of it
    assert (done.main, done.repeats) == (1, 1) and done.seconds > 100.0 and done.mean_s == pytest.approx(done.seconds / 2)


def test_a_continued_studys_plan_counts_what_it_ran_at_its_seconds_and_cuts_none_of_it():
    """A 3-cell design and one repeat ran in 200 s, 50 s a probe: a 300 s budget leaves room for two more probes, and
    the plan spends them on main trials (the race first cut, then repeats down to the one that ran). Planned from
    scratch, the design's predicted 60 s would have left room for more."""
    design, ran = [10.0, 20.0, 30.0], Ran(main=3, repeats=1, seconds=200.0, mean_s=50.0)
    plan = probe_budget.fit(300.0, design, 8, 2, 2, ran=ran)
    assert (plan.n_trials, plan.repeats, plan.race, plan.seconds, plan.ran_s) == (5, 1, 0, 300.0, 200.0)
    assert plan.describe() == ("Plan: 6 probes, about 5 min and the 3 min its probes ran before; budget 5 min: 3 main "
                               "trials, 1 repeat and the race cut.")  # fmt: skip
    assert probe_budget.fit(300.0, design, 8, 2, 2).n_trials == 8  # from scratch
    more = Ran(main=6, repeats=2, seconds=500.0, mean_s=50.0)  # ran past the floor before: none of it is cut
    floor = probe_budget.fit("floor", design, 8, 2, 2, ran=more)
    assert (floor.n_trials, floor.repeats, floor.race, floor.seconds) == (6, 2, 0, 500.0)


def test_a_share_of_the_training_follows_the_best_config_found_and_says_so(tmp_path, monkeypatch):
    """Each fake probe takes 1 s; the best config's full training is predicted at thousands of seconds. 1% of it is
    tens of seconds: every trial runs, though the plan's own reference left 0.5 s. 0.01% of it is under a second:
    the floor alone runs, though the plan's reference left 1000 s."""
    stream = io.StringIO()
    progress = Progress(1, 1, "mAP50-95", stream=stream)
    grown = _clocked_search(tmp_path / "a", monkeypatch, Plan("1%", 0.5, 6, 2, 0, 5.0, "160/2", 50.0, 30), 1.0,
                            progress=progress)  # fmt: skip
    assert len(grown) == 8  # six main trials and both repeats
    said = [line for line in stream.getvalue().splitlines() if line.startswith("Budget: 1% of the best config so far")]
    assert said and all("whose full training is predicted at" in line for line in said)
    stored = probe_budget.Follows.from_json(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a' / 's.db'}")
                                            .user_attrs["budget_follows"])  # fmt: skip
    assert stored.budget_s == pytest.approx(0.01 * stored.training_s) and said[-1].endswith(stored.describe())
    shrunk = _clocked_search(tmp_path / "b", monkeypatch, Plan("0.01%", 1000.0, 6, 2, 0, 5.0, "160/2", 1e7, 30), 1.0)
    assert len(shrunk) == 4  # the 3-cell design and one repeat


def test_the_floors_repeat_runs_before_the_sampler_so_a_share_follows_a_pick_that_knows_the_noise(tmp_path, monkeypatch):
    """The design's best, 384 / 2, scores 0.50 once and 0.40 again: within the noise of 160 / 2 (0.44), the pick
    for its headroom, whose full training is a quarter as long. Its repeat runs right after the design, the budget
    falls to 0.1% of 160 / 2's training, and nothing past the floor runs. (With the repeats after the main trials,
    the budget followed 384 / 2 through three more main trials, and the probe spent 7 s against the pick's 2 s.)"""
    stream = io.StringIO()
    scores = {(384, 2): (0.50, 0.40) + (0.45,) * 3, (288, 2): (0.20,) * 5, (160, 2): (0.44,) * 5}
    ran = _clocked_search(tmp_path, monkeypatch, Plan("0.1%", 0.5, 6, 2, 0, 5.0, "160/2", 50.0, 30), 1.0,
                          progress=Progress(1, 1, "mAP50-95", stream=stream), fake=FakeProbe(2000, scores=scores))  # fmt: skip
    assert [(p.imgsz, p.batch) for p in ran] == [(160, 2), (288, 2), (384, 2), (384, 2)]
    said = [line for line in stream.getvalue().splitlines() if line.startswith("Budget: 0.1% of the best config so far")]
    assert [line.split(", ")[1] for line in said] == ["384/2", "160/2"]


def test_without_a_budget_the_repeats_follow_the_main_trials(tmp_path):
    """`--probe-budget none` (a plan that keeps no budget, as tuner probe fits it), or a share with nothing to plan
    by: the noise repeats of the best configs run once every main trial has."""
    for name, setting in (("none", "none"), ("share", "15%")):
        plan = probe_budget.fit(setting, [], 6, 2, 2)
        assert plan.budget_s is None
        study, fake = _searched(tmp_path / name, plan)
        assert len(fake.ran) == 8 and {fake.ran[6], fake.ran[7]} <= set(fake.ran[:6])


def test_a_queued_repeat_not_started_is_still_owed_by_the_floor(tmp_path):
    """Another worker's trial queued before it may run first: the deadline keeps the queued repeat's time in hand,
    as it keeps one still to be queued. A race run waiting is no floor repeat."""
    trials = inputs(tmp_path, 2000)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'q.db'}")
    gate = Deadlines(study, trials, quiet(), Plan(60.0, 60.0, 6, 2, 0, 50.0))
    study.add_trial(ran(trials.cfg.space, 160, 2, 0.5, 0.1, 700.0))  # trial 0, the config both would run again
    study.enqueue_trial({"imgsz": 160, "batch": 2, "mosaic": 0.5, "mixup": 0.1}, user_attrs={"slot": "race:1", "repeat_of": 0})
    assert gate.repeat_owed(study.get_trials(), 2000.0) == 0
    study.enqueue_trial({"imgsz": 160, "batch": 2, "mosaic": 0.5, "mixup": 0.1}, user_attrs={"slot": "repeat:0", "repeat_of": 0})
    assert gate.repeat_owed(study.get_trials(), 2000.0) == 1
    assert Deadlines(study, trials, quiet(), Plan(60.0, 60.0, 6, 0, 0, 50.0)).repeat_owed(study.get_trials(), 2000.0) == 0


def test_a_race_the_budget_ends_is_stored_and_said_as_ended_by_it(tmp_path, monkeypatch):
    """The 3-cell design (its main trials) and both repeats leave 384 / 2 and 160 / 2 tied, and the tie decides the
    pick; the race starts with 1.5 s of the budget left and its first run spends it: the race is stored as ended by
    the budget, not left announced and unfinished, and not blamed on --race."""
    stream = io.StringIO()
    scores = {(384, 2): (0.50, 0.40) + (0.45,) * 3, (288, 2): (0.20,) * 5, (160, 2): (0.44,) * 5}
    ran = _clocked_search(tmp_path, monkeypatch, Plan(6.5, 6.5, 3, 2, 2, 5.0), 1.0, n_trials=3, queued_from=6,
                          progress=Progress(1, 1, "mAP50-95", stream=stream), fake=FakeProbe(2000, scores=scores))  # fmt: skip
    assert [(p.imgsz, p.batch) for p in ran] == [(160, 2), (288, 2), (384, 2), (384, 2), (160, 2), (384, 2)]
    race = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").user_attrs["race"]
    assert race["verdict"] == "out of time" and race["runs"] == 1
    assert "still tie after 1 more run(s) (the probe's budget or --timeout ran out)" in stream.getvalue()
    stream = io.StringIO()  # 1 s less: the budget is spent when the race would start; none starts, and that is said
    ran = _clocked_search(tmp_path / "b", monkeypatch, Plan(5.5, 5.5, 3, 2, 2, 5.0), 1.0, n_trials=3, queued_from=6,
                          progress=Progress(1, 1, "mAP50-95", stream=stream), fake=FakeProbe(2000, scores=scores))  # fmt: skip
    assert len(ran) == 5 and "probing them with more seeds" not in stream.getvalue()
    race = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'b' / 's.db'}").user_attrs["race"]
    assert race["verdict"] == "out of time" and race["runs"] == 0


def test_the_eta_ends_no_later_than_the_budget_once_the_floor_has_run(tmp_path, monkeypatch):
    """Probes of a minute, a 5-minute budget, a progress of 8 probes: the design's lines count the plan at this
    pace (7 min, ..., 5 min); once the design has run, the budget ends the run sooner, and the repeat's line says
    the minute that is left of it, not the plan's 4 more probes at a minute each."""
    stream = io.StringIO()
    ran = _clocked_search(tmp_path, monkeypatch, Plan(300.0, 300.0, 6, 2, 0, 240.0), 60.0,
                          progress=Progress(8, 1, "mAP50-95", stream=stream))  # fmt: skip
    assert len(ran) == 4  # the floor: the 3-cell design and its repeat
    etas = [line.rsplit("| ETA ", 1)[-1] for line in stream.getvalue().splitlines() if " -> " in line]
    assert etas == ["7 min", "6 min", "5 min", "1 min"]
