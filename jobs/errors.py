"""Every exception type whose message is meant for the user, for one ``except``."""

from gptcore.errors import GptdashError
from storage.errors import StorageError

USER_ERRORS = (GptdashError, StorageError)
