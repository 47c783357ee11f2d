"""`Params`: one point of the search space, the four settings a probe trains and train-best trains with.

It lives on the ground floor because everything above crosses it: the process contract carries it, the
study stores it, train-best plans with it. `STRIDE` is YOLO's largest stride: every imgsz is a multiple.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

STRIDE = 32  # YOLO's largest stride: imgsz must be a multiple of it, and imgsz steps go by it


@dataclasses.dataclass(frozen=True)
class Params:
    imgsz: int
    batch: int
    mosaic: float
    mixup: float

    FIELDS: ClassVar[frozenset[str]] = frozenset({"imgsz", "batch", "mosaic", "mixup"})

    @classmethod
    def of(cls, values: dict[str, Any]) -> Params:
        mosaic, mixup = (round(float(values[key]), 4) for key in ("mosaic", "mixup"))
        return cls(int(values["imgsz"]), int(values["batch"]), mosaic, mixup)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def key(self) -> tuple:
        """Equal keys train the same config (repeats differ only in their seed)."""
        return (self.imgsz, self.batch, round(self.mosaic, 3), round(self.mixup, 3))

    @property
    def size(self) -> tuple[int, int]:
        """imgsz x batch: what sets the tensors' sizes, so the memory (mosaic and mixup change the pixels)."""
        return (self.imgsz, self.batch)

    def within(self, limit: Params) -> bool:
        """No larger than `limit` in imgsz and in batch (its own size included)."""
        return self.imgsz <= limit.imgsz and self.batch <= limit.batch

    def __str__(self) -> str:
        return f"imgsz {self.imgsz} batch {self.batch} mosaic {self.mosaic:.2f} mixup {self.mixup:.2f}"


def config_key(params: dict[str, Any]) -> tuple:
    """Trials with equal keys trained the same config (repeats differ only in their seed)."""
    return Params.of(params).key
