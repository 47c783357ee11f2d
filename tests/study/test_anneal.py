"""The probe's annealed learning rate (`probe.anneal`, tuner.study.probe_child.Anneal): batch by batch from lr0 down to
lr0 x lrf at the probe's last batch, where Ultralytics' own schedule steps once an epoch.

Real tiny probes (yolov8n from its YAML, the 8 + 4 image dataset, 2 epochs of 4 batches) with and without it, read
from the learning rate Ultralytics logs for each epoch's last batch in results.csv; a study probed with it, continued.
"""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest

from tests.conftest import TINY_NAME, tiny_probe_args
from tuner import config
from tuner.memory import device as devices
from tuner.params import Params
from tuner.process.trial import run_child
from tuner.study import probe_child
from tuner.study.inputs import Inputs
from tuner.study.workers import main_trials_done as main_trials

MIB = 2**20
LR0, LRF = 0.0003, 0.01  # the probe's default lr0; Ultralytics' default lrf


def probe_lrs(data_yaml: Path, folder: Path, anneal: bool) -> list[float]:
    """The learning rate of each epoch's last batch, as results.csv logs it."""
    cfg = config.load(None, {"probe": {"epochs": 2, "anneal": anneal}})
    trials = Inputs(cfg, devices.resolve("cpu"), 8000 * MIB, data_yaml, "yolov8n.yaml", folder)
    attempt = run_child("tuner.study.probe_child", trials.spec(Params(64, 2, 1.0, 0.0), seed=0), folder / "probe",
                        trials.device, trials.budget, timeout=600)  # fmt: skip
    assert attempt.outcome.value == "ok", attempt.reason
    with open(next(folder.rglob("results.csv"))) as rows:
        return [float(row["lr/pg0"]) for row in csv.DictReader(rows)]


@pytest.mark.integration
def test_an_annealed_probe_ends_at_lr0_times_lrf_where_an_epoch_schedule_ends_at_half_of_lr0(tiny_data, tmp_path):
    """2 epochs of 4 batches: batch i of 8 trains at lr0 x (1 - i/7 x (1 - lrf)); Ultralytics alone trains epoch e at
    lr0 x (1 - e/2 x (1 - lrf)), so the second epoch at about half of lr0, all its batches alike."""
    annealed = probe_lrs(tiny_data, tmp_path / "annealed", anneal=True)
    assert annealed == pytest.approx([LR0 * (1 - 3 / 7 * (1 - LRF)), LR0 * LRF], rel=1e-3)
    stepped = probe_lrs(tiny_data, tmp_path / "stepped", anneal=False)
    assert stepped == pytest.approx([LR0, LR0 * (1 - (1 - LRF) / 2)], rel=1e-3)


def test_a_study_stored_before_the_anneal_setting_probed_without_it():
    """A stored config without the key meant Ultralytics' schedule, whatever the default is now: the same identity
    as a config that says so, so such a study continues only under the schedule it probed with."""
    stored = config.load(None, {}).to_dict()
    del stored["probe"]["anneal"]
    assert config.from_stored(stored).probe.anneal is False
    assert config.identity(config.from_stored(stored).to_dict()) == config.identity(
        config.load(None, {"probe": {"anneal": False}}).to_dict()
    )
    assert config.identity(config.load(None, {"probe": {"anneal": True}}).to_dict()) != config.identity(
        config.load(None, {"probe": {"anneal": False}}).to_dict()
    )


def test_the_anneal_warms_up_over_a_fraction_of_an_epoch_then_falls_to_lrf():
    """10 batches an epoch, 3 epochs, warmup 0.5 epoch: batches 0-4 rise to lr0 in 6 steps, batch 5 is at lr0, and
    the remaining 24 batches fall linearly to lrf at the last (29)."""
    anneal = probe_child.Anneal(warmup_epochs=0.5)
    factors = [anneal.factor(batch, 10, 3, LRF) for batch in range(30)]
    assert factors[:6] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert factors[-1] == pytest.approx(LRF)
    assert factors[17] == pytest.approx(1 - 12 / 24 * (1 - LRF))
    assert all(a > b for a, b in zip(factors[5:], factors[6:]))
    assert probe_child.Anneal().factor(0, 10, 3, LRF) == 1.0  # no warmup: the first batch at lr0
    longer = probe_child.Anneal(warmup_epochs=100)  # a warmup longer than the probe: the first half, then down
    assert longer.factor(14, 10, 3, LRF) == pytest.approx(15 / 16) and longer.factor(29, 10, 3, LRF) == pytest.approx(LRF)


def test_probe_anneal_flag_turns_it_on_or_off_over_the_config_file(tmp_path):
    from tuner.cli import build_parser

    def anneal(*argv: str, file: Path | None = None) -> bool:
        return config.load(file, config.probe_overrides(build_parser().parse_args(["probe", *argv]))).probe.anneal

    off_file = tmp_path / "probe.yaml"
    off_file.write_text("probe:\n  anneal: false\n")
    assert (anneal(), anneal("--no-probe-anneal"), anneal(file=off_file), anneal("--probe-anneal", file=off_file)) == (
        True, False, False, True)  # fmt: skip
    with pytest.raises(config.ConfigError, match="anneal"):
        config.load(None, {"probe": {"anneal": "sometimes"}})


@pytest.mark.integration
def test_a_study_probed_with_anneal_is_continued_only_with_it(tiny_data, workdir, run_cli):
    """`tuner probe` anneals by default: its trials end at lr0 x lrf and the study stores the setting. The same study
    with --no-probe-anneal is refused in one line (exit 2) and keeps its trials; a study probed with
    --no-probe-anneal (Ultralytics' schedule, as every study before the default) continues only with that flag."""
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--probe-epochs", "2", "--n-trials", "2"))
    assert code in (0, 1), err
    study = optuna.load_study(study_name=TINY_NAME, storage=f"sqlite:///{workdir / 'studies' / f'{TINY_NAME}.db'}")
    assert study.user_attrs["config"]["probe"]["anneal"] is True
    ran = [trial for trial in study.trials if trial.user_attrs.get("outcome") == "ok"]
    assert ran
    for trial in ran:
        with open(next(Path(trial.user_attrs["log"]).parent.rglob("results.csv"))) as rows:
            assert float(list(csv.DictReader(rows))[-1]["lr/pg0"]) == pytest.approx(LR0 * LRF, rel=1e-3)
    before = len(study.trials)

    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--probe-epochs", "2", "--n-trials", "3", "--no-probe-anneal"))
    assert code == 2 and "anneal" in err and "--study-name" in err and len(err.strip().splitlines()) == 1, err
    assert len(optuna.load_study(study_name=study.study_name, storage=study._storage).trials) == before

    args = tiny_probe_args(tiny_data, "--probe-epochs", "2", "--n-trials", "2", "--study-name", "stepped")
    code, _, err = run_cli(*args, "--no-probe-anneal")
    assert code in (0, 1), err
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--probe-epochs", "2", "--n-trials", "3", "--study-name", "stepped"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "created with probe.anneal = false, but this run asks for true. Re-run with --no-probe-anneal" in err
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--probe-epochs", "2", "--n-trials", "3", "--study-name", "stepped",
                                            "--no-probe-anneal"))  # fmt: skip
    assert code in (0, 1), err
    stepped = optuna.load_study(study_name="stepped", storage=f"sqlite:///{workdir / 'studies' / 'stepped.db'}")
    assert stepped.user_attrs["config"]["probe"]["anneal"] is False and main_trials(stepped.trials) == 3
