"""`tuner probe --limits-only` end to end: real pre-flight processes at tiny size, real SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY_NAME, tiny_probe_args

pytestmark = pytest.mark.integration

# Measured on 2 cores (see test_probe_integration): imgsz 64 / batch 8 peaks near 950-1050 MiB, 320 / 8 near 1250.
# 1192 MiB budget, 1073 MiB stable limit; a frontier config peaks 6.5% under that (memory_model.RERUN_SPREAD), so
# 64-192 / batch 8 (920-990 MiB) fit and 256-320 / 8 (1090-1250 MiB) do not.
TIGHT = ("--memory-budget", "1250MB", "--safety-margin", "0.1")


def space_args(data: Path, *extra: str) -> list[str]:
    args = tiny_probe_args(data, *TIGHT, *extra)
    args[args.index("--imgsz") + 1] = "64,128,192,256,320"
    args[args.index("--batch") + 1] = "2,8"
    return args


def load(workdir: Path) -> optuna.Study:
    return optuna.load_study(study_name=TINY_NAME, storage=f"sqlite:///{workdir / 'studies' / f'{TINY_NAME}.db'}")


def test_limits_only_prints_a_frontier_whose_configs_really_fit_and_the_search_stays_inside_it(workdir, tiny_data, run_cli):
    code, out, err = run_cli(*space_args(tiny_data, "--limits-only", "--json"))
    assert code == 0, err
    found = json.loads(out)
    assert found["stable_limit_mb"] == pytest.approx(1250e6 / 2**20 * 0.9, abs=0.2)
    frontier = {entry["batch"]: entry for entry in found["frontier"]}
    assert set(frontier) == {2, 8} and set(frontier[8]) == {"batch", "imgsz", "peak_mem_mb", "measured"}
    assert frontier[8]["imgsz"] is not None and frontier[8]["imgsz"] < 320  # the budget cuts the space
    assert found["preflights"] < 10  # bisection over 5 x 2 configs, not the grid
    assert "pre-flight imgsz" in err and not (workdir / "results" / TINY_NAME / "best.yaml").exists()
    study = load(workdir)
    assert study.trials == [] and study.user_attrs["limits"]["frontier"] == found["frontier"]

    # --limits-only again on the same study: what is stored, measured nothing again, lost nothing.
    code, again, err = run_cli(*space_args(tiny_data, "--limits-only", "--json"))
    assert code == 0 and json.loads(again)["frontier"] == found["frontier"], err
    assert "mapped before" in err and "pre-flight imgsz" not in err

    # The same study, now searched for accuracy: configs beyond the frontier are never trained, the one on it fits.
    largest = frontier[8]["imgsz"]
    code, out, err = run_cli(*space_args(tiny_data, "--n-trials", "3", "--json"))
    assert code == 0, err
    trials = load(workdir).trials
    ran = [t for t in trials if "log" in t.user_attrs]
    skipped = [t for t in trials if t.user_attrs.get("oom_cause") == "inferred"]
    assert all(t.params["imgsz"] <= frontier[t.params["batch"]]["imgsz"] for t in ran)
    assert all(t.params["imgsz"] > frontier[t.params["batch"]]["imgsz"] for t in skipped)
    assert all("pre-flights put the stable limit" in t.user_attrs["oom_reason"] for t in skipped)
    assert not [t for t in trials if t.user_attrs.get("oom_cause") == "watchdog"]  # no OOM was trained into
    assert "## Memory limits" in (workdir / "results" / TINY_NAME / "report.md").read_text()

    # The frontier's config of batch 8, probed in full under the same budget, really fits (no safety margin here:
    # this study's own pre-flight re-measures the config, and the question is whether it fits the budget).
    args = tiny_probe_args(tiny_data, "--memory-budget", "1250MB", "--safety-margin", "0", "--n-trials", "1",
                           "--study-name", "on-the-frontier")  # fmt: skip
    args[args.index("--imgsz") + 1], args[args.index("--batch") + 1] = str(largest), "8"
    code, _, err = run_cli(*args)
    probed = optuna.load_study(study_name="on-the-frontier", storage=f"sqlite:///{workdir / 'studies' / 'on-the-frontier.db'}")
    assert [t.state for t in probed.trials] == [TrialState.COMPLETE], err
    assert probed.trials[0].user_attrs["outcome"] == "ok"


def test_a_budget_below_the_smallest_config_is_one_line_exit_1_and_no_best_yaml(workdir, tiny_data, run_cli):
    args = tiny_probe_args(tiny_data, "--limits-only", "--memory-budget", "400MB")
    code, _, err = run_cli(*args)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("tuner: error: The smallest config, imgsz 64 batch 2,") and "--memory-budget" in last
    assert not (workdir / "results").exists() or not list((workdir / "results").rglob("best.yaml"))


def test_an_explicit_space_wholly_over_the_limit_is_one_line_exit_1_and_nothing_trained(workdir, tiny_data, run_cli):
    args = tiny_probe_args(tiny_data, *TIGHT, "--n-trials", "2")
    args[args.index("--imgsz") + 1], args[args.index("--batch") + 1] = "320", "8"
    code, _, err = run_cli(*args)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("tuner: error: The smallest config, imgsz 320 batch 8, ")  # ran out, or too close to it
    assert "stable limit of 1073 MiB" in last
    assert load(workdir).trials == [] and not (workdir / "results" / TINY_NAME / "best.yaml").exists()
