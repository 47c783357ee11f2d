"""`tuner probe` end to end with real Ultralytics training at tiny size, real kills and real SQLite."""

from __future__ import annotations

import dataclasses
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import optuna_dashboard
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import TINY_NAME, has_loaded_torch, heartbeat_age, tiny_probe_args, trial_processes, wait_until
from tuner import config as tuner_config
from tuner.commands import probe as probe_command
from tuner.memory import device as devices
from tuner.review import findings
from tuner.study import selection, training_time
from tuner.study.records import StudyRecord, TrialRecord

pytestmark = pytest.mark.integration


def load(workdir: Path, name: str = TINY_NAME) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / f'{name}.db'}")


def by_outcome(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    groups: dict[str, list] = {}
    for trial in study.trials:
        groups.setdefault(trial.user_attrs.get("outcome", trial.state.name), []).append(trial)
    return groups


SOCKET_GUARD = """
import os, socket
_log = os.environ["TUNER_NET_LOG"]
def _record(what, *args):
    with open(_log, "a") as handle:
        handle.write(f"{os.getpid()} {what} {args!r}\\n")
    raise OSError("network access blocked by the tuner test")
socket.socket.connect = lambda self, *a: _record("connect", *a)
socket.socket.connect_ex = lambda self, *a: _record("connect_ex", *a)
socket.getaddrinfo = lambda *a, **k: _record("getaddrinfo", *a)
socket.create_connection = lambda *a, **k: _record("create_connection", *a)
with open(_log + ".loaded", "a") as handle:
    handle.write(f"{os.getpid()}\\n")
"""


@pytest.fixture
def network_guard(workdir, monkeypatch) -> Path:
    """Every Python process started from here on records and refuses any network access (its log, returned,
    must stay absent); each records that it ran under the guard in `<log>.loaded`."""
    guard = workdir / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    log = workdir / "net.log"
    # the guard first, then the caller's path: a worktree run with PYTHONPATH=<its checkout> keeps its own tuner
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TUNER_NET_LOG", str(log))
    # the guard works: a plain connection attempt is recorded
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80))"])
    assert probe.returncode != 0 and "create_connection" in log.read_text()
    log.unlink()
    (workdir / "net.log.loaded").unlink()
    return log


def test_probe_completes_trials_writes_the_best_stable_config_and_never_touches_the_network(
    workdir, tiny_data, run_cli, network_guard
):
    code, out, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2", "--repeats", "1", "--json"))
    assert code == 0, err
    study = load(workdir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for trial in study.trials:
        assert trial.user_attrs["outcome"] == "ok"
        assert 200 < trial.user_attrs["peak_mem_mb"] < 4000
        assert trial.user_attrs["batch_used"] == trial.params["batch"]
        assert trial.intermediate_values.keys() == {1}
        assert Path(trial.user_attrs["log"]).is_file()
        progress = Path(trial.user_attrs["log"]).with_name("progress.jsonl").read_text().splitlines()
        assert json.loads(progress[0])["threads"] == min(8, os.cpu_count())  # all cores, not cores - 1
    assert study.trials[2].user_attrs["repeat_of"] in (0, 1)  # the noise repeat
    assert study.user_attrs["noise"]["pairs"]
    assert study.user_attrs["config"]["space"]["imgsz"] == [64]
    assert study.metric_names == ["mAP50-95"]

    best_file = workdir / "results" / TINY_NAME / "best.yaml"
    best = yaml.safe_load(best_file.read_text())
    assert best["imgsz"] == 64 and best["batch"] in (2, 4)
    # every argument train-best trains with, so that `yolo train cfg=best.yaml` trains what was measured
    assert best["nbs"] == best["batch"] and best["epochs"] == 40 and best["close_mosaic"] == 10
    assert (best["optimizer"], best["lr0"], best["warmup_epochs"]) == ("AdamW", 0.0003, 3.0)
    from ultralytics.cfg import get_cfg

    assert get_cfg(overrides=best).nbs == best["batch"]  # Ultralytics accepts every key and value
    assert best["data"] == study.user_attrs["data_path"] and Path(best["data"]).is_file()
    assert "Best stable config" in best_file.read_text().splitlines()[0]
    assert study.user_attrs["best"]["best_yaml"] == str(Path("results") / TINY_NAME / "best.yaml")
    assert '"best"' in out  # --json summary on stdout
    loaded = (workdir / "net.log.loaded").read_text().split()
    assert len(loaded) >= 5  # the pre-flights and the trial processes all ran under the guard
    assert not network_guard.exists(), network_guard.read_text()


def test_trial_killed_from_outside_is_pruned_as_oom_and_the_study_goes_on(workdir, tiny_data, run_cli, trial_hook, ledger):
    with trial_hook(lambda process, index: process.send_signal(signal.SIGKILL), until=has_loaded_torch):
        code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2"))
    assert code == 0, err
    first, second = load(workdir).trials
    assert first.state == TrialState.PRUNED
    assert first.user_attrs["outcome"] == "oom"
    assert "SIGKILL" in first.user_attrs["oom_reason"]
    assert first.user_attrs["peak_mem_mb"] > 0
    assert second.state == TrialState.COMPLETE
    ledger.kill("probe trial once torch is loaded")
    ledger.checked(2)


def test_a_preflight_finds_the_config_that_does_not_fit_and_no_probe_trains_it(workdir, tiny_data, run_cli):
    # Measured on 2 cores: imgsz 64 / batch 8 peaks near 950 MB, imgsz 320 / batch 8 near 1250 MB.
    # The pre-flights put 320 over the budget; the startup design then runs 64 only, and later proposals of 320
    # are inferred OOMs that start no process.
    args = tiny_probe_args(tiny_data, "--n-trials", "3", "--memory-budget", "1150MB", "--safety-margin", "0")
    args[args.index("--imgsz") + 1] = "64,320"
    args[args.index("--batch") + 1] = "8"
    code, _, err = run_cli(*args)
    assert code == 0, err
    study = load(workdir)
    preflights = {(taken["imgsz"], taken["oom"]) for taken in study.user_attrs["limits"]["preflights"]}
    assert preflights == {(64, False), (320, True)}  # measured once each, before any probe
    assert "pre-flight imgsz 320 batch 8: out of memory (watchdog:" in err
    inferred = [t for t in study.trials if t.user_attrs.get("oom_cause") == "inferred"]
    fits = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert not [t for t in study.trials if t.user_attrs.get("oom_cause") == "watchdog"]  # no probe ran out
    assert all(t.params["imgsz"] == 320 and "pre-flights put the stable limit" in t.user_attrs["oom_reason"]
               and "peak_mem_mb" not in t.user_attrs and t.constraints["memory_mb"] > 0 for t in inferred)  # fmt: skip
    assert len(fits) == 3 and all(t.params["imgsz"] == 64 for t in fits)  # inferred trials do not count
    best = yaml.safe_load((workdir / "results" / TINY_NAME / "best.yaml").read_text())
    chosen = study.trials[study.user_attrs["best"]["trial"]]
    assert chosen.user_attrs["peak_mem_mb"] <= study.user_attrs["stable_limit_mb"]
    assert (best["imgsz"], best["batch"]) == (64, 8)
    frontier = {entry["batch"]: entry["imgsz"] for entry in study.user_attrs["limits"]["frontier"]}
    assert frontier == {8: 64}  # the best config is the largest that fits: on the frontier


def test_a_budget_no_config_fits_is_one_line_exit_1_no_trial_and_no_best_yaml(workdir, tiny_data, run_cli):
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2", "--memory-budget", "400MB"))
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("tuner: error: The smallest config, imgsz 64 batch 2,")
    assert load(workdir).trials == []  # no probe was started for configs the pre-flights ruled out
    assert not (workdir / "results" / TINY_NAME / "best.yaml").exists()


# A probe at imgsz 64 peaks near 545 MB of anonymous memory (RSS near 950 MB counts shared libraries,
# which the kernel can evict instead of killing). 400 MB leaves it no way out but the OOM killer.
CGROUP_LIMIT_MB = 400


def _memory_cgroup() -> Path:
    """A fresh child of this process's cgroup v1 memory cgroup, or skip."""
    root = Path("/sys/fs/cgroup/memory")
    if not root.is_dir():
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    lines = [line for line in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in line]
    if not lines:
        pytest.skip("this process is in no cgroup v1 memory cgroup")
    group = root / lines[0].split(":", 2)[2].lstrip("/") / f"tuner-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(CGROUP_LIMIT_MB * 2**20))
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here ({exc.strerror}); run as root on cgroup v1")
    return group


@pytest.mark.cgroup
def test_kernel_oom_kill_under_a_cgroup_memory_limit_is_pruned_as_oom(workdir, tiny_data, run_cli, trial_hook, ledger):
    group = _memory_cgroup()

    def confine(process, index):
        (group / "cgroup.procs").write_text(str(process.pid))

    try:
        with trial_hook(confine, limit=1):
            code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2"))
        failcnt = int((group / "memory.failcnt").read_text())
    finally:
        group.rmdir()
    assert code == 0, err
    first, second = load(workdir).trials
    assert failcnt > 0  # the kernel, not tuner, enforced the limit
    assert first.state == TrialState.PRUNED
    assert first.user_attrs["outcome"] == "oom"
    assert "SIGKILL" in first.user_attrs["oom_reason"]
    assert second.state == TrialState.COMPLETE
    ledger.kill("kernel OOM kill under a cgroup memory limit")
    ledger.checked(2)


def test_a_model_that_looks_like_a_checkpoint_but_is_not_stops_at_the_first_preflight(workdir, tiny_data, run_cli):
    broken = workdir / "broken.pt"
    import zipfile

    with zipfile.ZipFile(broken, "w") as archive:  # passes the look: a zip with the records torch.save writes
        archive.writestr("broken/data.pkl", "this is not a pickle")
        archive.writestr("broken/version", "3\n")
    args = tiny_probe_args(tiny_data, "--n-trials", "5")
    args[args.index("--model") + 1] = str(broken)
    code, _, err = run_cli(*args)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("tuner: error: The pre-flight of imgsz 64 batch") and " failed: " in last
    assert load(workdir, TINY_NAME.replace("-yolov8n-", "-broken-")).trials == []  # stopped before any trial, not after 5 failures


def test_tuner_killed_mid_study_then_rerun_keeps_trials_and_retries_the_orphan(workdir, tiny_data, ledger):
    (workdir / "fast-heartbeat.yaml").write_text("heartbeat_interval: 1\ngrace_period: 2\n")
    args = [*tiny_probe_args(tiny_data, "--n-trials", "3"), "--config", "fast-heartbeat.yaml"]
    command = [sys.executable, "-m", "tuner", *args]
    tuner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trial_dir = workdir / "studies" / TINY_NAME / "trial-0001"
    deadline = time.monotonic() + 120
    while not (trial_dir / "spec.json").exists() or not (orphans := _probe_children(tuner.pid)):
        assert time.monotonic() < deadline and tuner.poll() is None
        time.sleep(0.1)
    tuner.send_signal(signal.SIGKILL)
    tuner.wait()
    gone, alive = psutil.wait_procs(orphans, timeout=10)
    assert not [p for p in alive if _running(p)], "the trial process outlived its killed tuner"

    killed = load(workdir)
    assert [t.state for t in killed.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    orphan_params = killed.trials[1].params
    storage = optuna.storages.RDBStorage(f"sqlite:///{workdir / 'studies' / f'{TINY_NAME}.db'}")
    # the event the re-run needs: the orphan's heartbeat older than the grace period (2 s)
    assert wait_until(lambda: (heartbeat_age(storage, killed.trials[1]._trial_id) or 0) > 2, 30, step=0.1)
    storage.engine.dispose()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    study = load(workdir)
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.COMPLETE and study.trials[0].datetime_start == killed.trials[0].datetime_start
    assert states[1] == TrialState.FAIL  # the orphan, failed by its stale heartbeat
    retried = [t for t in study.trials[2:] if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == orphan_params and retried[0].state == TrialState.COMPLETE
    assert states.count(TrialState.COMPLETE) == 3  # n_trials counts the finished ones, not the orphan
    assert "Continuing: 1 of 3 trials done." in rerun.stderr
    ledger.kill("tuner mid-study")
    ledger.checked(len(study.trials))


def _running(process: psutil.Process) -> bool:
    """Alive and holding memory; an exited process waiting to be reaped by init (a zombie) is not."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _probe_children(pid: int) -> list[psutil.Process]:
    """The probe processes a tuner process has started (none until its trial process is spawned)."""
    return [p for p in trial_processes() if p.ppid() == pid]


# Between imgsz 64 / batch 8 and LARGE_IMGSZ / 8 on the tiny dataset as the cgroup counts them (shared library pages
# cached before stay charged to the parent): measured 620 and 1490 MiB. The hook moves each trial process into the cgroup
# from a polling thread, and what a process allocated before its move stays charged outside (this kernel has no
# move_charge_at_immigrate). Imgsz 320 (908 MiB) was too close to the limit: in a busy CI run a 320 trial moved late
# finished unkilled.
KILL_LEVEL_LIMIT_MB = 850
LARGE_IMGSZ = 480


@pytest.mark.cgroup
def test_kernel_kills_at_a_consistent_level_lower_the_limit_and_larger_configs_are_then_inferred(
    workdir, tiny_data, run_cli, trial_hook, ledger
):
    """The budget (16 GB by default) is far above a container limit the kernel enforces (KILL_LEVEL_LIMIT_MB): the
    first two kills of LARGE_IMGSZ set the study's limit, and it is then inferred, never trained again."""
    group = _memory_cgroup()
    (group / "memory.limit_in_bytes").write_text(str(KILL_LEVEL_LIMIT_MB * 2**20))
    (workdir / "random.yaml").write_text("sampler: random\nseed: 3\n")
    args = [*tiny_probe_args(tiny_data, "--n-trials", "6", "--imgsz", f"64,{LARGE_IMGSZ}", "--batch", "8",
                             "--safety-margin", "0.05"),
            "--config", "random.yaml"]  # fmt: skip
    moved_at_mb: list[float] = []  # each trial process's RSS when it was moved: how late the move came

    def confine(process, index):
        moved_at_mb.append(round(process.memory_info().rss / 2**20))
        (group / "cgroup.procs").write_text(str(process.pid))

    try:
        with trial_hook(confine, limit=30):
            code, _, err = run_cli(*args)
    finally:
        group.rmdir()
    assert code == 0, err
    study = load(workdir)
    record = StudyRecord.of(study)
    kills = [t for t in study.trials if t.user_attrs.get("oom_cause") == "os-kill"]
    seen = [(t.params, t.user_attrs.get("outcome"), t.user_attrs.get("peak_mem_mb")) for t in study.trials]
    assert len(kills) >= 2 and all(t.params["imgsz"] == LARGE_IMGSZ for t in kills), (seen, moved_at_mb)
    small = [t.user_attrs["peak_mem_mb"] for t in study.trials if t.user_attrs.get("outcome") == "ok" and t.params["imgsz"] == 64]
    assert record.outside_kill_mb == min(t.user_attrs["peak_mem_mb"] for t in kills[:2])  # RSS, like every peak
    assert max(small) < record.stable_limit_mb < record.outside_kill_mb  # imgsz 64 still fits under the new limit
    assert err.count("killed from outside at about") == 1
    after = [t for t in study.trials if t.number > kills[1].number and t.params.get("imgsz") == LARGE_IMGSZ]
    assert all(t.user_attrs.get("oom_cause") == "inferred" and "log" not in t.user_attrs for t in after)  # no process
    best = yaml.safe_load((workdir / "results" / TINY_NAME / "best.yaml").read_text())
    assert best["imgsz"] == 64
    ledger.kill("kernel OOM kills at a container limit below the budget", len(kills))
    ledger.checked(len(study.trials))


def test_probes_train_and_validate_on_the_studys_sample_and_preflights_on_the_whole_splits(workdir, tiny_data, run_cli):
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2", "--probe-images", "4,2"))
    assert code == 0, err
    assert "Probes train on 4 of 8 train images and validate on 2 of 4 val images" in err
    assert re.search(r"A probe takes about \d+-\d+ s \(1 epoch\(s\)\), as the pre-flights' speeds predict it", err), err
    study = load(workdir)
    folder = workdir / "studies" / TINY_NAME
    sample_yaml = (folder / "sample" / "data.yaml").resolve()  # absolute: each probe runs in a folder of its own
    assert study.user_attrs["sample"]["data_yaml"] == str(sample_yaml)
    specs = {path.parent.name: json.loads(path.read_text()) for path in folder.rglob("spec.json")}
    probes = [spec for spec in specs.values() if not spec["preflight_batches"]]
    preflights = [spec for spec in specs.values() if spec["preflight_batches"]]
    assert len(probes) == 2 and preflights
    assert {spec["data"] for spec in probes} == {str(sample_yaml)}  # the same sample for every trial
    assert {spec["data"] for spec in preflights} == {study.user_attrs["data_path"]}  # the densest batch of it all
    for trial in study.trials:
        log = Path(trial.user_attrs["log"]).read_text()
        assert re.search(r"train: .* 4 images", log) and re.search(r"val: .* 2 images", log), log[-2000:]
        # training and validation timed apart over the sample's batches, carried over to the whole splits' (8, 4)
        epoch = json.loads(Path(trial.user_attrs["log"]).with_name("progress.jsonl").read_text().splitlines()[0])
        batch = trial.params["batch"]
        assert epoch["train_batches"] == -(-4 // batch) and epoch["val_batches"] == 1 and epoch["val_s"] > 0
        per_epoch = -(-8 // batch) * epoch["train_s"] / epoch["train_batches"] + epoch["val_s"]  # 4 val: 1 batch
        predicted = TrialRecord.of(trial).prediction
        assert predicted.epochs == 40 and predicted.epoch_s == pytest.approx(per_epoch, abs=0.01)
    best_yaml = (workdir / "results" / TINY_NAME / "best.yaml").read_text()
    assert training_time.from_comment(best_yaml).epochs == 40  # the pick's, for train-best
    assert re.search(r"Predicted full training: about \d+ (s|min) for 40 epochs", err), err
    report = (workdir / "results" / TINY_NAME / "report.md").read_text()
    assert "Probes train on 4 of 8 train images" in report


def test_on_data_many_times_the_sample_a_larger_stable_config_is_written_out_and_trains_beside_the_pick(
    workdir, tiny_data, run_cli
):
    """Probes on 2 of 8 train images: the stable config at the larger imgsz is named (summary, report.md), written to
    larger.yaml, and `train-best --config larger.yaml --run larger` trains it in a run of its own, beside the pick's."""
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--imgsz", "64,640", "--batch", "2", "--n-trials", "2",
                                            "--probe-images", "2,2"))  # fmt: skip
    assert code == 0, err
    study = load(workdir)
    pick = StudyRecord.of(study).best
    assert pick.params.imgsz == 64, err  # random init: both score 0.0, and the tie goes to the smaller peak (about 360 MiB less)
    results = workdir / "results" / TINY_NAME
    larger = yaml.safe_load((results / "larger.yaml").read_text())
    assert (larger["imgsz"], larger["batch"]) == (640, 2)
    assert "Probes trained on 2 of 8 train images: on data this many times their sample a larger imgsz" in err
    command = f"tuner train-best --study-name {TINY_NAME} --config results/{TINY_NAME}/larger.yaml --run larger"
    assert command in err and f"Train it: {command}" in (results / "larger.yaml").read_text()
    assert "**A larger imgsz on large data:**" in (results / "report.md").read_text()
    assert f"`{command}` trains it beside the pick" in optuna_dashboard.get_note(study)  # the dashboard's next steps
    code, _, err = run_cli("train-best", "--config", str(results / "larger.yaml"), "--run", "larger", "--epochs", "1",
                           "--device", "cpu", "--no-plots")  # fmt: skip
    assert code == 0, err
    trained = yaml.safe_load((results / "larger" / "config.yaml").read_text())
    assert trained["study"] == TINY_NAME and trained["best"]["imgsz"] == 640  # the study's run, its ladder and all
    assert (results / "larger" / "weights" / "last.pt").exists()
    assert not (results / "train").exists()  # the pick's run is its own: untouched
    code, _, err = run_cli("train-best", "--config", str(results / "larger.yaml"), "--run", "../x", "--device", "cpu")
    assert code == 2 and "`--run` is '../x', but must be letters" in err
    # the run folder trains one config: another one's best.yaml there is refused, not ignored
    code, _, err = run_cli("train-best", "--config", str(results / "best.yaml"), "--run", "larger", "--device", "cpu")
    assert code == 2 and "trains imgsz 640 batch 2 mosaic 0.60 mixup 0.15" in err and "pass another --run NAME" in err
    # a larger.yaml that holds another config (a study continued since) is not claimed to be this one
    (results / "larger.yaml").write_text((results / "larger.yaml").read_text().replace("imgsz: 640", "imgsz: 64"))
    code, _, err = run_cli("report", "--study-name", TINY_NAME)
    assert code == 0, err
    report_md = (results / "report.md").read_text()
    assert "**A larger imgsz on large data:**" in report_md and "wrote its training arguments" not in report_md
    assert re.search(r"## Full trainings\n\n.*\n.*\n\| `larger/` \| 640 \| 2 \| 0\.6 \| 0\.15 \| 1 \| 0\.0000 \|", report_md)
    # a study that finds no larger config any more (here: as if its probes had used the whole splits) removes the file
    found = findings.read(study, workdir / "results")
    whole = dataclasses.replace(found.record.sample, train_images=8, val_images=4)
    found = dataclasses.replace(found, record=dataclasses.replace(found.record, sample=whole))
    cfg = tuner_config.load(None, {})
    pick = selection.best_stable(study.trials, found.record.stable_limit_mb, None)
    settings = tuner_config.default_train_settings()
    assert probe_command._write_larger(found, cfg, devices.resolve("cpu"), found.record, pick, settings) is None
    assert not (results / "larger.yaml").exists() and (results / "best.yaml").exists()


def test_a_tiny_probe_budget_cuts_the_plan_before_the_first_trial_and_says_so(workdir, tiny_data, run_cli):
    """A 1 s budget: the plan keeps its floor only (the startup design's two cells, imgsz 64 at batch 2 and 4, and one
    noise repeat of the two asked for), says what it cut before any trial, stores the plan, and the summary gives the
    probe's cost."""
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "4", "--repeats", "2", "--race", "1",
                                            "--probe-budget", "1s"))  # fmt: skip
    assert code == 0, err
    plan_line = next(line for line in err.splitlines() if line.startswith("Plan: "))
    assert plan_line.startswith("Plan: 3 probes, about ") and "budget 1 s: 2 main trials, 1 repeat and the race cut" in plan_line
    assert plan_line.endswith("the startup design and one noise repeat alone take longer, and run in full (the sampler "
                              "needs the design, the pick the noise).")  # fmt: skip
    assert err.index("Plan: ") < err.index("trial 0")  # before the first trial
    study = load(workdir)
    assert study.user_attrs["probe_plan"]["n_trials"] == 2 and study.user_attrs["probe_plan"]["repeats"] == 1
    ran = [t for t in study.trials if t.user_attrs.get("outcome")]
    assert 1 <= len(ran) <= 3 and sum(t.user_attrs.get("repeat_of") is not None for t in ran) <= 1
    assert re.search(r"^Probe: \d+(\.\d)? (s|min|h), ", err, re.MULTILINE), err  # its wall time, whatever its unit
    report = (workdir / "results" / TINY_NAME / "report.md").read_text()
    assert "## Probe cost" in report and plan_line in report


def test_a_training_time_picks_within_it_and_one_nothing_fits_is_one_line_exit_1_and_best_yaml_untouched(workdir, tiny_data, run_cli):
    """Every ok probe predicts its config's full training; --train-time keeps the pick to the configs predicted to fit
    it, and re-picks a finished study without probing again (it is not part of what the study measures)."""
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2", "--train-time", "10h"))
    assert code == 0, err
    assert "Training time 10.0 h: the pick is predicted to fit; 0 stable config(s) would not." in err
    best_yaml = workdir / "results" / TINY_NAME / "best.yaml"
    written = best_yaml.read_bytes()
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2", "--train-time", "1s"))
    assert code == 1, err
    line = next(line for line in err.splitlines() if line.startswith("No stable config trains within"))
    assert re.fullmatch(r"No stable config trains within the training time of 1 s: the fastest, imgsz 64 batch \d .+, "
                        r"is predicted at \d+(\.\d)? (s|min|h)\. Raise --train-time or plan fewer epochs \(configs/train\.yaml\), then re-run\.", line)  # fmt: skip
    assert best_yaml.read_bytes() == written  # the earlier pick stays as it was
    assert "trial 2" not in err  # no probe ran again
    assert "memory" not in err.split(f"Study {TINY_NAME}:", 1)[1]  # the summary blames the time, not memory
    report = (workdir / "results" / TINY_NAME / "report.md").read_text()
    assert "training time 1 s), predicted" in report and "(over the training time)" in report
    assert "No stable config trains within the training time of 1 s (`--train-time`)" in report
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "2", "--train-time", "soon"))
    assert code == 2 and "`--train-time` is 'soon', but must be a duration (90s, 45m, 2h, 1h30m, or seconds) or none." in err
