"""Benchmark: two models as a dimension of the probe against the one-model study, under the same budget.

On the embedded dataset (or, with `--kind thin` or `--kind dense`, 96 train / 32 val images of a kind of
tests/benchmarks/kinds.py), yolov8n and yolov8s from their base checkpoints (built once from their YAMLs by the
same recipe, on separate synthetic shapes at imgsz 256), one memory budget, one job at a time:
- one model:  `tuner probe` of yolov8n alone (default settings);
- two models: `tuner probe --model yolov8n,yolov8s` (one study per model, the probe budget shared: each runs its
  floor, the rest goes to the leading model's study);
- with `--epochs N`, `tuner train-best` of each pick (the two-model pick's run is the one-model one's where both
  picked the same model and config).
Prints each model's frontier (largest stable imgsz per batch), each run's pick with its probe metric, the probe's
wall time, and train-best's mAP50-95 and wall time. Every step is kept in `--workdir` and reused when run again.

    python tests/benchmarks/bench_models.py --workdir /tmp/bench-models --memory-budget 3GB            # probes only
    python tests/benchmarks/bench_models.py --workdir /tmp/bench-models --memory-budget 3GB --epochs 40
    python tests/benchmarks/bench_models.py --workdir /tmp/bench-models-thin --kind thin --epochs 30
    python tests/benchmarks/bench_models.py --workdir /tmp/bench-models-s40 --weights N.pt,S.pt --epochs 40
                                                          # weights of your own in place of the base checkpoints
    python tests/benchmarks/bench_models.py --workdir /tmp/bench-models-25m --probe-budget 25m
                                                          # a budget past the two floors: the rest goes to the leader
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import kinds  # noqa: E402  (tests/benchmarks/kinds.py)
from bench_train_best import _tuner  # noqa: E402

from tuner.data import base_model  # noqa: E402

MODELS = ("yolov8n.yaml", "yolov8s.yaml")


def inputs(kind: str, workdir: Path, weights: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The probe flags for (one model, two models): the model names on the embedded data (tuner builds their base
    checkpoints), else the base checkpoints' paths and the kind's dataset; `weights` (yolov8n's, yolov8s's) in place
    of the base checkpoints where given."""
    if kind == "shapes" and weights is None:
        return ["--model", MODELS[0]], ["--model", ",".join(MODELS)]
    data = [] if kind == "shapes" else ["--data", str(kinds.build(kind, workdir.resolve() / "data" / f"{kind}-96", 96, 32))]
    weights = weights or [str(base_model.base_checkpoint(model=model)) for model in MODELS]
    return [*data, "--model", weights[0]], [*data, "--model", ",".join(weights)]


def probe(folder: Path, flags: list[str]) -> dict:
    """`tuner probe FLAGS --json` in `folder`: {"summary", "seconds"}; a finished one is read back."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "probe.json"
    if not done.exists():
        started = time.monotonic()
        with open(folder / "probe.log", "w") as log:
            run = subprocess.run([sys.executable, "-m", "tuner", "probe", *flags, "--json"], cwd=folder,
                                 stdout=subprocess.PIPE, stderr=log, text=True)  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"tuner probe {' '.join(flags)} failed ({run.returncode}); see {folder / 'probe.log'}")
        done.write_text(json.dumps({"summary": json.loads(run.stdout), "seconds": time.monotonic() - started}))
    return json.loads(done.read_text())


def train(folder: Path, study: str, epochs: int, budget: str) -> dict:
    """`tuner train-best` of `study` in `folder`: its summary.json and wall time (a finished run is read back)."""
    summary_file = folder / "results" / study / "train" / "summary.json"
    if not summary_file.exists():
        _tuner(["train-best", "--study-name", study, "--epochs", str(epochs), "--memory-budget", budget], folder,
               folder / f"train-{study}.log")  # fmt: skip
    return json.loads(summary_file.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="studies, results and logs (reused when re-run)")
    parser.add_argument("--memory-budget", default="3GB")
    parser.add_argument("--kind", choices=("shapes", "thin", "dense"), default="shapes")
    parser.add_argument("--epochs", type=int, default=0, help="train-best epochs of each pick (default: 0, probes only)")
    parser.add_argument("--weights", help="N.pt,S.pt: yolov8n's and yolov8s's weights in place of the base checkpoints "
                                          "(a yolov8s pretrained as well as yolov8n, e.g. by a longer recipe)")  # fmt: skip
    parser.add_argument("--probe-budget", help="both runs' --probe-budget (default: tuner's)")
    args = parser.parse_args(argv)
    weights = [str(Path(path).resolve()) for path in args.weights.split(",")] if args.weights else None
    if weights is not None and len(weights) != len(MODELS):
        parser.error(f"--weights takes {len(MODELS)} paths, yolov8n's and yolov8s's; got {args.weights!r}")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for model in MODELS if weights is None else ():  # built (or found) before any probe is timed
        base_model.base_checkpoint(model=model)
    print(f"base checkpoints ready in {time.monotonic() - started:.0f} s")
    one_flags, two_flags = inputs(args.kind, workdir, weights)
    common = ["--device", "cpu", "--memory-budget", args.memory_budget]
    common += ["--probe-budget", args.probe_budget] if args.probe_budget else []
    one = probe(workdir / "one", [*one_flags, *common])
    two = probe(workdir / "two", [*two_flags, *common])

    names = {model: Path(model).stem for model in MODELS}
    bases = weights or [str(base_model.base_checkpoint(model=model)) for model in MODELS]
    names.update(zip(bases, (Path(model).stem for model in MODELS)))
    budget = f", probe budget {args.probe_budget}" if args.probe_budget else ""
    print(f"\n{args.kind}, memory budget {args.memory_budget}{budget}, 2 CPU cores\n")
    if two["summary"].get("rest"):
        rest = two["summary"]["rest"]
        print(f"two models: the floors took {rest['floors_s'] / 60:.1f} of {rest['budget_s'] / 60:.1f} min; the other "
              f"{rest['seconds'] / 60:.1f} min went to {names.get(rest['model'], rest['model'])}\n")  # fmt: skip
    print("| model | frontier: largest stable imgsz per batch | its study's pick | probe metric | probe |")
    print("|---|---|---|---|---|")
    for model in two["summary"]["models"]:
        frontier = ", ".join(f"{entry['batch']}: {entry['imgsz'] or '-'}" for entry in model.get("frontier") or [])
        best = model.get("best")
        config = "fits nowhere" if best is None else "{imgsz}/{batch}/{mosaic:.2f}/{mixup:.2f}".format(**best["params"])
        value = "-" if best is None else f"{best['value']:.4f}"
        print(f"| {names.get(model['model'], model['model'])} | {frontier} | {config} | {value} | {model['cost']['probe_s'] / 60:.1f} min |")
    rows = [("yolov8n alone", "one", one["summary"]["study"], MODELS[0], one["summary"]["best"], one["seconds"]),
            ("yolov8n + yolov8s", "two", two["summary"]["pick"]["study"], two["summary"]["pick"]["model"],
             two["summary"]["pick"], two["seconds"])]  # fmt: skip
    print("\n| probe | pick | probe metric | probe wall time | train-best mAP50-95 | train-best wall time |")
    print("|---|---|---|---|---|---|")
    trained: dict[tuple, dict] = {}
    for label, folder, study, model, best, seconds in rows:
        name = names.get(model, Path(model).stem)
        config = "{imgsz}/{batch}/{mosaic:.2f}/{mixup:.2f}".format(**best["params"])
        result, note = {}, ""
        if args.epochs:
            if (name, config) in trained:
                result, note = trained[(name, config)], " (the same training)"
            else:
                result = trained[(name, config)] = train(workdir / folder, study, args.epochs, args.memory_budget)
        value = (result.get("metrics") or {}).get("mAP50-95")
        wall = "-" if not result else f"{result['wall_s'] / 60:.1f} min"
        print(f"| {label} | {name} {config} | {best['value']:.4f} | {seconds / 60:.1f} min | "
              f"{'-' if value is None else f'{value:.4f}'}{note} | {wall} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
