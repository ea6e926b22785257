"""Tokenizers: exact GPT-2 ids offline, and a byte tokenizer; both round-trip."""

import pytest

from gptcore.errors import GptdashError
from gptcore.tokenizer import get_tokenizer

TEXTS = ["Hello, world!", "naïve café ☕ — 日本語", "  indented\n\ttabs and <|endoftext|> text"]


def test_gpt2_gives_the_exact_gpt2_ids():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello, world!") == [15496, 11, 995, 0]
    assert tok.n_vocab == 50257


def test_gpt2_treats_the_special_token_as_plain_text():
    assert 50256 not in get_tokenizer("gpt2").encode("<|endoftext|>")


@pytest.mark.parametrize("name", ["gpt2", "byte"])
@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trips(name, text):
    tok = get_tokenizer(name)
    assert tok.decode(tok.encode(text)) == text


def test_byte_tokenizer_is_utf8_bytes():
    tok = get_tokenizer("byte")
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.n_vocab == 256


def test_unknown_tokenizer_is_a_clear_error():
    with pytest.raises(GptdashError, match="choose byte or gpt2"):
        get_tokenizer("sentencepiece")
