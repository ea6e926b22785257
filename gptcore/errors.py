"""The one exception type for errors a user can cause and fix."""


class GptdashError(Exception):
    """A problem the user can fix; the message says what to change.

    Pages show it with ``st.error`` and the CLI prints it on one line; neither
    shows a traceback for it.
    """
