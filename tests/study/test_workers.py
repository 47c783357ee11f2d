"""Many workers on one study (tuner.study.workers): each place of the plan filled exactly once, orphans of a dead
worker finished by another, the memory limits mapped by one worker while the others wait.

Workers here are threads with their own storage connection to one real SQLite study, and fake probe runners
(tests/test_search.py); real processes on a real PostgreSQL server are in test_postgres.py."""

from __future__ import annotations

import dataclasses
import io
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY_NAME, repeats_owed, tiny_probe_args
from tests.fakes import FakePreflight, FakeProbe, inputs, quiet
from tuner.study import limits, workers
from tuner.study.open import open_study
from tuner.study.progress import Progress
from tuner.study.records import MappingLease, Race, StudyRecord, TrialRecord, counts_towards_total
from tuner.study.search import Search, main_trials_done
from tuner.study.space import enqueue_startup
from tuner.study.space import suggest


class SlowProbe(FakeProbe):
    """FakeProbe that takes `seconds`, so that workers' trials overlap."""

    def __init__(self, budget_mb: float, seconds: float, **kwargs) -> None:
        super().__init__(budget_mb, **kwargs)
        self.seconds = seconds

    def __call__(self, *args, **kwargs):
        time.sleep(self.seconds)
        return super().__call__(*args, **kwargs)


def _setup(tmp_path: Path, n_trials: int, repeats: int, race: int = 0, budget_mb: float = 2000, **cfg_changes):
    trials = inputs(tmp_path, budget_mb)
    probe = dataclasses.replace(trials.cfg.probe, repeats=repeats, race=race)
    cfg = dataclasses.replace(trials.cfg, n_trials=n_trials, probe=probe, **cfg_changes)
    trials = dataclasses.replace(trials, cfg=cfg)
    found = limits.map_limits(trials, quiet(), runner=FakePreflight(budget_mb))
    record = StudyRecord(config=cfg, device="cpu", budget_mb=budget_mb, stable_limit_mb=trials.stable_limit_mb,
                         limits=found.to_dict())  # fmt: skip
    url = f"sqlite:///{tmp_path / 's.db'}"
    study, _ = open_study("s", url, cfg, record)
    enqueue_startup(study, cfg, found)
    return trials, found, record, url, study


def _run_workers(count: int, trials, found, record, url, runner_of) -> list[BaseException]:
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            study, _ = open_study("s", url, trials.cfg, record)  # each worker its own connection, as a process has
            Search(study, trials, quiet(), found, runner=runner_of(index), worker=f"test:{index}").run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker never finished"
    return errors


def _placed(study: optuna.Study) -> list:
    """Trials that ran (or were inferred) in a place of the plan: not surplus, not orphans."""
    return [t for t in study.get_trials() if not TrialRecord.of(t).surplus and t.state != TrialState.FAIL]


def test_three_workers_finish_exactly_n_trials_and_each_repeat_once(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "WAIT_POLL_S", 0.05)
    trials, found, record, url, study = _setup(tmp_path, n_trials=7, repeats=2)
    runners = [SlowProbe(2000, 0.05 * (index + 1)) for index in range(3)]
    assert _run_workers(3, trials, found, record, url, lambda index: runners[index]) == []
    every = study.get_trials()
    assert main_trials_done(study) == 7
    assert not [t for t in every if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    repeats = [t for t in every if TrialRecord.of(t).repeat_of is not None and counts_towards_total(t)]
    owed = repeats_owed(every, 2)
    assert len(repeats) == owed and len({TrialRecord.of(t).repeat_of for t in repeats}) == owed
    slots = Counter(TrialRecord.of(t).slot for t in _placed(study) if TrialRecord.of(t).slot)
    assert slots and all(count == 1 for count in slots.values()), slots  # the startup design and repeats ran once
    ran = sum(len(runner.ran) for runner in runners)
    assert ran == len([t for t in every if "log" in t.user_attrs]) == 7 + owed  # no process beyond the plan
    assert len({TrialRecord.of(t).worker for t in every if "log" in t.user_attrs}) >= 2  # the work was shared


def test_a_surplus_trial_records_why_and_counts_for_nothing(tmp_path):
    trials, found, record, url, study = _setup(tmp_path, n_trials=2, repeats=0)
    enqueue_startup(study, trials.cfg, found)  # a second worker queueing the same design: nothing is added
    assert len(study.get_trials()) == 2
    study.enqueue_trial({"imgsz": 160, "batch": 2, "mosaic": 1.0, "mixup": 0.0}, user_attrs={"slot": "startup:0"})
    Search(study, trials, quiet(), found, runner=FakeProbe(2000)).run()  # the duplicate of startup:0 is popped
    every = study.get_trials()
    surplus = [t for t in every if TrialRecord.of(t).surplus]
    assert [t.number for t in surplus] == [2] and surplus[0].state == TrialState.FAIL
    assert "trial 0 already fills startup:0" in TrialRecord.of(surplus[0]).surplus
    assert "log" not in surplus[0].user_attrs and main_trials_done(study) == 2


def test_draining_the_queue_starts_no_main_trial_where_another_worker_took_what_was_queued(tmp_path, monkeypatch):
    # the main trials have ended (here: the budget fell after the design); this worker counted one queued trial,
    # another popped it first, and Optuna's optimize then samples a new trial: it must not run
    trials, found, record, url, study = _setup(tmp_path, n_trials=5, repeats=0)
    other, _ = open_study("s", url, trials.cfg, record)
    while workers.open_work(study.get_trials())[1]:
        other.tell(other.ask(), state=TrialState.PRUNED)  # the other worker took every queued trial
    counted = iter([(0, 1)])  # what this worker read just before
    real = workers.open_work
    monkeypatch.setattr(workers, "open_work", lambda t: next(counted, None) or real(t))
    fake = FakeProbe(2000)
    search = Search(study, trials, quiet(), found, runner=fake)
    search._drain()
    fresh = study.get_trials()[-1]
    assert "another worker took the queued trial" in (TrialRecord.of(fresh).surplus or ""), fresh.user_attrs
    assert fresh.state == TrialState.FAIL and "log" not in fresh.user_attrs
    assert workers.from_queue(study.get_trials()[0]) and not workers.from_queue(fresh)


def test_a_dead_workers_trial_is_failed_by_its_heartbeat_and_run_again_by_another(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "WAIT_POLL_S", 0.2)
    trials, found, record, url, study = _setup(tmp_path, n_trials=3, repeats=0, heartbeat_interval=1, grace_period=2)
    dead, _ = open_study("s", url, trials.cfg, record)
    orphan = dead.ask()  # a worker pops startup:0, records its heartbeat once, and dies mid-trial
    suggest(orphan, trials.cfg.space)
    dead._storage.record_heartbeat(orphan._trial_id)
    assert TrialRecord.of(orphan).slot == "startup:0"
    started = time.monotonic()
    Search(study, trials, quiet(), found, runner=FakeProbe(2000)).run()
    every = study.get_trials()
    assert every[0].state == TrialState.FAIL and not counts_towards_total(every[0])
    again = [t for t in every if t.system_attrs.get("failed_trial") == 0]
    assert len(again) == 1 and again[0].params == every[0].params and counts_towards_total(again[0])
    assert main_trials_done(study) == 3 and not [t for t in every if t.state == TrialState.RUNNING]
    assert time.monotonic() - started >= 2  # it waited for the heartbeat to go stale, not less


@pytest.mark.parametrize("created_before", [True, False], ids=["joining-a-study", "creating-it"])
def test_one_worker_maps_the_limits_while_the_others_wait_for_its_result(tmp_path, monkeypatch, created_before):
    monkeypatch.setattr(workers, "LEASE_SETTLE_S", 0.5)  # longer than a write can wait for another's under load
    monkeypatch.setattr(workers, "WAIT_POLL_S", 0.05)
    from tuner.study import open as study_open

    trials = inputs(tmp_path, 2000)
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000, stable_limit_mb=trials.stable_limit_mb)
    url = f"sqlite:///{tmp_path / 's.db'}"
    if created_before:  # all three join: they settle who maps; else the one that creates it maps at once
        open_study("s", url, trials.cfg, record)
    preflights = FakePreflight(2000)
    real_map = limits.map_limits
    monkeypatch.setattr(limits, "map_limits",
                        lambda inputs, progress, **kw: (time.sleep(0.3), real_map(inputs, progress, runner=preflights, **kw))[1])
    found: list = []
    creators: list = []

    def work() -> None:
        study, created = open_study("s", url, trials.cfg, record)
        creators.append(created)
        found.append(study_open.mapped_limits(study, trials, quiet(), created=created))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert creators.count(True) == (0 if created_before else 1)
    assert len(found) == 3 and found[0].to_dict() == found[1].to_dict() == found[2].to_dict()
    assert len(preflights.specs) == len(real_map(trials, quiet(), runner=FakePreflight(2000)).frontier.measurements)
    study = optuna.load_study(study_name="s", storage=url)
    assert len(study.get_trials()) == len({TrialRecord.of(t).slot for t in study.get_trials()})  # the design, once
    assert StudyRecord.of(study).mapping_lease is None and StudyRecord.of(study).mapping is None  # released, and done


def test_a_lease_whose_holder_stopped_renewing_it_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "LEASE_SETTLE_S", 0.01)
    monkeypatch.setattr(workers, "LEASE_STALE_S", 0.3)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'l.db'}", study_name="l")
    now = [0.0]
    first, second = workers.Lease(study, "a:1"), workers.Lease(study, "b:2", clock=lambda: now[0])
    assert first.acquire() and not second.acquire()
    assert second.holder() == "a:1"
    now[0] += 0.29
    assert second.holder() == "a:1"  # unrenewed, but not for LEASE_STALE_S yet
    now[0] += 0.02  # a:1 died: its beat has not changed for longer than LEASE_STALE_S on b:2's clock
    assert second.holder() is None and second.acquire() and not first.acquire()


@pytest.mark.integration
def test_probe_with_two_workers_on_this_machine_shares_the_budget_and_the_plan(workdir, tiny_data, run_cli):
    code, out, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2", "--repeats", "1", "--race", "0",
                                              "--workers", "2", "--memory-budget", "6GB"))  # fmt: skip
    assert code == 0, err
    assert "memory budget 6GB (5722 MiB), shared by 2 workers: 2861 MiB each" in err
    study = optuna.load_study(study_name=TINY_NAME, storage=f"sqlite:///{workdir / 'studies' / f'{TINY_NAME}.db'}")
    every = study.get_trials()
    assert StudyRecord.of(study).budget_mb == pytest.approx(2861, abs=1)  # each trial's budget
    assert main_trials_done(study) == 2
    assert len([t for t in every if TrialRecord.of(t).repeat_of is not None and counts_towards_total(t)]) == 1
    assert not [t for t in every if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({TrialRecord.of(t).worker for t in every if "log" in t.user_attrs}) == 2
    log = workdir / "studies" / TINY_NAME / "workers" / "worker-1.log"
    assert "Memory limits mapped before" in log.read_text()  # the worker joined the study its starter mapped
    assert (workdir / "results" / TINY_NAME / "best.yaml").is_file()
    assert not (workdir / "studies" / TINY_NAME / "workers" / "results").exists()


def test_workers_below_one_is_one_line_and_exit_2(workdir, tiny_data, run_cli):
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--workers", "0"))
    assert code == 2 and "--workers" in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "studies").exists()


def test_workers_are_pinned_one_per_cuda_card_where_there_are_enough_else_they_share_the_device(monkeypatch):
    from tuner.memory.device import Device

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # every card of the machine in sight

    cards = Device(kind="cuda", index=0, name="RTX 3060", total_memory=12 * 2**30, count=2)
    cpu = Device(kind="cpu", index=None, name="x86", total_memory=24 * 2**30)
    assert workers.layout(cards, 1, "auto") == "alone"
    assert workers.layout(cards, 2, "auto") == workers.layout(cards, 2, "cuda") == "pinned"
    assert workers.layout(cards, 3, "auto") == "shared"  # more workers than cards: they share card 0
    assert workers.layout(cards, 2, "cuda:1") == "shared"  # a card named: all on it
    assert workers.layout(cpu, 2, "cpu") == "shared"
    assert workers.layout(cpu, 2, "cpu", worker="pinned") == "pinned"  # a started worker keeps its starter's layout
    assert workers.pinned_env("pinned", 1) == {"CUDA_VISIBLE_DEVICES": "1"} and workers.pinned_env("shared", 1) == {}
    command = workers.worker_command(["probe", "--workers", "2", "--json", "--limits-only", "--n-trials", "4"], "shared")
    assert command[3:] == ["probe", "--workers", "2", "--n-trials", "4", "--worker", "shared"]


def test_a_heartbeat_that_cannot_reach_the_database_is_skipped_and_the_next_one_tries_again(tmp_path, monkeypatch):
    """Optuna's heartbeat thread ends at its first error; a database restarted mid-trial would then leave the trial
    stale, and another worker would fail and re-run it while it trains (real restart: test_postgres.py)."""
    import sqlalchemy

    from tuner.study import storage as storages

    opened = storages.open_storage(f"sqlite:///{tmp_path / 'h.db'}", create=True, heartbeat_interval=1, grace_period=4)
    trial_id = optuna.create_study(storage=opened, study_name="h").ask()._trial_id
    beats = []

    def flaky(self, trial_id: int) -> None:
        beats.append(trial_id)
        if len(beats) == 1:
            raise sqlalchemy.exc.OperationalError("UPDATE trial_heartbeats", {}, Exception("server closed the connection"))
        if len(beats) == 3:
            raise ValueError("a bug, not the database")

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", flaky)
    opened.record_heartbeat(trial_id)  # the database is away: skipped
    opened.record_heartbeat(trial_id)  # back: recorded
    with pytest.raises(ValueError):
        opened.record_heartbeat(trial_id)  # anything else is not swallowed
    assert beats == [trial_id] * 3


def test_the_study_creator_looks_at_once_and_only_a_joiner_waits_for_the_creator_first(tmp_path, monkeypatch):
    from tuner.study import open as study_open

    slept: list[float] = []
    real_map = limits.map_limits
    monkeypatch.setattr(workers, "LEASE_SETTLE_S", 7.0)  # a wait no other sleep of the mapping path has
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(limits, "map_limits", lambda inputs, progress, **kw: real_map(inputs, progress, runner=FakePreflight(2000), **kw))
    trials = inputs(tmp_path, 2000)
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000, stable_limit_mb=trials.stable_limit_mb)
    study, created = open_study("new", f"sqlite:///{tmp_path / 'new.db'}", trials.cfg, record)
    assert created and study_open.mapped_limits(study, trials, quiet(), created=created).frontier.measurements
    assert slept.count(7.0) == 1  # the creator only read its lease back

    slept.clear()
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'joined.db'}", study_name="joined")  # made by another worker
    study, created = open_study("joined", f"sqlite:///{tmp_path / 'joined.db'}", trials.cfg, record)
    assert not created and study_open.mapped_limits(study, trials, quiet(), created=created).frontier.measurements
    assert slept.count(7.0) == 2  # before its first look, and after writing its claim



def test_the_creator_reads_its_lease_back_and_leaves_one_a_joiner_took_first(tmp_path, monkeypatch):
    """A joiner that found no lease after its wait (the creator was slow to look) holds it: the creator must not
    write over it and map too."""
    monkeypatch.setattr(workers, "LEASE_SETTLE_S", 0.01)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'l.db'}", study_name="l")
    joiner, creator = workers.Lease(study, "b:2"), workers.Lease(study, "a:1")
    assert joiner.acquire()
    assert not creator.acquire(creator=True) and creator.holder() == "b:2"
    assert StudyRecord.of(study).mapping_lease.worker == "b:2"


def test_a_lease_taken_over_is_neither_renewed_nor_released_by_its_old_holder(tmp_path, monkeypatch):
    """Its holder stalled past LEASE_STALE_S and another worker took it over: the old holder's beat must not write
    its own back (both would map), nor its end clear the new holder's."""
    monkeypatch.setattr(workers, "LEASE_SETTLE_S", 0.01)
    monkeypatch.setattr(workers, "LEASE_BEAT_S", 0.02)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'l.db'}", study_name="l")
    stalled = workers.Lease(study, "a:1")
    assert stalled.acquire()
    with stalled.held():
        StudyRecord(mapping_lease=MappingLease("b:2", "b-token", time.time())).save(study, "mapping_lease")
        time.sleep(0.2)  # several beats of the old holder
        assert StudyRecord.of(study).mapping_lease.worker == "b:2"
    assert StudyRecord.of(study).mapping_lease.worker == "b:2"


def _dead_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_a_lease_left_by_a_dead_process_of_this_host_is_taken_at_once(tmp_path, monkeypatch):
    """tuner SIGKILLed mid-mapping left its lease: the re-run on the same host sees that its pid is gone, and maps
    without waiting for the lease to go stale (LEASE_STALE_S) under the dead worker's name."""
    from tuner.study import open as study_open

    monkeypatch.setattr(workers, "LEASE_SETTLE_S", 0.01)
    monkeypatch.setattr(workers, "LEASE_STALE_S", 600.0)
    real_map = limits.map_limits
    monkeypatch.setattr(limits, "map_limits", lambda inputs, progress, **kw: real_map(inputs, progress, runner=FakePreflight(2000), **kw))
    trials = inputs(tmp_path, 2000)
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=2000, stable_limit_mb=trials.stable_limit_mb)
    study, _ = open_study("s", f"sqlite:///{tmp_path / 's.db'}", trials.cfg, record)
    dead = f"{socket.gethostname()}:{_dead_pid()}"
    StudyRecord(mapping_lease=MappingLease(dead, "its-token", time.time())).save(study, "mapping_lease")
    assert workers.Lease(study).holder() is None
    assert workers.Lease(study, "elsewhere:1").holder() is None  # any reader on this host
    said = io.StringIO()
    started = time.monotonic()
    found = study_open.mapped_limits(study, trials, Progress(1, 1, "mAP50-95", stream=said))
    assert found.frontier.measurements and time.monotonic() - started < 30
    assert f"Worker {dead} is mapping" not in said.getvalue()
    other_host = workers.Lease(study)
    StudyRecord(mapping_lease=MappingLease("another-host:1", "t", time.time())).save(study, "mapping_lease")
    assert other_host.holder() == "another-host:1"  # a pid of another machine cannot be checked: live until stale


class Killed(BaseException):
    """The mapping worker's end, mid-mapping (as a SIGKILL would end it: no result stored)."""


class DiesAfter(FakePreflight):
    """FakePreflight whose worker dies as it starts pre-flight number `count` + 1."""

    def __init__(self, budget_mb: float, count: int) -> None:
        super().__init__(budget_mb)
        self.count = count

    def __call__(self, *args, **kwargs):
        if len(self.specs) == self.count:
            raise Killed()
        return super().__call__(*args, **kwargs)


def test_each_preflight_is_stored_as_it_finishes_and_a_rerun_goes_on_from_there(tmp_path, monkeypatch):
    from tuner.study import open as study_open

    monkeypatch.setattr(workers, "LEASE_SETTLE_S", 0.01)
    trials = inputs(tmp_path, 1200)
    whole = limits.map_limits(trials, quiet(), runner=FakePreflight(1200))
    assert len(whole.frontier.measurements) > 4
    runner: list[FakePreflight] = [DiesAfter(1200, 3)]
    real_map = limits.map_limits
    monkeypatch.setattr(limits, "map_limits", lambda inputs, progress, **kw: real_map(inputs, progress, runner=runner[0], **kw))
    record = StudyRecord(config=trials.cfg, device="cpu", budget_mb=1200, stable_limit_mb=trials.stable_limit_mb)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study, created = open_study("s", url, trials.cfg, record)
    with pytest.raises(Killed):
        study_open.mapped_limits(study, trials, quiet(), created=created)
    stored = limits.Mapping.from_dict(StudyRecord.of(study).mapping)
    assert stored.measurements == whole.frontier.measurements[:3]  # each one stored as it finished
    runner[0] = FakePreflight(1200)
    study, created = open_study("s", url, trials.cfg, record)
    found = study_open.mapped_limits(study, trials, quiet(), created=created)
    assert len(runner[0].specs) == len(whole.frontier.measurements) - 3  # only those not measured before
    assert found.frontier == whole.frontier
    assert StudyRecord.of(study).mapping is None  # the limits hold them now


def test_a_pinned_worker_gets_its_card_among_the_cards_its_starter_was_given(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert workers.pinned_env("pinned", 1) == {"CUDA_VISIBLE_DEVICES": "3"}
    envs = []
    monkeypatch.setattr(workers.subprocess, "Popen", lambda command, **kwargs: envs.append(kwargs["env"]) or SimpleNamespace())
    workers.spawn(["probe", "--workers", "2"], 1, tmp_path, "pinned")
    assert envs[0]["CUDA_VISIBLE_DEVICES"] == "3"  # card 2 is the starter's, card 1 is not this run's at all


def test_a_worker_writes_only_the_study_attrs_it_changed(tmp_path):
    """Several workers write one study: a record read earlier and written back whole would undo another's change."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}", study_name="r")
    StudyRecord(budget_mb=2000.0, stable_limit_mb=1800.0).save(study)
    earlier = StudyRecord.of(study)  # one worker's read
    StudyRecord(outside_kill_mb=1300.0, stable_limit_mb=1170.0).save(study, "outside_kill_mb", "stable_limit_mb")  # another's
    dataclasses.replace(earlier, race=Race((0, 1), 2, "settled")).save(study, "race")
    after = StudyRecord.of(study)
    assert (after.budget_mb, after.stable_limit_mb, after.outside_kill_mb, after.race.verdict) == (2000.0, 1170.0, 1300.0, "settled")
    StudyRecord().save(study, "race")  # a name without a value clears it
    assert StudyRecord.of(study).race is None and StudyRecord.of(study).stable_limit_mb == 1170.0
