"""A small ring of recent training states in host memory, for the guard's roll-backs.

A snapshot holds the model and optimizer state plus whatever small extras the
trainer passes (RNG states, the guard's window). It lives in CPU memory: a GPU run
keeps its device memory, and the copy out is issued without waiting (into pinned
buffers reused from the oldest snapshot), so taking one does not stall the step.
Restoring, which happens only after an anomaly, copies back synchronously.

Two snapshots are enough: they are only taken after the steps before them were
checked, so when step S turns out bad, the newer one is at most at S and the older
one is strictly before it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

RING_SIZE = 2


def copy_state(src: Any, into: Any = None, *, pin: bool = False) -> Any:
    """A copy of a nested state (dicts, lists, tensors, plain values) with every tensor on
    the CPU, written into ``into``'s tensors where shapes and dtypes match.

    A tensor that appears twice (tied weights) is copied once. With ``pin`` new buffers
    are pinned and device tensors are copied without blocking; reading such a copy on the
    host needs a synchronize, copying it back to the same stream does not.
    """
    return _copy(src, into, pin, {})


def _copy(src: Any, into: Any, pin: bool, memo: dict[tuple, torch.Tensor]) -> Any:
    if isinstance(src, torch.Tensor):
        # state_dict() detaches each entry, so tied weights are two tensor objects over
        # the same memory: recognise them by where they point.
        key = (src.device, src.data_ptr(), src.dtype, tuple(src.shape), src.stride())
        if src.data_ptr() and key in memo:
            return memo[key]
        if not (isinstance(into, torch.Tensor) and into.shape == src.shape
                and into.dtype == src.dtype):
            into = torch.empty(src.shape, dtype=src.dtype, pin_memory=pin)
        memo[key] = into.copy_(src.detach(), non_blocking=pin)
        return into
    if isinstance(src, dict):
        old = into if isinstance(into, dict) else {}
        return {k: _copy(v, old.get(k), pin, memo) for k, v in src.items()}
    if isinstance(src, (list, tuple)):
        same = isinstance(into, (list, tuple)) and len(into) == len(src)
        old = into if same else [None] * len(src)
        return type(src)(_copy(v, o, pin, memo) for v, o in zip(src, old, strict=True))
    return src  # ints, floats, strings, None: immutable


@dataclass
class Snapshot:
    """The training state just before optimizer step ``step``."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    extra: dict[str, Any]


class SnapshotRing:
    """The last ``size`` snapshots, newest last."""

    def __init__(self, size: int = RING_SIZE):
        self.size = size
        self.snapshots: deque[Snapshot] = deque()

    def take(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             extra: dict[str, Any]) -> None:
        """Copy the current state; when the ring is full the oldest one's buffers are reused."""
        pin = torch.cuda.is_available() and any(p.is_cuda for p in model.parameters())
        old = self.snapshots.popleft() if len(self.snapshots) >= self.size else None
        self.snapshots.append(Snapshot(
            step=step,
            model=copy_state(model.state_dict(), old.model if old else None, pin=pin),
            optimizer=copy_state(optimizer.state_dict(), old.optimizer if old else None, pin=pin),
            extra=copy_state(extra, pin=False),
        ))

    def last_before(self, step: int) -> Snapshot | None:
        """The newest snapshot taken before ``step``; newer ones are dropped, as they may
        already carry what went wrong at ``step``."""
        while self.snapshots and self.snapshots[-1].step >= step:
            self.snapshots.pop()
        return self.snapshots[-1] if self.snapshots else None

    def restore(self, snapshot: Snapshot, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer) -> None:
        """Put ``snapshot``'s weights and optimizer state back (it stays usable afterwards)."""
        model.load_state_dict(snapshot.model)
        # The optimizer may keep some loaded tensors as they are (Adam's CPU step counts) and
        # update them in place, so it gets a copy: the snapshot must stay as it was.
        optimizer.load_state_dict(copy_state(snapshot.optimizer))

    @property
    def steps(self) -> list[int]:
        return [s.step for s in self.snapshots]
