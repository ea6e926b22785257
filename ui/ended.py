"""Why a run ended, as one message for the Live page's status box."""

from __future__ import annotations

import re

from storage.status import RunStatus

# Ended runs that have a reason to show (a completed run needs none).
ENDED_BY: frozenset[RunStatus] = frozenset(
    {RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.STOPPED, RunStatus.CANCELLED})
_HEADLINES = {
    RunStatus.FAILED: "Why it ended: it failed.",
    RunStatus.INTERRUPTED: "Why it ended: its process went away (a free worker resumes it by "
                             "itself within its limit; or resume it from Runs).",
    RunStatus.STOPPED: "Why it ended: it was stopped (resume it from Runs).",
    RunStatus.CANCELLED: "Why it ended: it was cancelled before it started.",
}


# An interrupted run waiting for its automatic resume needs no one to resume it.
_RESUMES_BY_ITSELF = "Why it ended: its process went away (it resumes by itself: see above)."


def why_it_ended(status: str, error: str | None, *, resume_due: bool = False) -> str:
    """Markdown for one alert box: the headline, then the recorded reason as a code block,
    so the reason (a traceback, a path) sits inside the box, verbatim. ``resume_due``: an
    interrupted run is to resume by itself."""
    headline = (_RESUMES_BY_ITSELF if resume_due and status == RunStatus.INTERRUPTED
                else _HEADLINES.get(status, f"Why it ended: {status}."))
    if not error or not error.strip() or error.strip().lower() in headline.lower():
        return headline  # nothing the headline does not already say
    # A fence longer than any run of backticks in the text, so nothing in it ends the block.
    longest = max((len(m) for m in re.findall(r"`+", error)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{headline}\n\n{fence}text\n{error.strip()}\n{fence}"
