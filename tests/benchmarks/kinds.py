"""Benchmark datasets of kinds other than the embedded shapes, drawn from a seed (deterministic, no downloads).

Issue 18's benchmarks must hold on data unlike the embedded shapes, with base weights pretrained at another
resolution than the data's (tuner's base checkpoint learnt shapes at imgsz 256; these images are 480 and 640 px):

- `thin`: thin elongated objects on texture, like road cracks: long straight cracks, branching (polyline) cracks
  and compact patches, on a multi-scale noise texture with stains; 480 px images, 1-8 objects each. Boxes are
  long and thin, so a box's short side is a few pixels while its long side spans a good part of the image.
- `dense`: dense small objects, like crowns in an aerial tile: 15-60 blobs of three kinds (dots, rings, squares)
  of 8-28 px on 640 px images with a mottled ground; objects touch, and at imgsz 160 most shrink below 4 px.

    python tests/benchmarks/kinds.py thin /tmp/kinds/thin --train 96 --val 32     # prints the data.yaml's path
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

THIN_NAMES = ("crack", "branch", "patch")
DENSE_NAMES = ("dot", "ring", "square")


@dataclass(frozen=True)
class Kind:
    name: str
    image_size: int
    names: tuple[str, ...]


KINDS = {"thin": Kind("thin", 480, THIN_NAMES), "dense": Kind("dense", 640, DENSE_NAMES)}


def base_fingerprint(weights: Path | str) -> str:
    """The first 12 hex digits of a sha256 over a checkpoint's model tensors (names, shapes, values), not the file: a
    .pt also holds its save date. Benchmark figures on these kinds move with the base checkpoint, and its build is
    not reproducible from one machine to another (the same recipe and seed trained other weights on 2026-12-05), so
    each benchmark prints the fingerprint of the one it used."""
    import hashlib

    import torch

    checkpoint = torch.load(str(weights), map_location="cpu", weights_only=False)
    model = checkpoint.get("ema") or checkpoint["model"]
    digest = hashlib.sha256()
    for name, tensor in sorted(model.float().state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def describe_base(weights: Path | str) -> str:
    """The line a benchmark prints under its figures: which base checkpoint they are of."""
    return f"base checkpoint {Path(weights).name}, fingerprint {base_fingerprint(weights)}"


def build(kind: str, out: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Write `kind`'s dataset (YOLO layout) under `out` unless its data.yaml is there; return the data.yaml."""
    import cv2

    spec = KINDS[kind]
    data_yaml = out / "data.yaml"
    if data_yaml.exists():
        return data_yaml
    for split, count in (("train", n_train), ("val", n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, index, len(kind)])
            image, boxes = (_thin if kind == "thin" else _dense)(rng, spec.image_size)
            stem = f"{split}_{index:05d}"
            cv2.imwrite(str(out / "images" / split / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            lines = [f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for cls, cx, cy, w, h in boxes]
            (out / "labels" / split / f"{stem}.txt").write_text("".join(lines))
    data = {"path": str(out.resolve()), "train": "images/train", "val": "images/val", "names": dict(enumerate(spec.names))}
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_yaml


def _texture(rng: np.random.Generator, size: int, base: float, contrast: float) -> np.ndarray:
    """Grey multi-scale noise (asphalt, ground) in BGR float."""
    import cv2

    image = np.full((size, size), base, np.float32)
    for cells, weight in ((4, 1.0), (16, 0.5), (64, 0.3), (size // 2, 0.25)):
        noise = rng.normal(0, 1, (cells, cells)).astype(np.float32)
        image += contrast * weight * cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    tint = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    return image[..., None] * tint


def _box(points: np.ndarray, size: int, pad: float) -> tuple[float, float, float, float] | None:
    low = np.clip(points.min(0) - pad, 0, size)
    high = np.clip(points.max(0) + pad, 0, size)
    w, h = high - low
    if w < 2 or h < 2:
        return None
    return float((low[0] + high[0]) / 2 / size), float((low[1] + high[1]) / 2 / size), float(w / size), float(h / size)


def _thin(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple]]:
    import cv2

    image = _texture(rng, size, rng.uniform(90, 150), rng.uniform(8, 18))
    for _ in range(int(rng.integers(0, 4))):  # stains: dark soft blobs that are not objects
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(10, 60, 2))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, (60, 60, 60), -1, cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), 1.0)
    boxes = []
    for _ in range(int(rng.integers(1, 9))):
        cls = int(rng.choice(3, p=(0.45, 0.35, 0.2)))
        darkness = float(rng.uniform(25, 60))
        colour = tuple(float(max(0.0, c - 3 * darkness)) for c in image[size // 2, size // 2])
        if cls == 0:  # a straight crack, 2-4 px wide, 60-360 px long, along or across the road (within 12 degrees)
            length, angle = rng.uniform(60, 360), rng.choice((0.0, np.pi / 2)) + rng.normal(0, 0.1)
            start = rng.uniform(0, size, 2)
            points = np.array([start, start + length * np.array([np.cos(angle), np.sin(angle)])])
            width = int(rng.integers(2, 5))
        elif cls == 1:  # a branching crack: a random walk of 5-9 segments
            steps = int(rng.integers(5, 10))
            heading = rng.uniform(0, 2 * np.pi)
            points = [rng.uniform(size * 0.1, size * 0.9, 2)]
            for _ in range(steps):
                heading += rng.normal(0, 0.6)
                points.append(points[-1] + rng.uniform(15, 40) * np.array([np.cos(heading), np.sin(heading)]))
            points = np.array(points)
            width = int(rng.integers(1, 4))
        else:  # a patch: a filled rotated rectangle of repair, lighter than the road
            w, h = rng.uniform(30, 110, 2)
            rect = ((float(rng.uniform(0, size)), float(rng.uniform(0, size))), (float(w), float(h)), float(rng.uniform(0, 90)))
            points = cv2.boxPoints(rect)
            light = tuple(float(min(255.0, c + 40)) for c in image[size // 2, size // 2])
            cv2.fillPoly(image, [np.round(points).astype(np.int32)], light, cv2.LINE_AA)
            width = 0
        if width:
            cv2.polylines(image, [np.round(points).astype(np.int32)], False, colour, width, cv2.LINE_AA)
        box = _box(points, size, pad=width / 2 + 1)
        if box is not None:
            boxes.append((cls, *box))
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), boxes


def _dense(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple]]:
    import cv2

    image = _texture(rng, size, rng.uniform(70, 120), rng.uniform(10, 20))
    image[..., 1] += 25  # greenish ground
    boxes, taken = [], []
    for _ in range(int(rng.integers(15, 61))):
        side = float(np.exp(rng.uniform(np.log(8), np.log(28))))
        centre = rng.uniform(side, size - side, 2)
        if any(np.abs(centre - other).max() < (side + other_side) / 2 * 0.8 for other, other_side in taken):
            continue
        taken.append((centre, side))
        cls = int(rng.integers(3))
        colour = tuple(float(c) for c in rng.uniform(20, 235, 3))
        c = tuple(int(round(v)) for v in centre)
        r = max(2, int(round(side / 2)))
        if cls == 0:
            cv2.circle(image, c, r, colour, -1, cv2.LINE_AA)
        elif cls == 1:
            cv2.circle(image, c, r, colour, max(1, r // 3), cv2.LINE_AA)
        else:
            cv2.rectangle(image, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), colour, -1, cv2.LINE_AA)
        box = _box(np.array([centre - r, centre + r]), size, pad=0.5)
        if box is not None:
            boxes.append((cls, *box))
    image = cv2.GaussianBlur(image, (0, 0), 0.7) + rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), boxes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build(args.kind, args.out, args.train, args.val, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
