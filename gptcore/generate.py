"""Sampling text from a model: temperature, top-k, top-p, streaming (the settings are
``gptcore.sampling.SamplingConfig``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gptcore.errors import GptdashError
from gptcore.model import GPTModel
from gptcore.sampling import SamplingConfig
from gptcore.tokenizer import Tokenizer


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and the top-p nucleus to -inf (last dim)."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate_ids(model: GPTModel, ids: torch.Tensor, cfg: SamplingConfig) -> Iterator[int]:
    """Yield sampled ids one at a time after the prompt ``ids`` (1, T)."""
    cfg.validate()
    context = model.cfg.context_length
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(cfg.seed)
    for _ in range(cfg.max_new_tokens):
        logits = model(ids[:, -context:])[:, -1, :].float()
        if cfg.temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
            probs = torch.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
        yield int(nxt.item())


def encode_prompt(prompt: str, tokenizer: Tokenizer, context_length: int) -> list[int]:
    """The prompt's ids; GptdashError for an empty or unencodable one. Longer than
    ``context_length`` is fine: the model conditions on its last ``context_length`` ids
    (``generate_ids`` crops; ``context_note`` says so)."""
    if not prompt:
        raise GptdashError("the prompt is empty: type some text for the model to continue")
    try:
        ids = tokenizer.encode(prompt)
    except (UnicodeError, ValueError):
        raise GptdashError("the prompt has characters that cannot be encoded as UTF-8 text "
                           "(e.g. a lone surrogate): retype or paste it again") from None
    return ids


def context_note(prompt: str, tokenizer: Tokenizer, context_length: int) -> str | None:
    """What to tell a user whose prompt is longer than the model's context (the model sees
    only its last ``context_length`` tokens, as nanoGPT crops it), else None; GptdashError
    for a prompt that cannot be sampled from at all."""
    ids = encode_prompt(prompt, tokenizer, context_length)
    if len(ids) <= context_length:
        return None
    return (f"the prompt is {len(ids):,} tokens and this model's context {context_length:,}: "
            f"it continues from the last {context_length:,}")


def stream_text(model: GPTModel, tokenizer: Tokenizer, prompt: str,
                cfg: SamplingConfig) -> Iterator[str]:
    """Yield the continuation of ``prompt`` as text pieces, as they are sampled."""
    device = next(model.parameters()).device
    prompt_ids = encode_prompt(prompt, tokenizer, model.cfg.context_length)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    out: list[int] = []
    shown = ""
    try:
        for token in generate_ids(model, ids, cfg):
            out.append(token)
            text = tokenizer.decode(out)
            # A byte-level token can end mid-character; wait for the rest of it.
            if not text.endswith("\ufffd") and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        text = tokenizer.decode(out)
        if len(text) > len(shown):
            yield text[len(shown):]
    finally:
        model.train(was_training)


def sample_text(model: GPTModel, tokenizer: Tokenizer, prompt: str, cfg: SamplingConfig) -> str:
    return "".join(stream_text(model, tokenizer, prompt, cfg))
