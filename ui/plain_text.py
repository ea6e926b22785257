"""What people write (run and sweep names, tags, notes, prompts, error messages that quote
them) shown as typed, never read as markup.

Streamlit reads Markdown in st.caption, st.error and the other alerts, st.toast, st.table
cells and widget labels, with extensions of its own: LaTeX between ``$``, ``:red[…]`` and
other directives, ``:material/…:`` icons, emoji shortcodes. Plotly reads ``<b>``,
``<a href>`` and entities in trace names and hover text. A page shows people's text with
st.text, st.code or a dataframe cell where it can, and through these where it cannot.
"""

from __future__ import annotations

import html
import re

from storage.names import BIDI_CONTROLS, one_line

# CommonMark lets a backslash escape any ASCII punctuation, and every piece of Markdown
# syntax, Streamlit's extensions included, starts with one: escaping them all leaves
# nothing to read as syntax.
_MARKDOWN_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")
# Streamlit also rewrites the parsed text, where escapes no longer count: GFM links bare
# URLs, www. and e-mail addresses, :streamlit: and emoji shortcodes become images, " -> "
# an arrow. An invisible word joiner inside each such pattern keeps it text.
WORD_JOINER = "\u2060"
_REWRITTEN = re.compile(r"https?:(?=//)|\bwww(?=\.)|@|:(?=[\w+-]+:)"
                        r"|(?:^|(?<=\s))[<>~-](?=[-<>=]+(?:\s|$))", re.IGNORECASE)


def plain(text: object) -> str:
    r"""``text`` for a place Streamlit reads as Markdown, shown as typed: no link, image,
    emphasis, LaTeX, colour or icon, and its control characters, bidirectional ones
    included, escaped on one line (``\n``, ``\u202e``)."""
    joined = _REWRITTEN.sub(lambda m: m.group(0) + WORD_JOINER, one_line(str(text)))
    return _MARKDOWN_PUNCTUATION.sub(r"\\\g<0>", joined)


def chart_text(text: object) -> str:
    """``text`` for a Plotly trace name, hover text or label, shown as typed: tags and
    entities escaped, and control characters too (``one_line``)."""
    return html.escape(one_line(str(text)), quote=False)


def no_bidi(text: str) -> str:
    r"""``text`` of several lines (a prompt and its sample) for st.code, with its
    bidirectional controls written as escapes (``\u202e``), so no part of it reads backwards;
    newlines stay."""
    return "".join(c.encode("unicode_escape").decode("ascii") if c in BIDI_CONTROLS else c
                   for c in text)
