import io
import time

from tuner.params import Params
from tuner.process.contract import EpochRecord
from tuner.study.progress import Progress

PARAMS = Params(imgsz=288, batch=8, mosaic=0.5, mixup=0.1)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream, quiet=False):
    progress = Progress(total=2, budget=2000 * 2**20, metric_name="mAP50-95", quiet=quiet, stream=stream)
    progress.trial_start(0, PARAMS)
    progress.epoch(EpochRecord(epoch=1, value=0.12, imgsz=288, batch=8, seconds=3.0, peak_mb=900), epochs=3)
    progress.trial_end("ok", 0.15, 950, None)
    progress.trial_start(1, PARAMS)
    progress.trial_end("oom", None, 2100, "watchdog: 2100 MB is over the 2000 MB budget")
    progress.say("Best stable config: ...", important=True)
    return stream.getvalue()


def test_plain_lines_when_not_on_a_terminal():
    text = run(io.StringIO())
    assert "\r" not in text
    lines = text.splitlines()
    assert "trial 0 [1/2] imgsz 288 batch 8 mosaic 0.50 mixup 0.10 | epoch 1/3 mAP50-95 0.120 | peak 900/2000 MiB" in lines
    assert any("-> mAP50-95 0.150 | peak 950 MiB | best 0.150 | ETA" in line for line in lines)
    assert any("trial 1 [2/2]" in line and "-> OOM" in line and "watchdog" in line for line in lines)


def test_one_live_line_per_trial_on_a_terminal():
    text = run(Terminal())
    assert "\r" in text  # the running trial's line is rewritten in place
    finished = [line.strip("\r ") for line in text.split("\n") if "->" in line]
    assert len(finished) == 2


def test_quiet_prints_only_what_matters():
    assert run(io.StringIO(), quiet=True).splitlines() == ["Best stable config: ..."]


def test_a_continued_runs_eta_is_its_own_pace_and_its_best_the_studys(monkeypatch):
    """4 of 8 trials were done by earlier runs; this run's first trial takes 60 s: 3 more at that pace is 3 min (the
    study's count over this run's time would say 1 min), and the best shown is the study's 0.300, not this trial's."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    progress = Progress(total=8, budget=2000 * 2**20, metric_name="mAP50-95", stream=stream)
    progress.done, progress.best = 4, 0.300  # as tuner.study.search sets them on a continued study
    clock[0] += 300.0  # the pre-flights and the plan: not this run's pace
    progress.trial_start(4, PARAMS)
    clock[0] += 60.0
    progress.trial_end("ok", 0.25, 950, None)
    assert stream.getvalue().splitlines()[-1].endswith("-> mAP50-95 0.250 | peak 950 MiB | best 0.300 | ETA 3 min")
