"""A run's tokenizer as files ``transformers`` loads (``AutoTokenizer.from_pretrained``).

Both of ours are byte-level BPE in GPT-2's file format (``vocab.json`` + ``merges.txt``):
GPT-2's is built from the same tiktoken ranks gptdash trains with (no download), and the
byte tokenizer is the 256 byte symbols with no merges, so id ``b`` is byte ``b`` there too.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from gptcore.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, gpt2_ranks_path, load_ranks


@cache
def _byte_symbols() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte (``bytes_to_unicode`` in its encoder.py):
    printable Latin-1 bytes stand for themselves, the rest for 256 + n."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in symbols)
    for n, b in enumerate(extra):
        symbols[b] = chr(256 + n)
    return tuple(symbols[b] for b in range(256))


def _symbols(token: bytes) -> str:
    table = _byte_symbols()
    return "".join(table[b] for b in token)


def _merge_pair(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two tokens BPE joins into ``token``: merge its bytes with every rank below its
    own, lowest first, as the tokenizer does; two parts are left."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        rank, i = min((ranks.get(parts[j] + parts[j + 1], limit), j)
                      for j in range(len(parts) - 1))
        if rank >= limit:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"GPT-2 rank {limit} is not a merge of two tokens")
    return parts[0], parts[1]


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """GPT-2's ``vocab.json`` and ``merges.txt`` lines, from the tiktoken ranks."""
    ranks = load_ranks(gpt2_ranks_path())
    vocab = {_symbols(token): rank for token, rank in ranks.items()}
    vocab[ENDOFTEXT] = ENDOFTEXT_ID
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            first, second = _merge_pair(ranks, token)
            merges.append(f"{_symbols(first)} {_symbols(second)}")
    return vocab, merges


def write_tokenizer(tokenizer: str, context_length: int, folder: Path) -> list[Path]:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``; returns them."""
    if tokenizer == "gpt2":
        vocab, merges = gpt2_vocab_and_merges()
        special = {name: ENDOFTEXT for name in ("bos_token", "eos_token", "unk_token")}
    else:  # bytes: every byte is a token of its own, and there is no end-of-text token
        vocab, merges = {s: b for b, s in enumerate(_byte_symbols())}, []
        special = {}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length,
              "add_prefix_space": False, "clean_up_tokenization_spaces": False, **special}
    files = {"vocab.json": json.dumps(vocab, ensure_ascii=False),
             "merges.txt": "\n".join(["#version: 0.2", *merges]) + "\n",
             "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / name for name in files]
