"""Checks of a user's Ultralytics dataset YAML, before any training: one DataError line naming the problem and the fix.

A checked YAML is written back as a resolved copy, every key kept, with `path` and the splits made absolute,
so Ultralytics has nothing left to resolve (nor any reason to download). Images and labels are found the way
Ultralytics finds them. Every label file is read: Ultralytics drops an image whose labels are malformed
with a warning and trains on the rest, so a probe would silently measure a smaller dataset.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import yaml

from tuner import files, offline
from tuner.errors import DataError

IMAGE_SUFFIXES = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic", "avif", "jp2"}


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
            _check_labels(images, split, len(data["names"]))
    return _write_resolved(resolved, yaml_path, out_dir)


SHOWN_PROBLEMS = 3  # label files named in the error; the count says how many there are


def _check_labels(images: list[str], split: str, classes: int) -> None:
    """Every label line: a class index within `names`, then x y w h (or a polygon's x y pairs), all in [0, 1]."""
    problems = []
    for label in _label_paths(images):
        try:
            text = Path(label).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue  # an image without labels: a background image, as Ultralytics takes it
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{label}: unreadable ({exc.__class__.__name__})")
            continue
        problem = _label_problem(text, classes)
        if problem:
            problems.append(f"{label}:{problem}")
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS]) + ("; ..." if len(problems) > SHOWN_PROBLEMS else "")
        raise DataError(
            f"{len(problems)} of the {len(images)} `{split}` label files are malformed, and Ultralytics would train "
            f"without their images: {shown}. Fix those files (a line is `class x y w h`, class 0-{classes - 1}, "
            "coordinates in [0, 1]), then re-run."
        )


def _label_problem(text: str, classes: int) -> str | None:
    """`LINE: what is wrong` for the first bad line of one label file, or None."""
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(field) for field in fields]
        except ValueError:
            values = []
        if not values or not all(math.isfinite(value) for value in values):
            return f"{number}: {line.strip()[:40]!r} is not numbers"
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            return f"{number}: {len(values)} columns, not 5 (class x y w h)"
        if values[0] != int(values[0]) or not 0 <= values[0] < classes:
            return f"{number}: class {fields[0]} is not one of the {classes} `names` (0-{classes - 1})"
        if not all(0.0 <= value <= 1.0 for value in values[1:]):
            return f"{number}: a coordinate is outside [0, 1] (labels are normalized by the image size)"
    return None


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


def train_images(data_yaml: Path) -> list[str]:
    """The train images of a checked (resolved) dataset YAML, found the way Ultralytics finds them."""
    return split_images(data_yaml, "train")


def split_images(data_yaml: Path, split: str) -> list[str]:
    """The images of one split of a checked (resolved) dataset YAML, sorted, found the way Ultralytics finds them."""
    data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))
    root = Path(data.get("path") or Path(data_yaml).parent)
    entries = _split_entries(data[split], split, Path(data_yaml), root)
    return sorted(_split_images(entries, split, Path(data_yaml)))


def label_classes(image: str) -> set[int]:
    """The classes an image's label file names (none for a background image without one)."""
    try:
        text = Path(_label_paths([image])[0]).read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    return {int(float(line.split()[0])) for line in text.splitlines() if line.split()}


def box_sizes(image: str) -> list[tuple[float, float]]:
    """The (width, height) of each box an image's label file holds, as shares of the image's width and height (a
    polygon's bounding box); none for a background image or an unreadable file (the checks report those)."""
    try:
        text = Path(_label_paths([image])[0]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    sizes = []
    for line in text.splitlines():
        try:
            values = [float(field) for field in line.split()[1:]]
        except ValueError:
            continue
        if len(values) == 4:
            sizes.append((values[2], values[3]))
        elif len(values) >= 6:
            xs, ys = values[0::2], values[1::2]
            sizes.append((max(xs) - min(xs), max(ys) - min(ys)))
    return sizes


def _label_paths(images: list[str]) -> list[str]:
    """Ultralytics' img2label_paths: the last /images/ becomes /labels/, the suffix .txt."""
    images_dir, labels_dir = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [labels_dir.join(name.rsplit(images_dir, 1)).rsplit(".", 1)[0] + ".txt" for name in images]


def _write_resolved(resolved: dict, yaml_path: Path, out_dir: Path | None) -> Path:
    """Write `resolved` to `out_dir/<stem>.yaml`, or to the cache's resolved/ folder under a hash of the YAML's path."""
    if out_dir is None:
        digest = hashlib.sha1(str(yaml_path).encode()).hexdigest()[:10]
        target = offline.cache_dir() / "resolved" / f"{yaml_path.stem}-{digest}.yaml"
    else:
        target = Path(out_dir) / f"{yaml_path.stem}.yaml"
    return files.write_yaml(target, resolved)
