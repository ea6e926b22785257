"""Optimizers for a GPTModel, with weight decay only where it belongs."""

from __future__ import annotations

import torch

from gptcore.config import TrainConfig
from gptcore.model import GPTModel


def param_groups(model: GPTModel, weight_decay: float) -> list[dict]:
    """Decay the weight matrices of linear layers; not biases, norms or embeddings.

    The tied output head shares the embedding matrix, so it is not decayed either.
    """
    embeddings = {id(model.tok_emb.weight), id(model.pos_emb.weight)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: GPTModel, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        # The fused kernel does the whole update in one launch on CUDA.
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                 fused=device_type == "cuda")
    if cfg.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient; the group split still spares norms/biases.
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                fused=device_type == "cuda")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
