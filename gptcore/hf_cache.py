"""GPT-2 folders already in this machine's Hugging Face cache, for the New run page.

Read only, and nothing is downloaded: a model someone fetched with transformers (or
``huggingface-cli download gpt2``) sits in ``hub/models--gpt2/snapshots/<commit>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from gptcore.errors import GptdashError
from gptcore.hf import hf_settings


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps models: $HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub (under $XDG_CACHE_HOME when that is set)."""
    if hub := os.environ.get("HF_HUB_CACHE"):
        return Path(hub).expanduser()
    if hf_home := os.environ.get("HF_HOME"):
        return Path(hf_home).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "huggingface" / "hub"


def cached_gpt2_folders(cache: Path | None = None) -> list[Path]:
    """Every snapshot in the cache whose ``config.json`` is a GPT-2 gptdash can start from
    (its weights are checked when a run is created), sorted by path."""
    root = cache if cache is not None else hf_cache_dir()
    found = []
    for snapshot in sorted(root.glob("models--*/snapshots/*")):
        try:
            hf_settings(snapshot)
        except GptdashError:
            continue
        found.append(snapshot)
    return found
