"""The GPT: token + position embeddings, pre-LayerNorm blocks, final norm, output head.

Read top to bottom: ``MultiHeadAttention``, ``FeedForward``, ``TransformerBlock``,
then ``GPTModel``. ``GPT`` is the same class under its short name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptcore.config import ModelConfig

# The output head is padded to a multiple of this so matmuls hit fast tile sizes;
# the padded ids are never targets and are cut off before anyone sees logits.
VOCAB_MULTIPLE = 64


def padded_vocab(vocab_size: int) -> int:
    return math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


class MultiHeadAttention(nn.Module):
    """Causal self-attention through SDPA, which picks flash / memory-efficient kernels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.out_proj.residual_scale = True  # marks it for scaled init (see GPTModel)
        self.drop_rate = cfg.drop_rate
        self.resid_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.drop_rate if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_drop(self.out_proj(y))


ACTIVATIONS = {
    "gelu": lambda: nn.GELU(approximate="tanh"),  # GPT-2's
    # On the CPU torch's erf GELU takes ~1/5 the time of its tanh one (bench/RESULTS.md).
    "gelu_exact": nn.GELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.act = ACTIVATIONS[cfg.activation]()
        self.proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        self.proj.residual_scale = True
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm: normalise, transform, add back to the residual stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim)
        self.att = MultiHeadAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim)
        self.ff = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.att(self.norm1(x))
        return x + self.ff(self.norm2(x))


class GPTModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be resolved before building the model")
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        vocab = padded_vocab(cfg.vocab_size)
        self.tok_emb = nn.Embedding(vocab, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, vocab, bias=False)
        # The loss's bias over the padded head: 0 for real ids, -inf for the padding, so the
        # padded ids take no probability. Added inside the matmul (addmm), it costs nothing;
        # not saved in checkpoints.
        pad = torch.zeros(vocab)
        pad[cfg.vocab_size:] = float("-inf")
        self.register_buffer("pad_bias", pad if vocab > cfg.vocab_size else None,
                             persistent=False)
        if cfg.tie_weights:
            # One matrix maps ids to vectors and vectors back to ids (GPT-2, Press & Wolf 2017).
            self.out_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual projection adds to the stream once per block
        # (twice per layer), so shrink it to keep the stream's variance from growing with depth.
        for module in self.modules():
            if getattr(module, "residual_scale", False):
                nn.init.normal_(module.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_position: bool = False) -> int:
        """Parameters counted once (tied weights once); padded vocab rows excluded."""
        n = sum(p.numel() for p in self.parameters())
        n -= (self.tok_emb.num_embeddings - self.vocab_size) * self.cfg.emb_dim
        if not self.cfg.tie_weights:
            n -= (self.out_head.out_features - self.vocab_size) * self.cfg.emb_dim
        if exclude_position:
            n -= self.pos_emb.weight.numel()
        return n

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The final-normed hidden states (B, T, emb_dim)."""
        _, t = idx.shape
        if t > self.cfg.context_length:
            raise ValueError(f"sequence of {t} tokens is longer than context_length "
                             f"{self.cfg.context_length}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                label_smoothing: float = 0.0):
        """Without targets: logits (B, T, vocab_size). With targets: the mean loss.

        Logits handed out are cut to the real vocabulary so sampling never yields a pad id.
        The loss keeps the padded matmul (fast tile sizes) but gives the padded ids no
        probability: they are never targets, and weights that never saw them (GPT-2's, from a
        Hugging Face folder) would otherwise lose most of their mass to them.
        """
        h = self.hidden(idx)
        v = self.vocab_size
        if targets is None:
            return self.out_head(h)[..., :v]
        targets = targets.reshape(-1)
        if self.pad_bias is not None and label_smoothing:
            # Smoothing spreads mass over every class: over the real ones only (a copy).
            logits = self.out_head(h)[..., :v]
            return F.cross_entropy(logits.reshape(-1, v), targets,
                                   label_smoothing=label_smoothing)
        logits = F.linear(h, self.out_head.weight, self.pad_bias)
        # Under autocast cross_entropy runs in fp32 by itself; no extra fp32 copy of the logits.
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets,
                               label_smoothing=label_smoothing)


GPT = GPTModel
