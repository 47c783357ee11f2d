"""The embedded synthetic shapes dataset: four classes of shapes drawn with numpy and OpenCV from a seed.

The same seed gives the same files on any machine; a `ShapesSpec` names what a dataset holds, and its `key`
names its folder in the cache (see tuner.data.cache). Two styles: "probe" images, the embedded dataset that
studies run on, and "base" images, the separate data the base checkpoint learns shapes from
(tuner.data.base_model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from tuner import offline
from tuner.data import cache

CLASS_NAMES = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class ShapesSpec:
    """What a synthetic shapes dataset holds; its `key` names its cache folder."""

    seed: int
    n_train: int
    n_val: int
    image_size: int = 512
    style: str = "probe"  # "probe": gradient, blotches, noise, line clutter; "base": flat tiles, larger shapes

    @property
    def key(self) -> str:
        version = cache.GENERATOR_VERSION
        return f"shapes-v{version}-{self.style}-s{self.seed}-{self.n_train}x{self.n_val}-{self.image_size}"


EMBEDDED = ShapesSpec(seed=0, n_train=96, n_val=96)  # 48 val images left the seed spread 3x wider


def embedded_dataset() -> Path:
    """The data.yaml of the embedded shapes dataset, generated into the cache on first use."""
    return build_shapes(EMBEDDED)


def build_shapes(spec: ShapesSpec, root: Path | None = None) -> Path:
    """Generate `spec` under `root` (default: the cache's datasets/ folder) unless it is there; return its data.yaml."""
    folder = (root or offline.cache_dir() / "datasets") / spec.key
    if not folder.exists():
        cache.build_atomically(folder, lambda tmp: _write_shapes(spec, tmp, final=folder))
        if root is None:
            cache.remove_older_versions(folder.parent, "shapes")
    return folder / "data.yaml"


def _write_shapes(spec: ShapesSpec, out: Path, final: Path) -> None:
    import cv2

    for split, count in (("train", spec.n_train), ("val", spec.n_val)):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for index in range(count):
            rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1, index])
            image, boxes = render_image(rng, spec.image_size, spec.style)
            stem = f"{split}_{index:04d}"
            cv2.imwrite(str(out / "images" / split / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            lines = [f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for cls, cx, cy, w, h in boxes]
            (out / "labels" / split / f"{stem}.txt").write_text("".join(lines))
    data = {"path": str(final), "train": "images/train", "val": "images/val", "names": dict(enumerate(CLASS_NAMES))}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def render_image(rng: np.random.Generator, size: int, style: str) -> tuple[np.ndarray, list[tuple]]:
    """One BGR image and its YOLO boxes (class, cx, cy, w, h normalised) drawn from `rng`.

    "probe" images have gradient backgrounds with blotches, many lines and noise, and many tiny shapes. "base"
    images have flat tiled backgrounds, a few thin lines and fewer tiny shapes: yolov8n learns them from scratch in
    a few epochs (on images like the "probe" ones it is still near mAP 0.1 after 11 epochs).
    """
    image = _background(rng, size, style)
    _clutter(rng, image, style)
    taken: list[tuple[float, float, float, float]] = []
    boxes = []
    tiers = (0.45, 0.35, 0.20) if style == "probe" else (0.2, 0.5, 0.3)
    for _ in range(int(rng.integers(4, 11) if style == "probe" else rng.integers(6, 15))):
        placed = _place(rng, size, taken, tiers)
        if placed is None:
            continue
        cls = int(rng.integers(len(CLASS_NAMES)))
        x0, y0, x1, y1 = _draw_shape(rng, image, cls, placed)
        taken.append(placed)
        boxes.append((cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))
    image += rng.normal(0.0, 6.0 if style == "probe" else 3.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), boxes


def _object_side(rng: np.random.Generator, size: int, tiers: tuple[float, float, float]) -> float:
    """Side of an object's box, from tiers small / medium / large (at 512 px): small ones vanish at imgsz 160,
    large ones fill a good part of the image."""
    low, high = {0: (6, 18), 1: (18, 64), 2: (64, 240)}[int(rng.choice(3, p=tiers))]
    return float(np.exp(rng.uniform(np.log(low), np.log(high)))) * size / 512


def _place(rng: np.random.Generator, size: int, taken: list, tiers: tuple) -> tuple[float, ...] | None:
    """A free square slot for the next object, or None after a few tries."""
    for _ in range(20):
        side = _object_side(rng, size, tiers)
        x0, y0 = rng.uniform(0, size - side, 2)
        slot = (float(x0), float(y0), float(x0 + side), float(y0 + side))
        if all(_overlap(slot, other) < 0.1 for other in taken):
            return slot
    return None


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection over the smaller box's area."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter_w * inter_h / smaller


def _background(rng: np.random.Generator, size: int, style: str) -> np.ndarray:
    import cv2

    if style == "base":  # one to four flat tiles: shapes are learnt from scratch in a few epochs on these
        rows, cols = rng.integers(1, 3, 2)
        grid = rng.uniform(0, 255, (rows, cols, 3)).astype(np.float32)
        return cv2.resize(grid, (size, size), interpolation=cv2.INTER_NEAREST)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    mix = (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]) / 2 + 0.5
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = start + mix[..., None] * (end - start)
    blotches = cv2.resize(rng.normal(0, 30, (6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return image + blotches


def _clutter(rng: np.random.Generator, image: np.ndarray, style: str) -> None:
    """Lines and soft blobs that are not objects; the base style gets only a few thin lines."""
    import cv2

    size = image.shape[0]
    for _ in range(int(rng.integers(5, 25) if style == "probe" else rng.integers(0, 6))):
        start, end = rng.integers(0, size, (2, 2))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        thickness = int(rng.integers(1, 3)) if style == "probe" else 1
        cv2.line(image, tuple(int(v) for v in start), tuple(int(v) for v in end), colour, thickness, cv2.LINE_AA)
    if style != "probe":
        return
    for _ in range(int(rng.integers(0, 4))):
        small = np.zeros((size // 8, size // 8), np.float32)  # drawn and blurred at 1/8 scale: cheap
        centre = tuple(int(v) for v in rng.integers(0, size // 8, 2))
        axes = tuple(int(v) for v in rng.integers(size // 160 + 1, size // 48 + 2, 2))
        cv2.ellipse(small, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        small = cv2.GaussianBlur(small, (0, 0), float(max(axes)) / 2)
        blob = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)[..., None]
        image += blob * (rng.uniform(0, 255, 3).astype(np.float32) - image) * 0.7


def _shape_points(rng: np.random.Generator, cls: int) -> np.ndarray:
    """Unit outline of class `cls` around (0, 0), randomly rotated and stretched."""
    name = CLASS_NAMES[cls]
    if name == "circle":
        theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        points = np.stack([np.cos(theta), np.sin(theta)], 1)
    elif name == "square":
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    elif name == "triangle":
        theta = np.pi / 2 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        points = np.stack([np.cos(theta), np.sin(theta)], 1)
    else:  # cross: a plus sign with arms a third as thick as it is long
        arm = 1 / 3
        points = np.array(
            [[-arm, -1], [arm, -1], [arm, -arm], [1, -arm], [1, arm], [arm, arm],
             [arm, 1], [-arm, 1], [-arm, arm], [-1, arm], [-1, -arm], [-arm, -arm]], float,
        )  # fmt: skip
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    stretch = np.array([1.0, rng.uniform(0.75, 1.33)])
    return points @ rotation.T * stretch


def _draw_shape(rng: np.random.Generator, image: np.ndarray, cls: int, slot: tuple) -> tuple[float, ...]:
    """Fill shape `cls` into `slot` in a colour that stands out there; return its tight box."""
    import cv2

    x0, y0, x1, y1 = slot
    points = _shape_points(rng, cls)
    low, high = points.min(0), points.max(0)
    scale = (x1 - x0) / (high - low).max()
    points = (points - (low + high) / 2) * scale + ((x0 + x1) / 2, (y0 + y1) / 2)
    region = image[int(y0) : int(np.ceil(y1)) + 1, int(x0) : int(np.ceil(x1)) + 1].reshape(-1, 3).mean(0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(10):
        if np.abs(colour - region).sum() > 150:
            break
        colour = rng.uniform(0, 255, 3)
    fixed = np.round(points * 16).astype(np.int32)  # 4 fractional bits: sub-pixel outlines for small shapes
    cv2.fillPoly(image, [fixed], tuple(float(c) for c in colour), cv2.LINE_AA, shift=4)
    if rng.uniform() < 0.3:
        edge = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.polylines(image, [fixed], True, edge, 1, cv2.LINE_AA, shift=4)
    size = image.shape[0]
    x_low, y_low = np.clip(points.min(0), 0, size)
    x_high, y_high = np.clip(points.max(0), 0, size)
    return float(x_low), float(y_low), float(x_high), float(y_high)
