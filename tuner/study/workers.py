"""Many workers on one study: each place in the study's plan is filled exactly once.

Any number of `tuner probe` processes, on one machine or many, can share a study through its storage.
Together they run exactly `n_trials` counted trials, plus each noise repeat and race run once. Optuna
numbers trials in the order the storage creates them, the same for every worker; that order settles
every tie:

- a main trial takes a place when fewer than `n_trials` earlier main trials hold one (running, or
  finished and counted); a later one is `surplus`, recorded as such and never run;
- an enqueued trial (the startup design, a repeat, a race run) carries a `slot` name, and only the
  first trial of a slot runs, so a plan two workers enqueued at once still runs once.

A worker waits while places are held by trials still running elsewhere: one of them may belong to a
worker that died, and when its heartbeat goes stale Optuna fails it and queues its config again
(tuner.study.storage), for whichever worker is still there.

The memory limits are mapped once per study, by the first worker to hold the mapping lease (a study
attr it renews while the pre-flights run); the others wait for the stored result, and take the lease
over if it goes unrenewed, or at once where its worker was a process of their own host that is gone.
`tuner probe --workers N` maps the limits, then starts N-1 more workers on this machine (`spawn`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from tuner.study.records import MappingLease, StudyRecord, TrialRecord, counts_towards_total, holds_place, retried

LEASE_BEAT_S = 10.0  # how often the mapping worker renews its lease
LEASE_STALE_S = 60.0  # a lease unrenewed for this long (on the waiting worker's own clock) is taken over
LEASE_SETTLE_S = 2.0  # after writing a lease, wait this long and read it back: the last writer holds it
WAIT_POLL_S = 5.0  # how often a waiting worker looks at the study again


def worker_id() -> str:
    """`host:pid`, what a trial records as the worker that ran it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_main(trial: FrozenTrial) -> bool:
    return TrialRecord.of(trial).repeat_of is None


def main_trials_done(trials: Iterable[FrozenTrial]) -> int:
    """Main trials (not noise repeats) that finished and count towards n_trials."""
    trials = list(trials)
    again = retried(trials)
    return sum(1 for t in trials if is_main(t) and counts_towards_total(t, again))


def places_taken(trials: Iterable[FrozenTrial], before: int | None = None) -> int:
    """Main trials (numbered below `before`) that hold a place towards n_trials: counted, or still running."""
    trials = list(trials)
    again = retried(trials)
    return sum(
        1
        for t in trials
        if (before is None or t.number < before)
        and is_main(t)
        and not TrialRecord.of(t).inferred
        and (counts_towards_total(t, again) or (t.state == TrialState.RUNNING and not TrialRecord.of(t).surplus))
    )


def surplus_reason(trial: FrozenTrial | optuna.Trial, trials: list[FrozenTrial], n_trials: int) -> str | None:
    """Why `trial` must not run because another trial fills its place, or None when it is its to fill."""
    record = TrialRecord.of(trial)
    earlier = [t for t in trials if t.number < trial.number]
    if record.slot is not None:
        again = retried(trials)
        first = next((t for t in earlier if TrialRecord.of(t).slot == record.slot and holds_place(t, again)), None)
        if first is not None:
            return f"trial {first.number} already fills {record.slot}"
    if record.repeat_of is None and places_taken(earlier) >= n_trials:
        return f"the study's {n_trials} trials were taken by other workers"
    return None


def from_queue(trial: FrozenTrial) -> bool:
    """Whether `trial` was queued (enqueue_trial, or Optuna's copy of an orphan its heartbeat failed), not sampled."""
    retried_from = optuna.storages.RetryFailedTrialCallback.retried_trial_number(trial)
    return "fixed_params" in trial.system_attrs or retried_from is not None


def race_runs(trials: list[FrozenTrial]) -> int:
    """Runs spent racing over the whole study: trials of a `race:K` slot that ran or run (not surplus, not orphans)."""
    again = retried(trials)
    return len({TrialRecord.of(t).slot for t in trials if (TrialRecord.of(t).slot or "").startswith("race:")
                and holds_place(t, again)})  # fmt: skip


def free_race_slot(trials: list[FrozenTrial], race: int) -> str | None:
    """The first `race:K` place (K up to `race`) that no trial holds. A race run that lost its place (an orphan its
    heartbeat failed and no copy replaced) leaves a gap below the places still held, and the next run fills it: the
    count of places held, not the highest number, is what the race has spent."""
    again = retried(trials)
    held = {TrialRecord.of(t).slot for t in trials if holds_place(t, again)}
    return next((f"race:{k}" for k in range(1, race + 1) if f"race:{k}" not in held), None)


def open_work(trials: Iterable[FrozenTrial]) -> tuple[int, int]:
    """(running, waiting) trials of the study: work some worker still has to finish."""
    states = [t.state for t in trials]
    return states.count(TrialState.RUNNING), states.count(TrialState.WAITING)


def enqueue(study: optuna.Study, params: dict, slot: str, record: TrialRecord = TrialRecord()) -> bool:
    """Queue `params` for the place `slot` unless a trial already holds it; True when queued."""
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    if any(TrialRecord.of(t).slot == slot and holds_place(t, again) for t in trials):
        return False
    study.enqueue_trial(params, user_attrs=dataclasses.replace(record, slot=slot).attrs())
    return True


# ------------------------------------------------------------------------------------- the mapping lease


class Lease:
    """Who maps the study's memory limits: a study attr (records.MappingLease) renewed every LEASE_BEAT_S seconds
    while its holder works. Staleness is judged on the reader's clock (how long the beat has not changed), so
    clocks of other machines do not matter; a lease of a process of this host that no longer runs (a tuner killed
    while it mapped) is free at once."""

    def __init__(self, study: optuna.Study, worker: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.study = study
        self.clock = clock  # the reader's own clock, for how long a beat has not changed
        self.worker = worker or worker_id()
        self.token = uuid.uuid4().hex
        self._seen: tuple[object, float] | None = None  # (the beat last read, when it was read, our clock)
        self._looked = False

    def _read(self) -> MappingLease | None:
        return StudyRecord.of(self.study).mapping_lease

    def _write(self, lease: MappingLease | None) -> None:
        StudyRecord(mapping_lease=lease).save(self.study, "mapping_lease")

    def _ours(self) -> MappingLease:
        return MappingLease(self.worker, self.token, time.time())

    def holder(self) -> str | None:
        """The worker holding a live lease (not this one), or None when the lease is free or stale."""
        lease = self._read()
        if lease is None or lease.token == self.token or _gone(lease.worker):
            return None
        now = self.clock()
        if self._seen is None or self._seen[0] != lease.beat:
            self._seen = (lease.beat, now)
            return lease.worker
        return lease.worker if now - self._seen[1] < LEASE_STALE_S else None

    def acquire(self, creator: bool = False) -> bool:
        """Take the lease if nobody else holds it; True when this worker now holds it.

        A worker writes its own lease, waits LEASE_SETTLE_S and reads it back: of workers that wrote at the same
        time, the last writer holds it. The study's creator (the storage lets only one create it) does so at its
        first look; a worker that joins a new study first gives the creator LEASE_SETTLE_S to write. Why the creator
        reads back too: a joiner that found no lease after that wait writes its own, and two holders would both map."""
        if not self._looked and not creator:  # the first look of a joining worker: the creator may be about to write
            time.sleep(LEASE_SETTLE_S)
        self._looked = True
        if self.holder() is not None:
            return False
        self._write(self._ours())
        time.sleep(LEASE_SETTLE_S)
        return self._held_here()

    def _held_here(self) -> bool:
        lease = self._read()
        return lease is not None and lease.token == self.token

    @contextmanager
    def held(self) -> Iterator[None]:
        """Renew the lease in the background while the block runs; release it at the end. Only while it is ours: a
        worker that took it over (this one stalled past LEASE_STALE_S) keeps it."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(LEASE_BEAT_S):
                try:
                    if self._held_here():
                        self._write(self._ours())
                except Exception:  # the storage went away for a moment: the next beat tries again
                    pass

        thread = threading.Thread(target=beat, name="tuner-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if self._held_here():
                self._write(None)


def _gone(worker: str) -> bool:
    """Whether `worker` (host:pid) was a process of this host that no longer runs."""
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


# ------------------------------------------------------------------------------- workers on this machine


def layout(device, workers: int, requested: str | None, worker: str | None = None) -> str:
    """How `workers` workers on this machine use its devices: "alone" (one worker), "pinned" (each its own CUDA
    card, where there are that many and no card was named) or "shared" (one device, the budget split). A worker
    that --workers started is told its starter's layout (`worker`)."""
    if worker is not None:
        return worker
    if workers <= 1:
        return "alone"
    if device.kind == "cuda" and device.count >= workers and (requested or "auto") in ("auto", "cuda"):
        return "pinned"
    return "shared"


def pinned_env(kind: str, index: int) -> dict[str, str]:
    """The environment of a "pinned" worker: only the `index`-th card this process sees. Where this process was
    given CUDA_VISIBLE_DEVICES ("2,3"), index 1 is card 3 of it, not card 1 of the machine."""
    if kind != "pinned":
        return {}
    visible = [card.strip() for card in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if card.strip()]
    return {"CUDA_VISIBLE_DEVICES": visible[index] if visible else str(index)}


def worker_command(argv: list[str], kind: str) -> list[str]:
    """The command of one more worker: this `tuner probe` command (`--workers N` kept, so that a shared
    budget is split alike), joining the study it created; `kind` is "shared" or "pinned" (to one CUDA card)."""
    keep = [arg for arg in argv if arg not in ("--json", "--limits-only")]
    return [sys.executable, "-m", "tuner", *keep, "--worker", kind]


def spawn(argv: list[str], count: int, logs: Path, kind: str) -> list[tuple[subprocess.Popen, Path]]:
    """Start `count` more workers of the command `argv`, each logging to `logs/worker-K.log`; a "pinned" worker K
    sees only CUDA card K (the starter keeps card 0)."""
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    for index in range(1, count + 1):
        log = logs / f"worker-{index}.log"
        handle = open(log, "a")
        process = subprocess.Popen(
            worker_command(argv, kind), stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **pinned_env(kind, index)}
        )
        handle.close()
        started.append((process, log))
    return started
