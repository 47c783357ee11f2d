"""Keep Ultralytics offline and away from the user's own Ultralytics settings.

Every process that imports Ultralytics for tuner (probe trials, the base checkpoint build, train-best)
runs with `child_env()`: a private `YOLO_CONFIG_DIR` under tuner's cache, `YOLO_OFFLINE=1`, and the
fonts Ultralytics would otherwise download (`check_font('Arial.ttf')` runs on every dataset check,
plots or not) copied from matplotlib's bundled DejaVu Sans. Inside the child, `settle()` turns off
Ultralytics' analytics sync in that private settings file. The user's `~/.config/Ultralytics` is
never read or written.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from tuner import files

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def cache_dir() -> Path:
    """Where tuner keeps generated data, base weights and its private Ultralytics settings."""
    if env := os.environ.get("TUNER_CACHE_DIR"):
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "tuner"


def ultralytics_config_dir() -> Path:
    """The private YOLO_CONFIG_DIR, with the fonts Ultralytics looks for already in place."""
    root = cache_dir() / "ultralytics"
    fonts_dir = root / "Ultralytics"  # Ultralytics appends this sub-directory to YOLO_CONFIG_DIR
    fonts_dir.mkdir(parents=True, exist_ok=True)
    for name in FONT_NAMES:
        target = fonts_dir / name
        if not target.exists():
            with files.replacing(target) as tmp:
                shutil.copyfile(_bundled_font(), tmp)
    return root


def _bundled_font() -> Path:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is not installed; reinstall tuner to bring it back")
    return Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a process that will import Ultralytics on tuner's behalf."""
    env = dict(os.environ)
    env.update(
        {
            "YOLO_CONFIG_DIR": str(ultralytics_config_dir()),
            "YOLO_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # tqdm bars in a log file are noise; Ultralytics honours this.
            "TQDM_DISABLE": "1",
        }
    )
    env.update(extra or {})
    return env


def settle() -> None:
    """Inside a child, after importing Ultralytics: no analytics, no hub, no update checks."""
    from ultralytics.utils import SETTINGS

    off = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "vscode_msg")
    wanted = {key: False for key in off if key in SETTINGS}
    if any(SETTINGS[key] is not False for key in wanted):
        SETTINGS.update(wanted)
