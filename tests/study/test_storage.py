"""The default study name (tuner.study.storage.default_study_name): one study per dataset, model and device, the
dataset and model named by their folder where the file's own name is generic (`data.yaml`, `weights/best.pt`);
a study stored under the name tuner gave before goes on under it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY_NAME, tiny_probe_args
from tuner.study.storage import default_study_name, legacy_study_name, stored_config


def test_generic_file_names_are_named_by_their_folder(tmp_path):
    road, trees = tmp_path / "road-damage" / "data.yaml", tmp_path / "tree-crowns" / "data.yaml"
    weights = tmp_path / "runs" / "detect" / "train3" / "weights" / "best.pt"
    assert default_study_name(str(road), str(weights), "cpu") == "road-damage-train3-cpu"
    assert default_study_name(str(trees), str(weights), "mps") == "tree-crowns-train3-mps"
    assert default_study_name(str(tmp_path / "coco8.yaml"), "yolov8s.pt", "cuda") == "coco8-yolov8s-cuda"
    assert default_study_name(None, "yolov8n.pt", "cpu") == "shapes-yolov8n-cpu"  # the embedded default, as before
    assert default_study_name(str(tmp_path / "dataset" / "Data.yaml"), "last.pt", "cpu").startswith(
        f"{tmp_path.name}-{Path.cwd().name}-")  # fmt: skip
    assert legacy_study_name(str(road), str(weights), "cpu") == "data-best-cpu"


def test_a_stored_config_is_read_from_its_sqlite_file_or_the_storage_and_none_where_there_is_no_study(tmp_path):
    import optuna

    assert stored_config("a", None, tmp_path) is None
    assert stored_config("a", f"sqlite:///{tmp_path / 'not-yet.db'}", tmp_path) is None  # a first run's new file
    assert not (tmp_path / "not-yet.db").exists()  # looking did not create it
    optuna.create_study(study_name="a", storage=f"sqlite:///{tmp_path / 'a.db'}").set_user_attr("config", {"data": "d"})
    assert stored_config("a", None, tmp_path) == {"data": "d"}
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="b", storage=url)
    assert stored_config("b", url, tmp_path) == {} and stored_config("a", url, tmp_path) is None


@pytest.mark.integration
def test_a_study_under_the_old_default_name_goes_on_under_it(tiny_data, workdir, run_cli):
    """A study stored as `data-yolov8n-cpu` (the tiny dataset's data.yaml, before) is continued by a plain `tuner
    probe`, not left behind for a new study under the new name."""
    legacy = legacy_study_name(str(tiny_data), "yolov8n.yaml", "cpu")
    assert legacy == "data-yolov8n-cpu" != TINY_NAME
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1", "--study-name", legacy))
    assert code in (0, 1), err
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2"))
    assert code in (0, 1), err
    assert "Continuing: 1 of 2 trials done." in err
    assert (workdir / "studies" / f"{legacy}.db").exists() and not (workdir / "studies" / f"{TINY_NAME}.db").exists()

    other = workdir / "other"  # another dataset whose file is data.yaml too: its own study, not the old one's
    shutil.copytree(tiny_data.parent, other)
    (other / "data.yaml").write_text((other / "data.yaml").read_text().replace(str(tiny_data.parent), str(other)))
    code, _, err = run_cli(*tiny_probe_args(other / "data.yaml", "--n-trials", "1"))
    assert code in (0, 1), err
    assert (workdir / "studies" / "other-yolov8n-cpu.db").exists() and "Continuing" not in err
