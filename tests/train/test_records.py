"""config.yaml and state.json as tuner.train.records reads them: the files of today's runs load into the
dataclasses and are written back the same, a run begun before them continues, and a hand-edited or damaged
file is one line (exit 2) that names the key, never a KeyError."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from tests.train.test_train import FakeRunner, assert_one_line_error, snapshot, state_of, train_dir
from tuner.errors import ConfigError
from tuner.params import Params
from tuner.process.contract import Cause, Outcome
from tuner.study.dominance import StableSizes
from tuner.train.records import RunPlan, RunState, StepDown
from tuner.train.run_folder import RunFiles, load_run, save_plan, save_state

# Written by tuner before tuner.train.records (commit be7069e): a two-stage run from a study with a memory
# frontier, stopped by --max-restarts 2 after a step-down in stage 1 that capped stage 2, with three failures.
# Only the dataset's path is a placeholder.
CONFIG_YAML = """\
# Resolved config of `tuner train-best` for study 'batch' (tuner 0.1.0).
# Written before the first epoch; re-running the command continues the run with this file.
study: batch
origin: study 'batch' in sqlite:////tmp/wt-e-gen2/test_gen0/studies/batch.db
strategy: two-stage
epochs: 4
model: yolov8n.yaml
data: DATA_YAML
device: cpu
memory_budget: 4000.0MiB
usable_memory_mb: 15890.2
metric: metrics/mAP50-95(B)
optimizer: AdamW
lr0: 0.0003
seed: 0
settings:
  epochs: 4
  strategy: two-stage
  max_restarts: 2
  val_every: 1
  plots: false
  warmup_epochs: 3.0
  close_mosaic: 10
  fine_tune_share: 0.25
  fine_tune_lr_factor: 0.1
  progressive_blocks: 4
  seed: 0
best:
  imgsz: 160
  batch: 8
  mosaic: 0.8
  mixup: 0.2
candidates:
- imgsz: 160
  batch: 8
  mosaic: 0.8
  mixup: 0.2
  value: 0.6
  peak_mem_mb: 1500.0
  trial: 0
- imgsz: 128
  batch: 8
  mosaic: 0.5
  mixup: 0.0
  value: 0.5
  peak_mem_mb: 1200.0
  trial: 1
- imgsz: 96
  batch: 4
  mosaic: 0.5
  mixup: 0.0
  value: 0.4
  peak_mem_mb: 1000.0
  trial: 2
frontier:
  largest:
    '4': 160
    '8': 128
  sizes:
  - 96
  - 128
  - 160
stages:
- name: conservative
  epochs: 3
  params:
    imgsz: 128
    batch: 8
    mosaic: 0.5
    mixup: 0.0
  init: model
  lr0: 0.0003
  nbs: 8
  warmup_epochs: 3.0
  close_mosaic: 0
  val_every: 1
  folder: stages/1-conservative
- name: fine-tune
  epochs: 1
  params:
    imgsz: 160
    batch: 8
    mosaic: 0.8
    mixup: 0.2
  init: previous best.pt
  lr0: 2.9999999999999997e-05
  nbs: 8
  warmup_epochs: 0.0
  close_mosaic: 0
  val_every: 1
  folder: .
tuner_version: 0.1.0
created: '2026-12-02T03:53:52+00:00'
"""

STATE_JSON = """\
{
  "version": 1,
  "finished": false,
  "stages": [
    {
      "name": "conservative",
      "epochs_done": 0,
      "params": {
        "imgsz": 96,
        "batch": 4,
        "mosaic": 0.5,
        "mixup": 0.0
      },
      "finished": false,
      "final_metrics": null,
      "last_metrics": null
    },
    {
      "name": "fine-tune",
      "epochs_done": 0,
      "params": {
        "imgsz": 96,
        "batch": 4,
        "mosaic": 0.8,
        "mixup": 0.2
      },
      "finished": false,
      "final_metrics": null,
      "last_metrics": null
    }
  ],
  "restarts": 2,
  "attempts": 3,
  "invocations": 1,
  "step_downs": [
    {
      "stage": 1,
      "epochs_done": 0,
      "from": {
        "imgsz": 128,
        "batch": 8,
        "mosaic": 0.5,
        "mixup": 0.0
      },
      "to": {
        "imgsz": 96,
        "batch": 4,
        "mosaic": 0.5,
        "mixup": 0.0
      },
      "why": "the next stable config of the study the probe would pick (trial 2, 0.4000)",
      "after": "Ultralytics halved batch 8 -> 4 after an out-of-memory error",
      "capped": [
        2
      ],
      "at": "2026-12-02T03:53:52+00:00"
    }
  ],
  "failures": [
    {
      "stage": 1,
      "epochs_done": 0,
      "params": {
        "imgsz": 128,
        "batch": 8,
        "mosaic": 0.5,
        "mixup": 0.0
      },
      "outcome": "oom",
      "cause": "batch-halving",
      "reason": "Ultralytics halved batch 8 -> 4 after an out-of-memory error",
      "peak_mem_mb": 950.0,
      "log": "results/batch/train/attempts/001/log.txt",
      "at": "2026-12-02T03:53:52+00:00"
    },
    {
      "stage": 1,
      "epochs_done": 0,
      "params": {
        "imgsz": 128,
        "batch": 8,
        "mosaic": 0.5,
        "mixup": 0.0
      },
      "outcome": "oom",
      "cause": "batch-halving",
      "reason": "Ultralytics halved batch 8 -> 4 after an out-of-memory error",
      "peak_mem_mb": 950.0,
      "log": "results/batch/train/attempts/002/log.txt",
      "at": "2026-12-02T03:53:52+00:00"
    },
    {
      "stage": 1,
      "epochs_done": 0,
      "params": {
        "imgsz": 96,
        "batch": 4,
        "mosaic": 0.5,
        "mixup": 0.0
      },
      "outcome": "oom",
      "cause": "batch-halving",
      "reason": "Ultralytics halved batch 4 -> 2 after an out-of-memory error",
      "peak_mem_mb": 950.0,
      "log": "results/batch/train/attempts/003/log.txt",
      "at": "2026-12-02T03:53:52+00:00"
    }
  ],
  "peak_mem_mb": 950.0,
  "budget_mb": 4000.0,
  "wall_s": 0.01,
  "updated": "2026-12-02T03:53:52+00:00"
}"""


def write_run(workdir, data, config: str = CONFIG_YAML, state: str = STATE_JSON) -> RunFiles:
    run_files = RunFiles(train_dir(workdir, "batch"))
    run_files.root.mkdir(parents=True)
    run_files.config.write_text(config.replace("DATA_YAML", str(data)))
    run_files.state.write_text(state)
    return run_files


def test_a_config_yaml_from_before_seed_trains_with_seed_0(tmp_path):
    run_files = write_run(tmp_path, "/data.yaml")
    run_files.config.write_text(run_files.config.read_text().replace("  seed: 0\n", ""))
    plan, _ = load_run(run_files)
    assert plan.settings.seed == 0 and plan.seed == 0


def test_today_s_config_yaml_and_state_json_load_into_the_dataclasses_and_are_written_back_the_same(tmp_path):
    run_files = write_run(tmp_path, "/data.yaml")
    plan, state = load_run(run_files)
    assert (plan.strategy, plan.usable_memory_mb, plan.settings.max_restarts) == ("two-stage", 15890.2, 2)
    assert plan.frontier == StableSizes({4: 160, 8: 128}, (96, 128, 160))
    assert [c.params for c in plan.candidates] == [Params(160, 8, 0.8, 0.2), Params(128, 8, 0.5, 0.0), Params(96, 4, 0.5, 0.0)]
    assert (plan.candidates[2].value, plan.candidates[2].peak_mb, plan.candidates[2].trial) == (0.4, 1000.0, 2)
    assert [(s.name, s.epochs, s.folder, s.init) for s in plan.stages] == [
        ("conservative", 3, "stages/1-conservative", "model"), ("fine-tune", 1, ".", "previous best.pt")]  # fmt: skip
    assert [s.params for s in state.stages] == [Params(96, 4, 0.5, 0.0), Params(96, 4, 0.8, 0.2)]
    (step,) = state.step_downs
    assert (step.from_params, step.to_params, step.capped) == (Params(128, 8, 0.5, 0.0), Params(96, 4, 0.5, 0.0), (2,))
    assert [(f.outcome, f.cause, f.params.batch) for f in state.failures] == [
        (Outcome.OOM, Cause.BATCH_HALVING, 8), (Outcome.OOM, Cause.BATCH_HALVING, 8), (Outcome.OOM, Cause.BATCH_HALVING, 4)]  # fmt: skip
    assert (state.restarts, state.attempts, state.epochs_done, state.finished) == (2, 3, 0, False)

    assert plan.to_json() == yaml.safe_load(CONFIG_YAML.replace("DATA_YAML", "/data.yaml"))
    assert state.to_json() == json.loads(STATE_JSON)
    again = RunFiles(tmp_path / "again")
    save_plan(again, plan)
    save_state(again, state)
    body = [line for line in again.config.read_text().splitlines() if not line.startswith("#")]
    assert body == [line for line in run_files.config.read_text().splitlines() if not line.startswith("#")]
    assert again.state.read_text() == STATE_JSON  # the same bytes: same keys, same order


def test_a_run_begun_before_the_typed_state_continues_after_it(workdir, tiny_data, train_with):
    """Re-run on the stopped run: it continues with the stepped-down config in stage 1 and the capped stage 2,
    numbering its attempts on, and keeps the failures and the step-down of the first invocation."""
    write_run(workdir, tiny_data)
    runner = FakeRunner(oom_imgsz=10**6, oom_after=0)
    code, _, err = train_with(runner, study_name="batch")
    assert code == 0, err
    assert "Continuing the run" in err and "after 0 of 4 epochs" in err
    assert [spec.params for spec in runner.specs] == [Params(96, 4, 0.5, 0.0), Params(96, 4, 0.8, 0.2)]
    state = state_of(train_dir(workdir, "batch"))
    assert state.finished and (state.invocations, state.attempts, state.restarts, state.epochs_done) == (2, 5, 2, 4)
    assert len(state.failures) == 3 and [step.capped for step in state.step_downs] == [(2,)]
    summary = json.loads((train_dir(workdir, "batch") / "summary.json").read_text())
    assert summary["step_downs"] == json.loads(STATE_JSON)["step_downs"] and summary["batch_halvings"] == 3


def test_keys_older_tuners_did_not_write_get_the_defaults_their_readers_used():
    plan = yaml.safe_load(CONFIG_YAML)
    for key in ("usable_memory_mb", "settings", "frontier"):
        del plan[key]
    for stage in plan["stages"]:
        del stage["val_every"]
    for candidate in plan["candidates"]:
        del candidate["value"], candidate["peak_mem_mb"], candidate["trial"]
    loaded = RunPlan.from_json(plan)
    assert (loaded.usable_memory_mb, loaded.settings, loaded.frontier) == (None, None, None)
    assert [stage.val_every for stage in loaded.stages] == [1, 1]
    assert loaded.candidates[0].value is None and loaded.candidates[0].params == Params(160, 8, 0.8, 0.2)
    state = json.loads(STATE_JSON)
    del state["step_downs"][0]["capped"]
    assert RunState.from_json(state).step_downs[0].capped == ()


def _edit_json(text: str, edit) -> str:
    values = json.loads(text)
    edit(values)
    return json.dumps(values, indent=2)


def _edit_yaml(text: str, edit) -> str:
    values = yaml.safe_load(text)
    edit(values)
    return yaml.safe_dump(values, sort_keys=False)


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


# A hand edit or damage: (which file, the edit, words of the one line)
BAD_FILES = {
    "state.json: an unknown key": ("state", lambda s: s.update(finshed=True), ["unknown key `finshed` in state.json",
                                                                             "did you mean `finished`?"]),
    "state.json: a misspelt key": ("state", lambda s: _rename(s["stages"][0], "epochs_done", "epochs_dne"),
                                   ["unknown key `epochs_dne` in state.json.stages[0]", "did you mean `epochs_done`?"]),
    "state.json: a missing key": ("state", lambda s: s.pop("restarts"), ["state.json has no `restarts`"]),
    "state.json: a wrong type": ("state", lambda s: s["stages"][0].update(epochs_done="3"),
                                 ["state.json.stages[0].epochs_done is '3', not an integer"]),
    "state.json: an unknown outcome": ("state", lambda s: s["failures"][1].update(outcome="boom"),
                                       ["state.json.failures[1].outcome is 'boom', not one of ok, oom"]),
    "config.yaml: an unknown key": ("config", lambda p: p.update(epoch=4), ["unknown key `epoch` in config.yaml",
                                                                           "did you mean `epochs`?"]),
    "config.yaml: a missing key": ("config", lambda p: p["stages"][1].pop("init"), ["config.yaml.stages[1] has no `init`"]),
    "config.yaml: a stage not a mapping": ("config", lambda p: p["stages"].__setitem__(0, "conservative"),
                                           ["config.yaml.stages[0] is 'conservative', not a mapping"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_hand_edited_or_damaged_run_file_is_one_line_and_left_as_it_is(case, workdir, tiny_data, train_with):
    which, edit, needles = BAD_FILES[case]
    if which == "state":
        run_files = write_run(workdir, tiny_data, state=_edit_json(STATE_JSON, edit))
    else:
        run_files = write_run(workdir, tiny_data, config=_edit_yaml(CONFIG_YAML, edit))
    before = snapshot(run_files.root)
    runner = FakeRunner(oom_imgsz=10**6, oom_after=0)
    code, _, err = train_with(runner, study_name="batch")
    assert_one_line_error(code, err, f"The run in {Path('results', 'batch', 'train')} cannot be read", *needles,
                          "restore it, or move")  # fmt: skip
    assert not runner.specs and snapshot(run_files.root) == before


def test_a_step_down_is_replaced_not_changed():
    step = StepDown.from_json(json.loads(STATE_JSON)["step_downs"][0], "step")
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.capped = (1, 2)
    with pytest.raises(ConfigError, match="step has no `from`"):
        StepDown.from_json({key: value for key, value in step.to_json().items() if key != "from"}, "step")


def test_a_plan_without_train_settings_takes_val_every_from_its_stages_and_back():
    """A plan older than its train settings: --val-every 3 then --val-every 1 goes back to 1 (the stages hold it),
    and the partial `settings: {val_every: N}` an older tuner wrote into such a plan still loads."""
    from tuner.train.run_folder import apply_val_every

    plan = yaml.safe_load(CONFIG_YAML)
    del plan["settings"]
    loaded = RunPlan.from_json(plan)
    every_third = apply_val_every(loaded, 3)
    assert [stage.val_every for stage in every_third.stages] == [3, 3]
    assert [stage.val_every for stage in apply_val_every(every_third, 1).stages] == [1, 1]
    plan["settings"] = {"val_every": 3}
    assert RunPlan.from_json(plan).settings is None
