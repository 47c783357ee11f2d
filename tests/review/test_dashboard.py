"""tuner dashboard: optuna-dashboard really served on a real study, read through its API and in Chromium."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tuner.review import dashboard, findings
from tuner.study.storage import storage_url

NAME = "shapes-yolov8n-cpu"
WATCHDOG = "watchdog: 2310 MB over the 2000 MB budget"

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def build_study(url: str) -> optuna.Study:
    """A small study as `tuner probe` leaves it (tests/test_report.py has the full one)."""
    Path("studies").mkdir(exist_ok=True)
    study = optuna.create_study(study_name=NAME, storage=url, direction="maximize")
    study.set_metric_names(["mAP50-95"])
    space = {"imgsz": [160, 224], "batch": [2, 4, 8], "mosaic": [0.0, 1.0], "mixup": [0.0, 0.3]}
    attrs = {
        "config": {"model": "yolov8n.yaml", "data": None, "metric_name": "mAP50-95", "safety_margin": 0.1,
                   "space": space},
        "device": "cpu", "device_name": "Intel Xeon (2 cores)", "budget_mb": 2000.0, "stable_limit_mb": 1800.0,
        "noise": {"pairs": [], "spread": None},
        "best": {"trial": 1, "params": {"imgsz": 160, "batch": 4, "mosaic": 0.5, "mixup": 0.1}, "value": 0.4,
                 "peak_mem_mb": 900.0, "best_yaml": f"results/{NAME}/best.yaml"},
    }  # fmt: skip
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    distributions = {name: CategoricalDistribution(space[name]) for name in ("imgsz", "batch")}
    distributions.update(mosaic=FloatDistribution(0.0, 1.0), mixup=FloatDistribution(0.0, 0.3))
    trials = [  # state, imgsz, batch, value, user attrs
        (TrialState.COMPLETE, 160, 2, 0.3, {"outcome": "ok", "peak_mem_mb": 700.0, "stable": True}),
        (TrialState.COMPLETE, 160, 4, 0.4, {"outcome": "ok", "peak_mem_mb": 900.0, "stable": True}),
        (TrialState.PRUNED, 224, 8, None, {"outcome": "oom", "peak_mem_mb": 2310.0, "oom_reason": WATCHDOG}),
        (TrialState.FAIL, 224, 2, None, {"outcome": "error", "error": "RuntimeError: bad label file"}),
    ]
    for state, imgsz, batch, value, user_attrs in trials:
        params = {"imgsz": imgsz, "batch": batch, "mosaic": 0.5, "mixup": 0.1}
        epochs = {1: value} if value else {}
        study.add_trial(create_trial(state=state, params=params, distributions=distributions, value=value,
                                     intermediate_values=epochs, user_attrs=user_attrs))  # fmt: skip
    return study


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _start(argv: list[str], port: int) -> subprocess.Popen:
    """Start a server and wait until its API answers. SIGINT is reset so that Ctrl-C can be tested."""
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {process.stderr.read()}")
        try:
            _get(f"http://127.0.0.1:{port}/api/meta")
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("the server did not answer within 30 s")


@pytest.fixture
def served(workdir):
    """`tuner dashboard` on a study in studies/, in a subprocess; yields (base URL, process)."""
    build_study(storage_url(None, Path("studies"), NAME))
    port = _free_port()
    process = _start([sys.executable, "-m", "tuner", "dashboard", "--port", str(port)], port)
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.mark.integration
def test_dashboard_serves_trials_attrs_and_notes(served):
    base, process = served
    (summary,) = _get(f"{base}/api/studies")["study_summaries"]
    assert summary["study_name"] == NAME
    detail = _get(f"{base}/api/studies/{summary['study_id']}")
    assert detail["objective_names"] == ["mAP50-95"]
    study_attrs = {attr["key"]: attr["value"] for attr in detail["user_attrs"]}
    assert study_attrs["budget_mb"] == "2000.0" and study_attrs["device_name"] == "Intel Xeon (2 cores)"
    assert json.loads(study_attrs["config"])["space"]["batch"] == [2, 4, 8]
    assert len(detail["trials"]) == 4
    oom = {attr["key"]: attr["value"] for attr in detail["trials"][2]["user_attrs"]}
    assert oom["outcome"] == "oom" and oom["peak_mem_mb"] == "2310.0" and oom["oom_reason"] == WATCHDOG
    assert detail["trials"][2]["state"] == "Pruned"
    assert "**Best stable config**: trial 1: imgsz 160, batch 4" in detail["note"]["body"]
    assert f"`tuner train-best --study-name {NAME}`" in detail["note"]["body"]
    assert "tuner chose this trial's config" in detail["trials"][1]["note"]["body"]

    process.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert f"Open {base}/dashboard/studies/{summary['study_id']}  (Ctrl-C to stop)" in out
    assert "Dashboard stopped." in err


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH (Debian: apt-get install -y chromium)")
def test_dashboard_page_renders_in_headless_chromium(served, tmp_path):
    from PIL import Image

    base, _ = served
    shot = tmp_path / "dashboard.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,900", "--virtual-time-budget=10000",
         f"{base}/dashboard/studies/1"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    with Image.open(shot) as image:
        assert image.size == (1280, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 100  # the study's charts, not a blank or error page


@pytest.mark.integration
def test_plain_optuna_dashboard_command_serves_the_study_and_notes(workdir):
    command = Path(sys.executable).parent / "optuna-dashboard"
    assert command.exists(), "the optuna-dashboard console script is missing from the venv"
    url = storage_url(None, Path("studies"), NAME)
    study = build_study(url)
    dashboard.save_notes(findings.read(study, Path("results"), url), url)
    port = _free_port()
    process = _start([str(command), f"sqlite:///studies/{NAME}.db", "--host", "127.0.0.1", "--port", str(port)], port)
    try:
        (summary,) = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        assert summary["study_name"] == NAME and len(detail["trials"]) == 4
        assert "What tuner found" in detail["note"]["body"]
    finally:
        process.kill()
        process.communicate(timeout=10)


def test_dashboard_on_a_busy_port_is_one_line_and_exit_2(workdir, run_cli):
    build_study(storage_url(None, Path("studies"), NAME))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, out, err = run_cli("dashboard", "--port", port)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"tuner: error: Cannot listen on 127.0.0.1:{port} (Address already in use)")


def test_dashboard_without_a_study_is_exit_2(workdir, run_cli):
    code, out, err = run_cli("dashboard", "--study-name", "nope")
    assert code == 2 and out == "" and "No study database at" in err
