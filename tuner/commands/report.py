"""`tuner report`: write report.md, trials.csv, the plots and the dashboard notes of a study (one that is
still running on another machine too), and say where they are."""

from __future__ import annotations

import json
from pathlib import Path

from tuner.review import dashboard, findings
from tuner.review.findings import Findings, describe_params
from tuner.review.report import room_to_grow, write_report
from tuner.study.storage import load_study, resolve_study_name, storage_url


def run_report(
    *, study_name: str | None, storage: str | None, studies_dir: Path, results_dir: Path, quiet: bool, as_json: bool
) -> int:
    """`tuner report`: find the study, write the report and the dashboard notes, say where the report is."""
    name = resolve_study_name(study_name, storage, studies_dir)
    url = storage_url(storage, studies_dir, name)
    found = findings.read(load_study(name, url), results_dir, url)
    written = write_report(found, results_dir)
    dashboard.save_notes(found, url)
    if as_json:
        paths = {key: str(path) for key, path in written.items()}
        best = found.best.to_dict() if found.best else None
        summary = {"study": name, "storage": url, "best": best, "counts": found.counts, "files": paths}
        print(json.dumps(summary, indent=2))
        return 0
    if not quiet:
        _print_summary(found)
    print(f"Report: {written['report.md']}")
    return 0


def _print_summary(found: Findings) -> None:
    counts = ", ".join(f"{count} {outcome}" for outcome, count in found.counts.items() if count)
    print(f"Study {found.study_name}: {len(found.trials)} trials ({counts or 'none yet'}).")
    if found.best is None:
        print("No stable config yet.")
        return
    print(f"Best stable config: trial {found.best.trial}: {describe_params(found.best.params)}; "
          f"{found.metric_name} {'?' if found.best.value is None else f'{found.best.value:.4f}'}. Next: {found.command}")  # fmt: skip
    hint = room_to_grow(found)
    if hint:
        print(f"Note: {hint}")
