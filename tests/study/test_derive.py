"""The search space derived from the data when the user gives none (tuner.study.derive), on real image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tuner import config
from tuner.data.datasets import check_dataset
from tuner.study import derive


def dataset(root: Path, sizes: list[tuple[int, int]], n_val: int = 1, labels: list[str] | None = None) -> Path:
    """A YOLO dataset whose train images have these (width, height) sizes; labels are one box each (or `labels`,
    a label file's text per image, in turn)."""
    for split, shapes in (("train", sizes), ("val", sizes[:n_val])):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index, (width, height) in enumerate(shapes):
            Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(root / "images" / split / f"{index}.png")
            text = labels[index % len(labels)] if labels else "0 0.5 0.5 0.2 0.2\n"
            (root / "labels" / split / f"{index}.txt").write_text(text)
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": {0: "a"}}))
    return check_dataset(data, out_dir=root / "resolved")


def auto_space() -> config.Space:
    return config.load(None, {}).space


def test_defaults_are_derived_from_the_data_imgsz_to_640_and_batch_to_the_train_size(tmp_path):
    data = dataset(tmp_path, [(512, 384)] * 12)
    space, notes = derive.resolve(auto_space(), data)
    assert space.imgsz == tuple(range(160, 641, 32))  # 512 px images: up to Ultralytics' 640
    assert space.batch == (1, 2, 4, 8)  # 12 train images: no batch larger than the split
    assert space.mosaic == (0.0, 1.0) and space.mixup == (0.0, 0.3)
    assert notes == ["Search space from the data (12 train images, usually 512 px on the long side): "
                     "imgsz 160-640 in steps of 32 (16 sizes), batch 1, 2, 4, 8"]  # fmt: skip


def test_large_images_raise_the_top_imgsz_to_their_size_rounded_up_and_at_most_1280(tmp_path):
    shape = derive.DataShape(n_train=500, long_side=1000)
    assert derive.imgsz_choices(shape)[-1] == 1024 and derive.batch_choices(shape)[-1] == 64
    assert derive.imgsz_choices(derive.DataShape(10, 4000))[-1] == 1280
    assert derive.imgsz_choices(derive.DataShape(10, None))[-1] == 640  # no readable image: Ultralytics' default
    assert derive.batch_choices(derive.DataShape(1, 640)) == (1,)
    assert derive.batch_choices(derive.DataShape(960, 640), probe_images=40) == (1, 2, 4, 8, 16, 32)  # the probes' sample
    assert derive.batch_choices(derive.DataShape(960, 640), probe_images=0)[-1] == 64


def test_small_objects_raise_the_smallest_imgsz_to_where_a_quarter_of_the_boxes_reach_8_px_and_say_so(tmp_path):
    # 512 px images; per image one 10 px box (0.02 x 0.02) and three of 100 px: a quarter of the boxes are 10 px
    mixed = "0 0.5 0.5 0.02 0.02\n" + "0 0.3 0.3 0.2 0.2\n" * 3
    space, notes = derive.resolve(auto_space(), dataset(tmp_path, [(512, 512)] * 8, labels=[mixed]))
    assert space.imgsz == tuple(range(416, 641, 32))  # 10 px at 512 is 8 px at 410: the first grid size above is 416
    assert notes[1] == ("Small objects: a quarter of the train boxes are under 3 px at imgsz 160, so imgsz starts at "
                        "416, where they are 8 px or more. Pass --imgsz to search smaller sizes.")  # fmt: skip


def test_the_box_size_bound_uses_the_smaller_quarter_and_the_area_and_leaves_four_sizes(tmp_path):
    # one small box in eight: the quarter's size is the large boxes', so the space keeps 160
    few = "0 0.5 0.5 0.02 0.02\n" + "0 0.3 0.3 0.2 0.2\n" * 7
    assert derive.resolve(auto_space(), dataset(tmp_path / "few", [(512, 512)] * 4, labels=[few]))[0].imgsz[0] == 160
    # a crack 2 px wide and 205 px long is 20 px by the root of its area: from 224 (by its 2 px side, only 544-640)
    thin = "0 0.5 0.5 0.004 0.4\n"
    assert derive.resolve(auto_space(), dataset(tmp_path / "thin", [(512, 512)] * 4, labels=[thin]))[0].imgsz[0] == 224
    # a polygon label counts by its bounding box: 0.1 x 0.1 of 512 is 51 px, no bound
    polygon = "0 0.40 0.40 0.50 0.40 0.50 0.50 0.40 0.50\n"
    assert derive.resolve(auto_space(), dataset(tmp_path / "poly", [(512, 512)] * 4, labels=[polygon]))[0].imgsz[0] == 160
    # 2 px objects would need imgsz 2048: the bound stops 4 sizes below the top
    tiny = "0 0.5 0.5 0.004 0.004\n"
    assert derive.resolve(auto_space(), dataset(tmp_path / "tiny", [(512, 512)] * 4, labels=[tiny]))[0].imgsz == (544, 576, 608, 640)
    assert derive.smallest_imgsz(derive.DataShape(4, 512, small_object=None)) == 160  # no boxes: background images only


def test_mixed_sizes_follow_the_usual_size_and_say_so(tmp_path):
    data = dataset(tmp_path, [(800, 600)] * 5 + [(1200, 900)] * 2 + [(320, 240)])
    space, notes = derive.resolve(auto_space(), data)
    assert space.imgsz[-1] == 800  # the long side most images have
    assert len(notes) == 2 and notes[1].startswith("Train images have mixed sizes (long side 320-1200 px)")


def test_a_choice_the_user_gave_wins(tmp_path):
    data = dataset(tmp_path, [(512, 512)] * 4)
    given = config.load(None, {"space": {"imgsz": [224, 160]}}).space
    space, _ = derive.resolve(given, data)
    assert space.imgsz == (160, 224) and space.batch == (1, 2, 4)
    both = config.load(None, {"space": {"imgsz": [160], "batch": [2]}}).space
    assert derive.resolve(both, data) == (both, [])


@pytest.mark.parametrize("flag", ["--imgsz", "--batch"])
def test_auto_on_the_command_line_overrides_a_config_file(tmp_path, flag):
    from tuner.cli import build_parser
    from tuner.config import probe_overrides

    args = build_parser().parse_args(["probe", flag, "auto"])
    file = tmp_path / "probe.yaml"
    file.write_text("space:\n  imgsz: [320]\n  batch: [4]\n")
    cfg = config.load(file, probe_overrides(args))
    assert getattr(cfg.space, flag.lstrip("-")) is None
    assert cfg.to_dict()["space"][flag.lstrip("-")] == "auto"


def test_a_batch_the_user_gave_larger_than_the_images_a_probe_trains_on_is_refused(tmp_path):
    from tuner.errors import ConfigError

    data = dataset(tmp_path, [(256, 256)] * 12)
    given = config.load(None, {"space": {"batch": [4, 16, 32]}}).space
    with pytest.raises(ConfigError, match=r"^--batch 16, 32 is larger than the 12 train images: each epoch would be one "
                                          r"smaller batch\. Choose batches up to 12, or leave --batch out to derive them\.$"):  # fmt: skip
        derive.check_batches(given, data, probe_images=0)
    with pytest.raises(ConfigError, match=r"^--batch 32 is larger than the 10 train images a probe trains on \(--probe-images\)"):
        derive.check_batches(config.load(None, {"space": {"batch": [32]}}).space, data, probe_images=10)
    derive.check_batches(config.load(None, {"space": {"batch": [4, 8]}}).space, data, probe_images=10)  # fits
    derive.check_batches(auto_space(), data, probe_images=10)  # derived: nothing to check
