"""`tuner probe --model a,b`: one study per model, the pick across them (tuner.commands.probe_models)."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest

from tests.conftest import TINY, TINY_NAME, tiny_probe_args
from tuner import config as configs
from tuner import offline
from tuner.commands import probe as probe_command
from tuner.commands import probe_models
from tuner.commands.probe_models import family_name, joined, pick, rest_s
from tuner.errors import ConfigError, NothingFits
from tuner.review import plots
from tuner.review.models import ModelResult, Rest, write_report
from tuner.study import inputs
from tuner.study.progress import Progress

TWO = "yolov8n.yaml,yolov8s.yaml"


def _result(model: str, value: float | None, peak: float = 1000.0, noise: float | None = None,
            training_s: float | None = None, spent_s: float = 90.0) -> ModelResult:  # fmt: skip
    predicted = None if training_s is None else {"seconds": training_s, "epochs": 40, "epoch_s": training_s / 40}
    best = None if value is None else {"params": {"imgsz": 320, "batch": 2, "mosaic": 0.5, "mixup": 0.1},
                                       "value": value, "peak_mem_mb": peak, "trial": 0, "train_predicted": predicted}  # fmt: skip
    summary = {"study": f"s-{model}", "best": best, "noise": noise, "frontier": [{"batch": 2, "imgsz": 320}],
               "cost": {"probe_s": spent_s}}  # fmt: skip
    return ModelResult(model, f"s-{model}", summary)


def test_the_models_are_listed_once_each(tmp_path):
    assert inputs.models("yolov8n.yaml, yolov8s.yaml") == ["yolov8n.yaml", "yolov8s.yaml"]
    with pytest.raises(ConfigError, match="lists yolov8n.yaml twice; name each model once"):
        inputs.models("yolov8n.yaml,yolov8s.yaml,yolov8n.yaml")
    weights = tmp_path / "a.pt"
    weights.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"twice \(as .*\./a\.pt\)"):  # one file, however it is named
        inputs.models(f"{weights},{tmp_path}/./a.pt")
    with pytest.raises(ConfigError, match="empty entry"):
        inputs.models("yolov8n.yaml,")


def test_a_config_file_lists_the_models(tmp_path):
    path = tmp_path / "probe.yaml"
    path.write_text("model: [yolov8n.yaml, yolov8s.yaml]\n")
    assert configs.load(path, {}).model == TWO
    path.write_text("model: []\n")
    with pytest.raises(ConfigError, match="`model` is an empty list"):
        configs.load(path, {})


def test_the_family_is_named_after_the_data_the_models_and_the_device():
    assert family_name(None, ["yolov8n.yaml", "yolov8s.yaml"], "cpu") == "shapes-yolov8n+yolov8s-cpu"
    assert family_name("road-damage/data.yaml", ["runs/train3/weights/best.pt", "b.pt"], "mps") == "road-damage-train3+b-mps"


def test_a_study_run_in_a_second_family_keeps_the_smaller_model_the_first_gave_it():
    """yolov8s probed with yolov8n, then with yolov8m: its record holds all three smallest first, so train-best of
    its pick still falls back to yolov8n's study (the second family alone would leave it none)."""
    ns = {"name": "d-yolov8n+yolov8s-cpu", "models": ["yolov8n.yaml", "yolov8s.yaml"], "studies": ["d-n", "d-s"],
          "smallest_first": True}  # fmt: skip
    sm = {"name": "d-yolov8s+yolov8m-cpu", "models": ["yolov8s.yaml", "yolov8m.yaml"], "studies": ["d-s", "d-m"],
          "smallest_first": True}  # fmt: skip
    assert joined(ns, sm) == {"name": sm["name"], "models": ["yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml"],
                              "studies": ["d-n", "d-s", "d-m"], "smallest_first": True}  # fmt: skip
    assert joined(None, sm) == sm and joined(sm, sm) == sm  # the first run, and the same family again
    assert joined({**ns, "smallest_first": False}, sm) == sm  # an unordered family says nothing of which is smaller
    other = {"name": "d-yolo11n+yolov8s-cpu", "models": ["yolo11n.yaml", "yolov8s.yaml"], "studies": ["d-11", "d-s"],
             "smallest_first": True}  # fmt: skip
    assert joined(other, sm) == sm  # yolo11n and yolov8m cannot be ordered: the new family alone


def test_what_the_floors_leave_of_the_shared_budget_goes_by_the_leaders_training():
    leader = _result("n", 0.40, training_s=3600.0, spent_s=200.0)
    other = _result("s", 0.30, training_s=9000.0, spent_s=150.0)
    left_out = ModelResult("m", "s-m", left_out="fits nowhere", preflight_s=50.0)
    # 15% of the leader's pick's 60-minute training, less all three studies' spending (the left-out one's pre-flights)
    assert rest_s("15%", [leader, other, left_out], leader) == (pytest.approx(140.0), pytest.approx(540.0), 400.0)
    assert rest_s(600.0, [leader, other], leader) == (250.0, 600.0, 350.0)  # a duration is the whole run's
    assert rest_s(300.0, [leader, other], leader)[0] == -50.0  # the floors spent more than the budget: none left
    assert rest_s("15%", [_result("n", 0.4, spent_s=10.0)], _result("n", 0.4))[:2] == (None, None)  # no prediction
    assert rest_s("none", [leader], leader)[:2] == (None, None)
    stream = io.StringIO()
    cfg = configs.load(None, {"model": TWO, "probe": {"budget": "15%"}})
    assert probe_models._spend_the_rest(cfg, [], [leader, _result("s", 0.3, spent_s=400.0)],  # nothing run: 600 > 540
                                        Progress(0, 0, "mAP50-95", stream=stream), None, Path("no-studies"),
                                        Path("no-results"), True) is None  # fmt: skip
    assert "The floors took 10 min of the shared budget's 9 min: no probe more fits." in stream.getvalue()
    assert probe_models._spend_the_rest(cfg, [], [_result("n", 0.4)], Progress(0, 0, "mAP50-95", stream=stream), None,
                                        Path("no-studies"), Path("no-results"), True) is None  # fmt: skip
    assert ("The shared budget (15%) is a share of the leading model's full training, which no probe timed: no probe "
            "past the floors.") in stream.getvalue()
    rest = Rest("yolov8n.yaml", "s-n", 300.0, 840.0, 540.0)
    assert rest.describe() == ("The floors took 9 min of the shared budget's 14 min: the other 5 min go to "
                               "yolov8n.yaml, the leading model.")  # fmt: skip


def test_the_pick_is_the_most_accurate_and_a_tie_goes_to_the_lower_peak():
    small, large = _result("n", 0.300, peak=900, noise=0.01), _result("s", 0.305, peak=1800, noise=0.02)
    assert pick([small, large]) is small  # 0.005 apart, within the larger noise: the lower peak
    far = _result("s", 0.340, peak=1800, noise=0.02)
    assert pick([small, far]) is far
    left = ModelResult("m", "s-m", left_out="needs 5000 MiB")
    assert pick([left, _result("x", None), small]) is small
    assert pick([left, _result("x", None)]) is None


def test_where_every_models_stable_configs_train_too_long_the_verdict_names_the_time_not_memory(tmp_path):
    stream = io.StringIO()
    slow = _result("yolov8n.yaml", None)
    slow.summary["train_time"] = {"none_fit": True, "line": "No stable config trains within the training time of 1 s: ..."}
    probe_models._print("fam", [slow], None, tmp_path / "report.md", Progress(1, 1, "mAP50-95", stream=stream), False)
    said = stream.getvalue()
    assert "No model has a stable config that trains within the training time:" in said
    assert "  yolov8n.yaml: No stable config trains within the training time of 1 s" in said and "memory" not in said
    probe_models._print("fam", [_result("yolov8n.yaml", None)], None, tmp_path / "report.md",
                        Progress(1, 1, "mAP50-95", stream=stream), False)  # fmt: skip
    assert "raise --memory-budget" in stream.getvalue()  # no time limit left them out: memory did
    mixed = io.StringIO()
    probe_models._print("fam", [slow, _result("yolov8s.yaml", None)], None, tmp_path / "report.md",
                        Progress(1, 1, "mAP50-95", stream=mixed), False)  # fmt: skip
    said = mixed.getvalue()
    assert "  yolov8n.yaml: none within the training time" in said and "  yolov8s.yaml: no stable config" in said
    assert "The others have no stable config within the memory budget" in said  # each its own reason


def test_the_report_sets_the_models_side_by_side(tmp_path):
    small, large = _result("yolov8n.yaml", 0.300, peak=900), _result("yolov8s.yaml", 0.340, peak=1800)
    left = ModelResult("yolov8m.yaml", "s-m", left_out="The smallest config needs 9000 MiB.")
    text = write_report(tmp_path / "fam", [small, large, left], large, "mAP50-95").read_text()
    assert "| yolov8s.yaml **(pick)** | s-yolov8s.yaml | 2: 320 |" in text
    assert "| yolov8n.yaml | s-yolov8n.yaml | 2: 320 | imgsz 320 batch 2" in text and "0.3000" in text
    assert "| yolov8m.yaml | s-m | fits nowhere |" in text and "needs 9000 MiB" in text
    assert "tuner train-best --study-name s-yolov8s.yaml" in text
    assert "![Memory frontier per model](frontiers.png)" in text and (tmp_path / "fam" / "frontiers.png").is_file()
    assert "[trials.csv](trials.csv)" not in text  # no study wrote one (a limits-only run)


def test_the_familys_trials_csv_holds_every_models_trials_with_its_study(tmp_path):
    small, large = _result("yolov8n.yaml", 0.300, peak=900), _result("yolov8s.yaml", 0.340, peak=1800)
    for result, rows in ((small, "0,yolov8n.yaml,0.3\n1,yolov8n.yaml,0.2\n"), (large, "0,yolov8s.yaml,0.34\n")):
        (tmp_path / result.study).mkdir()
        (tmp_path / result.study / "trials.csv").write_text("number,model,value\n" + rows)
    text = write_report(tmp_path / "fam", [small, large], large, "mAP50-95").read_text()
    assert "[trials.csv](trials.csv)" in text
    assert (tmp_path / "fam" / "trials.csv").read_text().splitlines() == [
        "study,number,model,value", f"{small.study},0,yolov8n.yaml,0.3", f"{small.study},1,yolov8n.yaml,0.2",
        f"{large.study},0,yolov8s.yaml,0.34"]  # fmt: skip


def test_the_frontier_plot_draws_one_staircase_per_model_that_fits(tmp_path):
    frontiers = {"yolov8n": [{"batch": 2, "imgsz": 640}, {"batch": 4, "imgsz": 480}],
                 "yolov8s": [{"batch": 2, "imgsz": 480}, {"batch": 4, "imgsz": None}],
                 "yolov8m": [{"batch": 2, "imgsz": None}, {"batch": 4, "imgsz": None}]}  # fmt: skip
    plot = plots.plot_model_frontiers(frontiers, tmp_path / "frontiers.png", 2700.0)
    assert plot.counts == {"frontiers": 2} and plot.path.stat().st_size > 0


def test_a_model_that_fits_nowhere_is_left_out_and_the_study_goes_on(workdir, tiny_data, monkeypatch, capsys):
    """A rare branch reached quickly: the larger model's pre-flights are replaced by one that finds nothing fits."""
    real, handed = probe_command.run_probe, {}

    def run_probe(cfg, **kwargs):
        handed[cfg.model] = kwargs["ruled_out"]
        if cfg.model == "yolov8s.yaml":
            raise NothingFits("Not even imgsz 64 batch 2 fits: it peaked at 900 MiB over the 500 MiB stable limit.")
        return real(cfg, **kwargs)

    monkeypatch.setattr(probe_command, "run_probe", run_probe)
    cfg = configs.load(None, {"data": str(tiny_data), "model": TWO, "device": "cpu", "n_trials": 1,
                              "space": {"imgsz": [64], "batch": [2]}, "probe": {"epochs": 1, "repeats": 0, "budget": "none"}})  # fmt: skip
    code = probe_models.run_models(cfg, study_name=None, storage=None, studies_dir=Path("studies"),
                                   results_dir=Path("results"), quiet=True, as_json=True, limits_only=False,
                                   workers=1, worker=None)  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert "Model yolov8s.yaml fits nowhere within the memory budget; left out." in err
    assert [model["model"] for model in summary["models"]] == ["yolov8n.yaml", "yolov8s.yaml"]
    assert summary["models"][1]["left_out"].startswith("Not even imgsz 64")
    assert summary["pick"]["model"] == "yolov8n.yaml"
    assert "fits nowhere" in Path(summary["report"]).read_text()
    assert handed["yolov8n.yaml"] == ()  # the smaller first, on its own
    assert [smaller.model for smaller in handed["yolov8s.yaml"]] == ["yolov8n.yaml"]  # what it did not fit: handed on


def test_models_run_smallest_first_only_where_tuner_can_tell_which_is_larger():
    assert inputs.by_scale(["yolov8s.yaml", "yolov8n.yaml"]) == ["yolov8n.yaml", "yolov8s.yaml"]
    assert inputs.by_scale(["yolo11x.yaml", "yolo11n.yaml", "yolo11m.yaml"]) == ["yolo11n.yaml", "yolo11m.yaml", "yolo11x.yaml"]
    assert inputs.by_scale(["yolov8l.yaml", "yolov8m.yaml"]) == ["yolov8m.yaml", "yolov8l.yaml"]  # deeper and wider
    assert inputs.by_scale(["yolov8n.yaml", "yolo11s.yaml"]) is None  # two families: either may be larger
    assert inputs.by_scale(["yolov8n-p2.yaml", "yolov8s.yaml"]) is None  # two variants
    assert inputs.by_scale(["yolov8.yaml", "yolov8s.yaml"]) is None  # no scale in the name: Ultralytics guesses
    assert inputs.by_scale(["a.pt", "yolov8n.yaml"]) is None  # no such weights file


@pytest.fixture(scope="module")
def scaled_weights(tmp_path_factory) -> dict[str, Path]:
    """yolov8n.pt and yolov8s.pt as Ultralytics saves them (`YOLO(yaml).save`), random weights, under names that
    say nothing of their scale."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {scale: folder / f"model-{index}.pt" for index, scale in enumerate("sn")}
    script = "; ".join(["import sys", "from ultralytics import YOLO",
                        *(f"YOLO('yolov8{scale}.yaml').save(sys.argv[{index + 1}])" for index, scale in enumerate(paths))])  # fmt: skip
    subprocess.run([sys.executable, "-c", script, *map(str, paths.values())], env=offline.child_env(), check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    return paths


def test_weights_files_are_ordered_by_the_architecture_they_store(scaled_weights, tmp_path):
    small, large = str(scaled_weights["n"]), str(scaled_weights["s"])
    assert inputs.by_scale([large, small]) == [small, large]
    assert inputs.by_scale([large, "yolov8n.yaml"]) == ["yolov8n.yaml", large]  # a weights file and a shipped YAML
    assert inputs.by_scale([small, "yolo11s.yaml"]) is None  # another architecture
    empty = tmp_path / "empty.pt"  # a checkpoint that stores no model (a state dict saved on its own, say)
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("empty/data.pkl", pickle.dumps({"weights": [1, 2]}))
        archive.writestr("empty/version", "3\n")
    assert inputs.by_scale([small, str(empty)]) is None


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_reading_a_weights_files_architecture_runs_none_of_its_code(tmp_path):
    marker = tmp_path / "ran"
    weights = tmp_path / "evil.pt"
    with zipfile.ZipFile(weights, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"model": _Payload(marker)}))
        archive.writestr("evil/version", "3\n")
    assert inputs.by_scale([str(weights), "yolov8s.yaml"]) is None
    assert not marker.exists()  # pickle.load would have made it


@pytest.mark.parametrize(
    ("models", "extra", "message"),
    [
        ("yolov8n.yaml,yolov8n.yaml", (), "--model lists yolov8n.yaml twice"),
        ("yolov8n.yaml,nope.yaml", (), "Model YAML 'nope.yaml' is neither a file nor a model Ultralytics ships"),
        ("yolov8n.yaml,missing.pt", (), "Model weights missing.pt not found"),
        (TWO, ("--workers", "2"), "--workers runs the study of one model"),
        ("v1/yolo.pt,v2/yolo.pt", (), "--model v1/yolo.pt and v2/yolo.pt would share the study"),
    ],
)
def test_bad_model_lists_are_one_line_and_nothing_runs(workdir, tiny_data, run_cli, models, extra, message):
    for folder in ("v1", "v2"):  # two checkpoints of one file name (a pickle's first byte: they pass the look inside)
        (workdir / folder).mkdir()
        (workdir / folder / "yolo.pt").write_bytes(pickle.dumps({}, protocol=2))
    code, out, err = run_cli(*tiny_probe_args(tiny_data, "--model", models, *extra))
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (workdir / "studies").exists() or not list((workdir / "studies").glob("*.db"))


def test_two_models_are_two_studies_that_run_their_floors_and_the_leader_gets_the_rest_of_the_budget(
    workdir, tiny_data, run_cli
):
    """Two models under one 10-minute budget, 3 main trials each planned (a 2-cell startup design at imgsz 64, no
    repeats): each study runs its design, then the leading model's study runs its third trial with what is left."""
    code, out, err = run_cli(*tiny_probe_args(tiny_data, "--model", TWO, "--n-trials", "3", "--probe-budget", "10m",
                                              "--json"))  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    names = [model["study"] for model in summary["models"]]
    assert names == [TINY_NAME, f"{TINY.key}-yolov8s-cpu"]  # each the name `--model M` alone gives it
    rest = summary["rest"]
    assert rest["model"] in ("yolov8n.yaml", "yolov8s.yaml") and rest["study"] in names
    assert rest["budget_s"] == 600.0 and 0 < rest["floors_s"] < 600.0 and rest["seconds"] == pytest.approx(600.0 - rest["floors_s"], abs=0.2)
    ran = {}
    for name, model in zip(names, ("yolov8n.yaml", "yolov8s.yaml")):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / f'{name}.db'}")
        assert study.user_attrs["config"]["model"] == model  # each study is the one `--model M` alone would run
        assert study.user_attrs["family"] == {"name": f"{TINY.key}-yolov8n+yolov8s-cpu", "studies": names,
                                              "models": ["yolov8n.yaml", "yolov8s.yaml"], "smallest_first": True}  # fmt: skip
        ran[name] = [trial.params["batch"] for trial in study.trials if trial.params]
        assert (workdir / "results" / name / "best.yaml").is_file()
    leader, other = rest["study"], next(name for name in names if name != rest["study"])
    assert sorted(ran[other]) == [2, 4] and len(ran[leader]) == 3  # the other: its design, the floor alone
    assert sorted(ran[leader][:2]) == [2, 4]
    assert f"go to {rest['model']}, the leading model." in err and f"Model {rest['model']}, continued" in err
    values = [model["best"]["value"] for model in summary["models"]]
    assert summary["pick"]["value"] == max(values)  # no repeats, no noise: no tie
    assert summary["family"] == f"{TINY.key}-yolov8n+yolov8s-cpu"
    report = (workdir / "results" / summary["family"] / "report.md").read_text()
    assert all(f"| {model} " in report or f"| {model} **(pick)**" in report for model in ("yolov8n.yaml", "yolov8s.yaml"))
    assert f"go to {rest['model']}, the leading model." in report
    with (workdir / "results" / summary["family"] / "trials.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((row["study"], row["model"]) for row in rows if row["state"] in ("COMPLETE", "PRUNED")) == sorted(
        [(names[0], "yolov8n.yaml")] * len(ran[names[0]]) + [(names[1], "yolov8s.yaml")] * len(ran[names[1]]))  # fmt: skip
    assert "Model 2/2: yolov8s.yaml" in err
    assert "Next: tuner train-best" not in err  # each model's summary leaves the next step to the pick across them


def test_a_local_yaml_is_not_ordered_by_its_name(tmp_path):
    local = tmp_path / "yolov8s.yaml"
    local.write_text("nc: 3\n")
    assert inputs.by_scale(["yolov8n.yaml", str(local)]) is None  # it may hold any model: no inference from its name


def test_a_later_models_study_that_would_be_refused_is_refused_before_anything_runs(workdir, tiny_data, run_cli):
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--model", "yolov8s.yaml", "--limits-only", "--probe-epochs", "2"))
    assert code == 0, err
    before = sorted(path.name for path in (workdir / "studies").iterdir())
    code, out, err = run_cli(*tiny_probe_args(tiny_data, "--model", TWO, "--n-trials", "1"))
    assert code == 2 and f"Study '{TINY.key}-yolov8s-cpu' was created with probe.epochs = 2" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(path.name for path in (workdir / "studies").iterdir()) == before  # yolov8n's study never started


def test_models_that_fit_nowhere_under_limits_only_exit_1_and_the_larger_needs_no_preflight(workdir, tiny_data, run_cli):
    """End to end: yolov8n's smallest config runs out of memory in its pre-flight, so yolov8s (larger) is ruled out
    everywhere without one; both are left out, and the run exits 1."""
    code, out, err = run_cli(*tiny_probe_args(tiny_data, "--model", TWO, "--limits-only", "--json",
                                              "--memory-budget", "150MB", "--study-name", "tight"))  # fmt: skip
    assert code == 1, err
    summary = json.loads(out)
    assert summary["family"] == "tight-yolov8n+yolov8s"
    small, large = summary["models"]
    assert small["left_out"].startswith("The smallest config, imgsz 64 batch 2, ran out of memory")
    assert large["left_out"].startswith("A smaller model did not fit the smallest config")
    assert not (workdir / "studies" / "tight-yolov8s" / "preflight").exists()  # not one pre-flight of yolov8s
    assert (workdir / "studies" / "tight-yolov8n" / "preflight").is_dir()


def test_weights_files_of_one_architecture_run_smallest_first_and_the_larger_needs_no_preflight(
    workdir, tiny_data, run_cli, scaled_weights
):
    """As above, with weights files named in no order and under names that say nothing of their scale."""
    small, large = scaled_weights["n"], scaled_weights["s"]
    code, out, err = run_cli(*tiny_probe_args(tiny_data, "--model", f"{large},{small}", "--limits-only", "--json",
                                              "--memory-budget", "150MB", "--study-name", "tight"))  # fmt: skip
    assert code == 1, err
    assert f"Smallest first: {small}, {large}" in err
    first, second = json.loads(out)["models"]
    assert (first["model"], second["model"]) == (str(small), str(large))
    assert second["left_out"].startswith("A smaller model did not fit the smallest config")
    assert not (workdir / "studies" / f"tight-{large.stem}" / "preflight").exists()  # not one pre-flight of it
