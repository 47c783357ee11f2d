"""The embedded synthetic shapes dataset, the base checkpoint trained once on related data, and checks of a
user's dataset YAML.

Cache layout under `offline.cache_dir()`:

    datasets/shapes-v2-probe-s0-96x96-512/   the embedded dataset: data.yaml, images/{train,val}, labels/{train,val}
    datasets/shapes-v2-base-s1-...           separate data the base checkpoint is trained on (never the embedded val)
    weights/base-v2-....pt                   yolov8n trained from yolov8n.yaml on the base data, optimizer stripped
    weights/base-v2-....log                  the log of the process that built it
    resolved/<stem>-<hash>.yaml              checked copies of users' dataset YAMLs with absolute paths

Everything is built under a file lock into a temporary name and moved into place with `os.replace`, so a killed
build leaves no half dataset or checkpoint, and two processes never build the same thing at once. Once a
current version is built, the cache's entries of older versions (`shapes-v1-*`, `base-v1-*`) are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import yaml

from tuner import offline
from tuner.errors import DataError, TunerError

GENERATOR_VERSION = 2  # bump when the rendering or _train_base changes: every cache key changes with it
CLASS_NAMES = ("circle", "square", "triangle", "cross")
IMAGE_SUFFIXES = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic", "avif", "jp2"}


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
        return f"shapes-v{GENERATOR_VERSION}-{self.style}-s{self.seed}-{self.n_train}x{self.n_val}-{self.image_size}"


EMBEDDED = ShapesSpec(seed=0, n_train=96, n_val=96)  # 48 val images left the seed spread 3x wider
BASE_DATA = ShapesSpec(seed=1, n_train=192, n_val=16, style="base")


@dataclass(frozen=True)
class BaseRecipe:
    """How the base checkpoint is trained from `yolov8n.yaml` on `BASE_DATA`."""

    epochs: int = 14
    imgsz: int = 256
    batch: int = 8
    optimizer: str = "AdamW"
    lr0: float = 0.002
    seed: int = 0
    minutes: int = 2  # what the one-line notice promises: 2 min measured on 2 idle CPU cores, 4-6 min on busy ones

    @property
    def key(self) -> str:
        recipe = f"e{self.epochs}-i{self.imgsz}-b{self.batch}-{self.optimizer}-{self.lr0:g}"
        return f"base-v{GENERATOR_VERSION}-{BASE_DATA.key}-{recipe}"


BASE_RECIPE = BaseRecipe()

# The probe defaults (tuner.config.DEFAULTS["probe"]) were measured with tests/benchmarks/calibrate_probe.py on the
# embedded dataset (2 CPU cores): 160 -> 352 moves mAP50-95 from ~0.07 to ~0.18-0.19 while two seeds of one config
# differ by ~0.004-0.010. AdamW at 0.001 or SGD at 0.01 first knock the base model down (epoch 1 at 0.01-0.1) and
# scatter the result.


# ------------------------------------------------------------------------------------------ atomic builds


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<target>.lock` while deciding whether to build `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Build `target` (a file or folder) once: under a lock, into a temporary sibling, then `os.replace`."""
    with _build_lock(target):
        if target.exists():
            return target
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
    return target


# ------------------------------------------------------------------------------------ synthetic shapes


def embedded_dataset() -> Path:
    """The data.yaml of the embedded shapes dataset, generated into the cache on first use."""
    return build_shapes(EMBEDDED)


def build_shapes(spec: ShapesSpec, root: Path | None = None) -> Path:
    """Generate `spec` under `root` (default: the cache's datasets/ folder) unless it is there; return its data.yaml."""
    folder = (root or offline.cache_dir() / "datasets") / spec.key
    if not folder.exists():
        _build_atomically(folder, lambda tmp: _write_shapes(spec, tmp, final=folder))
        if root is None:
            remove_older_versions(folder.parent, "shapes")
    return folder / "data.yaml"


def remove_older_versions(folder: Path, prefix: str) -> list[Path]:
    """Delete `<prefix>-vN-*` entries of `folder` with N below GENERATOR_VERSION, once a current one is built.

    An older tuner's data and base weights are never used again (every key names its version), and
    each version is a few hundred MB; entries of newer versions are left to the tuner that made them.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}-v(\d+)-")
    removed = []
    for entry in sorted(folder.iterdir()):
        match = pattern.match(entry.name)
        if match is None or int(match.group(1)) >= GENERATOR_VERSION:
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError:  # in use, or not ours to delete: it only costs disk space
            continue
        removed.append(entry)
    return removed


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


# ------------------------------------------------------------------------------------------ base checkpoint


def base_checkpoint(device: str = "cpu", notify: Callable[[str], None] | None = None) -> Path:
    """yolov8n trained once from `yolov8n.yaml` on `BASE_DATA`, so that short probes on the embedded dataset
    fine-tune from a model that already detects shapes. Built in a child process on first use, then cached.

    `notify` gets the one-line notice printed before a build (default: stderr).
    """
    target = offline.cache_dir() / "weights" / f"{BASE_RECIPE.key}.pt"
    if target.exists():
        return target
    data_yaml = build_shapes(BASE_DATA)
    log_path = target.with_suffix(".log")

    def build(tmp: Path) -> None:
        (notify or _print_stderr)(
            f"Building the base checkpoint once (about {BASE_RECIPE.minutes} minutes on 2 CPU cores); log: {log_path}"
        )
        project = tmp.with_name(f"{tmp.name}-project")  # matches the stale pattern, so a killed build is swept
        command = [sys.executable, "-m", "tuner.data", "base", "--data", str(data_yaml)]
        command += ["--project", str(project), "--device", device]
        try:
            with open(log_path, "w") as log:
                child = subprocess.run(command, env=_base_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
            weights = project / "base" / "weights" / "last.pt"
            if child.returncode != 0 or not weights.exists():
                raise TunerError(
                    f"Building the base checkpoint failed (exit status {child.returncode}); see {log_path}, "
                    "or pass --model with weights of your own."
                )
            shutil.copyfile(weights, tmp)
        finally:
            shutil.rmtree(project, ignore_errors=True)

    _build_atomically(target, build)
    remove_older_versions(target.parent, "base")
    return target


def _print_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _base_env() -> dict[str, str]:
    """The child's environment. The one-off build uses every core (or the user's OMP_NUM_THREADS): left alone,
    Ultralytics sets OMP_NUM_THREADS=1 and its select_device() sets torch to cpu_count - 1 threads."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(min(len(os.sched_getaffinity(0)), 16))
    return offline.child_env({"OMP_NUM_THREADS": threads})


def _train_base(data_yaml: Path, project: Path, device: str) -> None:
    """Inside the child: train yolov8n from its YAML. Ultralytics strips the optimizer from last.pt at the end."""
    import torch
    from ultralytics import YOLO

    offline.settle()
    recipe = BASE_RECIPE
    model = YOLO("yolov8n.yaml")
    threads = int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    # Ultralytics' select_device() sets torch to cpu_count - 1 threads (1 on 2 cores); undo that right after it.
    model.add_callback("on_pretrain_routine_start", lambda trainer: torch.set_num_threads(threads))
    model.train(
        data=str(data_yaml),
        epochs=recipe.epochs,
        imgsz=recipe.imgsz,
        batch=recipe.batch,
        nbs=recipe.batch,  # one optimizer step per batch: from scratch, steps matter more than batch size
        optimizer=recipe.optimizer,
        lr0=recipe.lr0,
        warmup_epochs=1,
        warmup_bias_lr=0.0,  # the default 0.1 is meant for SGD; Ultralytics' own AdamW choice sets 0 as well
        close_mosaic=max(recipe.epochs // 4, 1),
        seed=recipe.seed,
        deterministic=True,
        plots=False,
        save=True,
        workers=0,
        device=device,
        amp=False,
        exist_ok=True,
        project=str(project),
        name="base",
        verbose=False,
    )


# ------------------------------------------------------------------------------------- user dataset checks


def check_dataset(path: str | Path, out_dir: Path | None = None) -> Path:
    """Check a user's Ultralytics dataset YAML before any training; return the path of a resolved copy.

    The copy keeps every key of the original, with `path` and the `train`/`val`/`test` entries made absolute, so
    Ultralytics has nothing left to resolve (nor any reason to download). It is written atomically to
    `out_dir/<stem>.yaml`, by default to the cache's resolved/ folder under a name that includes a hash of the
    YAML's absolute path. Raises DataError with one line naming the problem and the fix.

    A relative `path:` is looked up from the current folder first (as Ultralytics does), then from the YAML's
    folder, preferring the one that holds the `train` images; without `path:` the YAML's folder is the root.
    """
    yaml_path = Path(path).expanduser()
    if not yaml_path.exists():
        raise DataError(f"The dataset YAML {yaml_path} does not exist; pass --data with the path of a dataset YAML.")
    if yaml_path.is_dir():
        raise DataError(f"--data {yaml_path} is a folder; pass the dataset YAML inside it instead.")
    yaml_path = yaml_path.resolve()
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise DataError(f"The dataset YAML {yaml_path} is not valid YAML{line}; fix its syntax.") from None
    if not isinstance(data, dict):
        raise DataError(
            f"The dataset YAML {yaml_path} holds a {type(data).__name__}, not a mapping; "
            "it needs keys such as `train: images/train`, `val: images/val` and `names: {0: cat}`."
        )
    for key, example in (("train", "images/train"), ("val", "images/val"), ("names", "{0: cat, 1: dog}")):
        if data.get(key) in (None, "", [], {}):
            raise DataError(f"The dataset YAML {yaml_path} has no `{key}`; add e.g. `{key}: {example}`.")
    if not isinstance(data["names"], (list, dict)):
        raise DataError(f"`names` in {yaml_path} must be a list or a mapping, e.g. `names: {{0: cat, 1: dog}}`.")
    root = _dataset_root(data.get("path"), yaml_path, data["train"])
    resolved = dict(data, path=str(root))
    for split in ("train", "val", "test"):
        if data.get(split) in (None, ""):
            continue
        entries = _split_entries(data[split], split, yaml_path, root)
        resolved[split] = [str(entry) for entry in entries] if isinstance(data[split], list) else str(entries[0])
        if split != "test":
            images = _split_images(entries, split, yaml_path)
            if not any(os.path.exists(label) for label in _label_paths(images)):
                raise DataError(
                    f"None of the {len(images)} `{split}` images of {yaml_path} has a label file "
                    f"(looked for e.g. {_label_paths(images[:1])[0]}); YOLO labels go in a `labels` folder beside "
                    "`images`, one .txt per image."
                )
    return _write_resolved(resolved, yaml_path, out_dir)


def _dataset_root(value: object, yaml_path: Path, train: object) -> Path:
    """The dataset root: `path:` from the current folder (as Ultralytics), else from the YAML's folder. Of the two,
    the first that holds the first `train` entry wins, so `path: .` works from any current folder."""
    if value in (None, ""):
        return yaml_path.parent
    if not isinstance(value, str):
        raise DataError(f"`path` in {yaml_path} must be a folder name, not {value!r}.")
    given = Path(value).expanduser()
    if given.is_absolute():
        if not given.is_dir():
            raise DataError(f"`path: {value}` in {yaml_path} is not a folder; fix `path:` to the dataset's root.")
        return given
    candidates = [(base / given).resolve() for base in (Path.cwd(), yaml_path.parent) if (base / given).is_dir()]
    if not candidates:
        raise DataError(
            f"`path: {value}` in {yaml_path} was found neither in the current folder nor beside the YAML; "
            "make it absolute or relative to the YAML's folder."
        )
    first_train = (train if isinstance(train, list) else [train])[0]
    holding = [root for root in candidates if isinstance(first_train, str) and (root / first_train).exists()]
    return (holding or candidates)[0]


def _split_entries(value: object, split: str, yaml_path: Path, root: Path) -> list[Path]:
    """The absolute folders or list files of one split; Ultralytics' '../' fallback included."""
    raw = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) and item for item in raw):
        raise DataError(f"`{split}` in {yaml_path} must be a path or a list of paths, not {value!r}.")
    entries = []
    for item in raw:
        entry = (root / item).resolve()
        if not entry.exists() and item.startswith("../"):
            entry = (root / item[3:]).resolve()
        if not entry.exists():
            raise DataError(
                f"The `{split}` images of {yaml_path} are missing: {entry} does not exist; "
                f"fix `{split}:` (relative to `path:`, here {root})."
            )
        entries.append(entry)
    return entries


def _split_images(entries: list[Path], split: str, yaml_path: Path) -> list[str]:
    """Image files of one split, found the way Ultralytics finds them (folders recursively, or list files)."""
    import glob

    images = []
    for entry in entries:
        if entry.is_dir():
            found = glob.glob(os.path.join(glob.escape(str(entry)), "**", "*.*"), recursive=True)
        else:  # a text file listing images; './' lines are relative to it, others to the current folder
            try:
                lines = entry.read_text(encoding="utf-8-sig").strip().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"The `{split}` list {entry} of {yaml_path} cannot be read ({exc}).") from None
            found = [str(entry.parent / line[2:]) if line.startswith("./") else line for line in lines]
        images += [name for name in found if name.rpartition(".")[-1].lower() in IMAGE_SUFFIXES]
    if not images:
        shown = ", ".join(str(entry) for entry in entries)
        raise DataError(
            f"No images found for `{split}` in {shown} (from {yaml_path}); "
            f"add .jpg or .png files there or point `{split}:` at the folder that has them."
        )
    return images


def _label_paths(images: list[str]) -> list[str]:
    """Ultralytics' img2label_paths: the last /images/ becomes /labels/, the suffix .txt."""
    images_dir, labels_dir = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [labels_dir.join(name.rsplit(images_dir, 1)).rsplit(".", 1)[0] + ".txt" for name in images]


def _write_resolved(resolved: dict, yaml_path: Path, out_dir: Path | None) -> Path:
    if out_dir is None:
        digest = hashlib.sha1(str(yaml_path).encode()).hexdigest()[:10]
        target = offline.cache_dir() / "resolved" / f"{yaml_path.stem}-{digest}.yaml"
    else:
        target = Path(out_dir) / f"{yaml_path.stem}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=target.parent, suffix=".tmp", delete=False) as tmp:
        yaml.safe_dump(resolved, tmp, sort_keys=False)
    os.replace(tmp.name, target)
    return target


# ----------------------------------------------------------------------------------------------- child entry


def main(argv: list[str] | None = None) -> int:
    """`python -m tuner.data base --data D --project P --device X`: what the base checkpoint's child process runs."""
    parser = argparse.ArgumentParser(prog="python -m tuner.data")
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base", help="train the base checkpoint (run by base_checkpoint())")
    base.add_argument("--data", type=Path, required=True)
    base.add_argument("--project", type=Path, required=True)
    base.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    started = time.monotonic()
    _train_base(args.data, args.project, args.device)
    print(f"base checkpoint trained in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
