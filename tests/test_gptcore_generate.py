"""Sampling: filters, determinism, streaming, bad input."""

import pytest
import torch

from gptcore.config import ModelConfig
from gptcore.errors import GptdashError
from gptcore.generate import (
    SamplingConfig,
    context_note,
    filter_logits,
    sample_text,
    stream_text,
)
from gptcore.model import GPT
from gptcore.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=256, context_length=32, emb_dim=32, n_heads=4, n_layers=1))


def test_top_k_keeps_k_logits():
    out = filter_logits(torch.tensor([[1.0, 5.0, 3.0, 2.0]]), top_k=2, top_p=1.0)
    assert torch.isfinite(out).tolist() == [[False, True, True, False]]


def test_top_p_keeps_the_nucleus_and_always_the_best():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 0, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.1)).tolist() == [[True, False, False, False]]


def test_same_seed_same_text(model):
    tok = get_tokenizer("byte")
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=3)
    assert sample_text(model, tok, "ab", cfg) == sample_text(model, tok, "ab", cfg)


def test_streaming_yields_pieces_that_join_to_the_text(model):
    tok = get_tokenizer("byte")
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=1)
    pieces = list(stream_text(model, tok, "x", cfg))
    assert len(pieces) > 1
    assert "".join(pieces) == sample_text(model, tok, "x", cfg)


def test_sampling_never_yields_a_padded_id():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=100, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    with torch.no_grad():  # make padded ids the most likely, if they could be drawn
        m.out_head.weight[100:] = 10.0
    logits = m(torch.zeros((1, 4), dtype=torch.long))
    assert logits.shape[-1] == 100


@pytest.mark.parametrize(
    "prompt, cfg, message",
    [("", SamplingConfig(), "prompt is empty"),
     ("hi", SamplingConfig(max_new_tokens=10**9), "max new tokens must be between"),
     ("hi", SamplingConfig(top_p=0), "top-p"),
     ("hi", SamplingConfig(temperature=-1), "temperature"),
     # torch's ValueError "Overflow when unpacking long long" came out as a traceback
     ("hi", SamplingConfig(seed=10**23), "seed must be between 0 and 2147483647")],
)
def test_bad_sampling_input_is_a_clear_error(model, prompt, cfg, message):
    with pytest.raises(GptdashError, match=message):
        sample_text(model, get_tokenizer("byte"), prompt, cfg)


def test_a_prompt_longer_than_the_context_continues_from_its_last_context_tokens(model):
    # As nanoGPT crops: the model sees the last 32 bytes, so the sample is the one of the
    # last 32 characters of this byte-level prompt, and a note says so.
    tok, cfg = get_tokenizer("byte"), SamplingConfig(max_new_tokens=12, seed=3)
    long = "".join(chr(97 + i % 26) for i in range(40))
    assert sample_text(model, tok, long, cfg) == sample_text(model, tok, long[-32:], cfg)
    assert context_note(long, tok, 32) == ("the prompt is 40 tokens and this model's context "
                                           "32: it continues from the last 32")
    assert context_note(long[-32:], tok, 32) is None
    with pytest.raises(GptdashError, match="prompt is empty"):
        context_note("", tok, 32)


def test_a_prompt_with_unencodable_characters_is_a_clear_error(model):
    with pytest.raises(GptdashError, match="cannot be encoded"):
        sample_text(model, get_tokenizer("byte"), "bad \ud800 text", SamplingConfig())


def test_emoji_and_non_latin_prompts_work(model):
    out = sample_text(model, get_tokenizer("byte"), "☕ 日本",
                      SamplingConfig(max_new_tokens=5, seed=0))
    assert isinstance(out, str)
