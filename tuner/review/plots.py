"""The report's PNG plots, drawn with matplotlib's Agg backend (imported only when a plot is drawn).

Each function returns a `Plot`: the file written and what it shows, counted from the matplotlib
artists themselves (cells, points per kind), so tests check the picture rather than the input.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner import files
from tuner.review.findings import MemoryGrid, Point, Trade

CELL_COLOURS = {
    "ok": "#66bb6a",
    "pruned": "#90caf9",
    "oom": "#e57373",
    "inferred": "#f8bbd0",
    "error": "#bdbdbd",
    "running": "#fff59d",
    "not tried": "#f5f5f5",
}
OVER_LIMIT_COLOUR = "#ffb74d"
BEYOND_COLOUR = "#e0e0e0"  # not tried, and beyond the frontier the pre-flights mapped
POINT_STYLES = {  # kind: (colour, marker)
    "stable": ("#2e7d32", "o"),
    "over limit": ("#ef6c00", "o"),
    "pruned": ("#1e88e5", "v"),
    "oom": ("#c62828", "x"),
    "error": ("#616161", "x"),
}
MEMORY_COLUMNS = ("peak_mem_mb", "mem_mb", "memory_mb")


@dataclasses.dataclass(frozen=True)
class Plot:
    path: Path
    counts: dict[str, int]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Save through tuner.files, so no reader sees a half-written PNG."""
    try:
        with files.replacing(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)


def _count(ax, gid: str) -> int:
    """Points in the scatter collections (or patches, or texts) tagged with `gid`."""
    offsets = sum(len(c.get_offsets()) for c in ax.collections if c.get_gid() == gid)
    return offsets + sum(1 for a in [*ax.patches, *ax.texts] if a.get_gid() == gid)


def plot_memory_grid(grid: MemoryGrid, path: Path) -> Plot:
    """imgsz rows x batch columns, each cell coloured by outcome and annotated with peak memory.

    Where the study mapped its limits, `grid.frontier` (each batch's largest imgsz the pre-flights put under the
    stable limit) is drawn as a dashed staircase, cells beyond it are marked, and untried cells show their
    pre-flight's peak. Without it, the stable limit is drawn from the trials as a staircase: left of it, each
    imgsz's batches that fit within it.
    """
    from matplotlib.patches import Patch, Rectangle

    plt = _pyplot()
    frontier = grid.frontier
    colours = {**CELL_COLOURS, "beyond the frontier": BEYOND_COLOUR}
    fig, ax = plt.subplots(figsize=(1.5 * max(len(grid.batch), 1) + 2.5, 0.8 * max(len(grid.imgsz), 1) + 1.8))
    for row, size in enumerate(grid.imgsz):
        for column, count in enumerate(grid.batch):
            cell = grid.cells[(size, count)]
            beyond = frontier is not None and (frontier.get(count) is None or size > frontier[count])
            status = "beyond the frontier" if beyond and cell.status == "not tried" else cell.status
            colour = OVER_LIMIT_COLOUR if cell.over_limit else colours.get(status, "white")
            ax.add_patch(
                Rectangle((column, row), 1, 1, facecolor=colour, edgecolor="white", linewidth=2,
                          hatch="//" if status in ("inferred", "beyond the frontier") else None, gid="cell")
            )  # fmt: skip
            ax.text(column + 0.5, row + 0.5, grid.label(size, count).replace(" (", "\n("), ha="center", va="center",
                    fontsize=8, gid="cell-label")  # fmt: skip
    preflight_lines = _draw_preflight_frontier(ax, grid, frontier) if frontier is not None else 0
    budget_lines = _draw_trial_staircase(ax, grid) if frontier is None else 0
    ax.set_xlim(0, max(len(grid.batch), 1))
    ax.set_ylim(0, max(len(grid.imgsz), 1))
    ax.set_xticks([column + 0.5 for column in range(len(grid.batch))], [str(b) for b in grid.batch])
    ax.set_yticks([row + 0.5 for row in range(len(grid.imgsz))], [str(s) for s in grid.imgsz])
    ax.set_xlabel("batch")
    ax.set_ylabel("imgsz")
    ax.set_title("Memory frontier: outcome and peak memory per config")
    shown = {**CELL_COLOURS, **({"beyond the frontier": BEYOND_COLOUR} if frontier is not None else {})}
    legend = [Patch(facecolor=colour, edgecolor="grey", label=status) for status, colour in shown.items()]
    legend.append(Patch(facecolor=OVER_LIMIT_COLOUR, edgecolor="grey", label="ok, over the stable limit"))
    handles = legend + [line for line in ax.get_lines() if line.get_gid() in ("budget", "preflight-frontier")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    counts = {"cells": _count(ax, "cell"), "labels": _count(ax, "cell-label"), "budget_lines": budget_lines,
              "preflight_lines": preflight_lines}  # fmt: skip
    _save(fig, path)
    return Plot(path, counts)


def plot_model_frontiers(frontiers: dict[str, list[dict[str, Any]]], path: Path, stable_limit_mb: float | None) -> Plot:
    """Several models' frontiers on one axis (tuner.commands.probe_models): for each batch, the largest imgsz each
    model's pre-flights put under the stable limit, one staircase per model; a model that fits nowhere draws none."""
    plt = _pyplot()
    batches = sorted({entry["batch"] for entry in (e for entries in frontiers.values() for e in entries)})
    fig, ax = plt.subplots(figsize=(1.1 * max(len(batches), 1) + 3.5, 4.2))
    drawn = 0
    for name, entries in frontiers.items():
        largest = {entry["batch"]: entry["imgsz"] for entry in entries}
        xs = [column for column, count in enumerate(batches) if largest.get(count)]
        if not xs:
            continue
        ys = [largest[batches[column]] for column in xs]
        ax.step(xs, ys, where="mid", linewidth=2.5, marker="o", gid="model-frontier", label=name)
        drawn += 1
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("batch")
    ax.set_ylabel("largest stable imgsz")
    limit = f" (stable limit {stable_limit_mb:.0f} MiB)" if stable_limit_mb else ""
    ax.set_title(f"Memory frontier per model{limit}")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    counts = {"frontiers": sum(1 for line in ax.get_lines() if line.get_gid() == "model-frontier")}
    _save(fig, path)
    return Plot(path, counts)


def _draw_preflight_frontier(ax, grid: MemoryGrid, frontier: dict[int, int | None]) -> int:
    """Each batch column's largest imgsz under the stable limit, by pre-flight, as a dashed staircase."""
    xs, ys = [], []
    for column, count in enumerate(grid.batch):
        largest = frontier.get(count)
        top = 0 if largest is None else sum(1 for size in grid.imgsz if size <= largest)
        xs += [column, column + 1]
        ys += [top, top]
    ax.plot(xs, ys, color="black", linewidth=3, linestyle="--", gid="preflight-frontier",
            label=f"largest imgsz per batch under the stable limit ({grid.stable_limit_mb:.0f} MiB), by pre-flight")  # fmt: skip
    return 1


def _draw_trial_staircase(ax, grid: MemoryGrid) -> int:
    """Without pre-flights: each imgsz row's largest batch whose trial fitted the stable limit."""
    if grid.stable_limit_mb is None or not grid.imgsz:
        return 0
    xs, ys = [], []
    for row, size in enumerate(grid.imgsz):
        largest = grid.largest_fitting_batch(size)
        wall = 0 if largest is None else grid.batch.index(largest) + 1
        xs += [wall, wall]
        ys += [row, row + 1]
    budget = f"budget {grid.budget_mb:.0f} MiB, " if grid.budget_mb is not None else ""
    ax.plot(xs, ys, color="black", linewidth=3, gid="budget",
            label=f"fits within the stable limit ({budget}limit {grid.stable_limit_mb:.0f} MiB)")  # fmt: skip
    return 1


def plot_accuracy_vs_memory(
    points: Sequence[Point],
    path: Path,
    *,
    metric_name: str,
    budget_mb: float | None,
    stable_limit_mb: float | None,
    best_trial: int | None = None,
) -> Plot:
    """Metric against peak memory per trial, with the budget and stable limit as vertical lines.

    Trials without a metric (oom, error) sit on the bottom edge at their peak memory, if it is known.
    """
    from matplotlib.transforms import blended_transform_factory

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    bottom = blended_transform_factory(ax.transData, ax.transAxes)
    for kind, (colour, marker) in POINT_STYLES.items():
        chosen = [p for p in points if p.kind == kind and p.peak_mem_mb is not None]
        if not chosen:
            continue
        xs = [p.peak_mem_mb for p in chosen]
        if kind in ("oom", "error"):
            ax.scatter(xs, [0.03] * len(xs), color=colour, marker=marker, transform=bottom, gid=kind,
                       label=f"{kind} (no metric)", clip_on=False)  # fmt: skip
        else:
            ax.scatter(xs, [p.value for p in chosen], color=colour, marker=marker, gid=kind, label=kind)
    best = [p for p in points if p.trial == best_trial and p.value is not None and p.peak_mem_mb is not None]
    if best:
        ax.scatter([best[0].peak_mem_mb], [best[0].value], marker="*", s=300, facecolor="none",
                   edgecolor="black", gid="best", label=f"best stable (trial {best_trial})")  # fmt: skip
    if budget_mb is not None:
        ax.axvline(budget_mb, color="#c62828", gid="budget", label=f"budget {budget_mb:.0f} MiB")
    if stable_limit_mb is not None:
        ax.axvline(stable_limit_mb, color="#ef6c00", linestyle="--", gid="stable-limit",
                   label=f"stable limit {stable_limit_mb:.0f} MiB")  # fmt: skip
    ax.set_xlabel("peak memory (MiB)")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} vs peak memory")
    if not points:
        ax.text(0.5, 0.5, "no trials yet", transform=ax.transAxes, ha="center")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    counts = {kind: _count(ax, kind) for kind in POINT_STYLES}
    counts["best"] = _count(ax, "best")
    counts["budget_lines"] = sum(1 for line in ax.get_lines() if line.get_gid() in ("budget", "stable-limit"))
    _save(fig, path)
    return Plot(path, counts)


def plot_accuracy_vs_time(
    trades: Sequence[Trade], path: Path, *, metric_name: str, train_time_s: float | None, best_trial: int | None
) -> Plot:
    """The probes' metric of the top stable configs against their full training's predicted minutes, each point's
    area its peak memory; configs over the training time hollow, the pick starred, the training time a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    timed = [trade for trade in trades if trade.train_s is not None]
    largest = max((trade.peak_mb for trade in timed), default=1.0)
    for over in (False, True):
        chosen = [t for t in timed if (train_time_s is not None and t.train_s > train_time_s) == over]
        if not chosen:
            continue
        sizes = [40 + 260 * trade.peak_mb / largest for trade in chosen]
        xs, ys = [trade.train_s / 60 for trade in chosen], [trade.value for trade in chosen]
        label = "over the training time" if over else "stable configs (area: peak memory)"
        ax.scatter(xs, ys, s=sizes, facecolor="none" if over else "#2e7d32", edgecolor="#2e7d32", alpha=0.8,
                   gid="over time" if over else "configs", label=label)  # fmt: skip
        for trade, x, y in zip(chosen, xs, ys):
            ax.annotate(f"{trade.params.imgsz}/{trade.params.batch}", (x, y), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
    best = [trade for trade in timed if trade.trial == best_trial]
    if best:
        ax.scatter([best[0].train_s / 60], [best[0].value], marker="*", s=300, facecolor="none", edgecolor="black",
                   gid="best", label=f"the pick (trial {best_trial})")  # fmt: skip
    if train_time_s is not None:
        ax.axvline(train_time_s / 60, color="#c62828", gid="train-time", label=f"training time {train_time_s / 60:.0f} min")
    ax.set_xlabel("full training, predicted (min)")
    ax.set_ylabel(f"{metric_name} (probe)")
    ax.set_title(f"{metric_name} vs training time")
    if not timed:
        ax.text(0.5, 0.5, "no config's training is predicted yet", transform=ax.transAxes, ha="center")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    counts = {"configs": _count(ax, "configs"), "over time": _count(ax, "over time"), "best": _count(ax, "best"),
              "time_lines": sum(1 for line in ax.get_lines() if line.get_gid() == "train-time")}  # fmt: skip
    _save(fig, path)
    return Plot(path, counts)


def plot_history(points: Sequence[Point], path: Path, *, metric_name: str) -> Plot:
    """Metric per trial number, the best stable value so far as a step line, failures on the bottom edge."""
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = blended_transform_factory(ax.transData, ax.transAxes)
    for kind, (colour, marker) in POINT_STYLES.items():
        chosen = [p for p in points if p.kind == kind]
        if not chosen:
            continue
        xs = [p.trial for p in chosen]
        if kind in ("oom", "error"):
            ax.scatter(xs, [0.03] * len(xs), color=colour, marker=marker, transform=bottom, gid=kind, label=kind,
                       clip_on=False)  # fmt: skip
        else:
            ax.scatter(xs, [p.value for p in chosen], color=colour, marker=marker, gid=kind, label=kind)
    stable = sorted((p.trial, p.value) for p in points if p.kind == "stable")
    if stable:
        best_so_far, running = [], float("-inf")
        for _, value in stable:
            running = max(running, value)
            best_so_far.append(running)
        ax.step([trial for trial, _ in stable], best_so_far, where="post", color="#2e7d32", gid="best-so-far",
                label="best stable so far")  # fmt: skip
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric_name)
    ax.set_title("Optimization history")
    if not points:
        ax.text(0.5, 0.5, "no trials yet", transform=ax.transAxes, ha="center")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    counts = {kind: _count(ax, kind) for kind in POINT_STYLES}
    counts["best_so_far"] = sum(len(line.get_xdata()) for line in ax.get_lines() if line.get_gid() == "best-so-far")
    _save(fig, path)
    return Plot(path, counts)


def read_train_epochs(
    results_csv: Path, metric_column: str
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(epoch, metric) and (epoch, peak memory MiB) points from an Ultralytics results.csv.

    Epochs that were not validated (`--val-every`) have no metric point. Memory comes from a
    `peak_mem_mb` (or `mem_mb`, `memory_mb`) column of results.csv, else from `memory.csv` (epoch,
    peak_mem_mb) beside it; empty when neither has it.
    """
    rows = [row for row in _read_csv(results_csv) if row.get("epoch")]
    metric = [(int(float(row["epoch"])), _number(row.get(metric_column))) for row in rows]
    metric = [(epoch, value) for epoch, value in metric if value is not None]
    memory_column = next((name for name in MEMORY_COLUMNS if rows and name in rows[0]), None)
    if memory_column is not None:
        memory = [(int(float(row["epoch"])), _number(row.get(memory_column))) for row in rows]
        return metric, [(epoch, value) for epoch, value in memory if value is not None]
    memory_csv = results_csv.parent / "memory.csv"
    if not memory_csv.exists():
        return metric, []
    by_epoch = {int(float(row["epoch"])): float(row["peak_mem_mb"]) for row in _read_csv(memory_csv)}
    return metric, [(int(float(row["epoch"])), by_epoch[int(float(row["epoch"]))]) for row in rows
                    if int(float(row["epoch"])) in by_epoch]  # fmt: skip


def _number(text: str | None) -> float | None:
    """A finite number from a CSV cell; None for an empty cell or nan."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows with names and values stripped (older Ultralytics padded its column names)."""
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in rows]


def plot_train_epochs(
    results_csv: Path, path: Path, *, metric_column: str, budget_mb: float | None = None
) -> Plot | None:
    """Metric and peak memory per epoch of a train-best run; None when there is no results.csv."""
    if not results_csv.exists():
        return None
    from matplotlib.ticker import MaxNLocator

    metric, memory = read_train_epochs(results_csv, metric_column)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([e for e, _ in metric], [v for _, v in metric], marker="o", color="#2e7d32", gid="metric",
            label=metric_column)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_column)
    ax.set_title("train-best: metric and memory per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines = list(ax.get_lines())
    if memory:
        twin = ax.twinx()
        twin.plot([e for e, _ in memory], [v for _, v in memory], marker="s", color="#6a1b9a", gid="memory",
                  label="peak memory (MiB)")  # fmt: skip
        if budget_mb is not None:
            twin.axhline(budget_mb, color="#c62828", gid="budget", label=f"budget {budget_mb:.0f} MiB")
        twin.set_ylim(bottom=0)
        twin.set_ylabel("peak memory (MiB)")
        lines += twin.get_lines()
    ax.legend(handles=lines, fontsize=8, loc="lower right")
    counts = {
        "metric_points": len(ax.get_lines()[0].get_xdata()),
        "memory_points": sum(len(line.get_xdata()) for line in lines if line.get_gid() == "memory"),
    }
    _save(fig, path)
    return Plot(path, counts)
