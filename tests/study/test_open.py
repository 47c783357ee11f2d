"""Opening a study (tuner.study.open): a continued study keeps the space it derived from its data, on real SQLite."""

from __future__ import annotations

import dataclasses

import optuna

from tuner import config
from tuner.study.open import kept_space
from tuner.study.records import StudyRecord

DERIVED = config.Space(imgsz=(160, 192, 224), batch=(1, 2, 4), mosaic=(0.0, 1.0), mixup=(0.0, 0.3))


def stored_study(tmp_path, space_from_data: bool) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = dataclasses.replace(config.load(None, {}), space=DERIVED)
    StudyRecord(config=cfg, space_from_data=space_from_data).save(optuna.create_study(study_name="s", storage=url))
    return url


def test_a_study_that_derived_its_space_keeps_it_where_the_run_leaves_the_space_to_the_data(tmp_path):
    url = stored_study(tmp_path, space_from_data=True)
    auto = config.load(None, {}).space
    assert kept_space("s", url, auto) == DERIVED  # today's derivation (say, from 416) does not replace the study's
    given = config.load(None, {"space": {"imgsz": [320]}}).space
    assert kept_space("s", url, given) == dataclasses.replace(DERIVED, imgsz=(320,))  # what the user gives wins
    both = config.load(None, {"space": {"imgsz": [320], "batch": [2]}}).space
    assert kept_space("s", url, both) is None


def test_nothing_is_kept_for_a_new_study_or_one_whose_space_the_user_gave(tmp_path):
    auto = config.load(None, {}).space
    assert kept_space("s", f"sqlite:///{tmp_path / 'none.db'}", auto) is None
    assert not (tmp_path / "none.db").exists()  # looking does not create a database
    assert kept_space("other", stored_study(tmp_path / "a", space_from_data=True), auto) is None
    assert kept_space("s", stored_study(tmp_path / "b", space_from_data=False), auto) is None
