"""Where a study lives: its name, its Optuna storage URL, and opening it.

The default storage is one SQLite file per study, `studies/<study-name>.db`; `--storage` takes any
Optuna RDB URL (SQLite, PostgreSQL, MySQL) so that several machines can share one study.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from tuner.errors import StudyError, outside_cause

GRACE_PERIOD = 30
SQLITE_BUSY_TIMEOUT_S = 60  # a worker waits this long for another's write to the same SQLite study
CREATE_ATTEMPTS = 3  # tries to open a storage whose tables another worker is creating at the same moment


GENERIC_STEMS = frozenset({"data", "dataset", "best", "last", "weights", "model"})  # say nothing of which


def name_of(path: str) -> str:
    """The stem of `path`, or where it says nothing (`data.yaml`, `weights/best.pt`) the first folder above that does:
    `road-damage/data.yaml` -> `road-damage`, `runs/detect/train3/weights/best.pt` -> `train3`."""
    resolved = Path(path).expanduser().resolve()
    for part in (resolved, *resolved.parents):
        name = part.stem if part == resolved else part.name
        if name and name.lower() not in GENERIC_STEMS:
            return name
    return Path(path).stem


def default_study_name(data: str | None, model: str, device_type: str) -> str:
    """`<dataset>-<model>-<device>`, e.g. `shapes-yolov8n-cpu`: one study per dataset, model and device (the dataset
    and model named by their folder where the file's own name is generic, so two `data.yaml` are two studies)."""
    data_stem = "shapes" if data is None else name_of(data)
    return f"{data_stem}-{name_of(model)}-{device_type}"


def legacy_study_name(data: str | None, model: str, device_type: str) -> str:
    """The default name before generic stems were looked past (`data-best-cpu`): a study stored under it goes on."""
    data_stem = "shapes" if data is None else Path(data).stem
    return f"{data_stem}-{Path(model).stem}-{device_type}"


def stored_config(name: str, storage: str | None, studies_dir: Path) -> dict[str, Any] | None:
    """The settings study `name` was created with (its `config` attr), {} for a study without them, None where no
    such study is stored (its SQLite file under `studies_dir`, or its name in `storage`; a SQLite URL whose file is
    not there yet holds none)."""
    url = storage_url(storage, studies_dir, name)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    opened = open_storage(url, create=False)
    try:
        if name not in optuna.get_all_study_names(opened):
            return None
        return optuna.load_study(study_name=name, storage=opened).user_attrs.get("config") or {}
    finally:
        opened.engine.dispose()  # one look: no pooled connections left behind (PostgreSQL)


def storage_url(storage: str | None, studies_dir: Path, study_name: str) -> str:
    """The URL given, or the default SQLite file under `studies_dir`."""
    if storage:
        return storage
    return f"sqlite:///{(Path(studies_dir) / f'{study_name}.db').resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a `sqlite:///` URL, or None for other databases."""
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) else None


def open_storage(
    url: str,
    *,
    create: bool,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 0,
) -> optuna.storages.RDBStorage:
    """Open an Optuna RDB storage, turning every way it can fail into one StudyError line.

    With a heartbeat, trials left RUNNING by a tuner that died are failed once their heartbeat is
    older than `grace_period`, and `RetryHeartbeatStaleTrialCallback` queues their parameters again.
    """
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            raise StudyError(
                f"No study database at {path}. Run `tuner probe` first, or pass --storage/--study-name "
                "for an existing study."
            )
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StudyError(f"Cannot create {path.parent} for the study database ({exc.strerror}); "
                                 "pass --studies-dir or --storage with a writable place.") from exc
    kwargs = {}
    if heartbeat_interval:
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period or GRACE_PERIOD,
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        }
    if path is not None:
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:  # a database server: a connection it dropped (a restart) is replaced before use instead of failing the call
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    try:
        storage = _rdb_storage(url, kwargs)
        if path is not None:
            _serialize_sqlite(storage)
        return storage
    except Exception as exc:  # SQLAlchemy raises many types here; all mean the same to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError) or "Failed to import DB access module" in reason:
            raise StudyError(
                f"Cannot open the study storage {url!r}: its database driver is not installed ({reason}). For "
                'PostgreSQL: pip install -e ".[postgres]" (or pip install "psycopg[binary]").'
            ) from exc
        raise StudyError(
            f"Cannot open the study storage {url!r}: {reason}. "
            "Pass --storage with a valid Optuna URL such as sqlite:///studies/mine.db."
        ) from exc


class _Storage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, with a heartbeat that outlives a moment without the database.

    Optuna's heartbeat thread stops at the first error, so a database server restarted mid-trial would leave the
    trial's heartbeat stale, and another worker would fail and re-run it although it is still training. Here a beat
    that cannot reach the database is skipped; the next one, `heartbeat_interval` later, tries again.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if outside_cause(exc) is None:
                raise


def _rdb_storage(url: str, kwargs: dict) -> optuna.storages.RDBStorage:
    """RDBStorage(url), once more if another worker created the same new database's tables at the same moment
    (Optuna checks for its tables and version row, then creates them: the slower of two raises "already exists"
    or breaks a unique constraint)."""
    attempt = 1
    while True:
        try:
            return _Storage(url, **kwargs)
        except sqlalchemy.exc.DBAPIError as exc:  # IntegrityError, OperationalError, ProgrammingError
            text = str(exc).lower()
            if attempt == CREATE_ATTEMPTS or not ("already exists" in text or "unique constraint" in text):
                raise
        time.sleep(0.1 * attempt)
        attempt += 1


def load_study(study_name: str, url: str) -> optuna.Study:
    """An existing study, read-only use (report, dashboard, train-best)."""
    storage = open_storage(url, create=False)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    if study_name not in names:
        hint = f" Studies there: {', '.join(sorted(names))}." if names else " That storage holds no study yet."
        raise StudyError(f"No study named {study_name!r} in {url}.{hint} Pass --study-name with one of them.")
    return optuna.load_study(study_name=study_name, storage=storage)


def resolve_study_name(study_name: str | None, storage: str | None, studies_dir: Path) -> str:
    """The study to read: the one named, else the only one in `--storage` (or in `studies_dir/*.db`)."""
    if study_name:
        return study_name
    if storage:
        names = sorted(optuna.get_all_study_names(open_storage(storage, create=False)))
        where = storage
    else:
        names = sorted(path.stem for path in Path(studies_dir).glob("*.db"))
        where = f"{studies_dir}/"
    if len(names) == 1:
        return names[0]
    if not names:
        raise StudyError(f"No study in {where}. Run `tuner probe` first, or pass --storage/--studies-dir "
                         "where the study is.")
    raise StudyError(f"{len(names)} studies in {where}: {', '.join(names)}. Pass --study-name with one of them.")


def _serialize_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    Python's sqlite3 runs a SELECT outside any transaction, so two processes popping the study's queue
    both read a WAITING trial and both run it (Optuna's SELECT ... FOR UPDATE means nothing to SQLite).
    With the lock taken up front, several workers on one machine share a SQLite study safely; each
    transaction is a few milliseconds, and a worker waits up to SQLITE_BUSY_TIMEOUT_S for another's.
    (SQLAlchemy's documented recipe for SQLite transactions.)
    """
    import sqlalchemy

    @sqlalchemy.event.listens_for(storage.engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(storage.engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    storage.engine.dispose()  # connections opened before the listeners: closed, reopened with them
