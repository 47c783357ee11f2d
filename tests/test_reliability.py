"""The reliability suite: done to real processes, files and databases, each checking that nothing is lost.

- SIGKILLs of probe trials at random moments (several seeds), of train-best in the middle of a checkpoint write;
- a read-only or full disk, a corrupted or locked study database;
- malformed inputs: configs, flags, datasets, labels, models, best.yaml, a study's stored settings.

Kills of tuner itself, of one of two workers, of train-best's training process, and the kernel's OOM kill are
tested where their feature is (test_probe_integration, test_postgres, test_train, test_probe_signal) and
counted in the same ledger; the counts are printed at the end of the run (section "reliability").
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import TINY_NAME, tiny_probe_args, trial_processes
from tests.train.test_train import FAST, csv_epochs, state_of, train_dir, write_best_yaml
from tuner import config as configs
from tuner.memory import device as devices
from tuner.memory.budget import MIB, parse_budget
from tuner.study import storage as storages
from tuner.study.records import StudyRecord, TrialRecord, counts_towards_total

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
NAME = TINY_NAME  # the default study name of the tiny dataset (data.yaml), model and device


def snapshot(root: Path, skip: str = "inputs") -> dict[str, str]:
    """Every file under `root` (but `skip/`) and a hash of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] != skip and not path.name.endswith("-journal"):
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def load(workdir: Path, name: str = NAME) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / f'{name}.db'}")


# ------------------------------------------------------------------------------------------ malformed inputs


def _existing_state(workdir: Path, tiny_data: Path) -> None:
    """A study, a best.yaml and a checkpoint as earlier runs leave them: what no failed run may change."""
    cfg = configs.load(None, {"data": str(tiny_data), "model": "yolov8n.yaml", "device": "cpu",
                              "space": {"imgsz": [64], "batch": [2, 4]}, "probe": {"epochs": 1, "repeats": 0}})  # fmt: skip
    budget = parse_budget(cfg.memory_budget, devices.resolve("cpu").total_memory)
    (workdir / "studies").mkdir()
    study = optuna.create_study(study_name=NAME, storage=f"sqlite:///{workdir / 'studies' / f'{NAME}.db'}",
                                direction="maximize")  # fmt: skip
    StudyRecord(config=cfg, device="cpu", budget_mb=round(budget / MIB, 1), stable_limit_mb=round(budget * 0.9 / MIB, 1)).save(study)
    study.add_trial(optuna.trial.create_trial(
        params={"imgsz": 64, "batch": 2}, value=0.1, user_attrs={"outcome": "ok", "peak_mem_mb": 900.0},
        distributions={"imgsz": optuna.distributions.CategoricalDistribution([64]),
                       "batch": optuna.distributions.CategoricalDistribution([2, 4])}))  # fmt: skip
    write_best_yaml(workdir / "results" / NAME / "best.yaml", tiny_data)
    weights = workdir / "results" / NAME / "train" / "weights"
    weights.mkdir(parents=True)
    (weights / "last.pt").write_bytes(random.Random(1).randbytes(4096))


def _bad_labels(tiny_data: Path, folder: Path, line_of) -> Path:
    """A copy of the tiny dataset whose first 5 train label files get `line_of(classes)` appended."""
    copy = folder / "data"
    shutil.copytree(tiny_data.parent, copy)
    data = yaml.safe_load((copy / "data.yaml").read_text())
    data["path"] = str(copy)
    (copy / "data.yaml").write_text(yaml.safe_dump(data))
    labels = sorted((copy / "labels" / "train").glob("*.txt"))
    for label in labels[:5]:
        with open(label, "a") as handle:
            handle.write(line_of(len(data["names"])) + "\n")
    return copy / "data.yaml"


def _unlabelled(tiny_data: Path, folder: Path) -> Path:
    """The tiny dataset's images without their labels folder."""
    shutil.copytree(tiny_data.parent / "images", folder / "images")
    return _write(folder, "d.yaml", f"path: {folder}\ntrain: images/train\nval: images/val\nnames: [a]\n")


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _probe(tiny: Path, *extra) -> list[str]:
    return tiny_probe_args(tiny, *extra)


# name: (argv from (tiny data yaml, inputs folder), words the one line must have)
MALFORMED = {
    "imgsz not a multiple of 32": (lambda t, f: _probe(t, "--imgsz", "630"), "multiple of 32"),
    "imgsz not a number": (lambda t, f: _probe(t, "--imgsz", "big"), "imgsz"),
    "batch 0": (lambda t, f: _probe(t, "--batch", "0,4"), "batch"),
    "mosaic range above 1": (lambda t, f: _probe(t, "--mosaic", "1.5,2"), "mosaic"),
    "mixup range starting below 0": (lambda t, f: _probe(t, "--mixup", "-0.1,0.2"), "mixup"),
    "mixup range reversed": (lambda t, f: _probe(t, "--mixup", "0.3,0.1"), "mixup"),
    "memory budget unit unknown": (lambda t, f: _probe(t, "--memory-budget", "12XB"), "budget"),
    "memory budget 0": (lambda t, f: _probe(t, "--memory-budget", "0"), "budget"),
    "device unknown": (lambda t, f: _probe(t, "--device", "tpu"), "device"),
    "n-trials 0": (lambda t, f: _probe(t, "--n-trials", "0"), "--n-trials"),
    "probe epochs 0": (lambda t, f: _probe(t, "--probe-epochs", "0"), "epochs"),
    "probe fraction above 1": (lambda t, f: _probe(t, "--probe-fraction", "1.5"), "fraction"),
    "safety margin above 1": (lambda t, f: _probe(t, "--safety-margin", "1.2"), "--safety-margin"),
    "workers 0": (lambda t, f: _probe(t, "--workers", "0"), "--workers"),
    "storage URL of no database": (lambda t, f: _probe(t, "--storage", "nosuch://x/y"), "storage"),
    "storage driver not installed": (lambda t, f: _probe(t, "--storage", "postgresql+pg8000://u@127.0.0.1:9/db"),
                                     "driver is not installed"),  # fmt: skip
    "model file missing": (lambda t, f: _probe(t, "--model", str(f / "missing.pt")), "not found"),
    "model file of random bytes": (lambda t, f: _probe(t, "--model", str(_write(f, "random.pt", random.Random(0).randbytes(50_000)))),
                                   "not a PyTorch checkpoint"),  # fmt: skip
    "model a zip that is not a checkpoint": (lambda t, f: _probe(t, "--model", str(_write(f, "z.pt", b"PK\5\6" + bytes(18)))), "checkpoint"),
    "study name a path": (lambda t, f: _probe(t, "--study-name", "a/b"), "--study-name"),
    "model YAML unknown": (lambda t, f: _probe(t, "--model", "yolov99z.yaml"), "yolov99z.yaml"),
    "config file missing": (lambda t, f: _probe(t, "--config", str(f / "none.yaml")), "none.yaml"),
    "config key misspelt": (lambda t, f: _probe(t, "--config", str(_write(f, "c.yaml", "n_trails: 5\n"))), "n_trials"),
    "config not YAML": (lambda t, f: _probe(t, "--config", str(_write(f, "c.yaml", "space: [\n"))), "YAML"),
    "config a list": (lambda t, f: _probe(t, "--config", str(_write(f, "c.yaml", "- 1\n- 2\n"))), "mapping"),
    "config seed a string": (lambda t, f: _probe(t, "--config", str(_write(f, "c.yaml", "seed: abc\n"))), "seed"),
    "dataset YAML missing": (lambda t, f: ["probe", "--data", str(f / "none.yaml"), "--device", "cpu"], "does not exist"),
    "dataset YAML a folder": (lambda t, f: ["probe", "--data", str(_write(f, "d/x", "").parent), "--device", "cpu"], "folder"),
    "dataset YAML not YAML": (lambda t, f: ["probe", "--data", str(_write(f, "d.yaml", "train: [\n")), "--device", "cpu"],
                              "not valid YAML"),  # fmt: skip
    "dataset YAML without names": (lambda t, f: ["probe", "--data", str(_write(f, "d.yaml", f"path: {t.parent}\ntrain: images/train\nval: images/val\n")),
                                                 "--device", "cpu"], "names"),  # fmt: skip
    "dataset without labels": (lambda t, f: ["probe", "--data", str(_unlabelled(t, f)), "--device", "cpu"], "label"),
    "label class index past names": (lambda t, f: _probe(_bad_labels(t, f, lambda n: f"{n + 4} 0.5 0.5 0.1 0.1")), "class"),
    "label with a missing column": (lambda t, f: _probe(_bad_labels(t, f, lambda n: "0 0.5 0.5 0.1")), "columns"),
    "label not numbers": (lambda t, f: _probe(_bad_labels(t, f, lambda n: "cat 0.5 0.5 0.1 0.1")), "not numbers"),
    "label coordinate past 1": (lambda t, f: _probe(_bad_labels(t, f, lambda n: "0 1.5 0.5 0.1 0.1")), "outside [0, 1]"),
    "study with other stored settings": (lambda t, f: _probe(t, "--probe-epochs", "2"), "was created with"),
    "train-best epochs 0": (lambda t, f: ["train-best", "--epochs", "0", *FAST], "epochs"),
    "train-best best.yaml without model": (lambda t, f: ["train-best", "--config", str(_write(f, "b.yaml", "imgsz: 64\nbatch: 2\n")), *FAST],
                                           "model"),  # fmt: skip
    "train-best best.yaml not YAML": (lambda t, f: ["train-best", "--config", str(_write(f, "b.yaml", "imgsz: [\n")), *FAST], "YAML"),
    "train-best study unknown": (lambda t, f: ["train-best", "--study-name", "nosuch", *FAST], "nosuch"),
    "report of no study": (lambda t, f: ["report", "--study-name", "nosuch"], "nosuch"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_is_one_line_exit_2_and_changes_nothing(case, workdir, tiny_data, run_cli, ledger):
    _existing_state(workdir, tiny_data)
    before = snapshot(workdir)
    make, words = MALFORMED[case]
    argv = make(tiny_data, workdir / "inputs")
    code, out, err = run_cli(*argv)
    assert code == 2, (code, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuner: error: ") and "Traceback" not in err, err[-2000:]
    assert words.lower() in lines[0].lower(), lines[0]
    assert snapshot(workdir) == before  # no study, best.yaml or checkpoint changed, nothing new written
    ledger.refused(case)
    ledger.checked(len(before))


def test_the_suite_tries_at_least_25_malformed_inputs():
    assert len(MALFORMED) >= 25


# ------------------------------------------------------------------------------------ kills at random moments


def _kill_at_fraction(fractions: dict[int, float], durations: list[float]):
    """A trial_hook action: trial 0 runs untouched and sets the scale; trial i is SIGKILLed after fractions[i]
    of trial 0's duration (from its start: importing, the first epoch, validating, writing its result)."""

    def action(process: psutil.Process, index: int) -> None:
        started = time.monotonic()
        if index not in fractions:
            process.wait()
            durations.append(time.monotonic() - started)
            return
        time.sleep(fractions[index] * durations[0])
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:  # it had ended: the kill came after its result
            pass

    return action


@pytest.mark.parametrize("seed", [0, 1])
def test_probe_trials_killed_at_random_moments_lose_nothing(seed, workdir, tiny_data, run_cli, trial_hook, ledger):
    """One kill per study: two kills of one config at its usual peak would be, rightly, taken for the machine's
    limit (tuner.study.dominance.outside_kill_level), which is not what this test is about."""
    fractions = {1: random.Random(seed).uniform(0.05, 1.05)}
    durations: list[float] = []
    with trial_hook(_kill_at_fraction(fractions, durations), limit=2):
        code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2", "--batch", "2"))
    assert code == 0, err
    study = load(workdir)
    trials = study.get_trials()
    assert len([t for t in trials if counts_towards_total(t)]) == 2  # a killed trial counts: no re-run
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for trial in trials:
        record = TrialRecord.of(trial)
        killed = trial.number in fractions
        if killed and trial.state == TrialState.PRUNED:
            assert record.outcome.value == "oom" and record.oom_cause == "os-kill" and "SIGKILL" in record.oom_reason
        else:  # untouched, or killed after it wrote its result: it completed with its metric
            assert trial.state == TrialState.COMPLETE and trial.value is not None and record.outcome.value == "ok"
        folder = Path(record.log).parent
        for name in ("spec.json", "result.json"):  # whole or absent, never half-written
            if (folder / name).exists():
                json.loads((folder / name).read_text())
        assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")
                    and trial.state == TrialState.COMPLETE]  # fmt: skip
    best = yaml.safe_load((workdir / "results" / NAME / "best.yaml").read_text())
    assert best["imgsz"] == 64 and best["batch"] == 2
    ledger.kill("probe trial at a random moment", len(fractions))
    ledger.checked(len(trials) + 1)


# ------------------------------------------------------------------------- train-best: a kill mid checkpoint write


def test_train_best_killed_while_writing_a_checkpoint_continues_from_the_last_whole_one(
    workdir, tiny_data, run_cli, trial_hook, ledger
):
    best = write_best_yaml(workdir / "results" / "write" / "best.yaml", tiny_data)
    folder = train_dir(workdir, "write")
    weights = folder / "weights"
    caught: list[str] = []

    def kill_mid_write(process: psutil.Process, index: int) -> None:
        """SIGKILL the training process while a temporary checkpoint file of epoch 2 or later exists."""
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            try:
                names = os.listdir(weights)
            except FileNotFoundError:
                names = []
            writing = [n for n in names if n.startswith(".last.pt.") and n.endswith(".tmp")]
            if writing and (weights / "last.pt").exists():  # epoch 1's checkpoint is whole; this is a later one
                process.send_signal(signal.SIGKILL)
                caught.append(writing[0])
                return
            time.sleep(0.0005)

    with trial_hook(kill_mid_write):
        code, _, err = run_cli("train-best", "--config", best, "--epochs", "3", *FAST)
    assert code == 0, err
    assert caught, "the training process was never caught writing a checkpoint"
    assert "Restart 1/5" in err
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["restarts"] == 1
    assert csv_epochs(folder / "results.csv") == [1, 2, 3]
    assert state_of(folder).finished
    import zipfile

    for name in ("last.pt", "best.pt"):
        with zipfile.ZipFile(weights / name) as archive:
            assert archive.testzip() is None  # whole
    ledger.kill("train-best mid checkpoint write")
    ledger.checked(4)


# ----------------------------------------------------------------------------- the disk and the study database


def _tmpfs(path: Path, size: str, read_only: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to make a small or read-only disk: {done.stderr.strip()}")


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield made
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("which", ["results", "studies"])
def test_a_read_only_folder_stops_the_run_at_its_start_in_one_line(which, workdir, tiny_data, run_cli, mounts, ledger):
    _tmpfs(workdir / which, "1m", read_only=True)
    mounts.append(workdir / which)
    started = time.monotonic()
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert f"Cannot write to {which}" in err and "Read-only file system" in err
    assert time.monotonic() - started < 30 and not trial_processes(preflights=True)  # before any training
    ledger.survived(f"read-only {which}/")


def test_a_disk_that_fills_up_mid_run_is_one_line_and_leaves_no_half_written_file(
    workdir, tiny_data, run_cli, trial_hook, mounts, ledger
):
    results = workdir / "results"
    _tmpfs(results, "256k")
    mounts.append(results)
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1"))  # a first run: best.yaml and its report
    assert code == 0, err
    best = results / NAME / "best.yaml"
    before = best.read_bytes()
    filler = results / "filler"

    def fill_the_disk(process: psutil.Process, index: int) -> None:  # while the next run's trial trains
        try:
            with open(filler, "wb") as handle:
                while True:
                    handle.write(b"\0" * 4096)
                    handle.flush()
        except OSError:
            pass

    with trial_hook(fill_the_disk):
        code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2"))
    errors = [line for line in err.splitlines() if line.startswith("tuner: error:")]
    assert code == 2 and errors == err.strip().splitlines()[-1:] and "Traceback" not in err, err[-2000:]
    assert "no space left on the device" in errors[0]
    assert best.read_bytes() == before  # the previous best.yaml, whole
    assert not [p for p in results.rglob(".*.tmp")]  # no temporary file left behind
    assert len([t for t in load(workdir).get_trials() if counts_towards_total(t)]) == 2  # the new trial is kept
    filler.unlink()
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2"))  # space again: the same command finishes
    assert code == 0, err
    assert yaml.safe_load(best.read_text())["imgsz"] == 64
    ledger.survived("a full disk")
    ledger.checked(3)


def test_a_corrupted_study_database_is_one_line_and_left_as_it_is(workdir, tiny_data, run_cli, ledger):
    db = workdir / "studies" / f"{NAME}.db"
    db.parent.mkdir()
    db.write_bytes(b"SQLite format 3\0" + random.Random(2).randbytes(8192))
    before = db.read_bytes()
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert "Cannot open the study storage" in err
    assert db.read_bytes() == before  # never replaced by a new, empty study
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]
    ledger.survived("a corrupted study database")
    ledger.checked(1)


def _hold_lock(db: Path, seconds: float, ready: threading.Event) -> None:
    connection = sqlite3.connect(db, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    ready.set()
    time.sleep(seconds)
    connection.execute("COMMIT")
    connection.close()


def test_a_locked_study_database_is_waited_for_then_one_line_if_it_stays_locked(
    workdir, tiny_data, run_cli, monkeypatch, ledger
):
    mapped = tiny_probe_args(tiny_data, "--limits-only", "--json")
    code, first, err = run_cli(*mapped)  # the study, its limits mapped and stored
    assert code == 0, err
    db = workdir / "studies" / f"{NAME}.db"
    ready = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db, 4.0, ready))
    holder.start()
    ready.wait()
    started = time.monotonic()
    code, again, err = run_cli(*mapped)  # another process holds the database for 4 s: tuner waits for it
    holder.join()
    assert code == 0, err
    assert time.monotonic() - started >= 3.5 and json.loads(again)["frontier"] == json.loads(first)["frontier"]

    monkeypatch.setattr(storages, "SQLITE_BUSY_TIMEOUT_S", 1)
    ready.clear()
    holder = threading.Thread(target=_hold_lock, args=(db, 6.0, ready))
    holder.start()
    ready.wait()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    code, _, err = run_cli(*mapped)  # held for longer than tuner waits
    holder.join()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert "locked" in err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert StudyRecord.of(load(workdir)).limits is not None
    ledger.survived("a locked study database")
    ledger.checked(2)
