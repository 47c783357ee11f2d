"""`tuner train-best`: plans, step-downs and checkpoint handling, then real tiny trainings with real kills."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import optuna
import psutil
import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tests.conftest import TINY_NAME, tiny_probe_args
from tuner import config as configs
from tuner.config import DEFAULTS
from tuner.params import Params
from tuner.process.contract import ChildResult, EpochRecord, TrainSpec
from tuner.process.trial import Attempt, classify
from tuner.study.dominance import StableSizes
from tuner.train.checkpoints import (
    AtomicPath,
    CheckpointError,
    checkpoint_epochs,
    checkpoint_facts,
    trim_results_csv,
    verify_checkpoint,
)
from tuner.train.plan import new_plan, plan_stages, step_down, train_settings
from tuner.train.records import RunState
from tuner.train.source import Candidate, Source

FAST = ("--device", "cpu", "--no-plots")


# ------------------------------------------------------------------------------------------- helpers


def write_best_yaml(path: Path, data_yaml: Path, **overrides) -> Path:
    values = {"model": "yolov8n.yaml", "data": str(data_yaml), "imgsz": 64, "batch": 2, "mosaic": 0.5, "mixup": 0.0,
              "device": "cpu", "optimizer": "AdamW", "lr0": 0.001, **overrides}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values))
    return path


def make_study(workdir: Path, name: str, data_yaml: Path, configs_and_values, *, best: bool = True) -> None:
    """A study as `tuner probe` leaves it: stable trials with peaks, and the study attrs train-best reads."""
    storage = f"sqlite:///{workdir / 'studies' / f'{name}.db'}"
    (workdir / "studies").mkdir(exist_ok=True)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    distributions = {
        "imgsz": CategoricalDistribution(sorted({p["imgsz"] for p, _, _ in configs_and_values})),
        "batch": CategoricalDistribution(sorted({p["batch"] for p, _, _ in configs_and_values})),
        "mosaic": FloatDistribution(0.0, 1.0),
        "mixup": FloatDistribution(0.0, 1.0),
    }
    for params, value, peak in configs_and_values:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, value=value,
            user_attrs={"outcome": "ok", "peak_mem_mb": peak, "stable": True},
        ))  # fmt: skip
    cfg = configs.load(None, {"data": str(data_yaml), "model": "yolov8n.yaml", "device": "cpu"}).to_dict()
    attrs = {"config": cfg, "device": "cpu", "budget_mb": 4000.0, "stable_limit_mb": 3600.0,
             "model_path": "yolov8n.yaml", "data_path": str(data_yaml)}  # fmt: skip
    if best:
        top = max(configs_and_values, key=lambda item: item[1])
        attrs["best"] = {"trial": 0, "params": top[0], "value": top[1], "peak_mem_mb": top[2]}
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def train_dir(workdir: Path, name: str) -> Path:
    return workdir / "results" / name / "train"


def state_of(folder: Path) -> RunState:
    return RunState.from_json(json.loads((folder / "state.json").read_text()))


def write_state(folder: Path, state: RunState) -> None:
    (folder / "state.json").write_text(json.dumps(state.to_json()))


def csv_epochs(path: Path) -> list[int]:
    with open(path) as handle:
        return [int(float(row["epoch"])) for row in csv.DictReader(handle)]


def progress_records(folder: Path) -> list[list[dict]]:
    """Per attempt, the progress lines its training process wrote."""
    attempts = sorted((folder / "attempts").iterdir())
    return [[json.loads(line) for line in (a / "progress.jsonl").read_text().splitlines()] if (a / "progress.jsonl").exists()
            else [] for a in attempts]  # fmt: skip


def epochs_recorded(folder: Path, stage: int = 0) -> int:
    """Epochs that state.json says are done (0 before the run has one); it is never read half-written."""
    try:
        return state_of(folder).stages[stage].epochs_done
    except FileNotFoundError:
        return 0


def wait_until(event: Callable[[], bool], what: str, timeout: float = 300.0) -> None:
    """Poll until `event()` holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not event():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.05)


def kill_after_epoch(folder: Path, epoch: int, stage: int = 0):
    """A trial_hook action: SIGKILL the training process once state.json says `epoch` epochs are done."""

    def action(process: psutil.Process, index: int) -> None:
        wait_until(lambda: epochs_recorded(folder, stage) >= epoch or not process.is_running(), f"epoch {epoch}")
        process.send_signal(signal.SIGKILL)

    return action


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tuner: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


# --------------------------------------------------------------------------------- plans, step-downs


def source(best: Params, candidates=(), lr0=0.001) -> Source:
    return Source(study="s", origin="test", model="yolov8n.yaml", data="d.yaml", device="cpu", memory_budget=0.7,
                  optimizer="AdamW", lr0=lr0, metric="metrics/mAP50-95(B)", best=best, candidates=tuple(candidates))  # fmt: skip


def settings(strategy="single", epochs=40, **values) -> configs.TrainSettings:
    return configs.load_train(None, {"strategy": strategy, "epochs": epochs, **values})


def candidate(imgsz, batch, value, trial) -> Candidate:
    return Candidate(Params(imgsz, batch, 0.5, 0.1), value, 900.0, trial)


def test_best_yaml_arguments_are_what_a_single_stage_run_trains_with():
    """best.yaml and train-best come from one function: if either drifts, `yolo train cfg=best.yaml` would not
    train what train-best trains."""
    from tuner.memory import device as devices
    from tuner.train.plan import best_yaml_arguments

    cpu, best = devices.resolve("cpu"), Params(416, 2, 0.75, 0.05)
    run = new_plan(source(best, lr0=0.0003), settings(), "now")
    trained = {**run.stages[0].params.to_dict(), **train_settings(run.stages[0], run.optimizer, run.seed, cpu, plots=True)}
    assert best_yaml_arguments(best, "AdamW", 0.0003, cpu, settings()) == trained
    assert trained["nbs"] == 2 and trained["warmup_epochs"] == 3.0 and trained["close_mosaic"] == 10


def test_step_down_takes_the_most_accurate_stable_config_no_larger_in_imgsz_and_batch():
    ladder = (candidate(352, 8, 0.60, 1), candidate(352, 16, 0.58, 2), candidate(288, 8, 0.55, 3), candidate(224, 4, 0.50, 4))
    new, why = step_down(Params(352, 8, 0.5, 0.1), ladder)
    assert (new.imgsz, new.batch) == (288, 8)  # 352/16 is more accurate but larger
    assert "trial 3" in why
    new, _ = step_down(Params(288, 8, 0.5, 0.1), ladder)
    assert (new.imgsz, new.batch) == (224, 4)


def test_step_down_without_a_study_lowers_imgsz_then_halves_the_batch():
    new, why = step_down(Params(416, 2, 0.75, 0.05), ())
    assert (new.imgsz, new.batch, new.mosaic) == (384, 2, 0.75) and "imgsz" in why
    new, why = step_down(Params(64, 4, 0.75, 0.05), ())
    assert (new.imgsz, new.batch) == (64, 2) and "batch" in why
    assert step_down(Params(64, 1, 0.75, 0.05), ()) is None


FRONTIER = StableSizes({1: 640, 2: 576, 4: 448, 8: 320, 16: None}, tuple(range(160, 641, 32)))


def test_step_down_with_a_memory_frontier_goes_to_its_largest_smaller_imgsz_then_a_smaller_batch():
    new, why = step_down(Params(640, 4, 0.75, 0.05), (), FRONTIER)
    assert (new.imgsz, new.batch) == (448, 4) and "frontier" in why  # not 608: the pre-flights put 448 at the limit
    new, _ = step_down(Params(448, 4, 0.75, 0.05), (), FRONTIER)
    assert (new.imgsz, new.batch) == (416, 4)  # at the frontier and still out of memory: the next size down
    new, why = step_down(Params(160, 4, 0.75, 0.05), (), FRONTIER)
    assert (new.imgsz, new.batch) == (160, 2) and "batch" in why
    new, _ = step_down(Params(352, 16, 0.75, 0.05), (), FRONTIER)  # nothing fits at 16: the largest batch that does
    assert (new.imgsz, new.batch) == (320, 8)
    assert step_down(Params(160, 1, 0.75, 0.05), (), FRONTIER) is None
    measured = (candidate(352, 4, 0.5, 7),)  # a config the study measured stable still comes first
    assert step_down(Params(640, 4, 0.75, 0.05), measured, FRONTIER)[0].imgsz == 352


def test_progressive_plan_grows_to_the_largest_imgsz_the_frontier_allows_at_the_planned_batch():
    base = source(Params(352, 4, 0.5, 0.1), (candidate(352, 4, 0.6, 1), candidate(288, 8, 0.5, 2)))
    stages = plan_stages(dataclasses.replace(base, frontier=FRONTIER), settings("progressive", 8))
    assert [s.params.imgsz for s in stages] == [352, 384, 416, 448]  # to 448, which no probe tried
    assert {s.params.batch for s in stages} == {4}
    run = new_plan(dataclasses.replace(base, frontier=FRONTIER), settings("progressive", 8), "now")
    assert StableSizes.from_dict(run.to_json()["frontier"]) == FRONTIER  # the supervisor's step-downs read it from the plan


def test_two_stage_plan_fine_tunes_the_best_config_from_stage_one_at_a_tenth_of_lr0():
    stages = plan_stages(source(Params(352, 8, 0.8, 0.2), lr0=0.01), settings("two-stage", 40))
    first, second = stages
    assert [s.epochs for s in stages] == [30, 10]
    assert (first.params.imgsz, first.params.mosaic, first.params.mixup) == (288, 0.4, 0.0)
    assert second.params == Params(352, 8, 0.8, 0.2)
    assert second.init == "previous best.pt" and second.lr0 == pytest.approx(0.001)
    assert (first.folder, second.folder) == ("stages/1-conservative", ".")


def test_progressive_plan_grows_imgsz_up_to_the_largest_stable_one():
    ladder = (candidate(288, 8, 0.6, 1), candidate(352, 4, 0.5, 2))
    stages = plan_stages(source(Params(288, 8, 0.5, 0.1), ladder), settings("progressive", 10))
    assert [s.params.imgsz for s in stages] == [256, 288, 320, 352]
    assert {s.params.batch for s in stages} == {4}  # the stable batch at the largest imgsz
    assert [s.epochs for s in stages] == [2, 2, 3, 3] and sum(s.epochs for s in stages) == 10
    assert [s.init for s in stages] == ["model", "previous last.pt", "previous last.pt", "previous last.pt"]
    assert stages[-1].folder == "." and stages[0].folder == "stages/1-imgsz-256"


@pytest.mark.parametrize("batch", [2, 16])
def test_a_stage_steps_once_per_batch_at_the_study_lr0(batch):
    """The lr decision: nbs = the planned batch (no accumulation to 64), lr0 never rescaled for the batch."""
    stage = plan_stages(source(Params(160, batch, 0.5, 0.0), lr0=0.002), settings())[0]
    arguments = train_settings(stage, "SGD", 0, type("D", (), {"kind": "cpu"})(), plots=False)
    assert arguments["lr0"] == 0.002 and arguments["nbs"] == batch


def test_results_csv_is_cut_back_to_the_checkpoint_epochs(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("epoch,time,x\n1,0.1,5\n2,0.2,6\n3,0.3,7\n3,0.4")  # epoch 3 not in last.pt; a half row
    assert trim_results_csv(path, 2) == 2
    assert csv_epochs(path) == [1, 2]


def test_atomic_path_keeps_the_previous_checkpoint_when_a_write_dies(tmp_path, monkeypatch):
    target = AtomicPath(tmp_path / "last.pt")
    target.write_bytes(b"epoch 1")
    monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        target.write_bytes(b"epoch 2, cut short")
    assert target.read_bytes() == b"epoch 1"


def test_a_truncated_checkpoint_is_detected(tmp_path):
    import zipfile

    path = tmp_path / "last.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"x" * 5000)
    verify_checkpoint(path, tmp_path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="corrupt"):
        verify_checkpoint(path, tmp_path)


class RefusesToLoad:
    """Stands for the model classes inside a checkpoint: building one while reading the epoch is wrong."""

    def __setstate__(self, state):
        raise AssertionError("a checkpoint object was built")


def test_checkpoint_epochs_are_read_without_building_what_the_checkpoint_holds(tmp_path):
    resumable = {"epoch": 4, "ema": RefusesToLoad(), "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}},
                 "train_results": {"epoch": [1, 2, 3, 4, 5]}}  # fmt: skip
    resumable["ema"].weights = torch.zeros(3)
    torch.save(resumable, tmp_path / "last.pt")
    with pytest.raises(AssertionError, match="was built"):
        torch.load(tmp_path / "last.pt", weights_only=False)
    assert checkpoint_epochs(tmp_path / "last.pt") == 5
    stripped = {"epoch": -1, "model": torch.nn.Linear(3, 2), "optimizer": None, "train_results": {"epoch": [1, 2, 3]}}
    torch.save(stripped, tmp_path / "final.pt")
    assert checkpoint_epochs(tmp_path / "final.pt") == 3
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert checkpoint_epochs(tmp_path / "junk.pt") is None


# ----------------------------------------------------------------------- supervisor, with a fake runner


def save_checkpoint(path: Path, epochs_done: int) -> None:
    """A resumable last.pt as Ultralytics writes it after `epochs_done` epochs (the keys tuner reads)."""
    torch.save({"epoch": epochs_done - 1, "optimizer": {"state": {}, "param_groups": []},
                "train_results": {"epoch": list(range(1, epochs_done + 1))}}, path)  # fmt: skip


def checkpoint_epoch(path: str | None) -> int:
    """Epochs done in the checkpoint a spec resumes from, read with torch as the training process does."""
    return 0 if path is None else torch.load(path, weights_only=False)["epoch"] + 1


def fake_record(epoch: int, spec: TrainSpec, value: float | None = 0.1) -> EpochRecord:
    """A progress line as the training process writes it and tuner.process.trial reads it back (through its JSON),
    with the watchdog's peak added; `value` None for an epoch that was not validated."""
    record = EpochRecord(epoch=epoch, value=value, imgsz=spec.params.imgsz, batch=spec.params.batch, seconds=1.0,
                         epochs=spec.epochs, metrics=None if value is None else {"mAP50-95": value}, peak_mb=900.0)  # fmt: skip
    return EpochRecord.from_json(json.loads(json.dumps(record.to_json())))


def fake_attempt(spec: TrainSpec, folder: Path, result: ChildResult, epochs_done: int) -> Attempt:
    """How tuner.process.trial.run_child would report a process that exited with `result`, classified the real way."""
    classified = classify(returncode=0, result=result, watchdog_reason=None, stopped=None, asked_batch=spec.params.batch)
    return Attempt(
        outcome=classified.outcome, reason=classified.reason, cause=classified.cause, peak_mb=950.0, peak_rss_mb=950.0,
        peak_device_mb=0.0, returncode=0, duration_s=1.0, epochs_done=epochs_done, result=result, log=folder / "log.txt",
    )  # fmt: skip


def halved(spec: TrainSpec, epochs_done: int) -> ChildResult:
    batch = spec.params.batch
    return ChildResult(status="oom", message=f"Ultralytics halved batch {batch} -> {batch // 2} after an out-of-memory "
                       "error", halved=True, epochs_done=epochs_done, batch_used=batch // 2, imgsz_used=spec.params.imgsz)  # fmt: skip


def trained(spec: TrainSpec) -> ChildResult:
    return ChildResult(status="ok", epochs_done=spec.epochs, final_metrics={"mAP50-95": 0.2}, batch_used=spec.params.batch,
                       imgsz_used=spec.params.imgsz)  # fmt: skip


class FakeRunner:
    """Stands in for the training process: runs out of memory (by Ultralytics halving the batch) at imgsz >=
    `oom_imgsz` once `oom_after` epochs are done, and otherwise trains to the end. Continues from the real
    checkpoint it is given, writes one per epoch, and records every spec."""

    def __init__(self, oom_imgsz: int, oom_after: int) -> None:
        self.oom_imgsz = oom_imgsz
        self.oom_after = oom_after
        self.specs: list[TrainSpec] = []

    def runs_out(self, params: Params) -> bool:
        return params.imgsz >= self.oom_imgsz

    def __call__(self, module, spec: TrainSpec, folder, device, budget, timeout, on_epoch) -> Attempt:
        assert module == "tuner.train.stage_child"
        self.specs.append(spec)
        folder = Path(folder)
        folder.mkdir(parents=True)
        weights = Path(spec.save_dir) / "weights"
        weights.mkdir(parents=True, exist_ok=True)
        done = checkpoint_epoch(spec.resume)
        runs_out = self.runs_out(spec.params)
        stop = self.oom_after if runs_out else spec.epochs
        for epoch in range(done + 1, stop + 1):
            save_checkpoint(weights / "last.pt", epoch)
            on_epoch(fake_record(epoch, spec))
        if not runs_out:  # the next stage of a two-stage run starts from it
            save_checkpoint(weights / "best.pt", stop)
        result = halved(spec, max(done, stop)) if runs_out else trained(spec)
        return fake_attempt(spec, folder, result, epochs_done=max(0, stop - done))


def test_batch_halving_twice_at_the_same_epoch_steps_down_and_continues_from_the_checkpoint(workdir, tiny_data, train_with):
    runner = FakeRunner(oom_imgsz=128, oom_after=1)
    best = write_best_yaml(workdir / "results" / "halve" / "best.yaml", tiny_data, imgsz=128, batch=8)
    code, _, err = train_with(runner, config=best, epochs=3)
    assert code == 0, err
    summary = json.loads((train_dir(workdir, "halve") / "summary.json").read_text())
    assert summary["batch_halvings"] == 2 and summary["restarts"] == 2 and summary["epochs"] == 3
    (step,) = summary["step_downs"]
    assert (step["epochs_done"], step["from"]["imgsz"], step["to"]["imgsz"], step["to"]["batch"]) == (1, 128, 96, 8)
    assert "halved batch 8" in err and "counted as out of memory" in err
    last_pt = str(train_dir(workdir, "halve").resolve() / "weights" / "last.pt")
    assert [(s.resume, s.params.imgsz) for s in runner.specs] == [(None, 128), (last_pt, 128), (last_pt, 96)]
    assert "continuing after epoch 1/3" in err  # the resumes start where the checkpoint is


def test_an_oom_right_after_a_checkpoint_counts_at_the_checkpoint_epoch(workdir, tiny_data, train_with):
    """The process saves epoch 2 and dies before its record reaches the supervisor, then dies again at once
    after resuming: both failures are at epoch 2, the same point, so the run steps down."""
    specs = []

    def runner(module, spec, folder, device, budget, timeout, on_epoch):
        specs.append(spec)
        folder = Path(folder)
        folder.mkdir(parents=True)
        weights = Path(spec.save_dir) / "weights"
        weights.mkdir(parents=True, exist_ok=True)
        small = spec.params.imgsz < 128
        if spec.resume is None:  # epochs 1 and 2 saved, only epoch 1 recorded
            for epoch in (1, 2):
                save_checkpoint(weights / "last.pt", epoch)
            on_epoch(fake_record(1, spec))
        elif small:  # the stepped-down config trains to the end
            for epoch in range(checkpoint_epoch(spec.resume) + 1, spec.epochs + 1):
                save_checkpoint(weights / "last.pt", epoch)
                on_epoch(fake_record(epoch, spec))
        result = trained(spec) if small else ChildResult(status="oom", message="CUDA out of memory", epochs_done=2)
        return fake_attempt(spec, folder, result, epochs_done=1)

    best = write_best_yaml(workdir / "results" / "lag" / "best.yaml", tiny_data, imgsz=128, batch=4)
    code, _, err = train_with(runner, config=best, epochs=4)
    assert code == 0, err
    state = state_of(train_dir(workdir, "lag"))
    assert [f.epochs_done for f in state.failures] == [2, 2]
    (step,) = state.step_downs
    assert (step.epochs_done, step.from_params.imgsz, step.to_params.imgsz) == (2, 128, 96)
    assert "Restart 1/5: continuing from epoch 2" in err and state.restarts == 2
    assert [s.params.imgsz for s in specs] == [128, 128, 96]


def test_an_unusable_checkpoint_reported_by_the_training_process_is_left_untouched(workdir, tiny_data, train_with):
    """The training process says it cannot load last.pt (status `checkpoint`): one error, no restart, the file kept."""
    weights = train_dir(workdir, "unloadable") / "weights"
    specs, given = [], []

    def runner(module, spec, folder, device, budget, timeout, on_epoch):
        specs.append(spec)
        Path(folder).mkdir(parents=True)
        if spec.resume is None:
            weights.mkdir(parents=True, exist_ok=True)
            save_checkpoint(weights / "last.pt", 1)
            on_epoch(fake_record(1, spec))
            return fake_attempt(spec, Path(folder), ChildResult(status="oom", message="CUDA out of memory"), 1)
        given.append(Path(spec.resume).read_bytes())
        unusable = ChildResult(status="checkpoint", message=f"{spec.resume} cannot be loaded (no model)")
        return fake_attempt(spec, Path(folder), unusable, 0)

    best = write_best_yaml(workdir / "results" / "unloadable" / "best.yaml", tiny_data)
    code, _, err = train_with(runner, config=best, epochs=3)
    assert_one_line_error(code, err.splitlines()[-1], "cannot be loaded", "left untouched", "restore it")
    assert len(specs) == 2 and [(weights / "last.pt").read_bytes()] == given
    assert state_of(train_dir(workdir, "unloadable")).restarts == 1


def test_an_epoch_that_was_not_validated_is_shown_and_recorded_as_such(workdir, tiny_data, train_with):
    def runner(module, spec, folder, device, budget, timeout, on_epoch):
        Path(folder).mkdir(parents=True)
        (Path(spec.save_dir) / "weights").mkdir(parents=True, exist_ok=True)
        for epoch, value in ((1, 0.3), (2, None)):
            save_checkpoint(Path(spec.save_dir) / "weights" / "last.pt", epoch)
            on_epoch(fake_record(epoch, spec, value))
        return fake_attempt(spec, Path(folder), dataclasses.replace(trained(spec), final_metrics=None), 2)

    best = write_best_yaml(workdir / "results" / "sparse" / "best.yaml", tiny_data)
    code, _, err = train_with(runner, config=best, epochs=2, val_every=2)
    assert code == 0, err
    assert "epoch 1/2 | mAP50-95 0.3000" in err and "epoch 2/2 | not validated" in err
    summary = json.loads((train_dir(workdir, "sparse") / "summary.json").read_text())
    assert summary["metrics"] == {"mAP50-95": 0.3}  # the last validated epoch's


def test_train_best_starts_from_the_probes_prediction_and_then_shows_measured_epochs(workdir, tiny_data, train_with):
    """best.yaml's comment carries the pick's prediction (30 s an epoch, 40 planned): train-best scales it to its own
    epochs, says it at the start, gives it as the stage's ETA until an epoch is measured, and keeps it in the plan."""
    from tuner.study import training_time
    from tuner.study.training_time import Prediction

    best = write_best_yaml(workdir / "results" / "timed" / "best.yaml", tiny_data)
    comment = "".join(f"# {line}\n" for line in training_time.comment_lines(Prediction.of(30.0, 40)))
    best.write_text(comment + best.read_text())
    code, _, err = train_with(FakeRunner(oom_imgsz=10**6, oom_after=0), config=best, epochs=3)
    assert code == 0, err
    lines = err.splitlines()
    assert "Predicted: about 2 min for 3 epochs" in err  # 20 s to start + 3 x 30 s
    start = next(i for i, line in enumerate(lines) if "training 3 epochs" in line)
    assert re.search(r"\| ETA 1\.5 min, at \d\d:\d\d \(predicted\)$", lines[start]), lines[start]  # 3 epochs x 30 s
    assert "epoch 1/3" in lines[start + 1] and "(predicted)" not in lines[start + 1]  # measured from here on
    plan = yaml.safe_load((train_dir(workdir, "timed") / "config.yaml").read_text())
    assert Prediction.from_json(plan["prediction"]) == Prediction.of(30.0, 3)


def test_a_two_stage_runs_eta_counts_the_later_stage_at_the_predicted_pace(workdir, tiny_data, train_with):
    """The ETA is the run's, not its stage's: stage 1 of a two-stage run starts with every epoch of both stages at
    the prediction's 30 s."""
    from tuner.study import training_time
    from tuner.study.training_time import Prediction

    best = write_best_yaml(workdir / "results" / "staged" / "best.yaml", tiny_data)
    comment = "".join(f"# {line}\n" for line in training_time.comment_lines(Prediction.of(30.0, 40)))
    best.write_text(comment + best.read_text())
    code, _, err = train_with(FakeRunner(oom_imgsz=10**6, oom_after=0), config=best, epochs=4, strategy="two-stage")
    assert code == 0, err
    starts = [line for line in err.splitlines() if "(predicted)" in line]
    assert len(starts) == 2, err
    assert "| ETA 2.0 min, at " in starts[0]  # 4 epochs x 30 s
    assert "| ETA 2.0 min" not in starts[1] and "| ETA " in starts[1]  # what stage 2 has left


class SlowRunner(FakeRunner):
    """FakeRunner whose epochs take `epoch_s` of wall time each."""

    def __init__(self, epoch_s: float) -> None:
        super().__init__(oom_imgsz=10**6, oom_after=0)
        self.epoch_s = epoch_s

    def __call__(self, module, spec, folder, device, budget, timeout, on_epoch) -> Attempt:
        def slow(record):
            time.sleep(self.epoch_s)
            return on_epoch(record)

        return super().__call__(module, spec, folder, device, budget, timeout, slow)


@pytest.mark.parametrize("limit, over", [("1", True), ("60", False)])
def test_each_epochs_eta_says_how_far_the_measured_pace_runs_over_the_training_time(workdir, tiny_data, train_with,
                                                                                      limit, over):  # fmt: skip
    """Without a prediction --train-time cannot fit the epochs; the run keeps the limit in its plan and each epoch's ETA
    says where the measured pace (0.4 s an epoch, 4 epochs) runs past it, and only there."""
    best = write_best_yaml(workdir / "results" / f"paced{limit}" / "best.yaml", tiny_data)
    code, _, err = train_with(SlowRunner(0.4), config=best, epochs=4, train_time=limit)
    assert code == 0, err
    assert "holds no prediction of this config's training" in err
    first = next(line for line in err.splitlines() if "epoch 1/4" in line)
    assert re.search(r"\| ETA \d+ s, at \d\d:\d\d", first), first
    assert ("over the training time of" in first) == over, first
    plan = yaml.safe_load((train_dir(workdir, f"paced{limit}") / "config.yaml").read_text())
    assert plan["train_time_s"] == float(limit)


def test_restarts_stop_at_max_restarts_and_keep_the_run(workdir, tiny_data, train_with):
    best = write_best_yaml(workdir / "results" / "stuck" / "best.yaml", tiny_data, imgsz=64, batch=4)
    code, _, err = train_with(FakeRunner(oom_imgsz=1, oom_after=0), config=best, epochs=2, max_restarts=1)
    assert code == 1 and "re-run the same command to continue" in err
    state = state_of(train_dir(workdir, "stuck"))
    assert state.restarts == 1 and len(state.failures) == 2 and not state.finished


def test_configs_train_yaml_shapes_a_new_run_and_a_rerun_applies_only_its_flags(workdir, tiny_data, train_with):
    (workdir / "configs").mkdir(exist_ok=True)
    (workdir / "configs" / "train.yaml").write_text("epochs: 3\nval_every: 2\nmax_restarts: 0\n")
    best = write_best_yaml(workdir / "results" / "shaped" / "best.yaml", tiny_data, imgsz=128, batch=8)
    code, _, err = train_with(FakeRunner(oom_imgsz=128, oom_after=1), config=best)
    assert code == 1 and "re-run the same command to continue" in err  # max_restarts 0 came from the file
    plan = yaml.safe_load((train_dir(workdir, "shaped") / "config.yaml").read_text())
    assert plan["epochs"] == 3 and plan["settings"]["val_every"] == 2 and plan["stages"][0]["val_every"] == 2

    (workdir / "configs" / "train.yaml").write_text("epochs: 9\nval_every: 4\nmax_restarts: 0\n")
    runner = FakeRunner(oom_imgsz=10**6, oom_after=0)
    code, _, err = train_with(runner, config=best, val_every=1)
    assert code == 0, err
    assert "after 1 of 3 epochs" in err  # the run's own epochs, not the edited file's
    assert [spec.val_every for spec in runner.specs] == [1]  # the flag applies to the rest of the run
    plan = yaml.safe_load((train_dir(workdir, "shaped") / "config.yaml").read_text())
    assert plan["epochs"] == 3 and plan["settings"]["val_every"] == 1


def test_seed_trains_a_new_run_with_another_seed_and_a_rerun_keeps_its_own(workdir, tiny_data, train_with):
    """--seed (or `seed` in configs/train.yaml) reaches Ultralytics; a run keeps the seed it began with: a re-run with
    another is refused in one line (exit 2) and its files stay as they were."""
    best = write_best_yaml(workdir / "results" / "seeded" / "best.yaml", tiny_data)
    runner = FakeRunner(oom_imgsz=10**6, oom_after=0)
    code, _, err = train_with(runner, config=best, epochs=2, seed=3)
    assert code == 0, err
    assert [spec.settings["seed"] for spec in runner.specs] == [3]
    config_yaml = train_dir(workdir, "seeded") / "config.yaml"
    assert yaml.safe_load(config_yaml.read_text())["seed"] == 3
    before = config_yaml.read_text()
    code, _, err = train_with(FakeRunner(oom_imgsz=10**6, oom_after=0), config=best, epochs=3, seed=4)
    assert_one_line_error(code, err, "trains with --seed 3")
    assert config_yaml.read_text() == before

    (workdir / "configs").mkdir(exist_ok=True)
    (workdir / "configs" / "train.yaml").write_text("seed: 5\n")
    other = write_best_yaml(workdir / "results" / "filed" / "best.yaml", tiny_data)
    runner = FakeRunner(oom_imgsz=10**6, oom_after=0)
    assert train_with(runner, config=other, epochs=1)[0] == 0
    assert [spec.settings["seed"] for spec in runner.specs] == [5]
    code, _, err = train_with(FakeRunner(oom_imgsz=10**6, oom_after=0), config=other, epochs=1, seed=-1)
    assert_one_line_error(code, err, "--seed")


def test_a_second_tuner_on_the_same_run_is_refused(workdir, tiny_data, run_cli):
    import fcntl

    best = write_best_yaml(workdir / "results" / "busy" / "best.yaml", tiny_data)
    folder = train_dir(workdir, "busy")
    folder.mkdir(parents=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        code, _, err = run_cli("train-best", "--config", best, *FAST)
    assert_one_line_error(code, err, "Another `tuner train-best` is training")
    assert not (folder / "state.json").exists()


def test_the_supervising_process_reads_checkpoints_without_importing_torch(tmp_path):
    save_checkpoint(tmp_path / "last.pt", 3)
    script = (
        "import sys; from pathlib import Path; import tuner.cli, tuner.commands.train_best\n"
        "from tuner.train.checkpoints import checkpoint_epochs, verify_checkpoint\n"
        f"path = Path({str(tmp_path / 'last.pt')!r}); verify_checkpoint(path, path.parent)\n"
        "print(checkpoint_epochs(path), sorted({'torch', 'ultralytics'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["3", "[]"], done.stderr


@pytest.mark.integration
def test_batch_halving_inside_ultralytics_is_reported_as_oom_by_the_training_process(tmp_path, tiny_data, monkeypatch):
    """In-process: Ultralytics catches an OOM in the first epoch and halves the batch; the child reports it."""
    from tuner import offline
    from tuner.train import stage_child

    for key, value in offline.child_env().items():
        monkeypatch.setenv(key, value)
    from ultralytics.models.yolo.detect import DetectionTrainer

    original = DetectionTrainer.preprocess_batch
    calls = []

    def preprocess_batch(self, batch):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CPU out of memory (simulated)")
        return original(self, batch)

    monkeypatch.setattr(DetectionTrainer, "preprocess_batch", preprocess_batch)
    spec = TrainSpec(
        model="yolov8n.yaml", data=str(tiny_data), device="cpu", device_kind="cpu", budget=8 * 2**30,
        params=Params(64, 4, 0.0, 0.0), metric="metrics/mAP50-95(B)", folder=str(tmp_path),
        settings={"epochs": 1, "optimizer": "AdamW", "lr0": 0.001, "nbs": 64, "warmup_epochs": 0.0, "close_mosaic": 0,
                  "seed": 0, "deterministic": True, "workers": 0, "plots": False},
        save_dir=str(tmp_path / "run"),
    )  # fmt: skip
    result = stage_child.run(spec)
    assert result.status == "oom" and result.halved and result.batch_used == 2
    assert "halved batch 4 -> 2" in result.message


# ------------------------------------------------------------------------------------------ bad input


def test_no_study_is_one_line_and_creates_nothing(workdir, run_cli):
    code, _, err = run_cli("train-best", *FAST)
    assert_one_line_error(code, err, "No study", "tuner probe")
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--settings", "absent.yaml"), ("absent.yaml does not exist", "--settings")),
        (("--val-every", "0"), ("`--val-every` is 0",)),
        (("--max-restarts", "-1"), ("`--max-restarts` is -1", "0 or more")),
        (("--settings", "configs/train.yaml"), ("Unknown setting `epoch`", "Did you mean `epochs`?")),
    ],
)
def test_bad_train_settings_are_one_line_and_create_nothing(workdir, tiny_data, run_cli, args, needles):
    (workdir / "configs").mkdir(exist_ok=True)
    (workdir / "configs" / "train.yaml").write_text("epoch: 3\n")
    best = write_best_yaml(workdir / "best.yaml", tiny_data)
    code, _, err = run_cli("train-best", "--config", best, *args, *FAST)
    assert_one_line_error(code, err, *needles)
    assert not (workdir / "results").exists()


def test_flags_are_checked_as_the_settings_are_with_the_close_match(workdir, tiny_data, train_with):
    best = write_best_yaml(workdir / "results" / "flags" / "best.yaml", tiny_data)
    code, _, err = train_with(FakeRunner(oom_imgsz=10**6, oom_after=0), config=best, strategy="two_stage")
    assert_one_line_error(code, err, "`--strategy` is 'two_stage'", "Did you mean 'two-stage'?")
    assert not (workdir / "results" / "flags" / "train").exists()


def test_a_study_without_a_stable_trial_is_refused(workdir, tiny_data, run_cli):
    make_study(workdir, "nothing-fits", tiny_data, [({"imgsz": 64, "batch": 2, "mosaic": 0.5, "mixup": 0.0}, 0.1, 900)], best=False)
    code, _, err = run_cli("train-best", "--study-name", "nothing-fits", *FAST)
    assert_one_line_error(code, err, "no stable config", "--memory-budget")
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("imgsz: [64\n", ["not valid YAML"]),
        ("imgsz: 64\nbatch: 2\n", ["has no `model`"]),
        ("model: yolov8n.yaml\ndata: DATA\nimgsz: 70\nbatch: 2\nmosaic: 0.5\nmixup: 0\n", ["multiple of 32", "try 64"]),
        ("model: yolov8n.yaml\ndata: DATA\nimgsz: 64\nbatch: 2\nmosaic: 0.5\nmixup: 0\noptimizer: adamw\n",
         ["`optimizer`", "Did you mean 'AdamW'?", "run `tuner probe` again"]),
        ("model: yolov8n.yaml\ndata: DATA\nimgsz: 64\nbatch: 2\nmosaic: 1.5\nmixup: 0\n", ["`mosaic`", "[0, 1]"]),
        ("model: yolov8n.yaml\ndata: DATA\nimgsz: 64\nbatch: 2\nmosaic: 0.5\nmixup: 0\nlr: 1\n", ["Unknown setting `lr`", "Did you mean `lr0`?"]),
        ("model: yolov8n.yaml\ndata: /nowhere/data.yaml\nimgsz: 64\nbatch: 2\nmosaic: 0.5\nmixup: 0\n", ["/nowhere/data.yaml", "does not exist"]),
        ("model: yolov8n.yaml\ndata: DATA\nimgsz: 64\nbatch: 2\nmosaic: 0.5\nmixup: 0\nnbs: -2\n", ["`nbs`", "-2", "0 or more"]),
        ("model: yolov8n.yaml\ndata: DATA\nimgsz: 64\nbatch: 2\nmosaic: 0.5\nmixup: 0\nplots: 1\n", ["`plots`", "true or false"]),
        ("model: /nowhere/w.pt\ndata: DATA\nimgsz: 64\nbatch: 2\nmosaic: 0.5\nmixup: 0\n", ["/nowhere/w.pt", "never downloads"]),
    ],
)
def test_a_bad_best_yaml_is_one_line_and_left_as_it_is(workdir, tiny_data, run_cli, text, needles):
    best = workdir / "results" / "mine" / "best.yaml"
    best.parent.mkdir(parents=True)
    best.write_text(text.replace("DATA", str(tiny_data)))
    before = snapshot(workdir / "results")
    code, _, err = run_cli("train-best", "--config", best, *FAST)
    assert_one_line_error(code, err, *needles)
    assert snapshot(workdir / "results") == before


# -------------------------------------------------------------------------------- real tiny trainings


@pytest.mark.integration
def test_probe_then_train_best_trains_writes_its_files_and_a_finished_run_does_nothing(
    workdir, tiny_data, run_cli, trial_hook
):
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1"))
    assert code == 0, err
    folder = train_dir(workdir, TINY_NAME)
    seen_at_start = []
    with trial_hook(lambda process, index: seen_at_start.append((folder / "config.yaml").exists())):
        code, out, err = run_cli("train-best", "--epochs", "2", *FAST, "--json")
    assert code == 0, err
    assert seen_at_start == [True]  # the resolved config is on disk before the training process starts
    assert "epoch 1/2" in err and "epoch 2/2" in err  # progress per epoch
    summary = json.loads(out)
    assert summary == json.loads((folder / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 2 and summary["restarts"] == 0
    assert set(summary["metrics"]) >= {"mAP50-95", "mAP50"} and summary["peak_mem_mb"] > 200
    assert (folder / "weights" / "best.pt").is_file() and (folder / "weights" / "last.pt").is_file()
    assert csv_epochs(folder / "results.csv") == [1, 2]
    memory = (folder / "memory.csv").read_text().splitlines()
    assert memory[0] == "epoch,peak_mem_mb" and [row.split(",")[0] for row in memory[1:]] == ["1", "2"]
    assert all(float(row.split(",")[1]) > 200 for row in memory[1:])  # for the report's per-epoch plot
    plan = yaml.safe_load((folder / "config.yaml").read_text())
    best = yaml.safe_load((workdir / "results" / TINY_NAME / "best.yaml").read_text())
    assert plan["stages"][0]["params"]["imgsz"] == best["imgsz"] and plan["best"]["batch"] == best["batch"]

    before = snapshot(folder)
    code, out, err = run_cli("train-best", *FAST)
    assert code == 0 and "finished" in err and "nothing to do" in err
    code, _, err = run_cli("train-best", "--epochs", "1", *FAST)
    assert_one_line_error(code, err, "--epochs 1 is below the 2 epochs")
    assert snapshot(folder) == before

    # Killed after Ultralytics' final evaluation stripped last.pt, before tuner recorded the end: resuming that
    # file would start a new default training; the training process sees it is done instead.
    state = state_of(folder)
    write_state(folder, dataclasses.replace(state.with_stage(0, dataclasses.replace(state.stages[0], finished=False)),
                                            finished=False))  # fmt: skip
    code, _, err = run_cli("train-best", *FAST)
    assert code == 0 and "had trained all its epochs" in err, err
    assert state_of(folder).finished and csv_epochs(folder / "results.csv") == [1, 2]
    assert progress_records(folder)[-1] == []


@pytest.mark.integration
def test_training_process_killed_after_epoch_2_of_4_resumes_and_ends_with_exactly_4_epochs(
    workdir, tiny_data, run_cli, trial_hook, ledger
):
    best = write_best_yaml(workdir / "results" / "kill" / "best.yaml", tiny_data)
    folder = train_dir(workdir, "kill")
    with trial_hook(kill_after_epoch(folder, 2)):
        code, _, err = run_cli("train-best", "--config", best, "--epochs", "4", *FAST)
    assert code == 0, err
    assert "Restart 1/5" in err and "continuing from epoch 2" in err
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["restarts"] == 1 and summary["failures"] == 1
    assert csv_epochs(folder / "results.csv") == [1, 2, 3, 4]  # numbering intact, no duplicate row
    first, second = progress_records(folder)
    assert [r["epoch"] for r in first] == [1, 2] and [r["epoch"] for r in second] == [3, 4]
    assert "Resuming training" in (folder / "attempts" / "002" / "log.txt").read_text()
    ledger.kill("train-best's training process after an epoch")
    ledger.checked(3)


@pytest.mark.integration
def test_val_every_validates_every_nth_and_the_last_epoch_and_best_pt_only_from_those(workdir, tiny_data, run_cli):
    best = write_best_yaml(workdir / "results" / "sparse" / "best.yaml", tiny_data)
    folder = train_dir(workdir, "sparse")
    code, _, err = run_cli("train-best", "--config", best, "--epochs", "3", "--val-every", "2", *FAST)
    assert code == 0, err
    assert "epoch 1/3 | not validated" in err and "epoch 2/3 | mAP50-95" in err and "epoch 3/3 | mAP50-95" in err
    (records,) = progress_records(folder)
    assert [r["value"] is None for r in records] == [True, False, False]
    with open(folder / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    maps = [float(row["metrics/mAP50-95(B)"]) for row in rows]
    assert maps[0] != maps[0] and all(value == value for value in maps[1:])  # NaN only where not validated
    best_pt = checkpoint_facts(folder / "weights" / "best.pt")
    fitness = best_pt.train_metrics["fitness"]
    assert fitness is not None and fitness == fitness  # saved after a validation, never under a stale fitness
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["metrics"]["mAP50-95"] is not None


@pytest.mark.integration
def test_killing_tuner_itself_then_running_it_again_continues_the_run(workdir, tiny_data, run_cli, ledger):
    best = write_best_yaml(workdir / "results" / "again" / "best.yaml", tiny_data)
    folder = train_dir(workdir, "again")
    command = [sys.executable, "-m", "tuner", "train-best", "--config", str(best), "--epochs", "3", *FAST]
    tuner = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: epochs_recorded(folder) >= 1 or tuner.poll() is not None, "the first epoch")
    assert tuner.poll() is None, "tuner ended before it could be killed"
    children = psutil.Process(tuner.pid).children(recursive=True)
    tuner.send_signal(signal.SIGKILL)
    tuner.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive  # the training process does not outlive the tuner that started it
    done = checkpoint_facts(folder / "weights" / "last.pt").epochs_done  # what the checkpoint holds, via torch
    state = state_of(folder)
    assert 1 <= state.stages[0].epochs_done <= done < 3
    # The state is recorded after the checkpoint: a kill in between leaves it an epoch behind. Make that so.
    write_state(folder, state.with_stage(0, dataclasses.replace(state.stages[0], epochs_done=done - 1)))

    code, _, err = run_cli("train-best", "--config", best, *FAST)
    assert code == 0, err
    assert f"Continuing the run in {Path('results') / 'again' / 'train'} after {done} of 3 epochs" in err
    state = state_of(folder)
    assert state.finished and state.invocations == 2 and state.restarts == 0
    assert csv_epochs(folder / "results.csv") == [1, 2, 3]
    assert progress_records(folder)[-1][0]["epoch"] == done + 1
    ledger.kill("train-best (tuner itself)")
    ledger.checked(3)


@pytest.mark.integration
def test_repeated_oom_steps_down_to_the_next_stable_config_and_training_finishes(workdir, tiny_data, run_cli):
    # Measured on 2 cores (MiB): imgsz 320 / batch 8 passes 1250 in its first epoch, 416 / 16 more; imgsz 64 /
    # batch 2 peaks near 1000-1070. The budget (1250 MB = 1192 MiB) lets only the smaller one through.
    big, small = {"imgsz": 416, "batch": 16, "mosaic": 0.5, "mixup": 0.0}, {"imgsz": 64, "batch": 2, "mosaic": 0.5, "mixup": 0.0}
    make_study(workdir, "oom", tiny_data, [(big, 0.5, 1000.0), (small, 0.3, 900.0)])
    code, _, err = run_cli("train-best", "--study-name", "oom", "--epochs", "2", "--memory-budget", "1250MB", *FAST)
    assert code == 0, err
    folder = train_dir(workdir, "oom")
    summary = json.loads((folder / "summary.json").read_text())
    assert [(s["from"]["imgsz"], s["from"]["batch"], s["to"]["imgsz"], s["to"]["batch"]) for s in summary["step_downs"]] == [(416, 16, 64, 2)]
    state = state_of(folder)
    assert [(f.outcome, f.epochs_done) for f in state.failures] == [("oom", 0), ("oom", 0)]
    assert "Step-down" in err and summary["restarts"] == 2 and summary["epochs"] == 2
    assert summary["stages"][0]["trained_with"]["imgsz"] == 64
    assert csv_epochs(folder / "results.csv") == [1, 2]
    last = progress_records(folder)[-1]
    # The lr decision, in real training after the step-down from batch 16 to 2: lr0 as planned, and Ultralytics
    # accumulates 8 batches per optimizer step, so each step still sees the planned 16 images.
    probed_lr0 = DEFAULTS["probe"]["lr0"]  # the study's lr0, from the probe that made it
    assert (last[-1]["lr0"], last[-1]["nbs"], last[-1]["batch"], last[-1]["accumulate"]) == (probed_lr0, 16, 2, 8)


@pytest.mark.integration
def test_a_corrupt_last_pt_is_reported_and_never_replaced(workdir, tiny_data, run_cli, trial_hook):
    best = write_best_yaml(workdir / "results" / "corrupt" / "best.yaml", tiny_data)
    folder = train_dir(workdir, "corrupt")
    with trial_hook(kill_after_epoch(folder, 1)):
        code, _, err = run_cli("train-best", "--config", best, "--epochs", "3", "--max-restarts", "0", *FAST)
    assert code == 1 and "re-run the same command to continue" in err
    last = folder / "weights" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = snapshot(folder)
    code, _, err = run_cli("train-best", "--config", best, *FAST)
    assert_one_line_error(code, err, str(last), "corrupt", "left untouched", "restore it")
    assert snapshot(folder) == before


@pytest.mark.integration
def test_two_stage_run_ends_with_both_stages_and_the_fine_tune_in_the_run_folder(workdir, tiny_data, run_cli):
    best = write_best_yaml(workdir / "results" / "two" / "best.yaml", tiny_data, imgsz=96)
    code, _, err = run_cli("train-best", "--config", best, "--epochs", "3", "--strategy", "two-stage", *FAST)
    assert code == 0, err
    folder = train_dir(workdir, "two")
    summary = json.loads((folder / "summary.json").read_text())
    assert [(s["name"], s["epochs"], s["trained_with"]["imgsz"]) for s in summary["stages"]] == [
        ("conservative", 2, 64), ("fine-tune", 1, 96)]  # fmt: skip
    stage_one = folder / "stages" / "1-conservative"
    assert csv_epochs(stage_one / "results.csv") == [1, 2] and (stage_one / "weights" / "best.pt").is_file()
    assert csv_epochs(folder / "results.csv") == [1] and (folder / "weights" / "best.pt").is_file()
    spec = json.loads((folder / "attempts" / "002" / "spec.json").read_text())
    assert spec["model"] == str(stage_one / "weights" / "best.pt")
    assert spec["settings"]["lr0"] == pytest.approx(0.0001)


@pytest.mark.integration
def test_progressive_run_grows_imgsz_block_by_block_from_the_previous_weights(workdir, tiny_data, run_cli):
    small, large = {"imgsz": 64, "batch": 2, "mosaic": 0.5, "mixup": 0.0}, {"imgsz": 96, "batch": 2, "mosaic": 0.5, "mixup": 0.0}
    make_study(workdir, "grow", tiny_data, [(small, 0.4, 900.0), (large, 0.3, 950.0)])
    code, _, err = run_cli("train-best", "--study-name", "grow", "--epochs", "2", "--strategy", "progressive", *FAST)
    assert code == 0, err
    folder = train_dir(workdir, "grow")
    summary = json.loads((folder / "summary.json").read_text())
    assert [(s["name"], s["epochs"]) for s in summary["stages"]] == [("imgsz-64", 1), ("imgsz-96", 1)]
    first, second = progress_records(folder)
    assert (first[0]["imgsz"], second[0]["imgsz"]) == (64, 96)
    spec = json.loads((folder / "attempts" / "002" / "spec.json").read_text())
    assert spec["model"] == str(folder / "stages" / "1-imgsz-64" / "weights" / "last.pt")
    assert (folder / "weights" / "best.pt").is_file() and summary["epochs"] == 2


# ---------------------------------------------------------------------------------------- a training time


def test_a_training_time_keeps_the_planned_epochs_where_they_fit_and_cuts_them_where_not():
    from tuner.commands.train_best import _fit_to_time
    from tuner.errors import StudyFailed
    from tuner.study.cost import START_S
    from tuner.study.training_time import Prediction
    from tuner.train.supervisor import Screen

    settings = configs.default_train_settings()  # 40 epochs
    per_epoch = Prediction.of(30.0, 40)  # 30 s an epoch: 40 epochs take 20 min and the start
    screen = Screen(quiet=True)
    assert _fit_to_time(settings, per_epoch, None, screen) is settings
    assert _fit_to_time(settings, per_epoch, START_S + 40 * 30.0, screen).epochs == 40
    assert _fit_to_time(settings, per_epoch, START_S + 25 * 30.0 + 29, screen).epochs == 25
    assert _fit_to_time(settings, None, 60.0, screen).epochs == 40  # nothing predicts it: the planned epochs, said
    with pytest.raises(StudyFailed, match="Not one epoch fits in the training time of 40 s: an epoch of this config is predicted at 30 s"):
        _fit_to_time(settings, per_epoch, 40.0, screen)


@pytest.mark.integration
def test_train_best_fits_its_epochs_to_the_training_time_by_the_probes_prediction(workdir, tiny_data, run_cli):
    from tuner.study.cost import START_S
    from tuner.study.training_time import from_comment

    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1"))
    assert code == 0, err
    predicted = from_comment((workdir / "results" / TINY_NAME / "best.yaml").read_text())
    assert predicted is not None and predicted.epoch_s > 0
    code, _, err = run_cli("train-best", "--epochs", "4", "--train-time", "1s", *FAST)
    assert code == 1 and err.strip().splitlines()[-1].startswith("tuner: error: Not one epoch fits in the training time of 1 s")
    assert not (train_dir(workdir, TINY_NAME) / "config.yaml").exists()  # nothing started
    room = START_S + 2.5 * predicted.epoch_s  # two epochs of the four, by the probe's own timing
    code, out, err = run_cli("train-best", "--epochs", "4", "--train-time", f"{room:.2f}", *FAST, "--json")
    assert code == 0, err
    assert "2 of the 4 planned epochs fit" in err
    assert json.loads(out)["epochs"] == 2 and json.loads(out)["epochs_planned"] == 2
    code, _, err = run_cli("train-best", "--train-time", "2h", *FAST)
    assert code == 0 and "--train-time fits the epochs of a new run" in err and "nothing to do" in err
    code, _, err = run_cli("train-best", "--train-time", "later", *FAST)
    assert_one_line_error(code, err, "`--train-time` is 'later', but must be a duration")
