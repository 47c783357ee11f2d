"""`tuner dashboard`: write the study's notes (tuner.review.dashboard), then serve optuna-dashboard on its
storage until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna_dashboard

from tuner.errors import ConfigError
from tuner.review import findings
from tuner.review.dashboard import save_notes
from tuner.study.storage import load_study, open_storage, resolve_study_name, storage_url


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connections do not hold up the stop


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass  # no line per request; the dashboard polls every few seconds


def listen(url: str, host: str, port: int) -> WSGIServer:
    """optuna-dashboard's WSGI app on the storage `url`, bound to host:port but not serving yet."""
    try:
        return make_server(host, port, optuna_dashboard.wsgi(url), server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on {host}:{port} ({os.strerror(exc.errno) if exc.errno else exc}); pass --port with "
            f"a free port (e.g. --port {port + 1}) or --host with an address of this machine."
        ) from exc


def serve_until_stopped(httpd: WSGIServer) -> None:
    """Serve until SIGINT or SIGTERM, then close the socket.

    The signals only set a flag that the request loop checks between requests. With the default
    KeyboardInterrupt, optuna_dashboard.run_server sometimes went on serving after a SIGINT (about
    one run in four in tests/test_dashboard.py), the interrupt lost somewhere inside a request.
    """
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    httpd.timeout = 0.5
    try:
        with httpd:
            while not stop.is_set():
                httpd.handle_request()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_dashboard(
    *, study_name: str | None, storage: str | None, studies_dir: Path, results_dir: Path, host: str, port: int
) -> int:
    """`tuner dashboard`: write the notes, then serve optuna-dashboard until Ctrl-C."""
    name = resolve_study_name(study_name, storage, studies_dir)
    url = storage_url(storage, studies_dir, name)
    save_notes(findings.read(load_study(name, url), results_dir, url), url)
    study_id = open_storage(url, create=False).get_study_id_from_name(name)
    httpd = listen(url, host, port)
    print(f"optuna-dashboard for study {name} ({url})")
    print(f"Open http://{host}:{port}/dashboard/studies/{study_id}  (Ctrl-C to stop)", flush=True)
    serve_until_stopped(httpd)
    print("Dashboard stopped.", file=sys.stderr)
    return 0
