"""Fixtures of the train-best tests."""

from __future__ import annotations

import sys

import pytest

from tuner.commands.train_best import train_best
from tuner.errors import TunerError


@pytest.fixture
def train_with(capsys):
    """`tuner train-best` in-process with a fake training process; (exit code, stdout, stderr) like run_cli."""

    def run(runner, **options) -> tuple[int, str, str]:
        try:
            code = train_best(device="cpu", plots=False, runner=runner, **options)
        except TunerError as exc:  # reported as tuner.cli.main reports it
            print(f"tuner: error: {exc}", file=sys.stderr)
            code = exc.exit_code
        out, err = capsys.readouterr()
        return code, out, err

    return run
