"""User-facing errors.

Every problem a user can fix (bad input, missing file, unknown preset...) is raised as a
:class:`BestshotError` whose message names the problem *and* the fix. The CLI prints the message on
one line and exits non-zero, never with a traceback.
"""


class BestshotError(Exception):
    """An error the user can act on. ``str(err)`` is a complete, one-line explanation."""


class StorageError(BestshotError):
    """The output folder (or the log's) cannot take a file: full, read-only, no permission. Not the user's
    request's fault, so the server answers it with a 5xx (507) rather than a 422; the message names the folder."""
