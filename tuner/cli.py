"""The `tuner` command line: argparse parsers and main(). Each command maps its flags onto a call."""

from __future__ import annotations

import argparse
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, NoReturn

from tuner import __version__, checks
from tuner import config as configs
from tuner.config import DEFAULTS, STRATEGIES, TRAIN_DEFAULTS
from tuner.errors import ConfigError, TunerError, outside_cause

SPACE, PROBE = DEFAULTS["space"], DEFAULTS["probe"]


def _csv(values) -> str:
    return ",".join(f"{value:g}" for value in values)


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    """Where the study lives; shared by every command that reads or writes one."""
    group = parser.add_argument_group("study")
    group.add_argument(
        "--study-name",
        help="study name (default: <dataset>-<model>-<device>, e.g. shapes-yolov8n-cpu)",
    )
    group.add_argument(
        "--storage",
        help="Optuna storage URL, e.g. postgresql://host/db for many machines "
        "(default: sqlite:///<studies-dir>/<study-name>.db)",
    )
    group.add_argument(
        "--studies-dir", type=Path, default=Path("studies"), help="where default SQLite studies go (default: studies/)"
    )
    group.add_argument(
        "--results-dir", type=Path, default=Path("results"), help="where best.yaml and reports go (default: results/)"
    )


def _study_options(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments of _add_study_options, as every command's call takes them."""
    name = None if args.study_name is None else checks.study_name(args.study_name, "--study-name")
    return {"study_name": name, "storage": args.storage, "studies_dir": args.studies_dir,
            "results_dir": args.results_dir}  # fmt: skip


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """What to train on and where; shared by probe and train-best."""
    group = parser.add_argument_group("what to train")
    group.add_argument(
        "--data", help="Ultralytics dataset YAML (default: the embedded synthetic shapes dataset, generated once)"
    )
    group.add_argument(
        "--model",
        help="model YAML (random init) or a local .pt, or several separated by commas (a.pt,b.pt): one study each, "
        "the pick the most accurate of their picks (default: yolov8n.yaml; on the embedded dataset, yolov8n, and "
        "yolov8s.yaml, pre-trained once on separate synthetic data)",
    )
    group.add_argument("--device", help="auto (mps > cuda > cpu), mps, cuda, cuda:N, N or cpu (default: auto)")
    group.add_argument(
        "--memory-budget",
        help="memory a training may use: 800MB, 3GB, 2.5GiB, or a fraction of the device's usable memory "
        "such as 0.7 (RAM for cpu and mps, the card for cuda; default: 0.7)",
    )
    group.add_argument("--config", type=Path, help="YAML file of settings (default: configs/probe.yaml if it exists here)")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--quiet", action="store_true", help="print only warnings, errors and the final result")
    group.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout at the end")


# ---------------------------------------------------------------------------------------------- probe


def _add_probe(subparsers) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="search imgsz, batch, mosaic and mixup with short, memory-watched probe trainings",
        description="Run an Optuna study of short probe trainings, each in its own memory-watched process. "
        "Trials that run out of memory are PRUNED with the reason and peak memory recorded; the best "
        "stable config is written to <results-dir>/<study-name>/best.yaml. Re-running continues the study.",
    )
    _add_run_options(parser)
    _add_study_options(parser)
    search = parser.add_argument_group("search (flags override the config file)")
    search.add_argument("--n-trials", type=int, help=f"trials the study should have in total (default: {DEFAULTS['n_trials']})")
    search.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    search.add_argument("--train-time", help="pick the most accurate stable config whose full training (train-best's epochs, as its probe timed it) is predicted to fit in this time: 90s, 45m, 2h, 1h30m, or none (default: none)")
    search.add_argument(
        "--imgsz",
        help="imgsz choices, multiples of 32, comma-separated, or auto (default: auto, from the data: 160 up to the "
        "larger of 640 and the usual image size, in steps of 32)",
    )
    search.add_argument(
        "--batch",
        help="batch choices, comma-separated, or auto (default: auto: 1, 2, 4, ... up to 64 or the train split's size)",
    )
    search.add_argument("--mosaic", help=f"mosaic range LOW,HIGH within [0, 1] (default: {_csv(SPACE['mosaic'])})")
    search.add_argument("--mixup", help=f"mixup range LOW,HIGH within [0, 1] (default: {_csv(SPACE['mixup'])})")
    search.add_argument("--probe-epochs", type=int, help=f"epochs each probe trains (default: {PROBE['epochs']})")
    search.add_argument("--probe-anneal", action=argparse.BooleanOptionalAction, default=None, help="lower the learning rate every batch to lr0 x 0.01 by the probe's last batch, as a full training ends; --no-probe-anneal: Ultralytics' once-an-epoch schedule, as studies before 2026-12-05 probed (default: on)")
    search.add_argument("--probe-fraction", type=float, help=f"fraction of the train split each probe uses (default: {PROBE['fraction']})")
    search.add_argument("--probe-images", help=f"TRAIN,VAL: the most train and val images a probe uses, a fixed stratified sample of each split, 0 for all (default: {PROBE['train_images']},{PROBE['val_images']})")
    search.add_argument("--trial-timeout", help=f"seconds before a probe is stopped as an error, or auto: 4x its time as the pre-flights predict it, at least 120 s (default: {PROBE['trial_timeout']})")
    search.add_argument("--probe-budget", help=f"what the probe may spend: a duration (6m, 90s, 1h30m, seconds), a share of the full training it plans (15%%: of train-best's epochs at the startup design's median config), floor (the startup design and one noise repeat, no more), or none; several models share it (default: {str(PROBE['budget']).replace('%', '%%')})")
    search.add_argument("--repeats", type=int, help=f"how many top configs are probed again with another seed to measure noise (default: {PROBE['repeats']})")
    search.add_argument("--race", type=int, help=f"while the top configs tie within the noise and the tie decides the pick (a tied config needs less memory than the most accurate), up to this many more probes of them with new seeds (default: {PROBE['race']})")
    search.add_argument("--safety-margin", type=float, help=f"headroom below the budget a stable config keeps (default: {DEFAULTS['safety_margin']})")
    search.add_argument(
        "--limits-only",
        action="store_true",
        help="only map the memory limit: pre-flight the imgsz x batch space (a few batches each) and print, for "
        "each batch, the largest imgsz under the stable limit, with a fitted memory model; no accuracy probes",
    )
    search.add_argument("--seed", type=int, help=f"seed of the sampler; trial N trains with seed + N (default: {DEFAULTS['seed']})")
    search.add_argument("--pruner", help=f"what stops weak probes early: halving (successive halving over probe epochs, allowing for the probe's noise), median (below the stable trials' median at the same epoch) or none (default: {DEFAULTS['pruner']})")
    search.add_argument(
        "--workers",
        type=int,
        default=1,
        help="trial workers on this machine, one study: one per CUDA card where there are that many, else they share "
        "the device and its budget (default: 1; more machines join with --storage and --study-name)",
    )
    search.add_argument("--worker", choices=("shared", "pinned"), help=argparse.SUPPRESS)  # a worker --workers started
    _add_output_options(parser)
    parser.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from tuner.commands.probe import run_probe
    from tuner.commands.probe_models import run_models

    checks.positive_int(args.workers, "--workers")
    cfg = configs.load(args.config, configs.probe_overrides(args))
    if "," in cfg.model:  # several models: one study each (tuner.commands.probe_models)
        return run_models(cfg, **_study_options(args), quiet=args.quiet, as_json=args.json,
                          limits_only=args.limits_only, workers=args.workers, worker=args.worker)  # fmt: skip
    return run_probe(
        cfg,
        **_study_options(args),
        quiet=args.quiet,
        as_json=args.json,
        limits_only=args.limits_only,
        workers=args.workers,
        worker=args.worker,
        argv=args.argv,
    )


# ----------------------------------------------------------------------------------------- train-best


def _add_train_best(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-best",
        help="train the study's best stable config to the end, resuming after kills and stepping down on OOM",
        description="Train the best stable config of a study (or of a best.yaml) in a memory-watched child process. "
        "Writes <results-dir>/<study-name>/train/ (or --run NAME): Ultralytics' weights/last.pt, best.pt and results.csv, the "
        "resolved config.yaml (before the first epoch), state.json and summary.json. A training process that dies "
        "is continued from this run's last.pt; a config that runs out of memory twice at the same epoch steps down "
        "to a smaller stable one. Re-running the command continues the run; a finished run is left as it is.",
    )
    _add_study_options(parser)
    group = parser.add_argument_group("what to train")
    group.add_argument(
        "--config",
        type=Path,
        help="a best.yaml to train instead of the study's best (default: the study's best stable config)",
    )
    group.add_argument(
        "--run",
        default="train",
        metavar="NAME",
        help="the run's folder under <results-dir>/<study-name>/: another name trains another config of the study "
        "beside the pick's run, e.g. --config results/<study>/larger.yaml --run larger (default: train)",
    )
    train = TRAIN_DEFAULTS
    group.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="a train settings YAML like configs/train.yaml (default: configs/train.yaml if present here); "
        "flags override it; a re-run keeps its run's config.yaml and applies only flags",
    )
    group.add_argument("--epochs", type=int, help=f"epochs to train in all (default: {train['epochs']})")
    group.add_argument("--train-time", help="a new run trains the planned epochs where the probe predicts they fit in this time (90s, 45m, 2h, 1h30m), else as many as fit")
    group.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="single: the best config for all epochs; two-stage: a conservative config, then a fine-tune with the "
        "best one at a tenth of lr0; progressive: imgsz grows in blocks up to the largest stable one "
        f"(default: {train['strategy']})",
    )
    group.add_argument("--device", help="auto, mps, cuda, cuda:N, N or cpu (default: the study's device)")
    group.add_argument(
        "--memory-budget",
        help="memory the training may use, e.g. 800MB, 3GB or 0.7 of usable memory (default: the study's budget; on a machine with less memory, the same share of it)",
    )
    group.add_argument(
        "--max-restarts",
        type=int,
        help=f"training processes that may die before tuner gives up (default: {train['max_restarts']})",
    )
    group.add_argument(
        "--val-every",
        type=int,
        metavar="N",
        help="validate every Nth epoch and the last one; best.pt is chosen among validated epochs only "
        f"(default: {train['val_every']}, every epoch)",
    )
    group.add_argument(
        "--seed",
        type=int,
        help="the training's seed (a new run): training is deterministic, so the same seed trains the same weights "
        f"and another seed shows how far a run's result varies (default: {train['seed']})",
    )
    group.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"Ultralytics' training plots; --no-plots is a little faster (default: {'on' if train['plots'] else 'off'})",
    )
    _add_output_options(parser)
    parser.set_defaults(func=_cmd_train_best)


def _cmd_train_best(args: argparse.Namespace) -> int:
    from tuner.commands.train_best import train_best

    return train_best(
        **_study_options(args),
        config=args.config,
        run=args.run,
        settings_file=args.settings,
        epochs=args.epochs,
        device=args.device,
        memory_budget=args.memory_budget,
        max_restarts=args.max_restarts,
        strategy=args.strategy,
        val_every=args.val_every,
        plots=args.plots,
        seed=args.seed,
        train_time=args.train_time,
        quiet=args.quiet,
        as_json=args.json,
    )


# --------------------------------------------------------------------------------------------- report


def _add_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write report.md, trials.csv and plots of a study to <results-dir>/<study-name>/",
        description="Summarize a study for people: the best stable config and the command to train it, "
        "trials by outcome, the imgsz x batch memory frontier, the top configs, why trials were pruned, ran "
        "out of memory or failed, and the seed noise; with PNG plots. Also leaves notes for optuna-dashboard.",
    )
    _add_study_options(parser)
    _add_output_options(parser)
    parser.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from tuner.commands.report import run_report

    return run_report(**_study_options(args), quiet=args.quiet, as_json=args.json)


# ------------------------------------------------------------------------------------------ dashboard


def _add_dashboard(subparsers) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="serve optuna-dashboard on the study's storage",
        description="Start optuna-dashboard on the study's storage (Ctrl-C stops it), after saving Markdown "
        "notes on the study and its best trial that say what was found and what to run next. The plain "
        "`optuna-dashboard sqlite:///studies/<name>.db` works too.",
    )
    _add_study_options(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    group.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.set_defaults(func=_cmd_dashboard)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from tuner.commands.dashboard import run_dashboard

    return run_dashboard(**_study_options(args), host=args.host, port=args.port)


# ------------------------------------------------------------------------------------------------ main


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (`--seed x`, an unknown flag or choice) as one ConfigError line, like every other bad
    value, instead of its whole usage text (which `--help` shows). Subparsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message[:1].upper()}{message[1:]}; see `{self.prog} --help`.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tuner",
        description="Find the most accurate Ultralytics YOLO training config that fits in memory "
        "(tuner probe), train it without losing runs to OOM kills (tuner train-best), and review the "
        "study (tuner report, tuner dashboard).",
    )
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_probe(subparsers)
    _add_train_best(subparsers)
    _add_report(subparsers)
    _add_dashboard(subparsers)
    return parser


VALUE_FLAGS = ("--imgsz", "--batch", "--mosaic", "--mixup", "--memory-budget")


def _join_values(argv: list[str]) -> list[str]:
    """`--mixup -0.1,0.2` as `--mixup=-0.1,0.2`: argparse takes a value that starts with '-' and is not a plain
    number for an option, and answers with its whole usage text; joined, the value reaches the range check."""
    joined: list[str] = []
    for arg in argv:
        negative = len(arg) > 1 and arg[0] == "-" and (arg[1].isdigit() or arg[1] == ".")
        if joined and joined[-1] in VALUE_FLAGS and negative:
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def _quiet_storage_errors_in_threads() -> None:
    """Optuna's heartbeat thread dies with a traceback when the storage goes away; the main thread meets the same
    error at its next call and says it in one line, so the thread's traceback is left out."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if outside_cause(args.exc_value) is None:
            default(args)

    threading.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    # Heartbeats and metric names are "experimental" in Optuna; tuner relies on them on purpose.
    warnings.filterwarnings("ignore", message=r".*experimental.*")
    parser = build_parser()
    _quiet_storage_errors_in_threads()
    raw = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(_join_values(raw))
    except ConfigError as exc:  # from _Parser.error: no command has run yet
        print(f"tuner: error: {exc}", file=sys.stderr)
        return exc.exit_code
    args.argv = raw
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except TunerError as exc:
        if args.debug:
            raise
        print(f"tuner: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a full disk, a storage that went away: one line, not a traceback
        cause = outside_cause(exc)
        if cause is None or args.debug:
            raise
        print(f"tuner: error: {cause}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuner: interrupted; re-run the same command to continue.", file=sys.stderr)
        return 130
