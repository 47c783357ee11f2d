"""The dataset and model a study trains on, checked before any trial starts, and `Inputs`: all that every
trial process of a study is given (tuner.process.contract.ProbeSpec).

The parent process never imports Ultralytics (that would create or touch the user's own Ultralytics
settings, and cost seconds); model names are checked against the files Ultralytics ships.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from pathlib import Path
from typing import Iterable

from tuner.config import TRAIN_DEFAULTS, ProbeConfig
from tuner.data import base_model, datasets, shapes
from tuner.data.sample import Sample
from tuner.errors import ConfigError
from tuner.memory.device import Device
from tuner.memory.model import Measurement
from tuner.params import Params
from tuner.process.contract import EpochRecord, ProbeSpec
from tuner.study import architecture, cost, training_time
from tuner.study.training_time import Prediction

DEFAULT_MODEL = "yolov8n.yaml"


def dataset(requested: str | None) -> Path:
    """The data YAML to train on: the embedded synthetic dataset, or the user's, checked."""
    if requested is None:
        return shapes.embedded_dataset()
    return datasets.check_dataset(requested)


def models(requested: str) -> list[str]:
    """The models of `--model a.pt,b.pt` (or of a list in the config file), each named once; checked one by one
    with `model` by the caller."""
    names = [name.strip() for name in requested.split(",")]
    if any(not name for name in names):
        raise ConfigError(f"--model {requested!r} has an empty entry; list the models separated by commas, "
                          "e.g. --model yolov8n.yaml,yolov8s.yaml.")  # fmt: skip
    seen: dict[str, str] = {}
    for name in names:
        path = Path(name).expanduser()
        same = str(path.resolve()) if path.is_file() else name.lower()  # one file, however it is named
        if same in seen:
            raise ConfigError(f"--model lists {seen[same]} twice{'' if seen[same] == name else f' (as {name})'}; "
                              "name each model once.")  # fmt: skip
        seen[same] = name
    return names


def by_scale(names: list[str]) -> list[str] | None:
    """`names` smallest first, where they are one architecture at different scales (yolov8n.yaml, yolov8s.yaml as
    Ultralytics ships them, or weights files of them: tuner.study.architecture): at the same imgsz and batch the
    larger needs at least as much memory. None where tuner cannot tell which is larger (local YAML files, different
    architectures, a weights file that stores no architecture)."""
    return architecture.smallest_first(names)


def model(requested: str, *, embedded: bool) -> Path | str:
    """A local .pt, a model YAML file, or the name of one Ultralytics ships (random init).

    On the embedded dataset the default model, and yolov8s.yaml, start from tuner's base checkpoint of that model
    (trained once on separate synthetic data): a short probe from random weights measures nothing.
    """
    if embedded and requested in base_model.BASE_MODELS:
        return base_model.base_checkpoint(model=requested)
    path = Path(requested).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".pt":
        if not path.is_file():
            raise ConfigError(
                f"Model weights {requested} not found; tuner never downloads weights. Pass a local .pt file "
                "or a model YAML such as yolov8n.yaml."
            )
        _check_weights(path)
        return path.resolve()
    if suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--model {requested!r} must be a model YAML (e.g. yolov8n.yaml) or a local .pt file.")
    if path.is_file():
        return path.resolve()
    if _shipped_model_yaml(path.name):
        return requested
    raise ConfigError(
        f"Model YAML {requested!r} is neither a file nor a model Ultralytics ships; check the name "
        "(e.g. yolov8n.yaml, yolo11s.yaml) or pass a path."
    )


def _check_weights(path: Path) -> None:
    """A PyTorch checkpoint is a zip archive (torch.save since 1.6) or, from older torch, a pickle: a file that
    is neither is not one, and is said so before any process starts (its loader would fail in every trial)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        is_checkpoint = _torch_archive(path) if zipfile.is_zipfile(path) else head[:1] == b"\x80"  # pickle: PROTO
    except OSError as exc:
        raise ConfigError(f"Model weights {path} cannot be read ({exc.strerror}); check the file's permissions.") from None
    if is_checkpoint:
        return
    raise ConfigError(
        f"Model weights {path} is not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle); pass the "
        ".pt that Ultralytics saved (e.g. runs/detect/train/weights/best.pt) or a model YAML such as yolov8n.yaml."
    )


def _torch_archive(path: Path) -> bool:
    """A zip as torch.save writes it: a data.pkl and a version record in the folder of its first entry (what
    torch.load looks for; any other zip ends in every trial with torch's `Expected hasRecord("version")`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return False
    folder = names[0].split("/")[0] + "/" if names else ""
    inside = {name.removeprefix(folder) for name in names if folder != "/" and name.startswith(folder)}
    return "data.pkl" in inside and bool({"version", ".data/version"} & inside)


def _shipped_model_yaml(name: str) -> bool:
    """Ultralytics resolves yolov8n.yaml to cfg/models/v8/yolov8.yaml with scale n."""
    return architecture.shipped_yaml(name) is not None


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What every trial of the study trains on, and under which budget."""

    cfg: ProbeConfig
    device: Device
    budget: int  # bytes
    data_yaml: Path
    model: Path | str
    trials_dir: Path
    sample: Sample | None = None  # the study's sample of the splits (tuner.data.sample); None: the whole data
    sharing: int = 1  # workers whose trials share this device at once (tuner.study.workers, "shared")
    planned_epochs: int = TRAIN_DEFAULTS["epochs"]  # of the full training train-best would plan (training_time)

    @property
    def stable_limit_mb(self) -> float:
        return self.budget * (1 - self.cfg.safety_margin) / 2**20

    def spec(self, params: Params, seed: int, preflight_batches: int = 0) -> ProbeSpec:
        """What one probe trial process is told to do (see tuner.study.probe_child). A probe trains on the study's
        sample; a pre-flight (`preflight_batches` > 0) on the whole data, whose densest batch the full training meets."""
        data = self.data_yaml if preflight_batches or self.sample is None else self.sample.data_yaml
        return ProbeSpec(
            model=str(self.model),
            data=str(data),
            device=self.device.ultralytics,
            device_kind=self.device.kind,
            budget=self.budget,
            params=params,
            metric=self.cfg.metric,
            workers=0 if self.device.kind == "cpu" else 2,
            probe=self.cfg.probe,
            seed=seed,
            preflight_batches=preflight_batches,
        )

    def probe_timeout(self, params: Params, preflights: Iterable[Measurement]) -> float:
        """How long a probe of `params` may run (tuner.study.cost): with `probe.trial_timeout: auto`, a multiple
        of its time as the pre-flights' speeds predict it over the study's sample."""
        speed = cost.fit_speed(preflights)
        predicted = None if speed is None else self.probe_seconds(params, speed) * cost.contention(self.sharing)
        return cost.trial_timeout(self.cfg.probe.trial_timeout, predicted)

    def probe_seconds(self, params: Params, speed: cost.Speed) -> float:
        train = self.sample.train_images if self.sample else self.sample_sizes()[0]
        val = self.sample.val_images if self.sample else self.sample_sizes()[1]
        return cost.probe_seconds(params, speed, math.ceil(train * self.cfg.probe.fraction), val, self.cfg.probe.epochs)

    def full_training(self, params: Params, epochs: Iterable[EpochRecord]) -> Prediction | None:
        """The full training of `params` on the whole splits for train-best's planned epochs, from the epochs its
        probe timed (tuner.study.training_time); None where the probe timed none, or no sample says the splits' sizes."""
        if self.sample is None:
            return None
        return training_time.predict(epochs, params.batch, self.sample.train_total, self.sample.val_total, self.planned_epochs)

    def sample_sizes(self) -> tuple[int, int]:
        """The images of each split a probe passes over, where no sample was drawn (the whole splits)."""
        return len(datasets.split_images(self.data_yaml, "train")), len(datasets.split_images(self.data_yaml, "val"))
