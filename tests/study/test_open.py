"""Opening a study (tuner.study.open): a continued study keeps the space it derived from its data, on real SQLite."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from tuner import config
from tuner.data.sample import Sample
from tuner.errors import ConfigError
from tuner.study.open import kept_space, open_study
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


def test_a_study_continues_where_its_sample_sizes_draw_the_same_images_and_says_which_flag_keeps_it_where_not(tmp_path):
    """A study probed with 200 / 100 images (the old default): on splits of 96 / 32 images it drew the whole splits, as
    today's 128 / 64 do, and goes on; on 960 / 96 it drew a sample of 200 / 100, and a run with 128 / 64 is refused with
    the flag that keeps the study's sample. Real SQLite."""
    old = dataclasses.replace(config.load(None, {"probe": {"train_images": 200, "val_images": 100}}), space=DERIVED)
    now = dataclasses.replace(config.load(None, {}), space=DERIVED)
    assert (now.probe.train_images, now.probe.val_images) == (128, 64)
    for name, totals in (("small", (96, 32)), ("large", (960, 96))):
        drawn = Sample("s.yaml", min(200, totals[0]), min(100, totals[1]), *totals)
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        open_study(name, url, old, StudyRecord(config=old, sample=drawn))
        if name == "small":
            study, created = open_study(name, url, now, StudyRecord(config=now))
            assert not created and StudyRecord.of(study).sample == drawn  # the stored sample stays the study's
        else:
            with pytest.raises(ConfigError) as caught:
                open_study(name, url, now, StudyRecord(config=now))
            assert str(caught.value) == (
                "Study 'large' was created with probe.train_images = 200, but this run asks for 128. Re-run with "
                "--probe-images 200,100, or pass --study-name for a new study.")  # fmt: skip
