from storage.status import RunStatus
from ui.ended import ENDED_BY, why_it_ended


def test_the_reason_is_inside_the_message_verbatim_even_with_backticks():
    text = why_it_ended(RunStatus.FAILED, "Traceback\n  ``` odd\nValueError: x")
    headline, body = text.split("\n\n", 1)
    assert headline.startswith("Why it ended")
    fence = body.split("text\n", 1)[0]
    assert len(fence) == 4 and body.endswith(fence)
    assert "ValueError: x" in body


def test_a_cancelled_run_says_cancelled_not_stopped():
    assert RunStatus.CANCELLED in ENDED_BY
    text = why_it_ended(RunStatus.CANCELLED, None)
    assert "cancelled" in text and "stopped" not in text
    # The reason recorded for a cancelled run says nothing more: not said twice.
    assert why_it_ended(RunStatus.CANCELLED, "cancelled before it started") == text


def test_an_interrupted_run_due_to_resume_by_itself_is_not_sent_to_runs():
    text = why_it_ended(RunStatus.INTERRUPTED, "the process training this run is gone",
                        resume_due=True)
    assert "resumes by itself" in text and "resume it from Runs" not in text
    assert "resume it from Runs" in why_it_ended(RunStatus.INTERRUPTED, "gone")
