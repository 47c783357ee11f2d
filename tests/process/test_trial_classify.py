"""Every row of tuner.process.trial.classify's table: the facts of a finished process in, one named end out."""

import pytest

from tuner.process.contract import ChildResult, Outcome
from tuner.process.trial import classify


def outcome(result=None, **facts):
    defaults = {"returncode": 0, "watchdog_reason": None, "stopped": None, "asked_batch": 8}
    parsed = ChildResult.from_json(result) if result is not None else None
    return classify(result=parsed, **{**defaults, **facts})


def test_ok():
    assert outcome(result={"status": "ok", "batch_used": 8}) == ("ok", None, None)


def test_watchdog_kill_is_oom_whatever_else_happened():
    assert outcome(returncode=-9, watchdog_reason="watchdog: 2000 MB is over") == (
        "oom",
        "watchdog: 2000 MB is over",
        "watchdog",
    )


@pytest.mark.parametrize("code", [-9, 137])
def test_sigkill_from_outside_without_result_is_oom(code):
    kind, reason, cause = outcome(returncode=code)
    assert (kind, cause) == ("oom", "os-kill")
    assert "SIGKILL" in reason


def test_halved_batch_is_oom_even_if_training_finished():
    kind, reason, cause = outcome(result={"status": "ok", "batch_used": 4})
    assert (kind, cause) == ("oom", "batch-halving")
    assert "halved batch 8 -> 4" in reason


def test_halving_caught_early_by_the_probe_is_oom():
    result = {"status": "oom", "message": "Ultralytics halved batch 8 -> 4", "halved": True}
    assert outcome(result=result).cause == "batch-halving"


def test_child_reported_oom_keeps_its_reason():
    assert outcome(returncode=0, result={"status": "oom", "message": "MPS backend out of memory"}) == (
        "oom",
        "MPS backend out of memory",
        "exception",
    )


def test_child_reported_error():
    assert outcome(result={"status": "error", "message": "FileNotFoundError: x"})[:2] == (
        "error",
        "FileNotFoundError: x",
    )


def test_other_signal_or_exit_code_without_result_is_error():
    assert outcome(returncode=-11)[0] == "error"
    assert "SIGSEGV" in outcome(returncode=-11)[1]
    assert outcome(returncode=1)[:2] == ("error", "the trial process exited with code 1 without a result")


def test_tuner_stops():
    assert outcome(returncode=-9, stopped="pruned")[0] == "pruned"
    assert outcome(returncode=-9, stopped="the trial ran longer than its 5 s timeout")[:2] == (
        "error",
        "the trial ran longer than its 5 s timeout",
    )


def test_an_unusable_checkpoint_is_an_error_that_says_so():
    kind, reason, cause = outcome(result={"status": "checkpoint", "message": "last.pt cannot be loaded (EOF)"})
    assert (kind, cause) == (Outcome.ERROR, "checkpoint")
    assert reason == "last.pt cannot be loaded (EOF)"


def test_outcomes_are_the_record_enum():
    assert outcome(result={"status": "ok", "batch_used": 8}).outcome is Outcome.OK
    assert outcome(returncode=-9).outcome is Outcome.OOM
