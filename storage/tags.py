"""Run tags: one way to read them from what a person typed, one way to show them.

The New run and Runs pages take a comma-separated field, the CLI ``--tag a,b`` or
``--tag a --tag b``; all give the same list. Every table, ``gptdash list``/``show`` and the
Live page show a run's tags as ``format_tags`` writes them. The store takes only tags that
``check_tags`` passes: each a name on one line (``storage.names.check_name``).
"""

from __future__ import annotations

from collections.abc import Iterable

from storage.names import check_name

SEPARATOR = ", "


def parse_tags(texts: str | Iterable[str] | None) -> list[str]:
    """The tags in one comma-separated text or several: stripped, empty ones dropped, each
    once, in the order first given. ``"a, b"``, ``["a,b"]`` and ``["a", "b"]`` are all
    ``["a", "b"]``."""
    if texts is None:
        return []
    if isinstance(texts, str):
        texts = [texts]
    tags: list[str] = []
    for text in texts:
        for tag in str(text).split(","):
            tag = tag.strip()
            if tag and tag not in tags:
                tags.append(tag)
    return tags


def check_tags(tags: Iterable[str]) -> list[str]:
    """``tags`` as a list of strings; StorageError, naming the tag, when one is longer than a
    name may be or holds a control character (a newline, an escape, a bidirectional
    control)."""
    return [check_name(str(tag), "tag") for tag in tags]


def format_tags(tags: Iterable[str] | None) -> str:
    """``a, b``: a run's tags on one line, as the Runs table, the CLI and the Live page show
    them ("" for none)."""
    return SEPARATOR.join(tags or [])
