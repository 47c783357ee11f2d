"""The study's sample of the splits (tuner.data.sample): stratified, of the size asked, the same for the same seed,
and a dataset YAML Ultralytics reads like the original. Real files; the probes that train on it are tested in
tests/commands/test_probe_integration.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from tuner.data import datasets, sample
from tuner.data.shapes import ShapesSpec, build_shapes


def _classes(images):
    return {image: {index % 5} if index % 10 else {4, index % 3} for index, image in enumerate(images)}


def test_the_sample_holds_every_class_and_the_size_asked():
    images = [f"/d/images/train/{index:04d}.jpg" for index in range(100)]
    labels = {image: {0} for image in images}
    labels[images[37]] = {1}  # a class in one image only: a random tenth would miss it nine times in ten
    labels[images[80]] = {2, 0}
    labels[images[5]] = set()  # a background image
    for seed in range(10):
        drawn = sample.draw(images, 10, seed, classes_of=labels.get)
        assert len(drawn) == 10 and len(set(drawn)) == 10 and drawn == sorted(drawn)
        assert images[37] in drawn and images[80] in drawn, seed


def test_the_same_images_size_and_seed_give_the_same_sample_and_another_seed_another():
    images = [f"/d/images/train/{index:04d}.jpg" for index in range(50)]
    labels = _classes(images)
    first = sample.draw(images, 12, 3, classes_of=labels.get)
    assert sample.draw(list(reversed(images)), 12, 3, classes_of=labels.get) == first  # the order given does not matter
    assert sample.draw(images, 12, 4, classes_of=labels.get) != first


def test_a_split_no_larger_than_the_size_or_a_size_of_zero_is_taken_whole():
    images = [f"/d/images/val/{index}.jpg" for index in range(8)]
    assert sample.draw(images, 8, 0, classes_of=lambda image: {0}) == sorted(images)
    assert sample.draw(images, 0, 0, classes_of=lambda image: {0}) == sorted(images)


def test_more_classes_than_the_size_leaves_the_rarest_in():
    images = [f"/d/images/train/{index}.jpg" for index in range(30)]
    labels = {image: {index % 3} for index, image in enumerate(images)}  # classes 0-2, ten images each
    labels[images[0]] = {7}  # the rarest
    drawn = sample.draw(images, 1, 0, classes_of=labels.get)
    assert drawn == [images[0]]


def test_the_sample_is_a_dataset_yaml_of_image_lists_with_their_labels(tmp_path):
    data = datasets.check_dataset(build_shapes(ShapesSpec(seed=3, n_train=20, n_val=12, image_size=96), root=tmp_path),
                                  out_dir=tmp_path / "resolved")  # fmt: skip
    drawn = sample.make(data, tmp_path / "study" / "sample", train_images=8, val_images=5, seed=0)
    assert (drawn.train_images, drawn.val_images, drawn.train_total, drawn.val_total) == (8, 5, 20, 12)
    assert not drawn.whole and "8 of 20 train images" in drawn.describe()
    written = yaml.safe_load(Path(drawn.data_yaml).read_text())
    original = yaml.safe_load(data.read_text())
    assert written["names"] == original["names"] and written["path"] == original["path"]
    train = Path(written["train"]).read_text().split()
    assert len(train) == 8 and set(train) <= set(datasets.split_images(data, "train"))
    assert datasets.split_images(Path(drawn.data_yaml), "train") == sorted(train)  # read back as Ultralytics reads it
    every_class = set().union(*(datasets.label_classes(image) for image in datasets.split_images(data, "train")))
    assert set().union(*(datasets.label_classes(image) for image in train)) == every_class
    again = sample.make(data, tmp_path / "elsewhere", train_images=8, val_images=5, seed=0)  # drawn again: the same
    assert Path(yaml.safe_load(Path(again.data_yaml).read_text())["train"]).read_text().split() == train


def test_a_dataset_within_the_sizes_is_probed_whole_without_a_copy(tmp_path):
    data = datasets.check_dataset(build_shapes(ShapesSpec(seed=3, n_train=6, n_val=4, image_size=96), root=tmp_path),
                                  out_dir=tmp_path / "resolved")  # fmt: skip
    drawn = sample.make(data, tmp_path / "sample", train_images=200, val_images=100, seed=0)
    assert drawn.whole and drawn.data_yaml == str(data) and not (tmp_path / "sample").exists()
    assert drawn.describe() == "Probes use the whole splits (6 train, 4 val images)."


def test_the_sample_names_its_files_by_absolute_paths(tmp_path, monkeypatch):
    """The probes run in folders of their own: a relative studies/ path would not be found from there."""
    data = datasets.check_dataset(build_shapes(ShapesSpec(seed=3, n_train=20, n_val=12, image_size=96), root=tmp_path),
                                  out_dir=tmp_path / "resolved")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    drawn = sample.make(data, Path("studies") / "s" / "sample", train_images=8, val_images=5, seed=0)
    assert Path(drawn.data_yaml).is_absolute()
    written = yaml.safe_load(Path(drawn.data_yaml).read_text())
    assert Path(written["train"]).is_absolute() and Path(written["val"]).is_absolute()
