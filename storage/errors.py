"""The exception storage raises for problems a user can fix (a missing run, a bad path).

Storage imports nothing from gptcore, so it has its own type; ``jobs.errors.USER_ERRORS``
lets the CLI and the pages treat it exactly like ``gptcore.errors.GptdashError``.
"""


class StorageError(Exception):
    """A problem the user can fix; the message says what to change."""


def missing_run(run_id: int) -> StorageError:
    """The error for a run id that is not in the database."""
    return StorageError(f"run {run_id} does not exist")
