"""Helpers for the Hugging Face interop tests: tiny GPT-2 folders that transformers itself
builds and saves (random weights), and a tiny run config. Nothing touches the network."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads them
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gptcore.config import ModelConfig, TrainConfig, apply_overrides  # noqa: E402

CORPUS = ("The quick brown fox jumps over the lazy dog. Models in and out of gptdash: "
          "start from GPT-2 weights, fine-tune them, and hand the result to transformers. ")


def write_corpus(path: Path) -> Path:
    path.write_text(CORPUS * 60, encoding="utf-8")
    return path


def make_pretrained(folder: Path, *, vocab: int = 50257, pickle_file: bool = False,
                    **overrides) -> GPT2LMHeadModel:
    """A tiny GPT-2 with random weights (not the near-zero init: biases and norms matter),
    saved by transformers as a pretrained folder would be; ``pickle_file``: as the older
    ``pytorch_model.bin`` instead of ``model.safetensors``."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=vocab,
                        **overrides)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    if pickle_file:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model


def micro(**overrides) -> TrainConfig:
    """A run that trains in a second or two on a CPU."""
    base = TrainConfig(
        model=ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2),
        max_steps=6, batch_size=4, lr=3e-3, warmup_steps=1, min_lr=3e-4, eval_interval=3,
        eval_iters=2, log_interval=3, checkpoint_interval=3, sample_tokens=4, device="cpu")
    return apply_overrides(base, overrides)
