"""User-facing errors.

Every problem a user can cause (a bad path, a bad config value, a corrupt file) is raised as a
`KfcnError`; the CLI prints its message on one line and exits with status 1 (an `OptionError`
as a usage error, status 2). Programming errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

from pathlib import Path


class KfcnError(Exception):
    """An error caused by user input; its message names the file, key or value at fault."""


class ConfigError(KfcnError):
    """A bad config file, key or value."""


class DataError(KfcnError):
    """A missing, unreadable or inconsistent dataset file."""


class ModelError(KfcnError):
    """A model file or weights file that cannot be used as asked."""


class OptionError(KfcnError):
    """Options that cannot be used together, a needed one left out, or a bad value of `option`:
    the CLI reports it as a usage error (the command's usage line, exit status 2)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class DefaultPathError(KfcnError):
    """A path option left at its default, where there is nothing: says what was looked for,
    where, and which `flag` (or variable) gives another place."""

    def __init__(self, path: str | Path, what: str, flag: str):
        super().__init__(f"{path}: no {what} here (the default); pass {flag} to look elsewhere")
