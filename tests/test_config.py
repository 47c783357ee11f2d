from pathlib import Path

import pytest
import yaml

from tuner import config
from tuner.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_file_matches_code_defaults():
    shipped = yaml.safe_load((REPO / "configs" / "probe.yaml").read_text())
    assert shipped == config.DEFAULTS


def test_file_overrides_defaults_and_flags_override_file(tmp_path):
    path = tmp_path / "probe.yaml"
    path.write_text("n_trials: 7\nspace:\n  imgsz: [320, 256]\nprobe:\n  epochs: 5\n")
    cfg = config.load(path, {"probe": {"epochs": 2}, "seed": 3})
    assert cfg.n_trials == 7  # from the file
    assert cfg.space.imgsz == (256, 320)  # from the file, sorted
    assert cfg.space.batch is None  # default kept: derived from the data (tuner.study.derive)
    assert cfg.probe.epochs == 2  # the flag wins over the file
    assert cfg.seed == 3


def test_configs_probe_yaml_in_cwd_is_the_default_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "probe.yaml").write_text("n_trials: 4\n")
    monkeypatch.chdir(tmp_path)
    assert config.load(None, {}).n_trials == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("imgsize: [320]\n", "Did you mean `space.imgsz`"),
        ("space:\n  imgsize: [320]\n", "Did you mean `imgsz`"),
        ("space:\n  imgsize: [320]\n", "`space.imgsize`"),
        ("space:\n  imgsz: [630]\n", "imgsz` is 630, but must be a multiple of 32"),
        ("space:\n  batch: [0, 4]\n", "`batch` is 0, but must be a positive integer"),
        ("space:\n  mosaic: [0.2, 1.5]\n", "`mosaic` is 1.5, but must be in [0, 1]"),
        ("space:\n  mixup: [0.5, 0.1]\n", "low must not exceed high"),
        ("probe:\n  optimizer: adamw\n", "Did you mean 'AdamW'"),
        ("n_trials: [1\n", "not valid YAML at line"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path, {})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(Path("nope.yaml"), {})


def test_identity_ignores_settings_a_resumed_study_may_change():
    base = config.load(None, {}).to_dict()
    changed = config.load(None, {"n_trials": 50, "timeout": 60, "probe": {"repeats": 0}}).to_dict()
    assert config.identity(base) == config.identity(changed)
    other_space = config.load(None, {"space": {"imgsz": [320]}}).to_dict()
    assert config.identity(base) != config.identity(other_space)


def test_parse_list():
    assert config.parse_list("160,224", "--imgsz", int) == [160, 224]
    with pytest.raises(ConfigError, match="--imgsz` must be comma-separated"):
        config.parse_list("160,abc", "--imgsz", int)


# ------------------------------------------------------------------------------------------ train-best


def test_shipped_train_settings_match_code_defaults():
    shipped = yaml.safe_load((REPO / "configs" / "train.yaml").read_text())
    assert shipped == config.TRAIN_DEFAULTS


def test_train_settings_file_overrides_defaults_and_flags_override_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 60\nval_every: 5\ntwo_stage:\n  lr_factor: 0.2\n")
    settings = config.load_train(path, {"epochs": 12, "strategy": None})
    assert (settings.epochs, settings.val_every, settings.fine_tune_lr_factor) == (12, 5, 0.2)
    assert settings.strategy == "single" and settings.max_restarts == config.TRAIN_DEFAULTS["max_restarts"]


def test_configs_train_yaml_in_cwd_is_the_default_train_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.yaml").write_text("strategy: progressive\n")
    monkeypatch.chdir(tmp_path)
    assert config.load_train(None, {}).strategy == "progressive"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch: 40\n", "Did you mean `epochs`"),
        ("lr_factor: 0.5\n", "Did you mean `two_stage.lr_factor`"),
        ("strategy: two_stage\n", "Did you mean 'two-stage'"),
        ("val_every: 0\n", "`val_every` is 0, but must be a positive integer"),
        ("plots: maybe\n", "`plots` is 'maybe', but must be true or false"),
        ("two_stage:\n  fine_tune_share: 1.0\n", "`two_stage.fine_tune_share` is 1.0, but must be in (0, 1)"),
    ],
)
def test_bad_train_settings_name_the_problem(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load_train(path, {})
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="pass --settings with an existing YAML file"):
        config.load_train(tmp_path / "absent.yaml", {})


def test_probe_images_set_the_samples_sizes_and_belong_to_the_studys_identity():
    from tuner.cli import build_parser

    cfg = config.load(None, config.probe_overrides(build_parser().parse_args(["probe", "--probe-images", "300,0"])))
    assert (cfg.probe.train_images, cfg.probe.val_images) == (300, 0)
    default = config.load(None, {})
    assert config.identity(cfg.to_dict()) != config.identity(default.to_dict())  # another sample: another study


def test_a_study_stored_before_the_probes_sample_reads_as_trained_on_the_whole_splits():
    stored = config.load(None, {}).to_dict()
    del stored["probe"]["train_images"], stored["probe"]["val_images"]
    old = config.from_stored(stored)
    assert (old.probe.train_images, old.probe.val_images) == (0, 0)
    assert config.identity(old.to_dict()) != config.identity(config.load(None, {}).to_dict())  # refused, not mixed
