"""tuner's successive halving: the level at a rung, then the projection to the probe's last epoch, on real Optuna
studies whose trials carry the user attrs `TrialRecord` writes (outcome, peak)."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tuner import config
from tuner.study import pruners

DISTRIBUTIONS = {"imgsz": CategoricalDistribution([256, 320, 352, 416, 480, 640, 800, 960]),
                 "batch": CategoricalDistribution([1, 2, 4, 8])}  # fmt: skip


def probe(imgsz: int, batch: int, *curve: float, state: TrialState = TrialState.COMPLETE, peak: float = 800.0):
    """A probe of imgsz x batch that reported `curve` (epochs 1, 2, ...), completed or stopped, peaking at `peak`."""
    outcome = "ok" if state == TrialState.COMPLETE else "pruned"
    return create_trial(
        state=state, value=curve[-1] if state == TrialState.COMPLETE else None,
        params={"imgsz": imgsz, "batch": batch}, distributions=DISTRIBUTIONS,
        user_attrs={"outcome": outcome, "peak_mem_mb": peak, "epochs_done": len(curve)},
        intermediate_values=dict(enumerate(curve, start=1)),
    )  # fmt: skip


def study_of(trials, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """A study with the pruner `tuner probe` makes (3 probe epochs, stable limit 1000 MiB), holding `trials`."""
    study = optuna.create_study(direction="maximize", pruner=pruner or pruners.make(config.load(None, {}), 1000.0))
    for trial in trials:
        study.add_trial(trial)
    return study


def running(study: optuna.Study, imgsz: int, batch: int, *curve: float) -> tuple[bool, str | None]:
    """Whether the study's pruner stops a probe of imgsz x batch after it reported `curve`, and the reason recorded."""
    study.enqueue_trial({"imgsz": imgsz, "batch": batch})
    trial = study.ask(DISTRIBUTIONS)
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
    return trial.should_prune(), pruners.explained(study, trial.number)


# The road-damage case: a base model pretrained at 256 px; after epoch 1, 640/1 stood at 0.238 against 480/2's 0.341,
# and larger imgsz fine-tunes climb faster (800/1 gains 0.20 over its last two epochs, 480/2 0.019).
ROAD = [probe(320, 8, 0.30, 0.305, 0.31), probe(352, 4, 0.35, 0.36, 0.365), probe(480, 2, 0.341, 0.35, 0.36),
        probe(800, 1, 0.20, 0.30, 0.40)]  # fmt: skip


def test_a_large_imgsz_probe_behind_the_cut_trains_on_when_its_neighbours_climb_fast():
    # behind the cut (the second of 5 at the rung: 0.341) by 30%, but 640 climbs as 480 and 800 do, interpolated:
    # 0.019 + (640 - 480) / (800 - 480) x (0.20 - 0.019) = 0.1095, so 0.3475 at epoch 3 against 480/2's 0.36
    assert running(study_of(ROAD), 640, 1, 0.238) == (False, None)
    level_only = study_of(ROAD, pruners.StableOnly(pruners.Halving(), 1000.0))
    assert running(level_only, 640, 1, 0.238)[0], "the level alone stops it: the case the projection is for"


def test_a_weak_probe_that_climbs_as_slowly_as_its_neighbours_is_still_pruned_and_says_why():
    pruned, reason = running(study_of(ROAD), 320, 8, 0.20)
    assert pruned
    assert reason == ("pruned at epoch 1: 0.200, 41% behind the rung's cut 0.341; projected 0.210 at epoch 3 "
                      "(the climb of finished probes at imgsz 320) against 0.360")  # fmt: skip
    pruned, reason = running(study_of(ROAD), 416, 4, 0.20)  # between 352 (climb 0.015) and 480 (0.019): 0.017
    assert pruned and "projected 0.217 at epoch 3 (the climb of finished probes at imgsz 352 and 480)" in reason


def test_a_probe_above_every_finished_imgsz_trains_on():
    # nothing says how fast 960 climbs: the largest finished probe, 800, climbed fastest of all
    assert running(study_of(ROAD), 960, 1, 0.10) == (False, None)


def test_fewer_than_three_finished_curves_project_nothing():
    stopped = [probe(256, 8, 0.28, state=TrialState.PRUNED), probe(320, 8, 0.30, state=TrialState.PRUNED)]
    two = [*stopped, probe(352, 4, 0.35, 0.36, 0.365), probe(480, 2, 0.341, 0.35, 0.36)]
    assert running(study_of(two), 320, 8, 0.20) == (False, None)  # 48% behind the cut 0.341, but only 2 curves
    assert running(study_of([*two, probe(256, 8, 0.29, 0.295, 0.30)]), 320, 8, 0.20)[0]  # a third one: pruned


def test_a_curve_over_the_stable_limit_does_not_project_a_probe():
    over = probe(320, 8, 0.30, 0.305, 0.31, peak=1200.0)  # over the limit: not comparable
    kept = [over, *ROAD[1:3]]  # 3 curves by count, 2 of them stable: not enough
    assert running(study_of([*kept, probe(256, 8, 0.25, state=TrialState.PRUNED)]), 320, 8, 0.20) == (False, None)


def test_at_a_later_rung_a_probe_projects_its_own_slope():
    # 9 probe epochs: rungs at 1, 3 and 9. At epoch 3 the cut is 0.38 (the second of 4), which ended at 0.44.
    halving = pruners.StableOnly(pruners.Halving(epochs=9), 1000.0)
    nine = [probe(320, 8, 0.30, 0.39, 0.40, *[0.45] * 6), probe(352, 4, 0.30, 0.37, 0.38, *[0.44] * 6),
            probe(480, 2, 0.30, 0.34, 0.35, *[0.42] * 6)]  # fmt: skip
    assert running(study_of(nine, halving), 800, 1, 0.10, 0.15, 0.20) == (False, None)  # 47% behind, +0.05 an epoch
    pruned, reason = running(study_of(nine, halving), 800, 1, 0.19, 0.195, 0.20)  # 0.005 an epoch: 0.23 at epoch 9
    assert pruned
    assert reason == ("pruned at epoch 3: 0.200, 47% behind the rung's cut 0.380; projected 0.230 at epoch 9 "
                      "(its own slope) against 0.440")  # fmt: skip


def test_the_cut_projects_by_the_same_rule_when_it_has_not_finished():
    # the trial at the cut (416/4, 0.341 after epoch 1) is still running: its own projection is the climb of its
    # neighbours, 0.341 + 0.017, and a probe behind both on level and projection is pruned against that
    at_cut = create_trial(state=TrialState.RUNNING, params={"imgsz": 416, "batch": 4}, distributions=DISTRIBUTIONS,
                          user_attrs={"worker": "w"}, intermediate_values={1: 0.341})  # fmt: skip
    trials = [probe(320, 8, 0.30, 0.305, 0.31), probe(352, 4, 0.35, 0.36, 0.365), probe(480, 2, 0.30, 0.31, 0.319), at_cut]
    pruned, reason = running(study_of(trials), 320, 8, 0.20)
    assert pruned and reason.endswith("against 0.358")


def test_no_reason_is_given_for_a_probe_the_pruner_let_on():
    study = study_of(ROAD)
    assert running(study, 320, 8, 0.36) == (False, None)  # ahead of the cut
    assert running(study, 320, 8, 0.36, 0.01) == (False, None)  # epoch 2 is no rung
    assert pruners.explained(study, 0) is None  # a trial added finished: never judged
