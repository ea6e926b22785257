"""Paths as a person reads them: under their home directory as ``~/...``."""

from __future__ import annotations

from pathlib import Path


def shown_path(path: str | Path) -> str:
    """``path`` with the user's home directory written ``~`` (``~/.gptdash/gptdash.db``);
    any other path as it is."""
    text = str(path)
    try:
        home = str(Path.home())
    except RuntimeError:  # no home directory to speak of
        return text
    if home not in ("", "/") and (text == home or text.startswith(home.rstrip("/") + "/")):
        return "~" + text[len(home.rstrip("/")):]
    return text
