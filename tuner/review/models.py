"""results/<family>/: a several-model probe's report.md (the models side by side) and trials.csv (every model's
trials as one table), from each model's study as the run left it (`ModelResult`) and where the shared budget's rest
went (`Rest`): tuner.commands.probe_models runs the studies."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

from tuner import files
from tuner.params import Params
from tuner.study import training_time
from tuner.study.storage import name_of


@dataclasses.dataclass(frozen=True)
class ModelResult:
    """One model's study as the run left it: its summary (tuner.commands.probe.probe_summary, with its frontier and
    stable limit), or why the model was left out."""

    model: str
    study: str
    summary: dict[str, Any] | None = None
    left_out: str | None = None
    preflight_s: float = 0.0  # what a model left out spent finding so (its summary counts it where it has one)

    @property
    def value(self) -> float | None:
        best = (self.summary or {}).get("best")
        return None if best is None else best["value"]

    @property
    def too_slow(self) -> bool:
        """Stable configs it has, and none trains within the training time (tuner.commands.probe._train_time_note)."""
        return bool(((self.summary or {}).get("train_time") or {}).get("none_fit"))

    @property
    def spent_s(self) -> float:
        """What its study spent on the probe: its trials and pre-flights."""
        return float(((self.summary or {}).get("cost") or {}).get("probe_s") or self.preflight_s)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "study": self.study, "left_out": self.left_out, **(self.summary or {})}


@dataclasses.dataclass(frozen=True)
class Rest:
    """What the floors left of the shared probe budget, and the model it went to."""

    model: str
    study: str
    seconds: float
    budget_s: float  # the shared budget in all
    floors_s: float  # what the studies' floors spent of it

    def describe(self) -> str:
        """`The floors took 9.0 min of the shared budget's 14 min: the other 5.0 min go to yolov8n.yaml, the leading
        model.`"""
        return (f"The floors took {training_time.minutes(self.floors_s)} of the shared budget's "
                f"{training_time.minutes(self.budget_s)}: the other {training_time.minutes(self.seconds)} go to "
                f"{self.model}, the leading model.")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_report(folder: Path, results: list[ModelResult], picked: ModelResult | None, metric: str,
                 rest: Rest | None = None) -> Path:  # fmt: skip
    """results/<family>/report.md: the models side by side, each with its frontier, pick and costs, and where the
    shared budget's rest went; and trials.csv, every model's trials (`write_trials`)."""
    spent = f" {rest.describe()}" if rest else ""
    lines = [
        f"# Models: {folder.name}",
        "",
        f"{len(results)} models, one study each (their own reports are linked below). The pick is the most "
        "accurate of their best stable configs; a tie within the noise goes to the one with the lower peak memory."
        f"{spent} Probe cost, all models: {training_time.minutes(sum(result.spent_s for result in results))}.",
        "",
        f"| model | study | frontier: largest stable imgsz per batch | best stable config | {metric} | noise | "
        "peak MiB | full training (predicted) | probe cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(_row(result, picked))
    lines.append("")
    if picked is None:
        lines.append("No model has a stable config: lower the imgsz/batch choices or raise --memory-budget.")
    else:
        best = picked.summary["best"]
        lines.append(f"**Pick:** {picked.model}, {Params.of(best['params'])} ({best['value']:.4f}, study "
                     f"{picked.study}). Train it: `tuner train-best --study-name {picked.study}`")  # fmt: skip
    for result in results:
        if result.left_out:
            lines.append(f"\nLeft out: {result.model} fits nowhere within the memory budget. {result.left_out}")
    lines += ["", "Each model's report: " + ", ".join(f"[{result.study}](../{result.study}/report.md)"
                                                   for result in results if result.summary)]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    if write_trials(folder, results):
        lines.append("\nEvery trial of every model, one row each, with its study and model: [trials.csv](trials.csv).")
    frontiers = {name_of(result.model): result.summary["frontier"] for result in results
                 if result.summary and result.summary.get("frontier")}  # fmt: skip
    if frontiers:
        from tuner.review import plots

        limit = next((result.summary.get("stable_limit_mb") for result in results if result.summary), None)
        plots.plot_model_frontiers(frontiers, folder / "frontiers.png", limit)
        lines[2:2] = ["![Memory frontier per model](frontiers.png)", ""]
    path = folder / "report.md"
    files.write_text(path, "\n".join(lines) + "\n")
    return path


def write_trials(folder: Path, results: list[ModelResult]) -> Path | None:
    """results/<family>/trials.csv: the rows of every model's trials.csv (results/<study>/trials.csv, beside the
    family's folder), each with its `study` first, so that one file holds the search over every model; None where no
    study wrote one (a limits-only run writes none)."""
    header, rows = None, []
    for result in results:
        path = folder.parent / result.study / "trials.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = header or ["study", *(reader.fieldnames or [])]
            rows.extend({"study": result.study, **row} for row in reader)
    if header is None:
        return None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return files.write_text(folder / "trials.csv", buffer.getvalue())


def _row(result: ModelResult, picked: ModelResult | None) -> str:
    if result.summary is None:
        return f"| {result.model} | {result.study} | fits nowhere | - | - | - | - | - | - |"
    summary, best = result.summary, result.summary.get("best")
    frontier = ", ".join(f"{entry['batch']}: {entry['imgsz'] or '-'}" for entry in summary.get("frontier") or [])
    cost = training_time.minutes(summary["cost"]["probe_s"])
    if best is None:
        return f"| {result.model} | {result.study} | {frontier} | no stable config | - | - | - | - | {cost} |"
    noise = "-" if summary.get("noise") is None else f"±{summary['noise']:.3f}"
    predicted = training_time.Prediction.from_json(best.get("train_predicted"))
    training = "-" if predicted is None else training_time.minutes(predicted.seconds)
    mark = " **(pick)**" if result is picked else ""
    return (f"| {result.model}{mark} | {result.study} | {frontier} | {Params.of(best['params'])} | {best['value']:.4f} "
            f"| {noise} | {best['peak_mem_mb']:.0f} | {training} | {cost} |")
