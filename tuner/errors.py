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
