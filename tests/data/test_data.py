"""tuner.data.shapes, tuner.data.cache, tuner.data.datasets and tuner.data.base_model: the synthetic shapes dataset, its cache, checks of
user dataset YAMLs, and the base checkpoint."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuner import offline
from tuner.data import base_model, cache, datasets, shapes
from tuner.errors import DataError

TINY = shapes.ShapesSpec(seed=7, n_train=4, n_val=2, image_size=128)


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every image and label file, by path relative to the dataset folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".jpg", ".txt"})
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ------------------------------------------------------------------------------------------- generation


def test_same_seed_gives_identical_files_in_two_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "one"))
    first = shapes.build_shapes(TINY)
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "two"))
    second = shapes.build_shapes(TINY)

    assert first != second
    assert first.parent.name == second.parent.name == TINY.key
    assert len(_digests(first.parent)) == 2 * (TINY.n_train + TINY.n_val)
    assert _digests(first.parent) == _digests(second.parent)


def test_another_seed_gives_other_images(tmp_path):
    first = shapes.build_shapes(TINY, root=tmp_path)
    other = shapes.build_shapes(shapes.ShapesSpec(seed=8, n_train=4, n_val=2, image_size=128), root=tmp_path)
    assert first.parent != other.parent
    assert set(_digests(first.parent).values()).isdisjoint(_digests(other.parent).values())


def test_cache_key_changes_with_generator_version(monkeypatch):
    before = TINY.key
    monkeypatch.setattr(cache, "GENERATOR_VERSION", cache.GENERATOR_VERSION + 1)
    assert TINY.key != before


def test_building_a_current_version_removes_older_versions_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path))
    version = cache.GENERATOR_VERSION
    shapes_dir, weights = tmp_path / "datasets", tmp_path / "weights"
    old = [shapes_dir / f"shapes-v{version - 1}-probe-s0-96x96-512", shapes_dir / f"shapes-v{version - 1}-base-s1-x"]
    for folder in old:
        (folder / "images").mkdir(parents=True)
        (folder / "data.yaml").write_text("x")
    kept = [shapes_dir / f"shapes-v{version + 1}-probe-s0-96x96-512", shapes_dir / "my-own-data"]
    for folder in kept:
        folder.mkdir(parents=True)
    shapes.build_shapes(TINY)
    assert not any(folder.exists() for folder in old)
    assert all(folder.exists() for folder in kept) and (shapes_dir / TINY.key / "data.yaml").exists()

    weights.mkdir()
    old_weights = [weights / f"base-v{version - 1}-shapes.pt", weights / f"base-v{version - 1}-shapes.pt.lock",
                   weights / f"base-v{version - 1}-shapes.log"]  # fmt: skip
    current = weights / f"base-v{version}-shapes.pt"
    for path in [*old_weights, current]:
        path.write_text("x")
    assert sorted(cache.remove_older_versions(weights, "base")) == sorted(old_weights)
    assert current.exists()
    (tmp_path / "elsewhere" / f"shapes-v{version - 1}-mine").mkdir(parents=True)
    shapes.build_shapes(TINY, root=tmp_path / "elsewhere")  # a folder of the caller's: never swept
    assert (tmp_path / "elsewhere" / f"shapes-v{version - 1}-mine").exists()
    (shapes_dir / f"shapes-v{version - 1}-late").mkdir()
    shapes.build_shapes(TINY)  # already there: nothing is built, nothing is swept
    assert (shapes_dir / f"shapes-v{version - 1}-late").exists()


def test_embedded_dataset_yaml_is_absolute_and_counts_match(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(shapes, "EMBEDDED", TINY)
    data_yaml = shapes.embedded_dataset()

    assert data_yaml.is_relative_to(tmp_path / "datasets")
    spec = yaml.safe_load(data_yaml.read_text())
    assert Path(spec["path"]).is_absolute() and Path(spec["path"]) == data_yaml.parent
    assert spec["names"] == dict(enumerate(shapes.CLASS_NAMES))
    for split, count in (("train", TINY.n_train), ("val", TINY.n_val)):
        images = sorted((Path(spec["path"]) / spec[split]).glob("*.jpg"))
        labels = sorted((data_yaml.parent / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == count
        assert [p.stem for p in images] == [p.stem for p in labels]


def test_labels_are_valid_yolo_boxes_with_small_and_large_objects(tmp_path):
    spec = shapes.ShapesSpec(seed=3, n_train=12, n_val=1)
    folder = shapes.build_shapes(spec, root=tmp_path).parent
    rows = [line.split() for f in (folder / "labels").rglob("*.txt") for line in f.read_text().splitlines()]
    classes = {int(row[0]) for row in rows}
    boxes = [[float(v) for v in row[1:]] for row in rows]

    assert classes == set(range(len(shapes.CLASS_NAMES)))
    assert all(0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1 for cx, cy, w, h in boxes)
    widths_px = [max(w, h) * spec.image_size for _, _, w, h in boxes]
    assert min(widths_px) < 12  # gone at imgsz 160
    assert max(widths_px) > 120


def test_killed_build_leaves_nothing_and_next_build_succeeds(tmp_path, monkeypatch):
    real_render = shapes.render_image
    calls = []

    def render_then_die(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_render(*args)

    monkeypatch.setattr(shapes, "render_image", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        shapes.build_shapes(TINY, root=tmp_path)
    assert not (tmp_path / TINY.key).exists()
    assert not list(tmp_path.glob(f".{TINY.key}.tmp-*"))

    monkeypatch.setattr(shapes, "render_image", real_render)
    assert shapes.build_shapes(TINY, root=tmp_path).exists()


def test_stale_temporary_folder_of_a_sigkilled_build_is_swept(tmp_path):
    stale = tmp_path / f".{TINY.key}.tmp-99999"
    (stale / "images").mkdir(parents=True)
    shapes.build_shapes(TINY, root=tmp_path)
    assert not stale.exists()
    assert (tmp_path / TINY.key / "data.yaml").exists()


def test_existing_dataset_is_not_rebuilt(tmp_path, monkeypatch):
    shapes.build_shapes(TINY, root=tmp_path)
    monkeypatch.setattr(shapes, "render_image", lambda *args: pytest.fail("rebuilt a cached dataset"))
    assert shapes.build_shapes(TINY, root=tmp_path).exists()


# -------------------------------------------------------------------------------------------- checks


def _user_dataset(root: Path, labels: bool = True) -> Path:
    """A minimal dataset in YOLO layout (file contents do not matter to the checks)."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for index in range(2):
            (root / "images" / split / f"{index}.jpg").write_bytes(b"jpg")
            if labels:
                (root / "labels" / split / f"{index}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": ["cat"]}))
    return yaml_path


def _check_fails(path, *words: str) -> str:
    with pytest.raises(DataError) as caught:
        datasets.check_dataset(path)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_valid_dataset_gives_resolved_absolute_copy(tmp_path, monkeypatch):
    yaml_path = _user_dataset(tmp_path / "ds")
    yaml_path.write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                         "names": {0: "cat"}, "kpt_shape": [17, 3]}))  # fmt: skip
    monkeypatch.chdir(tmp_path)  # "." does not hold images/ here: resolved from the YAML's folder instead
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "cache"))

    resolved = yaml.safe_load(datasets.check_dataset(yaml_path).read_text())
    assert resolved["path"] == str(tmp_path / "ds")
    assert resolved["train"] == str(tmp_path / "ds" / "images" / "train")
    assert resolved["val"] == str(tmp_path / "ds" / "images" / "val")
    assert resolved["names"] == {0: "cat"} and resolved["kpt_shape"] == [17, 3]


def test_relative_path_prefers_current_folder_like_ultralytics(tmp_path, monkeypatch):
    _user_dataset(tmp_path / "work" / "ds")
    (tmp_path / "yamls").mkdir()
    yaml_path = tmp_path / "yamls" / "mine.yaml"
    yaml_path.write_text(yaml.safe_dump({"path": "ds", "train": "images/train", "val": "images/val", "names": ["a"]}))
    monkeypatch.chdir(tmp_path / "work")

    resolved_path = datasets.check_dataset(yaml_path, out_dir=tmp_path / "out")
    assert resolved_path == tmp_path / "out" / "mine.yaml"
    assert yaml.safe_load(resolved_path.read_text())["val"] == str(tmp_path / "work" / "ds" / "images" / "val")

    _user_dataset(tmp_path / "yamls" / "ds")  # both hold the images: the current folder wins, as in Ultralytics
    resolved = yaml.safe_load(datasets.check_dataset(yaml_path, out_dir=tmp_path / "out").read_text())
    assert resolved["path"] == str(tmp_path / "work" / "ds")


def test_list_file_entries_relative_to_the_list(tmp_path):
    yaml_path = _user_dataset(tmp_path)
    (tmp_path / "train.txt").write_text("./images/train/0.jpg\n./images/train/1.jpg\n")
    yaml_path.write_text(yaml.safe_dump({"train": "train.txt", "val": ["images/val"], "names": ["cat"]}))

    resolved = yaml.safe_load(datasets.check_dataset(yaml_path, out_dir=tmp_path / "out").read_text())
    assert resolved["train"] == str(tmp_path / "train.txt")
    assert resolved["val"] == [str(tmp_path / "images" / "val")]


def test_missing_yaml(tmp_path):
    _check_fails(tmp_path / "nope.yaml", "nope.yaml", "does not exist", "--data")


def test_folder_instead_of_yaml(tmp_path):
    _check_fails(tmp_path, "is a folder")


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: images/train\nval: [images/val\nnames: {0: cat}\n")
    _check_fails(bad, "not valid YAML", "line")


def test_yaml_that_is_not_a_mapping(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- images/train\n- images/val\n")
    _check_fails(listed, "not a mapping", "train")


@pytest.mark.parametrize("key", ["train", "val", "names"])
def test_missing_required_key(tmp_path, key):
    yaml_path = _user_dataset(tmp_path)
    content = yaml.safe_load(yaml_path.read_text())
    del content[key]
    yaml_path.write_text(yaml.safe_dump(content))
    _check_fails(yaml_path, f"has no `{key}`", f"`{key}:")


def test_missing_image_folder(tmp_path):
    yaml_path = _user_dataset(tmp_path)
    yaml_path.write_text(yaml.safe_dump({"train": "images/train", "val": "images/valid", "names": ["cat"]}))
    _check_fails(yaml_path, "`val` images", "missing", str(tmp_path / "images" / "valid"))


def test_missing_dataset_root(tmp_path):
    yaml_path = _user_dataset(tmp_path)
    yaml_path.write_text(yaml.safe_dump({"path": "../elsewhere", "train": "images/train", "val": "images/val",
                                         "names": ["cat"]}))  # fmt: skip
    _check_fails(yaml_path, "`path: ../elsewhere`", "neither")


def test_folder_without_images(tmp_path):
    yaml_path = _user_dataset(tmp_path)
    for image in (tmp_path / "images" / "train").iterdir():
        image.rename(image.with_suffix(".json"))
    _check_fails(yaml_path, "No images found", "`train`")


def test_images_without_labels(tmp_path):
    yaml_path = _user_dataset(tmp_path, labels=False)
    _check_fails(yaml_path, "label file", str(tmp_path / "labels" / "train" / "0.txt"))


def test_check_passes_on_the_embedded_layout(tmp_path):
    data_yaml = shapes.build_shapes(TINY, root=tmp_path)
    resolved = yaml.safe_load(datasets.check_dataset(data_yaml, out_dir=tmp_path / "out").read_text())
    assert resolved["train"] == str(data_yaml.parent / "images" / "train")


# ------------------------------------------------------------------------------------- base checkpoint


@pytest.mark.integration
def test_base_checkpoint_detects_shapes_on_the_embedded_val_split():
    """Builds the base checkpoint if the cache lacks it (a few minutes on 2 CPU cores), then validates it."""
    weights, data_yaml = base_model.base_checkpoint(), shapes.embedded_dataset()
    code = (
        "import json, sys\n"
        "from ultralytics import YOLO\n"
        "from tuner import offline\n"
        "offline.settle()\n"
        "model = YOLO(sys.argv[1])\n"
        "assert model.ckpt.get('optimizer') is None, 'optimizer state left in the checkpoint'\n"
        "metrics = model.val(data=sys.argv[2], imgsz=320, batch=16, device='cpu', workers=0, plots=False)\n"
        "print('RESULT', json.dumps(metrics.box.map))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(weights), str(data_yaml)],
        env=offline.child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    assert json.loads(result[len("RESULT ") :]) > 0.1


def test_each_base_model_has_its_own_cached_checkpoint(tmp_path, monkeypatch):
    """yolov8n's keeps the name it always had (no rebuild after an upgrade); yolov8s's is its own file, and a study on
    the embedded dataset asking for yolov8s.yaml starts from it."""
    from tuner.study import inputs

    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path))
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in (f"{base_model.BASE_RECIPE.key}.pt", f"{base_model.BASE_RECIPE.key}-yolov8s.pt"):
        (weights / name).write_bytes(b"cached")  # found in the cache: nothing is built
    small, large = base_model.base_checkpoint(), base_model.base_checkpoint(model="yolov8s.yaml")
    assert small.name == f"{base_model.BASE_RECIPE.key}.pt" and large.name.endswith("-yolov8s.pt")
    assert inputs.model("yolov8s.yaml", embedded=True) == large
    assert inputs.model("yolov8n.yaml", embedded=True) == small
    assert inputs.model("yolov8s.yaml", embedded=False) == "yolov8s.yaml"  # on the user's data: as asked


def test_the_base_build_runs_on_the_recipes_threads_whatever_the_parent_process_says(monkeypatch):
    """From scratch, another thread count trains other weights (1 thread and 2 threads: 0.239 and 0.447 mAP50-95 on
    the base's val split, each reproducible); a parent that imported Ultralytics has OMP_NUM_THREADS=1, and a machine
    with more cores would use them: the build takes the recipe's count, and the cache key names it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert base_model._base_env()["OMP_NUM_THREADS"] == str(base_model.BASE_RECIPE.threads) == "2"
    assert base_model.BASE_RECIPE.key.endswith("-t2")
