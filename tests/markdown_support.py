"""Reading what a page shows from the Markdown Streamlit was sent (AppTest hands a test
the Markdown: people's text in it comes escaped by ``ui.plain_text.plain``)."""

from __future__ import annotations

import re

from ui.plain_text import WORD_JOINER

# CommonMark: a backslash before ASCII punctuation shows the mark itself.
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def parsed(markdown: str) -> str:
    """The text Markdown's parser makes of ``markdown``: its backslash escapes read."""
    return _ESCAPED.sub(r"\1", markdown)


def shown(markdown: str) -> str:
    """What a reader sees of ``markdown``: ``parsed``, less the invisible word joiners
    ``plain`` puts into URLs and shortcodes."""
    return parsed(markdown).replace(WORD_JOINER, "")
