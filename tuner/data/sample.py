"""The fixed-size samples of the train and val splits that every probe of a study trains and validates on.

A probe's cost grows with the images it passes over, while what it has to tell (which config trains best)
does not: on a split larger than the sample, every probe of the study trains and validates on the sample
instead, so a probe costs the same on a thousand images as on two hundred. The sample is drawn once per study
with the study's seed, stratified (every class of the split is in it, as far as the size allows: a rare class
left out would leave the metric blind to it), and written as a dataset YAML whose `train`/`val` are lists of
the chosen images, which Ultralytics reads as it reads a folder (labels beside the images, under labels/).
The pre-flights keep the whole splits: the densest batch of the whole data is what the full training meets.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Sequence

import yaml

from tuner import files
from tuner.data import datasets

SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class Sample:
    """What the probes of a study train and validate on: `data_yaml`, with so many of each split's images."""

    data_yaml: str
    train_images: int
    val_images: int
    train_total: int
    val_total: int

    @property
    def whole(self) -> bool:
        return self.train_images == self.train_total and self.val_images == self.val_total

    def describe(self) -> str:
        if self.whole:
            return f"Probes use the whole splits ({self.train_total} train, {self.val_total} val images)."
        return (f"Probes train on {self.train_images} of {self.train_total} train images and validate on "
                f"{self.val_images} of {self.val_total} val images: a fixed sample, every class in it, the same "
                "for every trial; train-best trains on the whole splits.")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Sample:
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


def draw(images: Sequence[str], size: int, seed: int, classes_of=datasets.label_classes) -> list[str]:
    """`size` of `images` (all of them when `size` is 0 or not smaller), sorted: first, for each class the images
    hold, rarest first, the first image in a seeded shuffle that holds it, unless an image already chosen does (until `size`
    is reached), then the rest of that shuffle. The same images, size and seed give the same sample."""
    if size <= 0 or size >= len(images):
        return sorted(images)
    order = sorted(images)
    random.Random(seed).shuffle(order)
    holding: dict[int, list[str]] = {}
    for image in order:
        for cls in classes_of(image):
            holding.setdefault(cls, []).append(image)
    chosen: dict[str, None] = {}  # insertion-ordered set
    for cls in sorted(holding, key=lambda c: (len(holding[c]), c)):
        if len(chosen) < size and not any(image in chosen for image in holding[cls]):
            chosen[holding[cls][0]] = None
    for image in order:
        if len(chosen) >= size:
            break
        chosen.setdefault(image, None)
    return sorted(chosen)


def make(data_yaml: Path, folder: Path, train_images: int, val_images: int, seed: int) -> Sample:
    """The study's sample of the checked dataset `data_yaml`, written under `folder` (train.txt, val.txt and
    data.yaml, atomically). Where neither split is larger than its size, the probes use `data_yaml` itself."""
    folder = Path(folder).resolve()  # the probes run in folders of their own: every path they read is absolute
    sizes = {"train": train_images, "val": val_images}
    picked, totals = {}, {}
    for split in SPLITS:
        images = datasets.split_images(data_yaml, split)
        picked[split], totals[split] = draw(images, sizes[split], seed), len(images)
    counts = {f"{split}_images": len(picked[split]) for split in SPLITS}
    sample = Sample(str(data_yaml), **counts, train_total=totals["train"], val_total=totals["val"])
    if sample.whole:
        return sample
    data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))
    for split in SPLITS:
        data[split] = str(files.write_text(folder / f"{split}.txt", "\n".join(picked[split]) + "\n"))
    header = [f"The probes' sample of {data_yaml} (tuner.data.sample): {sample.describe()}"]
    written = files.write_yaml(folder / "data.yaml", data, header)
    return dataclasses.replace(sample, data_yaml=str(written))
