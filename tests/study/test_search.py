"""The accuracy search inside the memory limit: the frontier, Optuna constraints, pruners that compare only
with stable trials, stability judged on the largest peak of an imgsz x batch, no config probed twice while a
cell is untried, the race. Fake runners stand in for the processes (the real ones are tested in
test_probe_integration.py and test_limits_integration.py); the study is real SQLite."""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.fakes import FakePreflight, FakeProbe, inputs, quiet
from tuner.config import Space
from tuner.memory.model import Frontier, MemoryModel
from tuner.params import Params
from tuner.review import findings
from tuner.review.findings import read
from tuner.review.report import render_markdown
from tuner.study import dominance, limits, pruners, records, selection
from tuner.study.inputs import Inputs
from tuner.study.open import open_study
from tuner.study.progress import Progress
from tuner.study.records import StudyRecord, TrialRecord
from tuner.study.search import CONSTRAINT, Search
from tuner.study.space import enqueue_startup
from tuner.study.space import startup_design


def prepared(tmp_path: Path, n_trials: int, budget_mb: float = 2000, space=None, race: int = 0,
             pruner: str = "halving") -> tuple[optuna.Study, Inputs, limits.Limits]:  # fmt: skip
    """A new study whose limits the fake pre-flights mapped: what `tuner probe` hands the search."""
    trials = inputs(tmp_path, budget_mb, **(space or {}))
    settings = dataclasses.replace(trials.cfg.probe, race=race)
    cfg = dataclasses.replace(trials.cfg, n_trials=n_trials, probe=settings, pruner=pruner)
    trials = dataclasses.replace(trials, cfg=cfg)
    found = limits.map_limits(trials, quiet(), runner=FakePreflight(budget_mb))
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=budget_mb, stable_limit_mb=trials.stable_limit_mb,
                         limits=found.to_dict())  # fmt: skip
    study, _ = open_study("s", f"sqlite:///{tmp_path / 's.db'}", trials.cfg, record)
    return study, trials, found


def searched(tmp_path: Path, n_trials: int, budget_mb: float = 2000, progress=None, space=None, race: int = 0,
             pruner: str = "halving", after_design=(), **probe) -> tuple[optuna.Study, limits.Limits, FakeProbe]:  # fmt: skip
    """A search with FakeProbe; `after_design`: configs (params dicts) queued to run right after the startup design."""
    study, trials, found = prepared(tmp_path, n_trials, budget_mb, space, race, pruner)
    if after_design:
        enqueue_startup(study, trials.cfg, found)  # the search queues it once per study: these come after it
        for params in after_design:
            study.enqueue_trial(params)
    fake = FakeProbe(budget_mb, **probe)
    Search(study, trials, progress or quiet(), found, runner=fake).run()
    return study, found, fake


def ran(space: Space, imgsz: int, batch: int, mosaic: float, value: float, peak: float) -> optuna.trial.FrozenTrial:
    """A probe of `space`'s study that completed at `peak` MiB, as the search records one."""
    distributions = {"imgsz": CategoricalDistribution(list(space.imgsz)), "batch": CategoricalDistribution(list(space.batch)),
                     "mosaic": FloatDistribution(*space.mosaic, step=0.05), "mixup": FloatDistribution(*space.mixup, step=0.05)}  # fmt: skip
    return create_trial(state=TrialState.COMPLETE, value=value, distributions=distributions,
                        params={"imgsz": imgsz, "batch": batch, "mosaic": mosaic, "mixup": 0.0},
                        user_attrs={"outcome": "ok", "peak_mem_mb": peak})  # fmt: skip


def test_the_search_trains_only_inside_the_frontier_and_tells_the_sampler_what_went_over(tmp_path):
    weak = [{"imgsz": 160, "batch": 2, "mosaic": 0.0, "mixup": 0.0}, {"imgsz": 192, "batch": 2, "mosaic": 0.0, "mixup": 0.0}]
    study, found, fake = searched(tmp_path, n_trials=14, budget_mb=1000, excess=1.2, after_design=weak)
    frontier, limit = found.frontier.largest(), found.stable_limit_mb
    assert fake.ran and all(frontier[p.batch] is not None and p.imgsz <= frontier[p.batch] for p in fake.ran)
    trials = study.get_trials()
    inferred = [t for t in trials if records.TrialRecord.of(t).inferred]
    over = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs["peak_mem_mb"] > limit]
    assert over, "with probes peaking 20% above their pre-flight, some configs on the frontier go over the limit"
    for trial in trials:
        if trial.state == TrialState.COMPLETE:  # Optuna's feasibility: <= 0
            assert trial.constraints[CONSTRAINT] == pytest.approx(trial.user_attrs["peak_mem_mb"] - limit)
    assert all(t.constraints[CONSTRAINT] > 0 for t in [*inferred, *over])
    choice = selection.best_stable(trials, limit, None)
    assert choice is not None and choice.peak_mb <= limit
    assert choice.value >= max(t.value for t in trials if records.is_stable(t, limit, trials)) - 1e-9
    stopped = [t for t in trials if t.user_attrs.get("outcome") == "pruned"]
    assert stopped and all(t.user_attrs["epochs_done"] < 3 for t in stopped)  # weak ones cost a short rung, and
    # a probe that trained every epoch is measured: the pruner never throws that away
    assert all(t.user_attrs["pruned_reason"].startswith("pruned at epoch 1: ") for t in stopped)  # and why, in its record


def test_kills_from_outside_at_a_consistent_peak_become_the_limit_for_the_rest_of_the_study(tmp_path):
    stream = io.StringIO()
    study, found, fake = searched(tmp_path, n_trials=12, killed_at=1000, excess=1.0, space={"batch": (16,)},
                                  progress=Progress(1, 1, "mAP50-95", stream=stream))  # fmt: skip
    trials = study.get_trials()
    kills = [t for t in trials if t.user_attrs.get("oom_cause") == "os-kill"]
    assert len(kills) >= 2, "the test needs the sampler to reach configs over the real limit twice"
    level = min(t.user_attrs["peak_mem_mb"] for t in kills)
    record = StudyRecord.of(study)
    assert record.outside_kill_mb == pytest.approx(level, abs=0.1)
    assert record.stable_limit_mb == pytest.approx(level * 0.9, abs=0.1)  # the safety margin below the real limit
    assert stream.getvalue().count("killed from outside at about") == 1  # said once
    assert "killed from outside at about" in render_markdown(read(study, tmp_path), [])  # and in report.md
    after = [t for t in trials if t.number > kills[1].number]
    skipped = [t for t in after if "kills from outside came at about" in (t.user_attrs.get("oom_reason") or "")]
    assert skipped and all("log" not in t.user_attrs for t in skipped)  # inferred, no process
    ran_after = [t for t in after if "log" in t.user_attrs]
    assert all(found.model.upper(t.params["imgsz"], t.params["batch"], 1.0, 0.2) <= record.stable_limit_mb
               for t in ran_after)  # fmt: skip
    choice = selection.best_stable(trials, record.stable_limit_mb, None)
    assert choice is not None and choice.peak_mb <= record.stable_limit_mb
    # a worker that started before the kills applies the lowered limit too: it reads the study's, it keeps no copy
    study.set_user_attr("outside_kill_mb", None)  # the study as it was at the start
    dataclasses.replace(record, outside_kill_mb=None, stable_limit_mb=1800.0).save(study)
    other = Search(study, inputs(tmp_path, 2000, batch=(16,)), quiet(), found, runner=fake, worker="other:1")
    assert other.limit_mb == 1800.0 and other.kill_level is None
    record.save(study)  # the worker that saw the kills stores the lower limit
    assert other.limit_mb == record.stable_limit_mb and other.kill_level == record.outside_kill_mb
    largest = max(kills, key=lambda t: t.params["imgsz"]).params
    assert "kills from outside came at about" in other._over_kill_level(Params.of(largest))


def test_one_kill_from_outside_or_kills_at_scattered_peaks_set_no_limit():
    def killed(peak):
        return finished(352, 16, 0.0, peak=peak, outcome="oom", state=TrialState.PRUNED)

    assert dominance.outside_kill_level([]) is None
    one, other = killed(1300), killed(1320)
    one.user_attrs["oom_cause"] = other.user_attrs["oom_cause"] = "os-kill"
    assert dominance.outside_kill_level([one]) is None
    assert dominance.outside_kill_level([one, other]) == 1300
    far = killed(2000)
    far.user_attrs["oom_cause"] = "os-kill"
    assert dominance.outside_kill_level([one, far]) is None  # 54% apart: not one limit
    watchdog = killed(1310)
    watchdog.user_attrs["oom_cause"] = "watchdog"
    assert dominance.outside_kill_level([one, watchdog]) is None  # the budget's own kills are no outside limit


def raced(tmp_path: Path, race: int, scores: dict[tuple[int, int], tuple[float, ...]], space: dict):
    """A study of the startup design's two configs, each probed again once for the noise, then raced."""
    stream = io.StringIO()
    study, _, fake = searched(tmp_path, n_trials=2, race=race, space=space, pruner="none", scores=scores,
                              progress=Progress(1, 1, "mAP50-95", stream=stream))  # fmt: skip
    trials = study.get_trials()
    assert {(p.imgsz, p.batch) for p in fake.ran[:2]} == set(scores), "the design probes both configs"
    return trials, StudyRecord.of(study).race, stream.getvalue(), study


def test_a_tie_that_decides_the_pick_is_raced_until_the_configs_separate(tmp_path):
    # 352/8 leads (0.50, then 0.46: mean 0.48) and 352/2 trails by 0.02 (0.47, 0.45: mean 0.46), within the
    # noise (0.03): the tie would pick 352/2 for its memory headroom (755 against 1076 MiB). A third run of
    # 352/8 (0.48) keeps its mean, and with three runs behind it the tolerance shrinks below the gap.
    scores = {(352, 8): (0.50, 0.46, 0.48), (352, 2): (0.47, 0.45)}
    trials, race, said, study = raced(tmp_path, race=3, scores=scores, space={"imgsz": (352,), "batch": (2, 8)})
    assert race.verdict == "separated" and race.runs == 1, race
    assert "probing them with more seeds" in said and "separated after 1 more run(s)" in said
    choice = selection.best_stable(trials, 1800, selection.noise(trials).spread, 2000)
    assert (choice.params["imgsz"], choice.params["batch"]) == (352, 8)  # the most accurate, no longer tied
    assert "Race: " in render_markdown(read(study, tmp_path), [])


def test_a_race_ends_when_its_budget_is_spent_and_the_tie_picks_the_headroom(tmp_path):
    scores = {(352, 8): (0.50, 0.46, 0.47, 0.48, 0.47), (352, 2): (0.48, 0.46, 0.47, 0.48)}
    trials, race, said, _ = raced(tmp_path, race=3, scores=scores, space={"imgsz": (352,), "batch": (2, 8)})
    assert race.verdict == "still tied" and race.runs == 3 and len(race.tied) == 2, race
    assert len([t for t in trials if t.user_attrs.get("repeat_of") is not None]) == 2 + 3  # repeats, then the race
    assert "still tie after 3 more run(s)" in said
    choice = selection.best_stable(trials, 1800, selection.noise(trials).spread, 2000)
    assert (choice.params["imgsz"], choice.params["batch"]) == (352, 2)


def test_tied_configs_that_need_the_same_memory_are_not_raced(tmp_path):
    # 384/2 and 352/2 peak 20 MiB apart (the same headroom): the more accurate is the pick whether they tie or not
    scores = {(384, 2): (0.50, 0.46), (352, 2): (0.47, 0.45)}
    trials, race, said, study = raced(tmp_path, race=3, scores=scores, space={"imgsz": (352, 384), "batch": (2,)})
    assert race.verdict == "settled" and race.runs == 0 and race.tied[0] == min(
        t.number for t in trials if t.params["imgsz"] == 384), race  # fmt: skip
    assert len([t for t in trials if t.user_attrs.get("repeat_of") is not None]) == 2  # the noise repeats only
    assert "probing them with more seeds" not in said and "the pick either way" in said
    assert not selection.tie_decides(trials, 1800, selection.noise(trials).spread, 2000)
    assert "the pick either way" in render_markdown(read(study, tmp_path), [])


def test_no_race_when_the_repeats_show_no_noise(tmp_path):
    study, _, _ = searched(tmp_path, n_trials=6, race=3, noise=0.0, space={"imgsz": (160, 384), "batch": (2,)})
    assert StudyRecord.of(study).race is None
    assert len([t for t in study.get_trials() if t.user_attrs.get("repeat_of") is not None]) == 2


def test_a_probe_is_never_stopped_at_its_last_epoch(tmp_path):
    # The startup design runs 160, 224, 256, then 288. At epoch 1, 288 leads; at epoch 3, the last, it trails
    # the others' 0.9 far beyond the noise, which would stop it at the second rung with all of its epochs trained.
    curves = {160: (0.9, 0.9, 0.9), 224: (0.9, 0.9, 0.9), 256: (0.9, 0.9, 0.9), 288: (0.95, 0.5, 0.1)}
    study, _, _ = searched(tmp_path, n_trials=8, space={"imgsz": (160, 224, 256, 288), "batch": (2,)}, curves=curves)
    startup = study.get_trials()[:4]
    assert [t.params["imgsz"] for t in startup] == [160, 224, 256, 288]
    assert startup[3].state == TrialState.COMPLETE and startup[3].value == pytest.approx(0.1)


def test_the_startup_design_stays_inside_the_frontier_and_reaches_it():
    space = Space(imgsz=(160, 224, 288, 352, 416), batch=(1, 2, 4, 8, 16), mosaic=(0, 1), mixup=(0, 0.3))
    largest = {1: 416, 2: 288, 4: 224, 8: 160, 16: None}
    design = startup_design(space, 4, largest)
    assert all(largest[cell["batch"]] is not None and cell["imgsz"] <= largest[cell["batch"]] for cell in design)
    assert design == [{"imgsz": 160, "batch": 2}, {"imgsz": 224, "batch": 2}, {"imgsz": 352, "batch": 1},
                      {"imgsz": 416, "batch": 1}]  # fmt: skip
    no_small = {1: None, 2: None, 4: 416, 8: 224, 16: None}  # the smallest batch that fits, where none below 2 does
    assert startup_design(space, 2, no_small) == [{"imgsz": 160, "batch": 4}, {"imgsz": 416, "batch": 4}]


DISTRIBUTIONS = {"imgsz": CategoricalDistribution([160, 352]), "batch": CategoricalDistribution([2, 16]),
                 "mosaic": FloatDistribution(0, 1), "mixup": FloatDistribution(0, 0.3)}  # fmt: skip


def finished(imgsz: int, batch: int, value: float, peak: float, outcome: str = "ok", state=TrialState.COMPLETE):
    return create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params={"imgsz": imgsz, "batch": batch, "mosaic": 0.5, "mixup": 0.1}, distributions=DISTRIBUTIONS,
        user_attrs={"outcome": outcome, "peak_mem_mb": peak}, intermediate_values={1: value},
        system_attrs={"completed_rung_0": value},  # what SuccessiveHalvingPruner records at epoch 1
    )  # fmt: skip


def would_prune(pruner: optuna.pruners.BasePruner) -> bool:
    """Whether `pruner` stops a probe at 0.5 after epoch 1 in a study of accurate probes over the stable limit
    (1000 MiB) and less accurate ones under it."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for imgsz, batch, value, peak in [*[(352, 16, 0.9, 1500)] * 4, (160, 2, 0.3, 800), (160, 2, 0.35, 800), (160, 2, 0.4, 800)]:
        trial = finished(imgsz, batch, value, peak)  # accurate over the limit (no config anyone can train), or not
        trial.intermediate_values = {epoch: value for epoch in (1, 2, 3)}  # flat to the last epoch: halving's projection
        study.add_trial(trial)
    running = study.ask({"imgsz": DISTRIBUTIONS["imgsz"], "batch": DISTRIBUTIONS["batch"]})
    running.report(0.5, 1)  # better than every stable trial, worse than the unstable ones
    return running.should_prune()


@pytest.mark.parametrize("name", ["median", "halving"])
def test_the_pruner_compares_a_probe_only_with_stable_trials(tmp_path, name):
    cfg = dataclasses.replace(inputs(tmp_path, 2000).cfg, pruner=name)
    assert not would_prune(pruners.make(cfg, 1000))
    plain = pruners.make(cfg, 1000).inner  # Optuna's own, comparing with every trial
    assert would_prune(plain), "the test needs a case that Optuna's pruner alone would prune"


def pruned_at(pruner: optuna.pruners.BasePruner, earlier: tuple[float, ...], value: float, step: int = 1) -> bool:
    """Whether `pruner` stops a probe at `value` after epoch `step`, with stable trials at `earlier` by then."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for before in earlier:
        trial = finished(352, 2, before, peak=800)
        trial.intermediate_values = {epoch: before for epoch in range(1, step + 1)}
        study.add_trial(trial)
    running = study.ask({"imgsz": DISTRIBUTIONS["imgsz"], "batch": DISTRIBUTIONS["batch"]})
    for epoch in range(1, step + 1):
        running.report(earlier[-1] if epoch < step else value, epoch)
    return running.should_prune()


def test_halving_lets_a_probe_within_the_noise_of_the_cut_train_on():
    # The grid benchmark's study: after epoch 1, imgsz 448 / batch 2 (the grid's best config) stood at 0.1998
    # against 0.0836, 0.161 and 0.2216. Optuna's successive halving lets only a new best on at such a small rung.
    earlier = (0.0836, 0.161, 0.2216)
    assert pruned_at(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3), earlier, 0.1998)
    assert not pruned_at(pruners.Halving(), earlier, 0.1998)  # the best third of 4, rounded up: the best 2
    assert not pruned_at(pruners.Halving(), earlier, 0.13)  # third, within 20% (the noise margin) of the cut, 0.161
    assert pruned_at(pruners.Halving(), earlier, 0.125)  # further behind: a weak config costs one epoch
    assert pruned_at(pruners.Halving(), earlier, 0.09)


def test_halving_prunes_only_at_its_rungs_and_never_on_too_few_trials():
    halving = pruners.Halving()
    assert [step for step in range(1, 10) if halving.is_rung(step)] == [1, 3, 9]
    assert not pruned_at(halving, (0.3, 0.3, 0.3), 0.01, step=2)  # between rungs
    assert pruned_at(halving, (0.3, 0.3, 0.3), 0.01, step=3)
    assert not pruned_at(halving, (0.3, 0.3), 0.01)  # two others at the rung: too few to judge by


def test_a_config_with_one_run_over_the_limit_is_not_stable():
    trials = [finished(352, 2, 0.5, peak=990), finished(352, 2, 0.52, peak=1010), finished(160, 2, 0.3, peak=700)]
    for number, trial in enumerate(trials):
        trial.number = number
    assert list(records.stable_configs(trials, 1000)) == [(160, 2, 0.5, 0.1)]
    assert selection.best_stable(trials, 1000, None).params["imgsz"] == 160
    assert selection.to_repeat(trials, 2, 1000) == [trials[2]]
    oom = finished(352, 2, 0.0, peak=900, outcome="oom", state=TrialState.PRUNED)
    assert list(records.stable_configs([trials[0], oom], 1000)) == []  # an OOM of the same config rules it out


def test_a_study_without_a_recorded_best_is_read_with_the_probes_own_pick():
    # peaks 95 MiB apart: the same headroom within 5% of the budget (100), not within 5% of the stable limit (90)
    study = optuna.create_study(direction="maximize")
    study.add_trial(finished(352, 16, 0.50, peak=795))
    study.add_trial(finished(160, 2, 0.49, peak=700))
    trials = study.get_trials()
    record = StudyRecord(budget_mb=2000, stable_limit_mb=1800, noise=records.Noise((), 0.05))
    probe_pick = selection.best_stable(trials, 1800, 0.05, 2000)
    assert probe_pick.params["imgsz"] == 352  # tied, the same headroom: the more accurate
    assert findings.best_config(record, trials).params.imgsz == 352


def test_a_config_whose_imgsz_and_batch_ran_over_the_limit_is_inferred_whatever_its_mosaic(tmp_path):
    # 352/2 at mosaic 0.9 peaked over the stable limit (1800 MiB): 352/2 at mosaic 0.2 has the same tensors
    study, trials, found = prepared(tmp_path, 4, space={"imgsz": (288, 352), "batch": (2,)})
    study.add_trial(ran(trials.cfg.space, 352, 2, 0.9, 0.49, peak=1950))
    study.enqueue_trial({"imgsz": 352, "batch": 2, "mosaic": 0.2, "mixup": 0.0})
    fake = FakeProbe(2000)
    study.optimize(Search(study, trials, quiet(), found, runner=fake).objective, n_trials=1)
    trial = study.get_trials()[-1]
    assert fake.ran == [] and TrialRecord.of(trial).inferred and TrialRecord.of(trial).inferred_from == 0
    assert "peaked at 1950 MiB in trial 0, over the stable limit of 1800 MiB" in TrialRecord.of(trial).oom_reason


def test_no_config_is_probed_twice_while_a_cell_is_untried(tmp_path):
    # one mosaic and one mixup: every proposal of a cell is the same config, and TPE proposes some twice
    space = {"imgsz": (320, 352), "batch": (2, 4), "mosaic": (1.0, 1.0), "mixup": (0.0, 0.0)}
    study, _, fake = searched(tmp_path, n_trials=8, space=space, pruner="none", noise=0.02)
    cells = [(p.imgsz, p.batch) for p in fake.ran]
    assert len(set(cells[:4])) == 4, cells  # every cell runs before any config runs again
    trials = study.get_trials()
    skipped = [t for t in trials if "ran this config already" in (TrialRecord.of(t).surplus or "")]
    assert skipped and all(t.state == TrialState.FAIL and "log" not in t.user_attrs for t in skipped)
    assert sum(1 for t in trials if t.state == TrialState.COMPLETE and TrialRecord.of(t).repeat_of is None) == 8
    # the configs run twice measure the noise and count as repeated: two of them cover --repeats 2, so no repeat runs
    assert len(selection.noise(trials).pairs) == 4 and len(fake.ran) == 8


def test_a_single_config_space_measures_the_noise_on_its_own_runs_and_spends_no_repeat(tmp_path):
    space = {"imgsz": (320,), "batch": (2,), "mosaic": (1.0, 1.0), "mixup": (0.0, 0.0)}
    study, _, fake = searched(tmp_path, n_trials=4, space=space, pruner="none", noise=0.02)
    assert len(fake.ran) == 4  # the 4 trials asked for, no repeat on top: the config has 4 runs already
    noise = selection.noise(study.get_trials())
    assert len(noise.pairs) == 3 and noise.spread is not None


def test_under_a_limit_lowered_by_kills_from_outside_configs_that_ran_decide_before_the_model(tmp_path):
    # 352/2 ran at 740 MiB under the 760 MiB limit: 320/2, no larger, fits, although the model's bound says 818
    study, trials, found = prepared(tmp_path, 4, space={"imgsz": (320, 352), "batch": (2, 4)})
    model = MemoryModel({"const": 600.0, "batch_px": 0.0004}, margin=0.2, median_error=None, max_error=None, points=4)
    found = dataclasses.replace(found, model=model, frontier=Frontier(found.frontier.entries, ()))  # no pre-flight of 320/2
    dataclasses.replace(StudyRecord.of(study), outside_kill_mb=845.0, stable_limit_mb=760.0).save(study)
    study.add_trial(ran(trials.cfg.space, 352, 2, 1.0, 0.3, peak=740))
    search = Search(study, trials, quiet(), found, runner=FakeProbe(2000))
    assert model.upper(320, 2, 1.0, 0.2) > 760
    assert search._over_kill_level(Params(320, 2, 1.0, 0.0)) is None
    study.add_trial(ran(trials.cfg.space, 320, 4, 1.0, 0.3, peak=800))  # and one no smaller than a config over it does not
    assert search._over_kill_level(Params(352, 4, 1.0, 0.0)).endswith("imgsz 320 / batch 4 peaked at 800 MiB")


def test_a_race_run_that_lost_its_place_below_one_still_held_is_run_again(tmp_path):
    # the race's first run was orphaned (its worker died, no copy ran) while another worker ran the second: the
    # race fills the first place again instead of asking for the second, held, forever
    scores = {(352, 8): (0.50, 0.46), (352, 2): (0.47, 0.45)}
    study, trials, found = prepared(tmp_path, 2, space={"imgsz": (352,), "batch": (2, 8)}, pruner="none")
    Search(study, trials, quiet(), found, runner=FakeProbe(2000, scores=scores)).run()  # no race: --race 0
    first = {t.params["batch"]: t for t in study.get_trials() if TrialRecord.of(t).repeat_of is None}
    for batch, slot, state in ((2, "race:1", TrialState.FAIL), (8, "race:2", TrialState.COMPLETE)):
        attrs = {"slot": slot, "repeat_of": first[batch].number, **({"outcome": "ok", "peak_mem_mb": 1000.0} if
                 state == TrialState.COMPLETE else {})}  # fmt: skip
        study.add_trial(create_trial(state=state, value=0.47 if state == TrialState.COMPLETE else None,
                                     params=first[batch].params, distributions=first[batch].distributions, user_attrs=attrs))  # fmt: skip
    probe = dataclasses.replace(trials.cfg.probe, race=3)
    racing = dataclasses.replace(trials, cfg=dataclasses.replace(trials.cfg, probe=probe))
    search = Search(study, racing, quiet(), found, runner=FakeProbe(2000, scores=scores))
    search.gate.timeout_at = time.monotonic() + 5
    search._race()
    race = StudyRecord.of(study).race
    assert race is not None and race.runs == 2 and race.verdict == "separated", race  # race:1 again, then they parted
    refilled = [t for t in study.get_trials() if TrialRecord.of(t).slot == "race:1" and t.state == TrialState.COMPLETE]
    assert len(refilled) == 1


def test_every_ok_probe_stores_its_configs_full_training_as_the_probe_timed_it(tmp_path):
    """Seconds per batch from the probe's own epochs (the first, slower one left out) over the whole splits the
    sample was drawn from, times the epochs train-best plans; a pruned or out-of-memory probe predicts nothing."""
    from tests.fakes import TRAIN_BATCHES, VAL_BATCHES, batch_s, val_batch_s
    from tuner.data.sample import Sample

    study, trials, found = prepared(tmp_path, n_trials=6, budget_mb=1000)
    trials = dataclasses.replace(trials, sample=Sample("s.yaml", 200, 100, 960, 96), planned_epochs=30)
    Search(study, trials, quiet(), found, runner=FakeProbe(1000, excess=1.2)).run()
    ok = [t for t in study.get_trials() if t.user_attrs.get("outcome") == "ok"]
    assert ok and all("train_s_predicted" not in t.user_attrs for t in study.get_trials() if t not in ok)
    for trial in ok:
        imgsz, batch = trial.params["imgsz"], trial.params["batch"]
        epoch_s = -(-960 // batch) * batch_s(imgsz, batch) + -(-96 // (2 * batch)) * val_batch_s(imgsz, batch)
        prediction = TrialRecord.of(trial).prediction
        assert prediction.epochs == 30 and prediction.epoch_s == pytest.approx(epoch_s, abs=0.01)
        assert prediction.seconds == pytest.approx(20 + 30 * epoch_s, abs=0.5)
    assert (TRAIN_BATCHES, VAL_BATCHES) == (10, 5)  # the sample's batches: per-batch seconds, not per-epoch, carry over
