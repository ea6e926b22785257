"""Saving and loading checkpoints: atomic writes, safe loads, clear errors.

Torch is imported by the functions that need it, so the file names and ``checkpoint_in``
serve commands that only queue or list runs (``gptdash resume --queue``) at once.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptcore.config import TrainConfig
from gptcore.errors import GptdashError

if TYPE_CHECKING:
    import torch

    from gptcore.model import GPTModel

FORMAT = "gptdash-checkpoint-1"
# In a run's checkpoint folder: the state to resume from, and the weights of the best
# evaluation (lowest val loss), for sampling and fine-tuning.
CHECKPOINT_NAME = "latest.pt"
BEST_CHECKPOINT_NAME = "best.pt"


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    step: int, config: TrainConfig, rng: dict[str, Any],
                    extra: dict[str, Any] | None = None,
                    before_commit: Callable[[], None] | None = None) -> Path:
    """Write to a temporary file and rename it, so a kill mid-save never corrupts ``path``.
    ``before_commit`` is called between the two; whatever it raises leaves ``path`` as it
    was (a trainer that lost its run must not replace the new owner's checkpoint)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "config": config.to_dict(),
        "rng": rng,
        "extra": extra or {},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        if before_commit is not None:
            before_commit()
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GptdashError(f"could not write checkpoint {path.name}: {exc.strerror or exc}"
                           " (is the disk full?)") from exc
    except BaseException:  # a second Ctrl-C mid-save: leave no half-written file behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_checkpoint_file(path: str | Path) -> None:
    """GptdashError unless ``path`` looks like a gptdash checkpoint, without torch: a
    ``torch.save`` zip archive whose pickle names this format (``load_checkpoint`` still
    checks it in full)."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as archive:
            pickled = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            ours = pickled is not None and FORMAT.encode() in archive.read(pickled)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError):
        ours = False
    if not ours:
        raise GptdashError(f"{p.name} is not a gptdash checkpoint: give a run id (7, 7:best, "
                           "7:latest) or a .pt file that gptdash saved")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain data only, never arbitrary code."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise GptdashError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(p):  # torch.save has written zip archives since PyTorch 1.6
        raise GptdashError(f"checkpoint {p.name} is corrupt or not a PyTorch file")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise GptdashError(f"refused to load {p.name}: it is not a plain gptdash checkpoint "
                           f"(it holds objects that could run code): {str(exc)[:200]}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise GptdashError(f"checkpoint {p.name} is corrupt or not a PyTorch file: "
                           f"{str(exc)[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GptdashError(f"{p.name} is not a gptdash checkpoint")
    return payload


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                          ) -> tuple[GPTModel, TrainConfig, dict[str, Any]]:
    """The model (eval mode) and config stored in a checkpoint."""
    from gptcore.model import GPTModel

    payload = load_checkpoint(path, map_location=device)
    cfg = TrainConfig.from_dict(payload["config"])
    model_cfg = cfg.model
    model_cfg.vocab_size = cfg.vocab_size
    model = GPTModel(model_cfg)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return model, cfg, payload


def checkpoint_in(folder: str | Path, which: str = "latest") -> Path:
    """The ``latest`` or ``best`` checkpoint of a run folder; ``best`` falls back to
    ``latest`` when the run has no best yet (no evaluation, or one written before best.pt)."""
    if which not in ("latest", "best"):
        raise GptdashError(f"checkpoint {which!r} is neither 'latest' nor 'best'")
    folder = Path(folder)
    best = folder / BEST_CHECKPOINT_NAME
    if which == "best" and best.is_file():
        return best
    return folder / CHECKPOINT_NAME
