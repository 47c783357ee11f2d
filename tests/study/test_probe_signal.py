"""The probe's metric must tell configs apart on the embedded dataset, or the study optimizes noise.

Real probes with the default settings, from the base checkpoint, on the embedded dataset (both built
once and cached; `tuner probe` builds them too). Calibration (tests/benchmarks/calibrate_probe.py)
measured on 2 cores (2026-12-04): imgsz 160 -> 0.119-0.124, 224 -> 0.198, 288 -> 0.257-0.267 (3 seeds).
The configs compared are the smallest that show it, to keep the default test run short.
"""

from __future__ import annotations

import pytest

from tuner import config
from tuner.data import shapes
from tuner.data.base_model import base_checkpoint
from tuner.memory import device as devices
from tuner.memory.budget import parse_budget
from tuner.params import Params
from tuner.process.contract import PROBE_CHILD
from tuner.process.trial import run_child
from tuner.study.inputs import Inputs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cfg = config.load(None, {})
    device = devices.resolve("cpu")
    budget = parse_budget(cfg.memory_budget, device.total_memory)
    folder = tmp_path_factory.mktemp("probes")
    inputs = Inputs(cfg, device, budget, shapes.embedded_dataset(), base_checkpoint(), folder)
    results = {}

    def run(imgsz: int, batch: int, mosaic: float, seed: int = 0) -> float:
        key = (imgsz, batch, mosaic, seed)
        if key not in results:
            spec = inputs.spec(Params(imgsz, batch, mosaic, 0.0), seed)
            out = run_child(PROBE_CHILD, spec, folder / "-".join(map(str, key)), device, budget, 600)
            assert out.outcome == "ok", out.log_tail()
            results[key] = out.value
        return results[key]

    return run


def test_larger_imgsz_scores_clearly_higher(probe):
    small, large = probe(160, 8, 1.0), probe(224, 8, 1.0)
    assert small > 0.02  # the base checkpoint gives the probe something to measure
    assert large - small > 0.03  # measured: 0.198 vs 0.119-0.124, seeds within 0.005-0.01


def test_configs_differing_only_in_mosaic_score_differently(probe):
    assert abs(probe(224, 8, 1.0) - probe(224, 8, 0.0)) > 1e-4  # not the untouched starting weights


def test_configs_differing_only_in_batch_score_differently(probe):
    assert abs(probe(224, 8, 1.0) - probe(224, 4, 1.0)) > 1e-4
