"""The benchmarks' datasets of other kinds (tests/benchmarks/kinds.py): deterministic, valid YOLO labels, and of
the kind they claim (thin boxes; many small boxes)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kinds  # noqa: E402


def _labels(data_yaml: Path) -> list[np.ndarray]:
    files = sorted((data_yaml.parent / "labels" / "train").glob("*.txt"))
    return [np.loadtxt(f, ndmin=2) for f in files if f.read_text().strip()]


@pytest.mark.parametrize("kind", ["thin", "dense"])
def test_a_kind_is_the_same_from_its_seed_and_its_labels_are_valid(tmp_path, kind):
    first = kinds.build(kind, tmp_path / "a", 4, 2)
    again = kinds.build(kind, tmp_path / "b", 4, 2)
    for image in sorted((first.parent / "images" / "train").glob("*.jpg")):
        assert image.read_bytes() == (again.parent / "images" / "train" / image.name).read_bytes()
    boxes = np.concatenate(_labels(first))
    assert set(boxes[:, 0].astype(int)) <= set(range(len(kinds.KINDS[kind].names)))
    assert (boxes[:, 1:] >= 0).all() and (boxes[:, 1:] <= 1).all()
    assert len(list((first.parent / "images" / "val").glob("*.jpg"))) == 2


def test_thin_boxes_are_elongated_and_dense_ones_many_and_small(tmp_path):
    thin = np.concatenate(_labels(kinds.build("thin", tmp_path / "thin", 8, 1)))
    cracks = thin[thin[:, 0] == 0]
    assert np.median(np.maximum(cracks[:, 3], cracks[:, 4]) / np.minimum(cracks[:, 3], cracks[:, 4])) > 3
    per_image = _labels(kinds.build("dense", tmp_path / "dense", 8, 1))
    assert np.median([len(boxes) for boxes in per_image]) >= 10
    assert np.median(np.concatenate(per_image)[:, 3] * 640) < 30  # px on the 640 px image
