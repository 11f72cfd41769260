"""User-facing errors.

Every problem a user can cause (a bad path, a bad config value, a corrupt file) is raised as a
`KfcnError`; the CLI prints its message on one line and exits with status 1. Programming errors
stay ordinary exceptions with tracebacks.
"""


class KfcnError(Exception):
    """An error caused by user input; its message names the file, key or value at fault."""


class ConfigError(KfcnError):
    """A bad config file, key or value."""


class DataError(KfcnError):
    """A missing, unreadable or inconsistent dataset file."""


class ModelError(KfcnError):
    """A model file or weights file that cannot be used as asked."""
