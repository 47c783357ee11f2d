"""The base checkpoint: yolov8n trained once from `yolov8n.yaml` on synthetic shapes of a related kind.

A short probe from random weights measures nothing (yolov8n scores mAP50-95 0.0 for many epochs), so on
the embedded dataset probes fine-tune from this checkpoint instead. It is trained on `BASE_DATA`, separate
images of the "base" style (never the embedded val split), in a child process on first use
(`python -m tuner.data.base_model base ...`), then cached under `weights/` (see tuner.data.cache). The larger
yolov8s gets one by the same recipe where a study asks for it (`tuner probe --model yolov8n.yaml,yolov8s.yaml`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tuner import offline
from tuner.data import cache
from tuner.data.shapes import ShapesSpec, build_shapes
from tuner.errors import TunerError

BASE_DATA = ShapesSpec(seed=1, n_train=192, n_val=16, style="base")


@dataclass(frozen=True)
class BaseRecipe:
    """How the base checkpoint is trained from `yolov8n.yaml` on `BASE_DATA`.

    Steps count more than epochs here. Measured 2026-12-04 (Ultralytics 8.4.190, torch 2.14.1, 2 CPU cores), mAP50-95
    on the embedded val split at imgsz 160 / 224 / 320: batch 8, 14 epochs 0.013 / 0.019 / 0.040 (the recipe before
    this one, which had scored about 0.065 at 160 in an older environment); batch 8, 30 epochs 0.022 / 0.043 / 0.098;
    batch 8, lr0 0.005 0.011 / 0.027 / 0.046; batch 4, 14 epochs (this recipe, 154 s) 0.102 / 0.166 / 0.227.
    """

    epochs: int = 14
    imgsz: int = 256
    batch: int = 4  # from scratch, steps count: at batch 8 the same 14 epochs left it at 0.04 (below), at 4 0.23
    optimizer: str = "AdamW"
    lr0: float = 0.002
    seed: int = 0
    # CPU threads of the build, whatever the machine has or OMP_NUM_THREADS says: from scratch, another thread count
    # trains other weights (measured 2026-12-05 on one machine: 1 thread 0.239 mAP50-95 on BASE_DATA's val split, 2
    # threads 0.447, each the same build after build), and a parent that had imported Ultralytics passed on its
    # OMP_NUM_THREADS=1, so two builds of one recipe differed. Part of the key: a build by another count is not reused.
    threads: int = 2
    minutes: int = 3  # what the one-line notice promises: 2.6 min measured on 2 idle CPU cores, 5-8 min on busy ones

    @property
    def key(self) -> str:
        recipe = f"e{self.epochs}-i{self.imgsz}-b{self.batch}-{self.optimizer}-{self.lr0:g}-t{self.threads}"
        return f"base-v{cache.GENERATOR_VERSION}-{BASE_DATA.key}-{recipe}"


BASE_RECIPE = BaseRecipe()
# The models with a base checkpoint, and the minutes its one-off build promises: yolov8s measured 272 s against
# yolov8n's 170 s on 2 CPU cores (2026-12-05, the same recipe).
BASE_MODELS = {"yolov8n.yaml": BASE_RECIPE.minutes, "yolov8s.yaml": 5}

# The probe defaults (tuner.config.DEFAULTS["probe"]) were measured with tests/benchmarks/calibrate_probe.py on the
# embedded dataset (2 CPU cores): 160 -> 352 moves mAP50-95 from ~0.07 to ~0.18-0.19 while two seeds of one config
# differ by ~0.004-0.010. AdamW at 0.001 or SGD at 0.01 first knock the base model down (epoch 1 at 0.01-0.1) and
# scatter the result.


def base_checkpoint(device: str = "cpu", notify: Callable[[str], None] | None = None, model: str = "yolov8n.yaml") -> Path:
    """`model` (one of BASE_MODELS) trained once from its YAML on `BASE_DATA`, so that short probes on the embedded
    dataset fine-tune from a model that already detects shapes. Built in a child process on first use, then cached.

    `notify` gets the one-line notice printed before a build (default: stderr).
    """
    suffix = "" if model == "yolov8n.yaml" else f"-{Path(model).stem}"  # yolov8n's keeps the name it always had
    target = offline.cache_dir() / "weights" / f"{BASE_RECIPE.key}{suffix}.pt"
    if target.exists():
        return target
    data_yaml = build_shapes(BASE_DATA)
    log_path = target.with_suffix(".log")

    def build(tmp: Path) -> None:
        (notify or _print_stderr)(
            f"Building the {Path(model).stem} base checkpoint once (about {BASE_MODELS[model]} minutes on 2 CPU "
            f"cores); log: {log_path}"
        )
        project = tmp.with_name(f"{tmp.name}-project")  # matches the stale pattern, so a killed build is swept
        command = [sys.executable, "-m", "tuner.data.base_model", "base", "--data", str(data_yaml)]
        command += ["--project", str(project), "--device", device, "--model", model]
        try:
            with open(log_path, "w") as log:
                child = subprocess.run(command, env=_base_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
            weights = project / "base" / "weights" / "last.pt"
            if child.returncode != 0 or not weights.exists():
                raise TunerError(
                    f"Building the base checkpoint failed (exit status {child.returncode}); see {log_path}, "
                    "or pass --model with weights of your own."
                )
            shutil.copyfile(weights, tmp)
        finally:
            shutil.rmtree(project, ignore_errors=True)

    cache.build_atomically(target, build)
    cache.remove_older_versions(target.parent, "base")
    return target


def _print_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _base_env() -> dict[str, str]:
    """The child's environment: the recipe's threads (BaseRecipe.threads), not the machine's cores nor an inherited
    OMP_NUM_THREADS (Ultralytics sets it to 1 in a process that imports it)."""
    return offline.child_env({"OMP_NUM_THREADS": str(BASE_RECIPE.threads)})


def _train_base(data_yaml: Path, project: Path, device: str, model_yaml: str = "yolov8n.yaml") -> None:
    """Inside the child: train the model from its YAML. Ultralytics strips the optimizer from last.pt at the end."""
    import torch
    from ultralytics import YOLO

    offline.settle()
    recipe = BASE_RECIPE
    model = YOLO(model_yaml)
    threads = recipe.threads
    # Ultralytics' select_device() sets torch to cpu_count - 1 threads (1 on 2 cores); undo that right after it.
    model.add_callback("on_pretrain_routine_start", lambda trainer: torch.set_num_threads(threads))
    model.train(
        data=str(data_yaml),
        epochs=recipe.epochs,
        imgsz=recipe.imgsz,
        batch=recipe.batch,
        nbs=recipe.batch,  # one optimizer step per batch: from scratch, steps matter more than batch size
        optimizer=recipe.optimizer,
        lr0=recipe.lr0,
        warmup_epochs=1,
        warmup_bias_lr=0.0,  # the default 0.1 is meant for SGD; Ultralytics' own AdamW choice sets 0 as well
        close_mosaic=max(recipe.epochs // 4, 1),
        seed=recipe.seed,
        deterministic=True,
        plots=False,
        save=True,
        workers=0,
        device=device,
        amp=False,
        exist_ok=True,
        project=str(project),
        name="base",
        verbose=False,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m tuner.data.base_model base --data D --project P --device X --model M`: a base checkpoint's child."""
    parser = argparse.ArgumentParser(prog="python -m tuner.data.base_model")
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base", help="train the base checkpoint (run by base_checkpoint())")
    base.add_argument("--data", type=Path, required=True)
    base.add_argument("--project", type=Path, required=True)
    base.add_argument("--device", default="cpu")
    base.add_argument("--model", default="yolov8n.yaml", choices=sorted(BASE_MODELS))
    args = parser.parse_args(argv)
    started = time.monotonic()
    _train_base(args.data, args.project, args.device, args.model)
    print(f"base checkpoint trained in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
