import io

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
