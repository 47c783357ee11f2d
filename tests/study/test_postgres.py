"""Many workers on a real PostgreSQL server: two `tuner probe` processes (two "machines": each its own
folder) share one study; a worker SIGKILLed mid-trial leaves an orphan the other finishes; report and
dashboard read the study while the workers run; a server restarted mid-trial is ridden out, and one that stays
away is said in one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from tests import postgres
from tests.conftest import has_loaded_torch, heartbeat_age, repeats_owed, tiny_probe_args, wait_until
from tests.review.test_dashboard import _free_port, _get, _start
from tuner.process.contract import PROBE_CHILD
from tuner.study import selection
from tuner.study.records import StudyRecord, TrialRecord, counts_towards_total

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(postgres.skip_reason() is not None, reason=postgres.skip_reason() or ""),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]
NAME = "shared"


@pytest.fixture(scope="module")
def server():
    running = postgres.Server()
    running.start()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def database(server, request) -> str:
    return server.create_database(request.node.name.lower()[:60])


def _fast_heartbeat(folder: Path) -> Path:
    """A config file with a 1 s heartbeat and a 4 s grace period, so that an orphan is noticed quickly."""
    path = folder / "probe.yaml"
    path.write_text(yaml.safe_dump({"heartbeat_interval": 1, "grace_period": 4}))
    return path


def _worker(tiny_data: Path, url: str, folder: Path, *extra: str) -> subprocess.Popen:
    """One machine's `tuner probe` on the shared study, in its own folder."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = tiny_probe_args(tiny_data, "--storage", url, "--study-name", NAME, "--config", str(_fast_heartbeat(folder)),
                           *extra)  # fmt: skip
    log = open(folder / "tuner.log", "w")
    return subprocess.Popen([sys.executable, "-m", "tuner", *argv], cwd=folder, stdout=log, stderr=subprocess.STDOUT)


def _training(pid: int) -> int | None:
    """The pid of the worker `pid`'s probe trial (not a pre-flight) once it is past its imports, else None."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            command = " ".join(child.cmdline())
            if PROBE_CHILD in command and "preflight" not in command and has_loaded_torch(child):
                return child.pid
        except psutil.Error:
            continue
    return None


def _trial_process(pid: int) -> int | None:
    """The pid of the probe trial process (not a pre-flight) the worker `pid` has started, torch loaded or not."""
    try:
        for child in psutil.Process(pid).children(recursive=True):
            command = " ".join(child.cmdline())
            if PROBE_CHILD in command and "preflight" not in command:
                return child.pid
    except psutil.Error:
        pass
    return None


def _finish(process: subprocess.Popen, folder: Path, timeout: float = 300) -> str:
    code = process.wait(timeout=timeout)
    text = (folder / "tuner.log").read_text()
    assert code == 0, text[-3000:]
    return text


def _check_plan(study: optuna.Study, n_trials: int, repeats: int) -> None:
    """Exactly n_trials counted main trials and `repeats` repeats, none open, the startup design run once."""
    trials = study.get_trials()
    counted = [t for t in trials if counts_towards_total(t)]
    assert len([t for t in counted if TrialRecord.of(t).repeat_of is None]) == n_trials
    assert len([t for t in counted if TrialRecord.of(t).repeat_of is not None]) == repeats_owed(trials, repeats)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    startup = [t for t in counted if (TrialRecord.of(t).slot or "").startswith("startup:")]
    assert startup and len({TrialRecord.of(t).slot for t in startup}) == len(startup)
    configs = [tuple(sorted(t.params.items())) for t in startup]
    assert len(set(configs)) == len(configs)  # no config of the startup design ran twice


def test_two_workers_on_postgresql_finish_the_plan_exactly_and_agree_on_the_best(tiny_data, database, tmp_path, run_cli):
    first = _worker(tiny_data, database, tmp_path / "a", "--n-trials", "3", "--repeats", "1", "--race", "0")
    second = _worker(tiny_data, database, tmp_path / "b", "--n-trials", "3", "--repeats", "1", "--race", "0")
    study = None
    while first.poll() is None or second.poll() is None:  # report and dashboard while the workers run
        try:
            study = optuna.load_study(study_name=NAME, storage=database)
        except KeyError:
            time.sleep(0.5)
            continue
        if any(t.state == TrialState.COMPLETE for t in study.get_trials()):
            code, out, err = run_cli("report", "--storage", database, "--study-name", NAME,
                                     "--results-dir", tmp_path / "review")  # fmt: skip
            assert code == 0, err
            port = _free_port()
            served = _start([sys.executable, "-m", "tuner", "dashboard", "--storage", database, "--study-name", NAME,
                             "--port", str(port)], port)  # fmt: skip
            try:
                (summary,) = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                assert summary["study_name"] == NAME
            finally:
                served.kill()
                served.communicate(timeout=10)
            break
        time.sleep(0.5)
    assert study is not None, "no worker created the study"
    logs = [_finish(first, tmp_path / "a"), _finish(second, tmp_path / "b")]
    assert (tmp_path / "review" / NAME / "report.md").is_file()
    assert sum("Mapping the memory limit" in log for log in logs) == 1  # one worker mapped; the other waited
    _check_plan(study, n_trials=3, repeats=1)
    workers = {TrialRecord.of(t).worker for t in study.get_trials() if "log" in t.user_attrs}
    assert len(workers) == 2  # both ran trials
    trials = study.get_trials()
    record = StudyRecord.of(study)
    best = selection.best_stable(trials, record.stable_limit_mb, selection.noise(trials).spread, record.budget_mb)
    for folder in ("a", "b"):  # each machine's best.yaml is the study's real best
        written = yaml.safe_load((tmp_path / folder / "results" / NAME / "best.yaml").read_text())
        assert {key: written[key] for key in best.params} == pytest.approx(best.params)


def test_a_worker_killed_mid_trial_leaves_an_orphan_the_other_finishes(tiny_data, database, tmp_path, ledger):
    first = _worker(tiny_data, database, tmp_path / "a", "--n-trials", "3")
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:  # once a's first trial has torch loaded, b joins
        if _training(first.pid):
            victim = first
        time.sleep(0.2)
    assert victim is not None, "worker a never started a trial"
    second = _worker(tiny_data, database, tmp_path / "b", "--n-trials", "3")
    first.kill()  # SIGKILL, mid-trial: its probe process notices its parent is gone and stops
    first.wait(timeout=10)
    _finish(second, tmp_path / "b")
    study = optuna.load_study(study_name=NAME, storage=database)
    trials = study.get_trials()
    orphans = [t for t in trials if t.state == TrialState.FAIL and TrialRecord.of(t).outcome is None
               and not TrialRecord.of(t).surplus]  # fmt: skip
    assert len(orphans) == 1
    (again,) = [t for t in trials if t.system_attrs.get("failed_trial") == orphans[0].number]
    assert again.params == orphans[0].params and counts_towards_total(again)
    assert TrialRecord.of(again).worker != TrialRecord.of(orphans[0]).worker
    _check_plan(study, n_trials=3, repeats=0)
    ledger.kill("one of two workers mid-trial")
    ledger.checked(len(trials))


def test_a_server_that_goes_away_is_said_in_one_line_and_the_study_is_there_when_it_is_back(
    tiny_data, database, server, tmp_path, run_cli
):
    mapped = tiny_probe_args(tiny_data, "--storage", database, "--study-name", NAME, "--limits-only", "--json")
    code, first, err = run_cli(*mapped)  # the study, its memory limits stored
    assert code == 0, err
    server.stop()
    try:
        code, _, err = run_cli(*mapped)
        assert code == 2 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and "Cannot open the study storage" in err
    finally:
        server.start()
    code, again, err = run_cli(*mapped)  # nothing lost, nothing new: the stored limits, not a new empty study
    assert code == 0 and "mapped before" in err and json.loads(again)["frontier"] == json.loads(first)["frontier"], err


def test_a_server_restarted_mid_trial_is_ridden_out_one_that_stays_away_is_one_line_and_the_rerun_finishes(
    tiny_data, database, server, tmp_path, ledger
):
    folder = tmp_path / "a"
    worker = _worker(tiny_data, database, folder, "--n-trials", "2")
    assert wait_until(lambda: worker.poll() is not None or _trial_process(worker.pid), 120, step=0.05)
    first = _trial_process(worker.pid)
    os.kill(first, signal.SIGSTOP)  # the first trial holds still (a long training, in short) while the server
    try:  # restarts: its heartbeats (1 s) miss, the worker's connections die
        server.stop()
        time.sleep(1.2)  # the outage: longer than a heartbeat interval, so at least one beat fails
        server.start()
        storage = optuna.storages.RDBStorage(database, heartbeat_interval=1, grace_period=4)  # another worker's view
        watcher = optuna.load_study(study_name=NAME, storage=storage)
        trial_id = watcher.trials[0]._trial_id
        # the event: a heartbeat after the restart (one that stopped at the restart never comes, and the wait fails)
        assert wait_until(lambda: (age := heartbeat_age(storage, trial_id)) is not None and age < 1.0, 30, step=0.1), \
            "no heartbeat reached the database after its restart"
        assert watcher.trials[0].state == TrialState.RUNNING
        optuna.storages.fail_stale_trials(watcher)  # what another worker does at each trial start
        assert watcher.trials[0].state == TrialState.RUNNING  # its heartbeat went on after the restart
    finally:
        os.kill(first, signal.SIGCONT)
    assert wait_until(lambda: worker.poll() is not None or _trial_process(worker.pid) not in (None, first), 120)
    assert worker.poll() is None, (folder / "tuner.log").read_text()[-3000:]  # ridden out: the next trial trains
    server.stop()  # now the server stays away until the worker gives up
    try:
        code = worker.wait(timeout=120)
    finally:
        server.start()
    text = (folder / "tuner.log").read_text()
    errors = [line for line in text.splitlines() if line.startswith("tuner: error:")]
    assert code == 2 and "Traceback" not in text and errors == text.strip().splitlines()[-1:], text[-3000:]
    assert "Lost the study storage" in errors[0]
    study = optuna.load_study(study_name=NAME, storage=database)
    restarted = study.trials[0]
    assert restarted.state == TrialState.COMPLETE and restarted.system_attrs.get("failed_trial") is None
    _finish(_worker(tiny_data, database, folder, "--n-trials", "2"), folder)  # the same command, server back
    study = optuna.load_study(study_name=NAME, storage=database)
    _check_plan(study, n_trials=2, repeats=0)
    ledger.survived("PostgreSQL restarted mid-trial")
    ledger.survived("PostgreSQL going away mid-study")
    ledger.checked(len(study.get_trials()))
