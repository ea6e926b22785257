"""What people write: names of runs and sweeps, tags and notes.

A newline or an escape sequence in a name would break ``gptdash list``'s one line per run
(or recolour a terminal), and a bidirectional control (U+202E and kin) makes text read
backwards wherever it is shown, so new names and tags with either are refused, and notes
with a bidirectional control; a row written before that rule is shown escaped by
``one_line``. A name is at most ``NAME_MAX`` characters on every database (PostgreSQL's
VARCHAR would refuse a longer one with a traceback; SQLite would keep it).
"""

from __future__ import annotations

import unicodedata

from storage.errors import StorageError

NAME_MAX = 200  # runs.name and sweeps.name are VARCHAR(200)

# Unicode's explicit bidirectional formatting characters: the embeddings, overrides and
# isolates, their terminators, and the implicit marks (LRM, RLM, ALM).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                          "\u200e\u200f\u061c")


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls (newline, tab, escape, DEL); Zl/Zp: Unicode line/paragraph breaks.
    return char in BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp")


def check_name(name: str, what: str = "run name") -> str:
    """``name`` unchanged; StorageError when it is longer than ``NAME_MAX`` or holds a
    control character."""
    if len(name) > NAME_MAX:
        raise StorageError(f"{what} {name[:20]!r}… is {len(name)} characters long: use at "
                           f"most {NAME_MAX}")
    bad = next((c for c in name if _is_control(c)), None)
    if bad is not None:
        raise StorageError(f"{what} {name!r} holds a control character ({bad!r}): use "
                           "printable characters on one line")
    return name


def check_notes(notes: str) -> str:
    """``notes`` unchanged (several lines are fine); StorageError when they hold a
    bidirectional control."""
    bad = next((c for c in notes if c in BIDI_CONTROLS), None)
    if bad is not None:
        raise StorageError(f"notes hold a bidirectional control character ({bad!r}), which "
                           "makes text read backwards: remove it")
    return notes


def printable(text: str) -> str:
    r"""``text`` of several lines with its other control characters escaped (``\x1b``,
    ``\u202e``): newlines and tabs stay."""
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if _is_control(c) and c not in "\n\t" else c for c in text)


def one_line(text: str) -> str:
    r"""``text`` with its control characters escaped (``\n``, ``\x1b``, ``\u202e``), for
    one-line output."""
    if not any(_is_control(c) for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c
                   for c in text)
