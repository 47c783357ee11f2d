"""The one error type the CLI turns into a one-line message and exit code 2."""


class TunerError(Exception):
    """Bad input or a state tuner refuses to act on. The message names the problem and the fix."""

    exit_code = 2


class ConfigError(TunerError):
    """A config file, flag or stored study does not fit what was asked."""


class DataError(TunerError):
    """A dataset YAML, its images or labels cannot be used."""


class DeviceError(TunerError):
    """The requested device is not there or cannot be used."""


class StudyError(TunerError):
    """The study storage cannot be opened or the study cannot be used as asked."""


class StudyFailed(TunerError):
    """Every trial failed the same way, nothing fits, or the space is used up: going on would burn the budget."""

    exit_code = 1


class NothingFits(StudyFailed):
    """Not even the study's smallest config fits the memory budget (with several models, that model is left out)."""


DISK_ERRNOS = {28: "no space left on the device", 30: "the file system is read-only", 13: "permission denied",
               122: "the disk quota is exceeded"}  # fmt: skip


def outside_cause(exc: BaseException) -> str | None:
    """One line for an error the machine caused rather than tuner (a full or read-only disk, a study storage that
    went away mid-run), or None. Everything finished stays: trials are in the study, files are written whole."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"Stopped: {DISK_ERRNOS[exc.errno]}{where}. Free space or fix the permissions (or pass --results-dir/"
                "--studies-dir on another disk), then re-run the same command: finished trials are kept in the study, "
                "and no file was left half-written.")  # fmt: skip
    lost = _storage_connection_error(exc)
    if lost is not None:
        reason = str(getattr(lost, "orig", None) or lost).strip().splitlines()[0][:160]
        return (f"Lost the study storage mid-run ({reason}). When it is back, re-run the same command: finished trials "
                "are kept, and the trial that was running is failed by its heartbeat and run again.")
    return None


def _storage_connection_error(exc: BaseException | None) -> BaseException | None:
    """The SQLAlchemy connection error behind `exc` (Optuna wraps it in StorageInternalError), if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.startswith("sqlalchemy") and type(exc).__name__ in ("OperationalError", "InterfaceError"):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
