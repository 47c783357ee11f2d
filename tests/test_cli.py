"""The command line: help, and bad input -> one line naming the problem and the fix, exit 2, nothing lost."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import optuna
import pytest
import torch

from tests.conftest import TINY_NAME, tiny_probe_args
from tuner.cli import main
from tuner.errors import ConfigError
from tuner.study import inputs


def test_help_explains_every_probe_flag(run_cli):
    with pytest.raises(SystemExit) as info:
        main(["probe", "--help"])
    assert info.value.code == 0


def test_help_lists_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--model", "--device", "--memory-budget", "--n-trials", "--timeout", "--study-name",
                 "--storage", "--config", "--studies-dir", "--results-dir", "--imgsz", "--batch", "--mosaic",
                 "--mixup", "--probe-epochs"):
        assert flag in text
    assert "default: 0.7" in text and "default: auto" in text


def test_no_command_prints_help(run_cli):
    code, out, _ = run_cli()
    assert code == 2 and "probe" in out


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tuner: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--imgsz", "630"], ["multiple of 32", "try 640"]),
        (["--imgsz", "big"], ["--imgsz` must be comma-separated"]),
        (["--batch", "0,4"], ["`--batch` is 0"]),
        (["--mosaic", "0,1.5"], ["`--mosaic` is 1.5"]),
        (["--mixup", "0.2,0.1"], ["low must not exceed high"]),
        (["--mixup", "-0.1,0.2"], ["`--mixup` is -0.1"]),  # a value starting with '-': not argparse's usage text
        (["--batch", "-4"], ["`--batch` is -4"]),
        (["--race", "-1"], ["`--race` is -1"]),
        (["--memory-budget", "lots"], ["memory budget 'lots'", "800MB"]),
        (["--memory-budget=-2GB"], ["memory budget"]),
        (["--memory-budget", "0"], ["greater than 0"]),
        (["--device", "tpu"], ["Unknown device 'tpu'", "--device auto"]),
        (["--device", "cuda:3"], ["--device cuda:3"]),
        (["--model", "missing.pt"], ["missing.pt not found", "never downloads"]),
        (["--model", "yolov9q.yaml"], ["yolov9q.yaml"]),
        (["--model", "weights.onnx"], ["must be a model YAML"]),
        (["--storage", "nosuchdb://nowhere"], ["Cannot open the study storage", "--storage"]),
        (["--config", "nope.yaml"], ["nope.yaml does not exist"]),
        (["--probe-fraction", "1.5"], ["`--probe-fraction` is 1.5"]),
        (["--pruner", "hyperband"], ["pruner", "halving", "median"]),
        (["--seed", "x"], ["--seed", "invalid int value: 'x'", "tuner probe --help"]),  # argparse's own: not its usage
        (["--n-trials", "ten"], ["--n-trials", "'ten'"]),
        (["--safety-margin", "some"], ["--safety-margin", "invalid float value"]),
        (["--trial-timeout", "soon"], ["`--trial-timeout` is 'soon'", "or auto"]),
        (["--probe-budget", "soon"], ["`--probe-budget` is 'soon'", "6m, 90s, 1h30m", "15%", "or none"]),
        (["--probe-budget=-5%"], ["`--probe-budget` is '-5%'"]),
        (["--probe-epochs", "0"], ["`--probe-epochs` is 0"]),
        (["--train-time", "2x"], ["`--train-time` is '2x'", "90s, 45m, 2h"]),
    ],
)
def test_bad_flags(workdir, tiny_data, run_cli, flags, needles):
    code, _, err = run_cli(*tiny_probe_args(tiny_data), *flags)
    assert_one_line_error(code, err, *needles)
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train-best", "--epochs", "ten"], ["--epochs", "'ten'", "tuner train-best --help"]),
        (["train-best", "--strategy", "fast"], ["--strategy", "two-stage"]),
        # a study name is a file and folder name (results/a/b/ otherwise); --device tpu would stop the probe next
        (["probe", "--device", "tpu", "--study-name", "a/b"], ["`--study-name` is 'a/b'", "letters, digits"]),
        (["probe", "--device", "tpu", "--study-name", ".."], ["`--study-name` is '..'"]),
        (["train-best", "--study-name", "a b"], ["`--study-name` is 'a b'"]),
        (["report", "--study-name", "../elsewhere"], ["`--study-name` is '../elsewhere'"]),
        (["dashboard", "--port", "web"], ["--port", "'web'"]),
        (["probe", "--sed", "1"], ["Unrecognized arguments: --sed"]),
        (["probe", "--probe-images", "200"], ["`--probe-images` takes two sizes, TRAIN,VAL"]),
        (["probe", "--probe-images", "200,-1"], ["`--probe-images` is -1"]),
    ],
)
def test_every_commands_bad_values_are_one_line(workdir, run_cli, argv, needles):
    code, _, err = run_cli(*argv)
    assert_one_line_error(code, err, *needles)
    assert not (workdir / "results").exists() and not (workdir / "studies").exists()


def test_a_zip_that_is_not_a_checkpoint_is_refused_before_any_process(workdir, tiny_data, run_cli):
    """torch.load would end the first pre-flight with `Expected hasRecord("version")` (exit 1). The storage
    that cannot be opened comes after the model's check: it stops the probe if that check lets the file pass."""
    with zipfile.ZipFile(workdir / "notes.pt", "w") as archive:
        archive.writestr("notes/readme.txt", "not weights")
    torch.save({"weights": torch.zeros(2)}, workdir / "saved.pt")
    assert inputs.model(str(workdir / "saved.pt"), embedded=False) == (workdir / "saved.pt").resolve()
    code, _, err = run_cli(*tiny_probe_args(tiny_data), "--model", "notes.pt", "--storage", "nosuchdb://nowhere")
    assert_one_line_error(code, err, "notes.pt is not a PyTorch checkpoint")


def test_unknown_key_in_config_file_suggests_the_close_one(workdir, tiny_data, run_cli):
    (workdir / "mine.yaml").write_text("space:\n  imgsz: [64]\n  mosiac: [0, 1]\n")
    code, _, err = run_cli(*tiny_probe_args(tiny_data), "--config", "mine.yaml")
    assert_one_line_error(code, err, "`space.mosiac`", "Did you mean `mosaic`?")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("train: [unclosed\n", "not valid YAML"),
        ("train: images/train\nval: images/val\n", "names"),
    ],
)
def test_bad_dataset_yaml(workdir, run_cli, content, needle):
    data = workdir / "data.yaml"
    if content is not None:
        data.write_text(content)
    code, _, err = run_cli(*tiny_probe_args(data))
    assert_one_line_error(code, err, needle)


def test_dataset_without_images(workdir, run_cli):
    (workdir / "empty" / "images" / "train").mkdir(parents=True)
    (workdir / "empty" / "images" / "val").mkdir(parents=True)
    data = workdir / "data.yaml"
    data.write_text(f"path: {workdir / 'empty'}\ntrain: images/train\nval: images/val\nnames: {{0: a}}\n")
    code, _, err = run_cli(*tiny_probe_args(data))
    assert_one_line_error(code, err, "image")


def test_debug_shows_the_traceback(workdir, tiny_data):
    with pytest.raises(ConfigError):
        main(["--debug", *tiny_probe_args(tiny_data), "--imgsz", "630"])


@pytest.mark.integration
def test_a_changed_space_is_refused_and_nothing_of_the_study_changes(workdir, tiny_data, run_cli):
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1"))
    assert code == 0, err
    database = workdir / "studies" / f"{TINY_NAME}.db"
    best = workdir / "results" / TINY_NAME / "best.yaml"
    before = (database.read_bytes(), best.read_bytes())

    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1"), "--imgsz", "96")
    assert_one_line_error(code, err, "was created with space", "[64]", "--study-name")
    code, _, err = run_cli(*tiny_probe_args(tiny_data, "--n-trials", "1"), "--memory-budget", "3GB")
    assert_one_line_error(code, err, "memory budget", "--study-name")
    assert (database.read_bytes(), best.read_bytes()) == before


def test_console_script_runs_as_a_real_process(workdir):
    done = subprocess.run([sys.executable, "-m", "tuner", "probe", "--imgsz", "100"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tuner: error: The value of `--imgsz` is 100, but must be a multiple of 32 (YOLO's largest stride); try 96."
    ]


def test_pruner_flag_overrides_the_config_file_and_reaches_the_study_pruner(tmp_path):
    from tuner import config as configs
    from tuner.cli import build_parser
    from tuner.config import probe_overrides
    from tuner.study import pruners

    file = tmp_path / "probe.yaml"
    file.write_text("pruner: none\n")
    assert configs.load(file, probe_overrides(build_parser().parse_args(["probe"]))).pruner == "none"
    cfg = configs.load(file, probe_overrides(build_parser().parse_args(["probe", "--pruner", "median"])))
    assert cfg.pruner == "median"
    made = pruners.make(cfg, 1000.0)
    assert isinstance(made, pruners.StableOnly) and isinstance(made.inner, optuna.pruners.MedianPruner)
