"""The read model says one thing everywhere: one memory frontier (pre-flights and trials), the pick rule in
force in the noise paragraph, one count of outcomes for the console, report.md and the JSON. Real SQLite studies."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tests.fakes import FakePreflight, inputs, quiet
from tests.review.test_report import DISTRIBUTIONS, NAME, STUDY_ATTRS, TRIALS, _ok, build_study
from tuner.data.sample import Sample
from tuner.params import Params
from tuner.commands.probe import print_probe_summary, probe_summary
from tuner.review import findings, report, runs
from tuner.study import limits
from tuner.study.progress import Progress
from tuner.study.records import StudyRecord
from tuner.study.storage import storage_url

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names


def _mapped_study(workdir: Path) -> optuna.Study:
    """A study whose pre-flights mapped imgsz 160-224 x batch 16, 64 (batch 64 stops at imgsz 192), and whose
    trials ran only imgsz 160 / batch 16 (stable) and 224 / 64 (out of memory): no trial at imgsz 192."""
    probe = inputs(workdir, 2000, imgsz=(160, 192, 224), batch=(16, 64))
    mapped = limits.map_limits(probe, quiet(), runner=FakePreflight(2000))
    assert mapped.frontier.largest() == {16: 224, 64: 192}
    study = optuna.create_study(study_name="mapped", storage=f"sqlite:///{workdir / 'mapped.db'}", direction="maximize")
    StudyRecord(config=probe.cfg, device="cpu", budget_mb=2000.0, stable_limit_mb=probe.stable_limit_mb,
                limits=mapped.to_dict()).save(study)  # fmt: skip
    space = {**DISTRIBUTIONS, "imgsz": CategoricalDistribution((160, 192, 224)), "batch": CategoricalDistribution((16, 64))}
    for (imgsz, batch), state, value, attrs in [
        ((160, 16), TrialState.COMPLETE, 0.3, {"outcome": "ok", "peak_mem_mb": 800.0}),
        ((224, 64), TrialState.PRUNED, None, {"outcome": "oom", "oom_cause": "watchdog", "peak_mem_mb": 2100.0}),
    ]:
        params = {"imgsz": imgsz, "batch": batch, "mosaic": 0.5, "mixup": 0.1}
        study.add_trial(create_trial(state=state, params=params, distributions=space, value=value, user_attrs=attrs))
    return study


def test_the_memory_frontier_is_one_of_pre_flights_and_trials(workdir):
    """report.md said "imgsz 192: none" beside a limits table whose pre-flight of 192 / 64 fitted."""
    found = findings.read(_mapped_study(workdir), Path("results"))
    grid = found.grid
    assert [grid.largest_fitting_batch(size) for size in grid.imgsz] == [64, 64, 16]  # the trial's OOM: not 64 at 224
    assert grid.label(192, 64) == "pre-flight 1544 MiB" and grid.label(224, 64) == "OOM at 2100 MiB"
    assert grid.label(160, 64) == "not tried"  # no trial and no pre-flight: inside the frontier by monotonicity
    text = report.grid_section(grid)
    assert "| 192 | pre-flight 836 MiB | pre-flight 1544 MiB |" in text
    assert "imgsz 160: 64, imgsz 192: 64, imgsz 224: 16." in text


def _tied_study(workdir: Path, second_peak: float) -> findings.Findings:
    """Config A (imgsz 224, 2 runs, mean 0.415, peak 1320 MiB) ties within the noise with B (imgsz 160, 0.412)."""
    trials = [_ok(224, 4, 0.42, 1300.0), _ok(160, 4, 0.412, second_peak), _ok(224, 4, 0.41, 1320.0, repeat_of=0)]
    attrs = {**STUDY_ATTRS, "noise": {"pairs": [[0, 2, 0.01]], "spread": 0.01}, "best": None}
    study = build_study(storage_url(None, Path("studies"), NAME), trials=trials, attrs=attrs)
    return findings.read(study, Path("results"))


@pytest.mark.parametrize(
    ("second_peak", "picked", "says", "not_said"),
    [
        (1250.0, 0, "so the most accurate is the pick", "most memory headroom"),  # peaks within 5% of the budget
        (700.0, 1, "the one with the most memory headroom", "the most accurate is the pick"),
    ],
)
def test_the_noise_paragraph_follows_the_pick_rule(workdir, second_peak, picked, says, not_said):
    """The paragraph said the tied config with the lowest peak is picked, where the pick was the most accurate."""
    found = _tied_study(workdir, second_peak)
    assert found.best.trial == picked
    text = report.noise_text(found.record.noise, found.trials, found.grid, found.metric_name)
    assert "2 stable configs score within the noise of the most accurate one (0.4150)" in text
    assert says in text and not_said not in text and "lowest peak memory" not in text


def test_console_report_and_json_count_outcomes_alike(workdir):
    """probe_summary counted an inferred OOM as "oom", report.md as "inferred"."""
    study = build_study(storage_url(None, Path("studies"), NAME))
    trials = study.get_trials()
    summary = probe_summary(NAME, trials, StudyRecord.of(study), None, None)
    assert summary["counts"] == findings.count_outcomes(trials)
    assert (summary["counts"]["oom"], summary["counts"]["inferred"]) == (1, 1)
    stream = io.StringIO()
    print_probe_summary(summary, Progress(1, 1, "mAP50-95", stream=stream), as_json=False)
    assert f"Study {NAME}: 5 ok, 1 pruned, 1 oom, 1 inferred, 1 error, 1 running." in stream.getvalue()


def test_trials_that_never_ran_or_were_orphaned_are_not_counted_as_errors(workdir):
    """A surplus trial (its place filled, or its config run while a cell was untried) and an orphan failed by its
    heartbeat both end FAIL without an outcome: neither is an error of the config, and the counts say what they are."""
    trials = [*TRIALS[:3], (TrialState.FAIL, (160, 2), None, {"surplus": "the config ran already in trial 0"}),
              (TrialState.FAIL, (224, 4), None, {"worker": "host:1"})]  # fmt: skip
    study = build_study(storage_url(None, Path("studies"), NAME), trials=trials)
    counts = findings.count_outcomes(study.get_trials())
    assert (counts["not run"], counts["orphaned"], counts["error"]) == (1, 1, 0)
    assert set(counts) == set(findings.OUTCOME_MEANINGS)


def test_a_cell_is_judged_on_the_largest_peak_of_its_runs_and_one_kill_from_outside_does_not_decide_it(workdir):
    """As the pick judges it: 224/4 ran ok at 1300 MiB and was pruned at 1900 (over the 1800 limit), so it does not
    fit; 160/4 ran ok and was once killed from outside, which says nothing of its memory."""
    trials = [_ok(224, 4, 0.42, 1300.0), (TrialState.PRUNED, (224, 4), None, {"outcome": "pruned", "peak_mem_mb": 1900.0}),
              _ok(160, 4, 0.35, 900.0), (TrialState.PRUNED, (160, 4), None, {"outcome": "oom", "oom_cause": "os-kill",
                                                                             "peak_mem_mb": 850.0})]  # fmt: skip
    grid = findings.read(build_study(storage_url(None, Path("studies"), NAME), trials=trials), Path("results"),
                         storage_url(None, Path("studies"), NAME)).grid  # fmt: skip
    assert not grid.fits(224, 4) and grid.label(224, 4) == "ok 1900 MiB (over limit)"
    assert grid.fits(160, 4) and grid.label(160, 4) == "ok 900 MiB"


def test_report_and_trials_csv_predict_each_stable_configs_full_training(workdir):
    """From the pre-flights' timed batches over the whole splits (the study's sample says how large they are), times
    the epochs train-best plans: what the trade between accuracy and time needs."""
    from tests.fakes import TimedPreflight, batch_s, val_batch_s

    probe = inputs(workdir, 2000, imgsz=(160, 192, 224), batch=(16, 64))
    mapped = limits.map_limits(probe, quiet(), runner=TimedPreflight(2000))
    study = optuna.create_study(study_name="timed", storage=f"sqlite:///{workdir / 'timed.db'}", direction="maximize")
    StudyRecord(config=probe.cfg, device="cpu", budget_mb=2000.0, stable_limit_mb=probe.stable_limit_mb, limits=mapped.to_dict(),
                sample=Sample("s.yaml", 200, 100, 960, 96)).save(study)  # fmt: skip
    space = {**DISTRIBUTIONS, "imgsz": CategoricalDistribution((160, 192, 224)), "batch": CategoricalDistribution((16, 64))}
    for (imgsz, batch), value, peak in [((160, 16), 0.3, 800.0), ((224, 64), 0.4, 1900.0)]:  # the second over the limit
        params = {"imgsz": imgsz, "batch": batch, "mosaic": 0.5, "mixup": 0.1}
        study.add_trial(create_trial(state=TrialState.COMPLETE, params=params, distributions=space, value=value,
                                     user_attrs={"outcome": "ok", "peak_mem_mb": peak}))  # fmt: skip
    found = findings.read(study, Path("results"))
    expected = 20 + 40 * (60 * batch_s(160, 16) + 3 * val_batch_s(160, 16))  # 960 / 16 and 96 / 32 batches, 40 epochs
    assert found.planned_epochs == 40 and found.training_seconds(Params(160, 16, 0.5, 0.1)) == pytest.approx(expected, rel=1e-3)
    table = report.top_table(study.get_trials(), found.record.stable_limit_mb, "mAP50-95", found)
    assert "full training (40 epochs), predicted" in table
    assert f"| 800 MiB | yes | {expected / 60:.0f} min |" in table and "| 1900 MiB | no | - |" in table
    rows = list(csv.DictReader(io.StringIO(report.trials_csv(study.get_trials(), "mAP50-95", found))))
    assert rows[0]["train_s_predicted"] == str(round(expected)) and rows[1]["train_s_predicted"] == ""


def test_a_config_its_probe_timed_is_predicted_from_its_probe_not_from_the_preflights(workdir):
    """The probe's own epochs (TrialRecord.prediction) decide where it has them, scaled to the epochs planned now;
    a trial without them falls back on the pre-flights' speeds (none here: no prediction)."""
    space = {**DISTRIBUTIONS, "imgsz": CategoricalDistribution((160, 224)), "batch": CategoricalDistribution((16,))}
    study = optuna.create_study(study_name="probed", storage=f"sqlite:///{workdir / 'probed.db'}", direction="maximize")
    probe = inputs(workdir, 2000, imgsz=(160, 224), batch=(16,))
    StudyRecord(config=probe.cfg, device="cpu", budget_mb=2000.0, stable_limit_mb=1800.0).save(study)
    timed = {"train_s_predicted": 620.0, "train_epochs_predicted": 20, "train_epoch_s_predicted": 30.0}
    for imgsz, extra in ((160, timed), (224, {})):
        study.add_trial(create_trial(state=TrialState.COMPLETE, distributions=space, value=0.3 + imgsz / 1000,
                                     params={"imgsz": imgsz, "batch": 16, "mosaic": 0.5, "mixup": 0.1},
                                     user_attrs={"outcome": "ok", "peak_mem_mb": 800.0, **extra}))  # fmt: skip
    found = findings.read(study, Path("results"))
    trials = study.get_trials()
    assert found.predicted(trials[0]) == 20 + 40 * 30.0 and found.predicted(trials[1]) is None
    table = report.top_table(trials, 1800.0, "mAP50-95", found)
    assert "full training (40 epochs), predicted" in table and "| 20 min |" in table and "| - |" in table
    rows = list(csv.DictReader(io.StringIO(report.trials_csv(trials, "mAP50-95", found))))
    assert [row["train_s_predicted"] for row in rows] == ["1220", ""]


def test_the_trade_between_accuracy_and_training_time_is_a_table_and_a_plot(workdir):
    """The top stable configs by predicted training time, each against the pick; a config over the training time
    marked in the table and hollow in the plot; a config over the memory limit is no trade at all."""
    import dataclasses

    from tuner import config as configs
    from tuner.review import plots

    space = {**DISTRIBUTIONS, "imgsz": CategoricalDistribution((160, 224, 288)), "batch": CategoricalDistribution((2, 16))}
    study = optuna.create_study(study_name="trade", storage=f"sqlite:///{workdir / 'trade.db'}", direction="maximize")
    probe = inputs(workdir, 2000, imgsz=(160, 224, 288), batch=(2, 16))
    cfg = dataclasses.replace(probe.cfg, train_time=1500.0)  # 25 min
    StudyRecord(config=cfg, device="cpu", budget_mb=2000.0, stable_limit_mb=1800.0).save(study)
    runs = [(160, 16, 0.30, 800.0, 620.0), (224, 2, 0.40, 900.0, 1220.0), (288, 2, 0.45, 1100.0, 2420.0),
            (288, 16, 0.50, 1950.0, 1500.0)]  # the last over the memory limit  # fmt: skip
    for imgsz, batch, value, peak, seconds in runs:
        timed = {"train_s_predicted": seconds, "train_epochs_predicted": 40, "train_epoch_s_predicted": (seconds - 20) / 40}
        study.add_trial(create_trial(state=TrialState.COMPLETE, distributions=space, value=value,
                                     params={"imgsz": imgsz, "batch": batch, "mosaic": 0.5, "mixup": 0.1},
                                     user_attrs={"outcome": "ok", "peak_mem_mb": peak, **timed}))  # fmt: skip
    found = findings.read(study, Path("results"))
    assert found.best.trial == 1  # 288/2 is more accurate, but over the 25 min training time
    assert [(trade.trial, trade.train_s) for trade in found.trades()] == [(2, 2420.0), (1, 1220.0), (0, 620.0)]
    section = report.trade_section(found)
    lines = [line for line in section.splitlines() if line.startswith("| imgsz")]
    assert [line.split(" (trial ")[1][0] for line in lines] == ["0", "1", "2"]  # by training time
    assert "| 10 min | 800 MiB | -0.1000 for -49% time |" in lines[0]
    assert lines[1].endswith("| the pick |")
    assert "| 40 min (over the training time) | 1100 MiB | +0.0500 for +98% time |" in lines[2]
    assert "The training time is 25 min (`--train-time`)." in section
    plot = plots.plot_accuracy_vs_time(found.trades(), workdir / "trade.png", metric_name="mAP50-95",
                                       train_time_s=cfg.train_time, best_trial=found.best.trial)  # fmt: skip
    assert plot.counts == {"configs": 2, "over time": 1, "best": 1, "time_lines": 1}
    written = report.write_report(found, Path("results"))
    assert "accuracy_vs_time.png" in written and "## Accuracy against training time" in written["report.md"].read_text()
    assert configs.load(None, {}).train_time is None


def test_train_runs_are_read_from_each_runs_summary_and_anything_else_is_passed_over(tmp_path):
    def summary(folder: str, **extra) -> None:
        stage = {"trained_with": {"imgsz": 320, "batch": 2, "mosaic": 0.6, "mixup": 0.15}}
        values = {"epochs": 15, "epochs_planned": 15, "finished": True, "metrics": {"mAP50-95": 0.511, "mAP50": 0.8},
                  "wall_s": 1380.0, "peak_mem_mb": 1016.0, "stages": [stage], **extra}  # fmt: skip
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "summary.json").write_text(json.dumps(values))

    summary("train")
    summary("larger", epochs=6, finished=False, stages=[{"trained_with": {"imgsz": 480, "batch": 2, "mosaic": 0.4, "mixup": 0.2}}])
    summary("broken", stages=[])  # no stage: not a run's summary
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "summary.json").write_text("{not json")
    found = runs.train_runs(tmp_path, "mAP50-95")
    assert [(run.name, run.params.imgsz, run.epochs, run.finished) for run in found] == [("train", 320, 15, True), ("larger", 480, 6, False)]  # the pick's first
    assert found[0].value == 0.511 and runs.train_runs(tmp_path, "mAP50")[0].value == 0.8
    assert runs.train_runs(tmp_path / "none", "mAP50-95") == ()
