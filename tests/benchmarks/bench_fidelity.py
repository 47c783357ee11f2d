"""Benchmark: does the probe rank configs the way full training does? (probe fidelity)

For each of several configs spread over the default space (small to large imgsz, batch 1 to 8, mosaic and
mixup varied), on the embedded dataset:
- the probe's metric: the exact probe a `tuner probe` trial runs (`python -m tuner.study.probe_child` under the
  watchdog, default probe settings, on the sample of the splits a study draws), with two seeds, so that the
  probe's own noise is measured too;
- the full-training metric: `tuner train-best --config <config>.yaml --epochs 40` (train-best's recipe:
  nbs, warmup, close_mosaic, the per-epoch checkpoints), mAP50-95 of best.pt as Ultralytics validates it.

Prints both side by side and Spearman's rank correlation ρ between the probe's mean metric and the
full-training metric (goal ρ >= 0.8), with the probe's noise (mean |seed 1 - seed 2|). Finished
trainings in `--workdir` are reused, so an interrupted run continues where it stopped.

    python tests/benchmarks/bench_fidelity.py --workdir /tmp/bench-fidelity                  # ~1-1.5 h on 2 CPU cores
    python tests/benchmarks/bench_fidelity.py --workdir /tmp/bench-fidelity --epochs 10     # a quicker look
    python tests/benchmarks/bench_fidelity.py --workdir /tmp/fidelity-thin --kind thin --epochs 30   # another kind
    python tests/benchmarks/bench_fidelity.py --workdir /tmp/fidelity-thin --kind thin --epochs 30 --full-seeds 2
    python tests/benchmarks/bench_fidelity.py --workdir DIR --configs 320/8/0.6/0.15,480/2/0.4/0.2   # other configs
    python tests/benchmarks/bench_fidelity.py --workdir DIR --kind thin --train-images 960 --val-images 320 \
        --epochs 15 --configs 160/2/0.55/0.25,320/2/0.6/0.15,480/2/0.4/0.2   # ten times the data, the probes' sample
                                                          # each config trained twice: the full training's own noise
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tuner import config as configs
from tuner.data import sample as samples
from tuner.memory import device as devices
from tuner.memory.budget import parse_budget
from tuner.params import Params
from tuner.process.contract import PROBE_CHILD
from tuner.process.trial import run_child
from tuner.study import inputs as tuner_inputs
from tuner.study.inputs import Inputs

# (imgsz, batch, mosaic, mixup): spread over the default derived space, as a probe study would meet them
CONFIGS = [
    (160, 8, 1.0, 0.0),
    (256, 4, 0.5, 0.1),
    (320, 2, 1.0, 0.2),
    (416, 2, 0.75, 0.05),
    (512, 1, 0.25, 0.0),
    (640, 1, 1.0, 0.1),
]
SEEDS = (0, 1)
SIZES = (96, 32)  # a kind's train and val images (--train-images, --val-images)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return int(text)


def parse_configs(text: str) -> list[tuple]:
    """`320/8/0.6/0.15,480/2/0.4/0.2` as CONFIGS' tuples."""
    try:
        return [(int(i), int(b), float(m), float(x)) for i, b, m, x in (item.split("/") for item in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give imgsz/batch/mosaic/mixup, comma-separated") from None


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the ranks (ties get their mean rank)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else 0.0


def inputs_of(kind: str, workdir: Path, sizes: tuple[int, int] = SIZES) -> tuple[Path, Path | str]:
    """The data.yaml and base model of `kind`: the embedded shapes with their base checkpoint, or a kind of
    tests/benchmarks/kinds.py (`sizes`: train and val images, 96 / 32 by default) with that same checkpoint,
    pretrained on shapes at imgsz 256, another resolution and another kind than the data's."""
    cfg = configs.load(None, {})
    base = tuner_inputs.model(cfg.model, embedded=True)
    if kind == "shapes":
        return tuner_inputs.dataset(None), base
    sys.path.insert(0, str(Path(__file__).parent))
    import kinds

    data = kinds.build(kind, workdir / "data", *sizes)
    held = tuple(len(list((workdir / "data" / "images" / split).iterdir())) for split in ("train", "val"))
    if held != tuple(sizes):
        raise SystemExit(f"{workdir} holds data of {held[0]} / {held[1]} images, not {sizes[0]} / {sizes[1]}: "
                         "pass another --workdir.")  # fmt: skip
    return data, base


def base_line() -> str:
    """Which base checkpoint the figures are of (kinds.base_fingerprint: the build differs between machines)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import kinds

    return kinds.describe_base(tuner_inputs.model(configs.load(None, {}).model, embedded=True))


def probe_metrics(
    config: tuple, workdir: Path, budget_text: str, kind: str = "shapes", settings: dict | None = None,
    seeds: tuple[int, ...] = SEEDS, sizes: tuple[int, int] = SIZES,
) -> list[float | None]:
    """The probe's metric of `config` for each of `seeds`, with the probe `settings` (keys of `probe` in
    configs/probe.yaml) over the defaults, on the sample of the splits a study draws with those settings
    (tuner.data.sample; before 2026-12-06 on the whole splits, which on the kinds' 96 / 32 images is the same); each
    seed's is kept in the workdir and reused (and a workdir's from before, one file of seeds 0 and 1 per config)."""
    earlier = workdir / "probes" / ("%d-%d-%g-%g.json" % config)
    if earlier.exists() and set(seeds) <= {0, 1}:
        return [json.loads(earlier.read_text())[seed] for seed in seeds]
    cfg = configs.load(None, {"memory_budget": budget_text, "probe": {**(settings or {}), "trial_timeout": 7200}})  # accuracy, not time
    device = devices.resolve("cpu")
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    values = []
    for seed in seeds:
        folder = workdir / "probes" / ("%d-%d-%g-%g-seed%d" % (*config, seed))
        cached = folder.with_name(folder.name + ".json")
        if not cached.exists():
            data, model = inputs_of(kind, workdir, sizes)
            sample = samples.make(data, workdir / "sample", cfg.probe.train_images, cfg.probe.val_images, cfg.seed)
            trials = Inputs(cfg, device, budget, data, model, workdir / "probes", sample=sample)
            attempt = run_child(PROBE_CHILD, trials.spec(Params(*config), seed), folder, device, budget,
                                cfg.probe.trial_timeout)  # fmt: skip
            if attempt.outcome.value != "ok":
                raise SystemExit(f"the probe of {config} seed {seed} ended {attempt.outcome.value}: {attempt.reason}; "
                                 f"see {folder}")  # fmt: skip
            cached.write_text(json.dumps(attempt.value))
        values.append(json.loads(cached.read_text()))
    return values


def full_metric(
    config: tuple, workdir: Path, epochs: int, budget_text: str, kind: str = "shapes", seed: int = 0,
    sizes: tuple[int, int] = SIZES,
) -> tuple[float | None, float]:
    """mAP50-95 of `config` after `epochs` of train-best (`--seed seed`), and the wall seconds it took (reused when
    done)."""
    name = "full-%d-%d-%g-%g" % config + (f"-seed{seed}" if seed else "")
    summary_file = workdir / "results" / name / "train" / "summary.json"
    if not summary_file.exists():
        imgsz, batch, mosaic, mixup = config
        cfg = configs.load(None, {})
        data, model = inputs_of(kind, workdir, sizes)
        recipe = {"model": str(model), "data": str(data), "optimizer": cfg.probe.optimizer,
                  "lr0": cfg.probe.lr0, "imgsz": imgsz, "batch": batch, "mosaic": mosaic, "mixup": mixup}  # fmt: skip
        config_yaml = workdir / f"{name}.yaml"
        config_yaml.write_text(yaml.safe_dump(recipe))
        command = [sys.executable, "-m", "tuner", "train-best", "--config", str(config_yaml), "--study-name", name,
                   "--epochs", str(epochs), "--seed", str(seed), "--device", "cpu", "--memory-budget", budget_text,
                   "--quiet"]  # fmt: skip
        started = time.monotonic()
        with open(workdir / f"{name}.log", "w") as log:
            done = subprocess.run(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            print(f"{name}: train-best failed ({done.returncode}), see {workdir / f'{name}.log'}", file=sys.stderr)
            return None, time.monotonic() - started
    summary = json.loads(summary_file.read_text())
    if summary.get("epochs") != epochs:
        raise SystemExit(f"{summary_file} holds {summary.get('epochs')} epochs, not {epochs}; pass another --workdir.")
    return (summary.get("metrics") or {}).get("mAP50-95"), summary.get("wall_s") or 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--kind", choices=("shapes", "thin", "dense"), default="shapes",
                        help="the embedded shapes, or a kind of tests/benchmarks/kinds.py")
    parser.add_argument("--memory-budget", default="16GB", help="room enough for every config: this measures accuracy")
    parser.add_argument("--full-seeds", type=int, default=1, metavar="N",
                        help="train each config in full with seeds 0..N-1 (train-best --seed): rho is then taken against "
                             "their mean, and their spread is the full training's own noise (default: 1)")
    parser.add_argument("--configs", metavar="I/B/MOSAIC/MIXUP,...", type=parse_configs, default=CONFIGS,
                        help="the configs to measure (default: six spread over the space)")
    parser.add_argument("--seeds", type=positive, default=len(SEEDS), metavar="N",
                        help=f"probe each config with seeds 0..N-1 (default: {len(SEEDS)}; the noise needs 2)")
    parser.add_argument("--probes-only", action="store_true", help="run the probes, not the full trainings")
    parser.add_argument("--train-images", type=positive, default=SIZES[0], help="a kind's train images (not shapes)")
    parser.add_argument("--val-images", type=positive, default=SIZES[1], help="a kind's val images (not shapes)")
    parser.add_argument("--probe", action="append", default=[], metavar="KEY=VALUE",
                        help="a probe setting over the defaults (e.g. anneal=true); the probes of another workdir")
    args = parser.parse_args(argv)
    if args.full_seeds < 1:
        parser.error("--full-seeds takes 1 or more")
    settings = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.probe)}
    sizes = (args.train_images, args.val_images)
    (args.workdir / "probes").mkdir(parents=True, exist_ok=True)
    rows = []
    for config in args.configs:
        seeds = tuple(range(args.seeds))
        probes = probe_metrics(config, args.workdir, args.memory_budget, args.kind, settings, seeds, sizes)
        if args.probes_only:
            print(f"{config}: probe {probes}", flush=True)
            continue
        fulls = [full_metric(config, args.workdir, args.epochs, args.memory_budget, args.kind, seed, sizes)
                 for seed in range(args.full_seeds)]  # fmt: skip
        values = [value for value, _ in fulls]
        full = None if any(v is None for v in values) else sum(values) / len(values)
        seconds = sum(s for _, s in fulls) / len(fulls)
        rows.append({"config": config, "probes": probes, "full": full, "full_s": seconds, "fulls": values})
        print(f"{config}: probe {probes}, {args.epochs} epochs {full} ({seconds:.0f} s)", flush=True)
    if args.probes_only:
        return 0
    (args.workdir / "bench_fidelity.json").write_text(json.dumps(rows, indent=2))
    usable = [r for r in rows if r["full"] is not None and all(v is not None for v in r["probes"])]
    noise = [abs(r["probes"][0] - r["probes"][1]) for r in usable if len(r["probes"]) > 1]
    means = [sum(r["probes"]) / len(r["probes"]) for r in usable]
    rho = spearman(means, [r["full"] for r in usable])
    full_noise = [max(r["fulls"]) - min(r["fulls"]) for r in usable if len(r["fulls"]) > 1]
    shown = ", ".join(f"{key}={value}" for key, value in settings.items()) or "default settings"
    data = "" if args.kind == "shapes" else f" ({sizes[0]} train / {sizes[1]} val images)"
    print(f"\n{args.kind} dataset{data}, 2 CPU cores; probe: {shown}, seeds 0-{args.seeds - 1}; "
          f"full: train-best, {args.epochs} epochs; {base_line()}\n")
    print("| imgsz / batch / mosaic / mixup | probe mAP50-95 (seeds) | probe mean | full mAP50-95 | full wall |")
    print("|---|---|---|---|---|")
    for row in rows:
        probes = " / ".join("-" if v is None else f"{v:.3f}" for v in row["probes"])
        mean = "-" if any(v is None for v in row["probes"]) else f"{sum(row['probes']) / len(row['probes']):.3f}"
        full = "-" if row["full"] is None else f"{row['full']:.3f}"
        if row["full"] is not None and len(row["fulls"]) > 1:
            full += " (" + " / ".join(f"{v:.3f}" for v in row["fulls"]) + ")"
        print(f"| {' / '.join(f'{v:g}' for v in row['config'])} | {probes} | {mean} | {full} | {row['full_s'] / 60:.0f} min |")
    shown_noise = f"{sum(noise) / len(noise):.3f}" if noise else "not measured (one seed)"
    print(f"\nSpearman ρ (probe mean vs full) over {len(usable)} configs: {rho:.2f} (goal >= 0.8, issue 18); "
          f"probe noise, mean |seed 0 - seed 1|: {shown_noise}")  # fmt: skip
    if full_noise:
        print(f"full training's noise over {args.full_seeds} seeds, mean spread: {sum(full_noise) / len(full_noise):.3f} "
              f"({', '.join(f'{v:.3f}' for v in full_noise)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
