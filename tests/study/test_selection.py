import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tuner.data.sample import Sample
from tuner.memory.model import Measurement
from tuner.params import Params
from tuner.study import dominance, records, selection

DISTRIBUTIONS = {
    "imgsz": CategoricalDistribution([160, 224, 288, 352]),
    "batch": CategoricalDistribution([2, 4, 8, 16]),
    "mosaic": FloatDistribution(0, 1),
    "mixup": FloatDistribution(0, 0.3),
}


def make(number, imgsz, batch, value=None, peak=None, outcome="ok", state=TrialState.COMPLETE, mosaic=0.5, **attrs):
    trial = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"imgsz": imgsz, "batch": batch, "mosaic": mosaic, "mixup": 0.1},
        distributions=DISTRIBUTIONS,
        user_attrs={"outcome": outcome, **({"peak_mem_mb": peak} if peak is not None else {}), **attrs},
    )
    trial.number = number
    return trial


def test_stable_means_completed_and_under_the_limit():
    assert records.is_stable(make(0, 160, 2, 0.3, peak=900), 1000, ())
    assert not records.is_stable(make(0, 160, 2, 0.3, peak=1001), 1000, ())
    assert not records.is_stable(make(0, 160, 2, peak=900, outcome="oom", state=TrialState.PRUNED), 1000, ())


def test_best_is_the_most_accurate_stable_config():
    trials = [
        make(0, 160, 2, 0.20, peak=700),
        make(1, 352, 16, 0.60, peak=1500),  # more accurate, but over the stable limit
        make(2, 288, 8, 0.45, peak=950),
        make(3, 224, 4, 0.30, peak=800),
    ]
    choice = selection.best_stable(trials, limit_mb=1000, spread=None)
    assert choice.trial.number == 2
    assert choice.value == 0.45


def test_within_the_noise_the_config_with_more_headroom_wins():
    trials = [make(0, 288, 8, 0.45, peak=950), make(1, 224, 4, 0.43, peak=800), make(2, 160, 2, 0.30, peak=600)]
    assert selection.best_stable(trials, 1000, spread=0.05, budget_mb=1100).trial.number == 1  # within 0.05
    assert selection.best_stable(trials, 1000, spread=0.01, budget_mb=1100).trial.number == 0


def test_peaks_that_differ_by_less_than_their_scatter_are_the_same_headroom():
    # Measured: one config peaked at 1077-1169 MB over four runs. Against a 16 GB budget, 1087 vs
    # 1169 MB is no difference in headroom, so the more accurate config wins.
    trials = [make(0, 352, 2, 0.1891, peak=1169), make(1, 352, 4, 0.1852, peak=1087)]
    assert selection.best_stable(trials, 15000, spread=0.0066, budget_mb=16874).trial.number == 0
    assert selection.best_stable(trials, 1250, spread=0.0066, budget_mb=1300).trial.number == 1  # tight budget


def test_repeats_are_averaged_and_measure_the_noise():
    trials = [
        make(0, 288, 8, 0.50, peak=900),
        make(1, 224, 4, 0.46, peak=800),
        make(2, 288, 8, 0.40, peak=910, repeat_of=0),
        make(3, 224, 4, 0.40, peak=805, repeat_of=1),
    ]
    spread = selection.noise(trials)
    assert spread.pairs == ((0, 2, 0.1), (1, 3, 0.06))
    assert abs(spread.spread - 0.08) < 1e-9
    choice = selection.best_stable(trials, 1000, spread=None)  # means 0.45 vs 0.43
    assert choice.trial.number == 0 and abs(choice.value - 0.45) < 1e-9 and choice.runs == 2
    assert choice.peak_mb == 910


def test_no_stable_trial_means_no_best():
    trials = [make(0, 352, 16, peak=1500, outcome="oom", state=TrialState.PRUNED)]
    assert selection.best_stable(trials, 1000, None) is None


def test_an_oom_rules_out_configs_at_least_as_large_in_imgsz_and_batch():
    oom = make(4, 288, 8, outcome="oom", state=TrialState.PRUNED, oom_cause="watchdog")
    trials = [make(0, 160, 2, 0.2, peak=500), oom]
    assert dominance.inferred_oom({"imgsz": 352, "batch": 8}, trials).number == 4
    assert dominance.inferred_oom({"imgsz": 288, "batch": 16}, trials).number == 4
    assert dominance.inferred_oom({"imgsz": 352, "batch": 4}, trials) is None
    assert dominance.inferred_oom({"imgsz": 224, "batch": 16}, trials) is None


def test_only_ooms_measured_against_the_budget_are_evidence():
    inferred = make(5, 160, 2, outcome="oom", state=TrialState.PRUNED, oom_cause="inferred", inferred_from=4)
    os_kill = make(6, 160, 2, outcome="oom", state=TrialState.PRUNED, oom_cause="os-kill")
    assert dominance.inferred_oom({"imgsz": 352, "batch": 16}, [inferred, os_kill]) is None
    for cause in ("exception", "batch-halving"):
        oom = make(7, 160, 2, outcome="oom", state=TrialState.PRUNED, oom_cause=cause)
        assert dominance.inferred_oom({"imgsz": 352, "batch": 16}, [oom]).number == 7


def test_selection_on_a_real_sqlite_study(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    for trial in [make(0, 160, 2, 0.2, peak=500), make(1, 224, 4, 0.3, peak=600)]:
        study.add_trial(trial)
    loaded = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 's.db'}")
    assert selection.best_stable(loaded.trials, 1000, None).params["imgsz"] == 224


def test_startup_design_covers_every_imgsz_at_the_design_batch():
    """imgsz spread over the space at batch 2 (the pre-flights mapped the memory; the design is for accuracy);
    where the space has fewer sizes than cells, other batches fill it, the nearest to 2 first, smaller first."""
    from tuner.config import Space
    from tuner.study.space import startup_design

    space = Space(imgsz=(160, 224, 288, 352), batch=(1, 2, 4, 8, 16), mosaic=(0, 1), mixup=(0, 0.3))
    design = startup_design(space, 4)
    assert [cell["imgsz"] for cell in design] == [160, 224, 288, 352]
    assert [cell["batch"] for cell in design] == [2, 2, 2, 2]
    assert startup_design(space, 2) == [{"imgsz": 160, "batch": 2}, {"imgsz": 352, "batch": 2}]
    one_size = Space(imgsz=(64,), batch=(1, 2, 4), mosaic=(0, 1), mixup=(0, 0.3))
    assert startup_design(one_size, 3) == [{"imgsz": 64, "batch": 2}, {"imgsz": 64, "batch": 1}, {"imgsz": 64, "batch": 4}]
    large = Space(imgsz=(160, 224), batch=(8, 16), mosaic=(0, 1), mixup=(0, 0.3))  # no batch 2: the smallest
    assert startup_design(large, 2) == [{"imgsz": 160, "batch": 8}, {"imgsz": 224, "batch": 8}]


def test_noise_repeats_go_to_distinct_configs():
    trials = [make(0, 352, 2, 0.194, peak=1080), make(1, 288, 4, 0.159, peak=1120), make(2, 288, 4, 0.158, peak=1110)]
    trials[2].params["mosaic"] = 0.7  # the same imgsz and batch, another config
    queued = sorted((t.params["imgsz"], t.number) for t in selection.to_repeat(trials, 3, limit_mb=15000))
    assert queued == [(288, 1), (288, 2), (352, 0)]


def test_a_config_the_sampler_ran_twice_counts_as_repeated_and_its_runs_measure_the_noise():
    trials = [
        make(0, 352, 2, 0.194, peak=1080),
        make(1, 352, 2, 0.191, peak=1077),  # TPE sampled the same config again
        make(2, 288, 4, 0.159, peak=1120),
        make(3, 352, 2, 0.190, peak=1079),  # and again
    ]
    assert selection.noise(trials).pairs == ((0, 1, 0.003), (0, 3, 0.004))
    assert selection.noise(trials).spread == 0.0035
    queued = [t.number for t in selection.to_repeat(trials, 2, limit_mb=15000)]
    assert queued == [2]  # 352/2 has its second run already: the one repeat goes to 288/4
    assert selection.to_repeat(trials, 1, limit_mb=15000) == []


def test_repeats_already_run_count_towards_the_wanted_number():
    trials = [make(0, 352, 2, 0.194, peak=1080), make(1, 288, 4, 0.159, peak=1120), make(2, 352, 2, 0.19, peak=1090, repeat_of=0)]
    assert [t.number for t in selection.to_repeat(trials, 2, limit_mb=15000)] == [1]
    assert selection.to_repeat(trials, 1, limit_mb=15000) == []
    assert selection.to_repeat(trials, 2, limit_mb=1000) == []  # nothing stable under a 1000 MB limit


def test_room_to_grow_only_at_the_largest_imgsz_searched_and_well_under_the_limit():
    searched = (160, 224, 288, 352)
    hint = selection.room_to_grow(352, 1158.0, searched, 2575.0)  # the 3 GB benchmark: 416 fit and won
    assert hint is not None and "--imgsz 224,288,352,416,480" in hint and "1158 MiB" in hint
    assert selection.room_to_grow(288, 1000.0, searched, 2575.0) is None  # not at the edge of the space
    assert selection.room_to_grow(352, 1400.0, searched, 2575.0) is None  # more than half the limit used
    assert selection.room_to_grow(352, None, searched, 2575.0) is None


def test_a_config_is_judged_on_the_largest_peak_any_run_of_its_imgsz_and_batch_showed(tmp_path):
    # 352/2 at mosaic 0.2 peaked 1990 of a 2000 MiB limit, 352/2 at mosaic 0.9 peaked 2150: mosaic changes
    # pixels, not tensor sizes, so 352/2 does not fit, whichever of them ran first; 288/2 is the pick.
    for order in ((0, 1), (1, 0)):
        low, high = order
        trials = [make(low, 352, 2, 0.50, peak=1990, mosaic=0.2), make(high, 352, 2, 0.49, peak=2150, mosaic=0.9),
                  make(2, 288, 2, 0.40, peak=1500)]  # fmt: skip
        assert list(records.stable_configs(trials, 2000)) == [(288, 2, 0.5, 0.1)], order
        assert not records.is_stable(trials[0], 2000, trials) and records.is_stable(trials[0], 2000, ())  # alone, it was
        assert selection.best_stable(trials, 2000, None).params["imgsz"] == 288, order
        assert [t.number for t in selection.to_repeat(trials, 2, 2000)] == [2], order
    # an OOM of the same imgsz and batch at another mosaic rules it out too; an inferred one (never ran) does not
    oom = make(3, 352, 2, peak=2100, outcome="oom", state=TrialState.PRUNED, mosaic=0.9, oom_cause="watchdog")
    assert list(records.stable_configs([trials[0], oom], 2000)) == []
    oom.user_attrs["oom_cause"] = "inferred"
    assert list(records.stable_configs([trials[0], oom], 2000)) == [(352, 2, 0.2, 0.1)]
    # train-best's step-down candidates read a stored study through the same function
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    stored = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 's.db'}").trials
    assert list(records.stable_configs(stored, 2000)) == [(288, 2, 0.5, 0.1)]


def test_the_pick_weighs_a_configs_memory_by_the_largest_peak_of_its_imgsz_and_batch():
    # 352/2 at mosaic 0.2 peaked 1000 once, at mosaic 0.9 1400: both are stable, but 352/2 needs 1400, not 1000
    trials = [make(0, 352, 2, 0.50, peak=1000, mosaic=0.2), make(1, 352, 2, 0.40, peak=1400, mosaic=0.9),
              make(2, 288, 4, 0.49, peak=1200)]  # fmt: skip
    choice = selection.best_stable(trials, 2000, spread=0.02, budget_mb=2000)
    assert choice.params["imgsz"] == 288 and choice.peak_mb == 1200  # tied within the noise, more headroom
    alone = selection.best_stable([trials[0], trials[2]], 2000, spread=0.02, budget_mb=2000)
    assert alone.params["imgsz"] == 352 and alone.peak_mb == 1000


def measured(imgsz, batch, peak=None, oom=False):
    return Measurement(imgsz, batch, 1.0, 0.2, peak, oom)


def test_configs_that_ran_decide_by_monotonicity_before_any_model():
    # the limit, lowered by kills from outside, is 760 MiB; 352/2 ran at 740
    ran = [measured(352, 2, 740), measured(160, 8, 900), measured(288, 4, oom=True)]
    fits = dominance.measured_fit(Params(320, 2, 0.5, 0.1), ran, 760)
    assert fits.fits and (fits.by.imgsz, fits.by.batch) == (352, 2)  # a larger config stayed under it
    over = dominance.measured_fit(Params(224, 8, 0.5, 0.1), ran, 760)
    assert not over.fits and over.describe() == "imgsz 160 / batch 8 peaked at 900 MiB"  # a smaller one went over
    assert dominance.measured_fit(Params(352, 4, 0.5, 0.1), ran, 760).describe() == "imgsz 288 / batch 4 ran out of memory"
    assert dominance.measured_fit(Params(160, 4, 0.5, 0.1), ran, 760) is None  # neither: only a model can say
    same = dominance.measured_fit(Params(352, 2, 0.5, 0.1), [*ran, measured(352, 2, 770)], 760)
    assert not same.fits and same.by.peak_mb == 770  # its own imgsz and batch: the largest peak measured decides


def test_one_kill_from_outside_does_not_rule_out_its_imgsz_and_batch():
    # other processes may have caused it: the killed run showed only the peak it reached (the reliability suite's
    # random kills of 64/2 left no stable config when a kill counted as over any limit)
    done = make(0, 160, 2, 0.3, peak=943)
    killed = make(1, 160, 2, peak=824, outcome="oom", state=TrialState.PRUNED, mosaic=0.6, oom_cause="os-kill")
    assert records.is_stable(done, 15000, [done, killed])
    assert selection.best_stable([done, killed], 15000, None).trial.number == 0
    watched = make(2, 160, 2, peak=824, outcome="oom", state=TrialState.PRUNED, mosaic=0.6, oom_cause="watchdog")
    assert not records.is_stable(done, 15000, [done, watched])  # out of its own budget: that is evidence


def test_a_config_left_out_of_the_pick_still_counts_for_the_memory_of_its_imgsz_and_batch():
    # train-best's step-down ladder picks again among the rest: the 352/2 run at mosaic 0.2 peaked 1500, so the
    # other 352/2 config needs that much too, not the 900 its own run showed
    trials = [make(0, 352, 2, 0.50, peak=1500, mosaic=0.2), make(1, 352, 2, 0.45, peak=900, mosaic=0.9),
              make(2, 160, 2, 0.30, peak=700)]  # fmt: skip
    first = selection.best_stable(trials, 2000, None)
    assert first.trial.number == 0
    second = selection.best_stable(trials, 2000, None, exclude=frozenset({Params.of(first.params).key}))
    assert second.trial.number == 1 and second.peak_mb == 1500


def test_a_training_time_leaves_out_the_configs_predicted_to_train_longer_and_the_pick_is_the_best_that_fits():
    trials = [
        make(0, 352, 2, 0.60, peak=900, train_s_predicted=3000.0, train_epochs_predicted=40, train_epoch_s_predicted=75.0),
        make(1, 288, 4, 0.55, peak=900, train_s_predicted=1500.0, train_epochs_predicted=40, train_epoch_s_predicted=37.5),
        make(2, 224, 8, 0.40, peak=900, train_s_predicted=700.0, train_epochs_predicted=40, train_epoch_s_predicted=17.5),
        make(3, 160, 16, 0.20, peak=900),  # no prediction (an older tuner's trial): nothing says it is too slow
        make(4, 352, 2, 0.62, peak=900, mosaic=0.9, outcome="pruned", state=TrialState.PRUNED),  # not stable: no say
    ]

    def seconds_of(trial):
        return trial.user_attrs.get("train_s_predicted")

    assert selection.too_slow(trials, 1000, seconds_of, None) == {}  # no budget, nothing left out
    slow = selection.too_slow(trials, 1000, seconds_of, 2000.0)
    assert slow == {Params(352, 2, 0.5, 0.1).key: 3000.0}
    assert selection.best_stable(trials, 1000, None).trial.number == 0
    assert selection.best_stable(trials, 1000, None, exclude=frozenset(slow)).trial.number == 1
    tight = selection.too_slow(trials, 1000, seconds_of, 600.0)
    assert set(tight) == {Params(352, 2, 0.5, 0.1).key, Params(288, 4, 0.5, 0.1).key, Params(224, 8, 0.5, 0.1).key}
    assert selection.best_stable(trials, 1000, None, exclude=frozenset(tight)).trial.number == 3


def test_a_config_is_judged_by_its_earliest_run_with_a_prediction():
    trials = [make(0, 288, 4, 0.5, peak=900), make(5, 288, 4, 0.52, peak=900, train_s_predicted=2500.0),
              make(7, 288, 4, 0.51, peak=900, train_s_predicted=1000.0)]  # fmt: skip
    slow = selection.too_slow(trials, 1000, lambda trial: trial.user_attrs.get("train_s_predicted"), 2000.0)
    assert slow == {Params(288, 4, 0.5, 0.1).key: 2500.0}


def test_a_larger_config_is_named_only_on_data_many_times_the_probes_sample():
    trials = [
        make(0, 224, 2, 0.30, peak=700),  # the pick
        make(1, 288, 2, 0.25, peak=800),
        make(2, 352, 2, 0.20, peak=900),
        make(3, 352, 16, 0.28, peak=1500),  # more accurate than trial 1, but over the stable limit
        make(4, 160, 2, 0.27, peak=600),  # smaller than the pick
    ]
    pick = Params(224, 2, 0.5, 0.1)
    many = Sample("sample.yaml", 128, 64, 960, 320)
    assert selection.larger_on_more_data(trials, 1000, pick, many).first.number == 1
    assert selection.larger_on_more_data(trials, 1000, pick, many, exclude=frozenset({Params.of(trials[1].params).key})).first.number == 2
    assert selection.larger_on_more_data(trials, 1000, Params(352, 2, 0.5, 0.1), many) is None  # nothing larger ran
    assert selection.larger_on_more_data(trials, 1000, pick, Sample("sample.yaml", 128, 64, 511, 320)) is None  # < 4x
    assert selection.larger_on_more_data(trials, 1000, pick, Sample("data.yaml", 96, 32, 96, 32)) is None  # the whole split
    assert selection.larger_on_more_data(trials, 1000, pick, None) is None  # a study from before samples
