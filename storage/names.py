"""Names of runs and sweeps: one printable line each.

A newline or an escape sequence in a name would break ``gptdash list``'s one line per run
(or recolour a terminal), so new names with control characters are refused; a row written
before that rule is shown escaped by ``one_line``.
"""

from __future__ import annotations

import unicodedata

from storage.errors import StorageError


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls (newline, tab, escape, DEL); Zl/Zp: Unicode line/paragraph breaks.
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def check_name(name: str, what: str = "run name") -> str:
    """``name`` unchanged; StorageError when it holds a control character."""
    bad = next((c for c in name if _is_control(c)), None)
    if bad is not None:
        raise StorageError(f"{what} {name!r} holds a control character ({bad!r}): use "
                           "printable characters on one line")
    return name


def one_line(text: str) -> str:
    r"""``text`` with its control characters escaped (``\n``, ``\x1b``), for one-line output."""
    if not any(_is_control(c) for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c
                   for c in text)
