"""The study's train-best runs as review reads them: each folder under results/<study>/ with a summary.json (the
pick's `train/`, larger.yaml's `larger/`, any other `train-best --run NAME`), for report.md's `## Full trainings`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tuner.params import Params


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """A train-best run of the study that ended, as its summary.json says (results/<study>/<run>/, `--run`)."""

    name: str  # its folder: train (the pick's), larger (larger.yaml's), or another --run
    params: Params  # what its last stage trained with (after any step-down)
    epochs: int
    epochs_planned: int
    value: float | None  # the study's metric of its best.pt (a run stopped early: of its last validated epoch)
    wall_s: float | None
    peak_mem_mb: float | None
    finished: bool


def train_runs(folder: Path, metric_name: str) -> tuple[TrainRun, ...]:
    """The runs under `folder` (results/<study>/) with a summary.json, the pick's `train` first, then by folder name;
    a file that is not a run's summary is passed over."""
    runs = []
    for summary_file in sorted(Path(folder).glob("*/summary.json"), key=lambda f: (f.parent.name != "train", f.parent.name)):
        try:
            values = json.loads(summary_file.read_text())
            runs.append(TrainRun(summary_file.parent.name, Params.of(values["stages"][-1]["trained_with"]),
                                 int(values["epochs"]), int(values["epochs_planned"]),
                                 (values.get("metrics") or {}).get(metric_name), values.get("wall_s"),
                                 values.get("peak_mem_mb"), bool(values.get("finished"))))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue
    return tuple(runs)
