"""Optimizers for a GPTModel, with weight decay only where it belongs."""

from __future__ import annotations

import torch

from gptcore.config import TrainConfig
from gptcore.model import GPTModel


def param_groups(model: GPTModel, weight_decay: float,
                 exclude: set[int] | None = None) -> list[dict]:
    """Decay the weight matrices of linear layers; not biases, norms or embeddings.

    The tied output head shares the embedding matrix, so it is not decayed either.
    Parameters whose ``id`` is in ``exclude`` (another optimizer's) are left out.
    """
    embeddings = {id(model.tok_emb.weight), id(model.pos_emb.weight)}
    decay, no_decay, seen = [], [], set(exclude or ())
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def hidden_matrices(model: GPTModel) -> list[torch.nn.Parameter]:
    """The 2-D weights inside the transformer blocks: what Muon is for. Embeddings and the
    output head are lookups and a classifier rather than hidden transforms, and Muon's
    authors leave them (with biases and norm gains) to AdamW."""
    return [p for p in model.blocks.parameters() if p.requires_grad and p.dim() == 2]


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the hidden matrices and AdamW for everything else, as one optimizer.

    The trainer, checkpoints and the guard's snapshots see one object: its param groups
    (Muon's first) and its state are the two inner optimizers' own, shared, so a loaded
    state_dict reaches them and the trainer's per-group ``lr`` (times ``lr_scale``) does.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        # load_state_dict replaces the group dicts and the state: point the inner ones at them.
        n = len(self.muon.param_groups)
        self.muon.param_groups = self.param_groups[:n]
        self.adamw.param_groups = self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def build_muon(model: GPTModel, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """Muon (Keller Jordan's, as torch ships it) at ``muon_lr_scale`` x lr for the hidden
    matrices, AdamW at lr for embeddings, head, biases and norms."""
    hidden = hidden_matrices(model)
    adamw = torch.optim.AdamW(param_groups(model, cfg.weight_decay, {id(p) for p in hidden}),
                              lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              fused=device_type in ("cuda", "cpu"))
    if not hidden:  # every block frozen: nothing is left for Muon
        return adamw
    # Muon's weight decay is decoupled and scaled by its own (larger) lr.
    muon = torch.optim.Muon([{"params": hidden, "lr_scale": cfg.muon_lr_scale}],
                            lr=cfg.lr * cfg.muon_lr_scale, weight_decay=cfg.weight_decay,
                            momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return MuonAdamW(muon, adamw)


def build_optimizer(model: GPTModel, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    if cfg.optimizer == "muon":
        return build_muon(model, cfg, device_type)
    groups = param_groups(model, cfg.weight_decay)
    # The fused kernel does the whole update in one launch on CUDA, and in one pass per
    # tensor on the CPU, where torch's default is a Python loop of ~10 ops per tensor.
    fused = device_type in ("cuda", "cpu")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
    if cfg.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient; the group split still spares norms/biases.
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
