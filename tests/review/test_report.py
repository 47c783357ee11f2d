"""tuner report: the findings, report.md, trials.csv, the plots and the dashboard notes, from a real SQLite study."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tuner import config as configs
from tuner.data.sample import Sample
from tuner.review import findings, plots, report
from tuner.study import probe_budget
from tuner.study.records import StudyRecord
from tuner.study.storage import open_storage, sqlite_path, storage_url

NAME = "shapes-yolov8n-cpu"
SPACE = {"imgsz": [160, 224, 288, 352], "batch": [2, 4, 8], "mosaic": [0.0, 1.0], "mixup": [0.0, 0.3]}
DISTRIBUTIONS = {
    "imgsz": CategoricalDistribution(SPACE["imgsz"]),
    "batch": CategoricalDistribution(SPACE["batch"]),
    "mosaic": FloatDistribution(0.0, 1.0),
    "mixup": FloatDistribution(0.0, 0.3),
}
STUDY_ATTRS = {
    "config": {
        "model": "yolov8n.yaml", "data": None, "device": "cpu", "memory_budget": "2000MB", "safety_margin": 0.1,
        "n_trials": 8, "metric": "metrics/mAP50-95(B)", "metric_name": "mAP50-95", "sampler": "tpe",
        "pruner": "median", "seed": 0, "space": SPACE,
        "probe": {"epochs": 2, "fraction": 1.0, "optimizer": "SGD", "lr0": 0.01, "trial_timeout": 600, "repeats": 1},
    },
    "device": "cpu",
    "device_name": "Intel Xeon (2 cores)",
    "budget_mb": 2000.0,
    "stable_limit_mb": 1800.0,
    "usable_memory_mb": 2857.0,
    "noise": {"pairs": [[2, 8, 0.01]], "spread": 0.01},
    "best": {
        "trial": 2, "params": {"imgsz": 224, "batch": 4, "mosaic": 0.2, "mixup": 0.1}, "value": 0.415, "runs": 2,
        "peak_mem_mb": 1320.0, "best_yaml": f"results/{NAME}/best.yaml",
    },
    "tuner_version": "0.1.0",
}  # fmt: skip
WATCHDOG = "watchdog: 2310 MB over the 2000 MB budget"
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names


def _ok(imgsz, batch, value, peak, **attrs):
    stable = peak <= 1800
    return TrialState.COMPLETE, (imgsz, batch), value, {"outcome": "ok", "peak_mem_mb": peak, "stable": stable, **attrs}


# number: (state, (imgsz, batch), value, user attrs); trial 9 is still running.
TRIALS = [
    _ok(160, 2, 0.30, 700.0, duration_s=31.5),
    _ok(160, 4, 0.35, 900.0),
    _ok(224, 4, 0.42, 1300.0),
    _ok(224, 8, 0.45, 1900.0),  # the highest metric, but over the stable limit
    (TrialState.PRUNED, (288, 8), None, {"outcome": "oom", "peak_mem_mb": 2310.0, "oom_reason": WATCHDOG,
                                          "log": "studies/x/trial-0004/log.txt"}),
    (TrialState.PRUNED, (352, 8), None, {"outcome": "oom", "inferred_from": 4,
                                          "oom_reason": "inferred: imgsz 288 / batch 8 ran out of memory in trial 4"}),
    (TrialState.PRUNED, (160, 8), None, {"outcome": "pruned", "peak_mem_mb": 1000.0}),
    (TrialState.FAIL, (288, 2), None, {"outcome": "error", "peak_mem_mb": 400.0,
                                        "error": "RuntimeError: bad label file\nTraceback ..."}),
    _ok(224, 4, 0.41, 1320.0, repeat_of=2),
    (TrialState.RUNNING, (288, 4), None, {}),
]  # fmt: skip


def build_study(url: str, name: str = NAME, trials=TRIALS, attrs=STUDY_ATTRS) -> optuna.Study:
    """A study as `tuner probe` leaves it, in a real SQLite file."""
    sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_metric_names(["mAP50-95"])
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for number, (state, (imgsz, batch), value, user_attrs) in enumerate(trials):
        mosaic = round(0.1 * user_attrs.get("repeat_of", number), 2)  # a repeat trains its original's config
        params = {"imgsz": imgsz, "batch": batch, "mosaic": mosaic, "mixup": 0.1}
        epochs = {1: 0.2, 2: value} if value is not None else ({1: 0.1} if state == TrialState.PRUNED else {})
        study.add_trial(
            create_trial(
                state=state, params=params, distributions=DISTRIBUTIONS, value=value,
                intermediate_values=epochs, user_attrs={"device": "cpu", **user_attrs},
            )
        )  # fmt: skip
    return study


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    """The study, built once (creating an Optuna SQLite schema takes most of a second)."""
    path = tmp_path_factory.mktemp("study") / f"{NAME}.db"
    build_study(f"sqlite:///{path}")
    return path


@pytest.fixture
def study(workdir, study_db) -> optuna.Study:
    """A fresh copy of the study in the test's own studies/."""
    Path("studies").mkdir()
    shutil.copy(study_db, Path("studies") / study_db.name)
    return optuna.load_study(study_name=NAME, storage=storage_url(None, Path("studies"), NAME))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _write(study: optuna.Study) -> dict[str, Path]:
    """The report files of `study` in results/, as `tuner report` writes them (without the notes)."""
    url = storage_url(None, Path("studies"), NAME)
    return report.write_report(findings.read(study, Path("results"), url), Path("results"))


def _at_the_edge(best):
    """`best` moved to the largest imgsz searched, far below the stable limit."""
    return dataclasses.replace(best, params=dataclasses.replace(best.params, imgsz=352), peak_mem_mb=500.0)


def _storage():
    """The default storage of the study, opened through Optuna's public API."""
    return open_storage(storage_url(None, Path("studies"), NAME), create=False)


def _system_attrs() -> dict:
    storage = _storage()
    return storage.get_study_system_attrs(storage.get_study_id_from_name(NAME))


def _trial(study: optuna.Study, number: int) -> optuna.Trial:
    """A live handle on a finished trial (what optuna_dashboard.get_note takes)."""
    storage = _storage()
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(NAME), number)
    return optuna.Trial(study, trial_id)


def test_outcomes_distinguish_inferred_ooms_and_running_trials(study):
    counts = findings.count_outcomes(study.get_trials())
    assert counts == {"ok": 5, "pruned": 1, "oom": 1, "inferred": 1, "error": 1, "not run": 0, "orphaned": 0, "running": 1,
                      "waiting": 0}


def test_report_suggests_larger_sizes_only_when_the_best_is_at_the_edge_with_memory_to_spare(study):
    found = findings.read(study, Path("results"))
    assert found.best.params.imgsz < max(found.grid.imgsz) and report.grow_hint(found) == ""
    edge = _at_the_edge(found.best)
    hint = report.grow_hint(dataclasses.replace(found, best=edge))
    assert "**Room to grow:**" in hint and "--imgsz 224,288,352,416,480" in hint


def test_report_command_prints_the_room_to_grow_note(study, run_cli):
    StudyRecord(best=_at_the_edge(StudyRecord.of(study).best)).save(study)  # records only the changed best
    code, out, _ = run_cli("report")
    assert code == 0 and "Note: imgsz 352 is the largest size this study searched" in out
    assert "**Room to grow:**" in (Path("results") / NAME / "report.md").read_text()


def test_memory_grid_cells_show_outcome_and_peak_memory(study):
    grid = findings.memory_grid(StudyRecord.of(study), study.get_trials())
    assert grid.imgsz == (160, 224, 288, 352) and grid.batch == (2, 4, 8)
    labels = {key: cell.label for key, cell in grid.cells.items()}
    assert labels == {
        (160, 2): "ok 700 MiB", (160, 4): "ok 900 MiB", (160, 8): "pruned 1000 MiB",
        (224, 2): "not tried", (224, 4): "ok 1320 MiB", (224, 8): "ok 1900 MiB (over limit)",
        (288, 2): "error", (288, 4): "running", (288, 8): "OOM at 2310 MiB",
        (352, 2): "not tried", (352, 4): "not tried", (352, 8): "OOM (inferred)",
    }  # fmt: skip
    assert [grid.largest_fitting_batch(size) for size in grid.imgsz] == [8, 4, None, None]


def test_write_report_writes_every_file_atomically(study):
    written = report.write_report(findings.read(study, Path("results")), Path("results"))
    out = Path("results") / NAME
    assert set(written) == {"report.md", "trials.csv", "frontier.png", "accuracy_vs_memory.png", "history.png"}
    for path in written.values():
        assert path.parent == out and path.stat().st_size > 0
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_md_says_what_was_found_and_what_to_run(study):
    text = _write(study)["report.md"].read_text()
    assert "| 2 | 224 | 4 | 0.2 | 0.1 | 0.4150 | 1320 MiB |" in text  # best stable config
    assert f"tuner train-best --study-name {NAME}\n" in text
    budget = "Memory budget: 2000 MiB (given as `2000MB`) of 2857 MiB usable; stable limit 1800 MiB (safety margin 10%)"
    assert budget in text
    assert "| ok | 5 |" in text and "| inferred | 1 |" in text and "| total | 10 |" in text
    assert "| 224 | not tried | ok 1320 MiB | ok 1900 MiB (over limit) |" in text  # frontier row
    assert "| 352 | not tried | not tried | OOM (inferred) |" in text
    assert "Largest batch within the stable limit of 1800 MiB: imgsz 160: 8, imgsz 224: 4, imgsz 288: none" in text
    assert "| 1 | 3 | 224 | 8 | 0.3 | 0.1 | 0.4500 | 1900 MiB | no |" in text  # top config, not stable
    assert "| 3 | 8 (repeat of 2) |" in text
    assert f"Trial 4 (imgsz 288, batch 8): out of memory: {WATCHDOG}. Log: `studies/x/trial-0004/log.txt`" in text
    assert "Trial 5 (imgsz 352, batch 8): out of memory (inferred, not run): inferred: imgsz 288" in text
    assert "Trial 6 (imgsz 160, batch 8): pruned: stopped by the pruner after epoch 1 at mAP50-95 0.1000" in text
    assert "Trial 7 (imgsz 288, batch 2): error: RuntimeError: bad label file" in text
    assert "moved mAP50-95 by 0.0100 on average (1 pair(s): trials 2/8: 0.0100)" in text
    assert "No other stable config scores within the noise of the most accurate one (0.4150): it is the pick." in text
    assert "![frontier](frontier.png)" in text


def test_report_chooses_the_best_itself_when_probe_has_not_recorded_one(workdir):
    attrs = {key: value for key, value in STUDY_ATTRS.items() if key != "best"}
    study = build_study(storage_url(None, Path("studies"), NAME), attrs=attrs)
    found = findings.read(study, Path("results"))
    assert found.best.trial == 2 and found.best.recorded is False  # 3 scores higher but is over the limit
    assert "has not recorded a best config yet" in _write(study)["report.md"].read_text()


def test_report_of_a_study_without_a_stable_config(workdir):
    attrs = {**STUDY_ATTRS, "best": None, "noise": {"pairs": [], "spread": None}}
    study = build_study(storage_url(None, Path("studies"), NAME), trials=TRIALS[4:6], attrs=attrs)
    text = _write(study)["report.md"].read_text()
    assert "No stable config yet" in text and "Not measured" in text
    assert "No trial has completed yet." in text


def test_trials_csv_has_one_row_per_trial(study):
    rows = _csv_rows(_write(study)["trials.csv"])
    assert [int(row["number"]) for row in rows] == list(range(10))
    assert list(rows[0]) == list(report.CSV_COLUMNS)
    assert rows[0]["value"] == "0.3" and rows[0]["peak_mem_mb"] == "700.0" and rows[0]["duration_s"] == "31.5"
    assert (rows[4]["state"], rows[4]["outcome"], rows[4]["reason"]) == ("PRUNED", "oom", WATCHDOG)
    assert (rows[5]["outcome"], rows[5]["inferred_from"]) == ("inferred", "4")
    assert (rows[7]["state"], rows[7]["reason"]) == ("FAIL", "RuntimeError: bad label file")
    assert (rows[9]["state"], rows[9]["outcome"], rows[9]["value"]) == ("RUNNING", "running", "")
    assert {row["model"] for row in rows} == {"yolov8n.yaml"}  # the study's model: several studies' rows read as one


def test_memory_grid_plot_draws_one_cell_per_config_and_the_budget(study, tmp_path):
    grid = findings.memory_grid(StudyRecord.of(study), study.get_trials())
    plot = plots.plot_memory_grid(grid, tmp_path / "frontier.png")
    assert plot.path.exists()
    assert plot.counts == {"cells": 12, "labels": 12, "budget_lines": 1, "preflight_lines": 0}
    frontier = {batch: grid.imgsz[0] for batch in grid.batch}
    grid = dataclasses.replace(grid, frontier=frontier, preflights={(grid.imgsz[0], grid.batch[0]): 700.0})
    mapped = plots.plot_memory_grid(grid, tmp_path / "mapped.png")
    assert mapped.counts == {"cells": 12, "labels": 12, "budget_lines": 0, "preflight_lines": 1}


def test_accuracy_memory_plot_has_a_point_per_trial_with_memory(study, tmp_path):
    points = findings.trial_points(study.get_trials(), 1800.0)
    plot = plots.plot_accuracy_vs_memory(
        points, tmp_path / "acc.png", metric_name="mAP50-95", budget_mb=2000.0, stable_limit_mb=1800.0, best_trial=2
    )
    assert plot.path.exists()
    # the inferred OOM has no memory reading and the running trial no result: neither is drawn
    drawn = {"stable": 4, "over limit": 1, "pruned": 1, "oom": 1, "error": 1, "best": 1, "budget_lines": 2}
    assert plot.counts == drawn


def test_history_plot_has_a_point_per_finished_trial(study, tmp_path):
    points = findings.trial_points(study.get_trials(), 1800.0)
    plot = plots.plot_history(points, tmp_path / "history.png", metric_name="mAP50-95")
    assert plot.path.exists()
    assert plot.counts == {"stable": 4, "over limit": 1, "pruned": 1, "oom": 1, "error": 1, "best_so_far": 4}


ULTRALYTICS_CSV = (
    "epoch,time,train/box_loss,metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss\n"
    "1,10.2,1.5,0.2,0.1,1.6\n2,20.1,1.3,0.3,0.2,1.4\n3,30.3,1.2,0.4,0.25,1.3\n"
)


def test_train_plot_reads_ultralytics_results_and_memory(tmp_path):
    results = tmp_path / "train" / "results.csv"
    results.parent.mkdir()
    results.write_text(ULTRALYTICS_CSV)
    plot = plots.plot_train_epochs(results, tmp_path / "train.png", metric_column="metrics/mAP50-95(B)")
    assert plot.path.exists() and plot.counts == {"metric_points": 3, "memory_points": 0}
    (results.parent / "memory.csv").write_text("epoch,peak_mem_mb\n1,900\n2,950\n3,940\n")
    plot = plots.plot_train_epochs(results, tmp_path / "train.png", metric_column="metrics/mAP50-95(B)")
    assert plot.counts == {"metric_points": 3, "memory_points": 3}
    assert plots.plot_train_epochs(tmp_path / "absent.csv", tmp_path / "x.png", metric_column="m") is None


def test_train_plot_leaves_out_epochs_that_were_not_validated(tmp_path):
    results = tmp_path / "results.csv"
    results.write_text(ULTRALYTICS_CSV.replace("2,20.1,1.3,0.3,0.2,1.4", "2,20.1,1.3,nan,nan,nan"))
    (tmp_path / "memory.csv").write_text("epoch,peak_mem_mb\n1,900\n2,950\n3,940\n")
    metric, memory = plots.read_train_epochs(results, "metrics/mAP50-95(B)")
    assert metric == [(1, 0.1), (3, 0.25)] and memory == [(1, 900.0), (2, 950.0), (3, 940.0)]
    plot = plots.plot_train_epochs(results, tmp_path / "train.png", metric_column="metrics/mAP50-95(B)")
    assert plot.counts == {"metric_points": 2, "memory_points": 3}


def test_report_plots_train_best_epochs_when_present(study):
    train = Path("results") / NAME / "train"
    train.mkdir(parents=True)
    (train / "results.csv").write_text(ULTRALYTICS_CSV)
    written = _write(study)
    assert written["train_epochs.png"].exists()
    assert "![train_epochs](train_epochs.png)" in written["report.md"].read_text()


def test_write_report_leaves_no_dashboard_notes(study):
    _write(study)
    assert optuna_dashboard.get_note(study) == ""  # the notes are the command's job (run_report), not the writer's
    assert "dashboard:note_ver" not in _system_attrs()


def test_report_leaves_dashboard_notes_once(study, run_cli):
    assert run_cli("report", "--quiet")[0] == 0
    note = optuna_dashboard.get_note(study)
    assert "**Best stable config**: trial 2: imgsz 224, batch 4" in note
    assert f"`tuner train-best --study-name {NAME}`" in note
    assert "*Best Trial* (3, 0.4500) is not used" in note
    assert "tuner chose this trial's config" in optuna_dashboard.get_note(_trial(study, 2))
    assert "over the stable limit" in optuna_dashboard.get_note(_trial(study, 3))
    version = _system_attrs()["dashboard:note_ver"]
    assert run_cli("report", "--quiet")[0] == 0
    assert _system_attrs()["dashboard:note_ver"] == version  # an unchanged note is not saved again


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_report_files_have_the_permissions_the_umask_gives(study, umask):
    previous = os.umask(umask)
    try:
        written = _write(study)
    finally:
        os.umask(previous)
    assert {"report.md", "trials.csv", "frontier.png", "history.png"} <= set(written)
    modes = {name: stat.S_IMODE(path.stat().st_mode) for name, path in written.items()}
    assert modes == dict.fromkeys(written, 0o666 & ~umask)  # 0644 under umask 022, not mkstemp's 0600


def test_train_best_command_names_non_default_storage(workdir):
    default = storage_url(None, Path("studies"), NAME)
    assert findings.train_best_command(NAME, Path("results"), default) == f"tuner train-best --study-name {NAME}"
    elsewhere = storage_url(None, Path("other"), NAME)
    assert findings.train_best_command(NAME, Path("out"), elsewhere).endswith("--studies-dir other --results-dir out")
    shared = "postgresql://db/tuner"
    assert findings.train_best_command(NAME, Path("results"), shared).endswith(f"--storage {shared}")


# ---------------------------------------------------------------------------------------------- the CLI


def test_cli_report_finds_the_only_study(study, run_cli):
    code, out, err = run_cli("report")
    assert code == 0, err
    assert f"Study {NAME}: 10 trials (5 ok, 1 pruned, 1 oom, 1 inferred, 1 error, 1 running)." in out
    assert f"Report: results/{NAME}/report.md" in out
    assert (Path("results") / NAME / "trials.csv").exists()


def test_cli_report_json_and_quiet(study, run_cli):
    code, out, _ = run_cli("report", "--study-name", NAME, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["best"]["trial"] == 2 and summary["counts"]["oom"] == 1
    assert Path(summary["files"]["report.md"]).exists()
    code, out, _ = run_cli("report", "--quiet", "--results-dir", "elsewhere")
    assert code == 0 and out == f"Report: elsewhere/{NAME}/report.md\n"


def test_cli_report_with_storage_url(workdir, run_cli):
    url = f"sqlite:///{workdir / 'shared.db'}"
    build_study(url, name="remote")
    code, out, err = run_cli("report", "--storage", url, "--quiet")
    assert code == 0, err
    assert "--storage sqlite:///" in (Path("results") / "remote" / "report.md").read_text()


def test_cli_report_without_a_study_is_one_line_and_exit_2(workdir, run_cli):
    code, out, err = run_cli("report")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("tuner: error: No study in studies/.")
    code, _, err = run_cli("report", "--study-name", "nope")
    assert code == 2 and err.count("\n") == 1 and "No study database at" in err


def test_cli_report_with_several_studies_asks_which(workdir, run_cli):
    for name in ("a-yolov8n-cpu", "b-yolov8n-cpu"):
        build_study(storage_url(None, Path("studies"), name), name=name, trials=TRIALS[:1])
    code, _, err = run_cli("report")
    assert code == 2 and err.count("\n") == 1
    assert "2 studies in studies/: a-yolov8n-cpu, b-yolov8n-cpu. Pass --study-name" in err


def test_the_top_table_judges_a_run_on_the_largest_peak_its_imgsz_and_batch_showed(workdir):
    # trial 0 (224/4) peaked under the limit, trial 1 (224/4 at another mosaic) over it: 224/4 is not stable,
    # and the table says so for both, as the pick does (selection.best_stable), whatever order they ran in.
    trials = [_ok(224, 4, 0.42, 1300.0), _ok(224, 4, 0.40, 1850.0), _ok(160, 4, 0.35, 900.0)]
    study = build_study(storage_url(None, Path("studies"), NAME), trials=trials)
    text = report.top_table(study.get_trials(), 1800.0, "mAP50-95")
    assert "| 1 | 0 | 224 | 4 | 0 | 0.1 | 0.4200 | 1300 MiB | no |" in text
    assert "| 3 | 2 | 160 | 4 | 0.2 | 0.1 | 0.3500 | 900 MiB | yes |" in text


def test_settings_show_the_sample_without_a_config_and_the_space_without_a_sample():
    sample = Sample("data.yaml", 64, 32, 960, 96)
    only_sample = report.setting_lines(StudyRecord(sample=sample))
    assert "Probes train on 64 of 960 train images" in only_sample and "Space:" not in only_sample
    config = configs.load(None, {})
    config = dataclasses.replace(config, space=dataclasses.replace(config.space, imgsz=(320, 416), batch=(2, 4)))
    only_config = report.setting_lines(StudyRecord(config=config))
    assert f"- Space: imgsz {list(config.space.imgsz)}" in only_config


def test_report_md_says_what_the_share_budget_followed(study):
    """A share budget moves with the best config found (tuner.study.deadlines.Deadlines.budget_end): report.md gives the plan
    as fitted before the first trial, then what the budget became."""
    plan = probe_budget.fit("15%", [60.0, 60.0, 60.0], 8, 2, 2, ("480/2", 7200.0, 40), preflight_s=130.0)
    follows = probe_budget.Follows("224/4", 3480.0, 522.0)
    StudyRecord(probe_plan=plan.to_json(), budget_follows=follows.to_json()).save(study, "probe_plan", "budget_follows")
    text = _write(study)["report.md"].read_text()
    assert plan.describe() in text
    assert ("Budget then 15% of the best config so far, 224/4, whose full training is predicted at 58 min: 9 min in "
            "all.") in text  # fmt: skip
