"""Which of several models needs more memory, where tuner can tell without building them.

Ultralytics builds a detector from a YAML of layers and a table of scales (`n: [depth, width, max_channels]`): each
block is repeated `depth` times as often and each layer is `width` times as wide (capped at `max_channels`, which
trims only the deepest, smallest stage: yolov8m's last stage has 576 channels, yolov8l's 512). Of two models of the
same layers and scales table, one as deep and as wide as the other or more (as Ultralytics' n < s < m < l < x are)
needs at least as much memory at the same imgsz and batch: tuner.commands.probe_models runs the smaller first, and a
config it did not fit rules the larger out there without a pre-flight. The layers come from:

- a YAML Ultralytics ships, by name: `yolov8s.yaml` is `cfg/models/v8/yolov8.yaml` at scale `s`;
- a weights file: the model's YAML as Ultralytics stores it in the checkpoint (`model.yaml`, with its `scale`),
  read by an unpickler that builds nothing: every class in the file is a stub, no tensor is loaded and no code of
  the file runs (torch is not imported);
- not a local YAML file: Ultralytics takes its scale from the file's name, which may say anything.

The number of classes is left out: the probes and train-best train every model on the same data, whose classes set
the head.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import yaml

SCALE_IN_NAME = re.compile(r"yolo(e-)?v?\d+([nslmx])", re.IGNORECASE)  # Ultralytics' guess_model_scale
SHAPE_KEYS = ("backbone", "head", "scales")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A model's layers and scales table (canonical text), and the depth and width its scale gives them."""

    layers: str
    depth: float
    width: float

    def within(self, other: Architecture) -> bool:
        """The same layers, at most as deep and as wide as `other`."""
        return self.layers == other.layers and self.depth <= other.depth and self.width <= other.width


def smallest_first(models: list[str]) -> list[str] | None:
    """`models` smallest first, where each is within the next (Architecture.within); None where tuner cannot tell
    (a local YAML, a file it cannot read, different layers, or two scales neither of which is within the other)."""
    found = [of_model(model) for model in models]
    if any(arch is None for arch in found):
        return None
    ranked = sorted(zip(models, found), key=lambda pair: (pair[1].depth, pair[1].width))
    if not all(small.within(large) for (_, small), (_, large) in zip(ranked, ranked[1:])):
        return None
    return [model for model, _ in ranked]


def of_model(model: str) -> Architecture | None:
    path = Path(model).expanduser()
    if path.suffix.lower() == ".pt":
        return of_weights(path) if path.is_file() else None
    if path.is_file():  # a local YAML: its scale would come from its name
        return None
    return of_shipped_yaml(path.name)


def of_shipped_yaml(name: str) -> Architecture | None:
    """The architecture of `yolov8s.yaml` as Ultralytics resolves the name: its unscaled YAML at the scale the name
    gives."""
    scale = SCALE_IN_NAME.search(Path(name).stem)
    found = shipped_yaml(name)
    if scale is None or found is None:
        return None
    try:
        return of_yaml(yaml.safe_load(found.read_text()), scale.group(2).lower())
    except (OSError, yaml.YAMLError):
        return None


def shipped_yaml(name: str) -> Path | None:
    """The YAML Ultralytics ships for a model name (yolov8n.yaml: cfg/models/v8/yolov8.yaml), found without
    importing Ultralytics; None where it ships none."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    unscaled = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(name).stem)
    wanted = (Path(name).stem, unscaled)
    root = Path(spec.submodule_search_locations[0]) / "cfg" / "models"
    return next((found for found in sorted(root.rglob("*.yaml")) if found.stem in wanted), None)


def of_weights(path: Path) -> Architecture | None:
    """The architecture stored in an Ultralytics checkpoint (`model`, or `ema` where a training's last.pt left
    `model` empty), or None where the file holds none tuner can read."""
    state = _checkpoint(path)
    if not isinstance(state, dict):
        return None
    for key in ("model", "ema"):
        found = state.get(key)
        held = found.state if isinstance(found, _Stub) else None
        described = held.get("yaml") if isinstance(held, dict) else None
        if isinstance(described, dict) and isinstance(described.get("scale"), str):
            return of_yaml(described, described["scale"])
    return None


def of_yaml(described: dict[str, Any], scale: str) -> Architecture | None:
    """The architecture a model YAML (as loaded, or as a checkpoint stores it) has at `scale`."""
    scales = described.get("scales")
    if not isinstance(scales, dict) or scale not in scales or not described.get("backbone"):
        return None
    try:
        depth, width = float(scales[scale][0]), float(scales[scale][1])
    except (TypeError, ValueError, IndexError):
        return None
    shape = [described.get(key) for key in SHAPE_KEYS] + [described.get("channels", 3)]  # Ultralytics adds channels: 3
    return Architecture(layers=repr(shape), depth=depth, width=width)


class _Stub:
    """Whatever class a checkpoint names: it keeps the state it is given and nothing else."""

    state: Any = None

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state[0] if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict) else state


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        return _Stub

    def persistent_load(self, pid: Any) -> None:
        return None  # a tensor's storage: not loaded


def _checkpoint(path: Path) -> Any:
    """The checkpoint's top-level object, classes stubbed (torch.save's zip archive only), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
            if not pickles:
                return None
            with archive.open(pickles[0]) as handle:
                return _Unpickler(handle).load()
    except Exception:  # noqa: BLE001 - a file that is not such a checkpoint, damaged or odd: tuner cannot tell
        return None
