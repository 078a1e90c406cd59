"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one line of at most 200 characters (its first), for a one-line error about it."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no detail"


class UserError(Exception):
    """Bad input from the user (an option, a config key, a data file). Exit code 2, no traceback."""


class DataError(UserError):
    """A dataset file is missing, corrupt or inconsistent. The message names the file."""


class ConfigError(UserError):
    """An unknown or ill-typed configuration key or option value."""


class WriteError(UserError):
    """A results file or folder could not be written (permissions, a full disk). The message names the path."""
