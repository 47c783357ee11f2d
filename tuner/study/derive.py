"""The search space a study derives from its data when the user gives none: every imgsz and batch that
could be worth training, for the memory limit (tuner.study.limits) and the accuracy search to cut down.

imgsz goes in steps of 32 up to the larger of 640 and the dataset's image size (the long side most train
images have, rounded up to 32; at most LARGEST_IMGSZ): training above an image's own size only upsamples it,
and 640 is where Ultralytics' own defaults sit. It starts at SMALLEST_IMGSZ, or higher where the objects are
small: at the first size where the smallest quarter of the train boxes (by the square root of their area)
is at least SMALL_OBJECT_PX, one cell of YOLO's finest grid, so that no probe measures a size at which a
quarter of the objects shrink to a few pixels (a 38 px tree crown is 10 px at 160 of 640, and a probe
there scored 0.000). It stays at least MIN_SIZES sizes below the top. batch goes in powers of 2 from 1
up to 64 or the train split's size. A choice the user gave (flag or config file) wins.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from pathlib import Path
from typing import Sequence

from tuner.config import Space
from tuner.errors import ConfigError
from tuner.data import datasets
from tuner.params import STRIDE
from tuner.study.space import grid_step

SMALLEST_IMGSZ = 160
DEFAULT_TOP_IMGSZ = 640
LARGEST_IMGSZ = 1280
LARGEST_BATCH = 64
SAMPLED_IMAGES = 400  # image headers (and their label files) read; evenly spread over the sorted train split
SMALL_OBJECT_PX = 8  # YOLO's finest stride: an object smaller than one cell of its finest grid
SMALL_QUANTILE = 0.25  # "the small objects": the smallest quarter of the sampled train boxes
MIN_SIZES = 4  # the box-size bound leaves at least this many imgsz choices (the startup design spreads over 4)


@dataclasses.dataclass(frozen=True)
class DataShape:
    """What the space is derived from: how many train images there are and how large they usually are."""

    n_train: int
    long_side: int | None  # the long side most sampled train images have (px); None if none could be read
    smallest: int | None = None  # the range of long sides sampled, to say when sizes are mixed
    largest: int | None = None
    small_object: float | None = None  # the SMALL_QUANTILE box size, as a share of its image's long side

    @property
    def mixed(self) -> bool:
        return self.smallest is not None and _round_up(self.smallest) != _round_up(self.largest)


def _round_up(size: int) -> int:
    return -(-size // STRIDE) * STRIDE


def read_shape(data_yaml: Path) -> DataShape:
    """Count the train images and read the sizes of up to SAMPLED_IMAGES of them (headers only) and of their boxes."""
    from PIL import Image  # Ultralytics' own dependency; reading a header does not decode the image

    images = datasets.train_images(data_yaml)
    step = max(1, len(images) // SAMPLED_IMAGES)
    sides, boxes = [], []
    for name in images[::step][:SAMPLED_IMAGES]:
        try:
            with Image.open(name) as image:
                width, height = image.size
        except (OSError, ValueError):  # unreadable images are Ultralytics' to report; they set no size
            continue
        sides.append(max(width, height))
        boxes += [math.sqrt(w * width * h * height) / max(width, height) for w, h in datasets.box_sizes(name)]
    if not sides:
        return DataShape(len(images), None)
    usual = collections.Counter(sides).most_common(1)[0][0]
    small = sorted(boxes)[int(SMALL_QUANTILE * (len(boxes) - 1))] if boxes else None
    return DataShape(len(images), usual, min(sides), max(sides), small)


def top_imgsz(shape: DataShape) -> int:
    return max(DEFAULT_TOP_IMGSZ, min(LARGEST_IMGSZ, _round_up(shape.long_side or 0)))


def smallest_imgsz(shape: DataShape) -> int:
    """SMALLEST_IMGSZ, or the first size at which the small objects are SMALL_OBJECT_PX (at most MIN_SIZES below the
    top); a box of no area (a degenerate label) sets nothing."""
    if not shape.small_object:
        return SMALLEST_IMGSZ
    needed = _round_up(math.ceil(SMALL_OBJECT_PX / shape.small_object))
    return max(SMALLEST_IMGSZ, min(needed, top_imgsz(shape) - (MIN_SIZES - 1) * STRIDE))


def imgsz_choices(shape: DataShape) -> tuple[int, ...]:
    return tuple(range(smallest_imgsz(shape), top_imgsz(shape) + 1, STRIDE))


def batch_choices(shape: DataShape, probe_images: int = 0) -> tuple[int, ...]:
    """Powers of 2 up to 64, the train split's size, and the probes' sample of it (`probe_images`, 0: the whole
    split): a batch larger than the images a probe trains on would train as a smaller one."""
    images = min(shape.n_train, probe_images) if probe_images else shape.n_train
    largest = max(1, min(LARGEST_BATCH, images))
    return tuple(2**power for power in range(largest.bit_length()) if 2**power <= largest)


def resolve(space: Space, data_yaml: Path, probe_images: int = 0) -> tuple[Space, list[str]]:
    """`space` with the choices the user left out (None) derived from the data, and what to tell the user."""
    if space.imgsz is not None and space.batch is not None:
        return space, []
    shape = read_shape(data_yaml)
    imgsz = space.imgsz if space.imgsz is not None else imgsz_choices(shape)
    batch = space.batch if space.batch is not None else batch_choices(shape, probe_images)
    notes = [f"Search space from the data ({shape.n_train} train images{_usual(shape)}): "
             f"imgsz {span(imgsz)}, batch {', '.join(map(str, batch))}"]  # fmt: skip
    if space.imgsz is None and imgsz[0] > SMALLEST_IMGSZ:
        at_smallest = shape.small_object * SMALLEST_IMGSZ
        notes.append(
            f"Small objects: a quarter of the train boxes are under {at_smallest:.0f} px at imgsz {SMALLEST_IMGSZ}, so "
            f"imgsz starts at {imgsz[0]}, where they are {shape.small_object * imgsz[0]:.0f} px or more. "
            "Pass --imgsz to search smaller sizes."
        )
    if shape.mixed and space.imgsz is None:
        notes.append(
            f"Train images have mixed sizes (long side {shape.smallest}-{shape.largest} px); imgsz goes up to "
            f"{imgsz[-1]}, for the usual {shape.long_side} px. Pass --imgsz to search other sizes."
        )
    return dataclasses.replace(space, imgsz=tuple(imgsz), batch=tuple(batch)), notes


def check_batches(space: Space, data_yaml: Path, probe_images: int) -> None:
    """Refuse a batch the user gave that is larger than the images a probe trains on (the sample of the train split,
    or the whole split): Ultralytics would train it as a smaller batch, and the study would record what it did not
    train. A derived space stops at that size by itself."""
    train = len(datasets.train_images(data_yaml))
    images = min(train, probe_images) if probe_images else train
    larger = [batch for batch in space.batch or () if batch > images]
    if larger:
        where = f"the {images} train images a probe trains on (--probe-images)" if images < train else f"the {train} train images"
        raise ConfigError(
            f"--batch {', '.join(map(str, larger))} is larger than {where}: each epoch would be one smaller batch. "
            f"Choose batches up to {images}, or leave --batch out to derive them."
        )


def _usual(shape: DataShape) -> str:
    return "" if shape.long_side is None else f", usually {shape.long_side} px on the long side"


def span(sizes: Sequence[int]) -> str:
    step = grid_step(sizes)
    if len(sizes) > 3 and step is not None:
        return f"{sizes[0]}-{sizes[-1]} in steps of {step} ({len(sizes)} sizes)"
    return ", ".join(map(str, sizes))
