"""Reading what a page shows from the Markdown Streamlit was sent (AppTest hands a test
the Markdown: people's text in it comes escaped by ``ui.plain_text.plain``)."""

from __future__ import annotations

import re

# CommonMark: a backslash before ASCII punctuation shows the mark itself.
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def shown(markdown: str) -> str:
    """``markdown`` with its backslash escapes read as CommonMark reads them."""
    return _ESCAPED.sub(r"\1", markdown)
