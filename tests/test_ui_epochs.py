"""How much of its corpus a run sees: counted from the token cache, else estimated."""

import gzip

import numpy as np
import pytest
from test_jobs import micro

from gptcore.corpus import BUILTIN, builtin_text
from gptcore.tokenizer import get_tokenizer
from gptcore.tokens import prepare
from ui.corpora import look_all
from ui.epochs import (
    BYTES_PER_TOKEN,
    REPEAT_NOTE,
    Epochs,
    TrainTokens,
    epochs_short,
    epochs_span,
    epochs_text,
    plan_warning,
    repeat_warning,
    run_epochs,
)

TEXT = "Tokens seen against tokens held.\n\n" * 300


def _epochs(cfg, cache):
    return run_epochs(cfg, look_all([cfg.corpus], cache)[cfg.corpus])


def test_a_tokenized_corpus_gives_exact_epochs(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text(TEXT)
    cache = tmp_path / "cache"
    ready = prepare(str(corpus), "byte", cache, 0.1)
    cfg = micro(corpus=str(corpus), tokenizer="byte", max_steps=50)
    e = _epochs(cfg, cache)
    assert e.train == TrainTokens(ready.manifest.train_tokens, counted=True)
    assert e.seen == cfg.tokens_per_step * 50 == 6400
    assert e.epochs == pytest.approx(6400 / len(ready.train))
    assert epochs_text(e) == (f"6.4 k tokens trained on, of {len(ready.train) / 1000:.3g} k "
                              "training tokens")


def test_before_it_is_tokenized_the_tokens_are_estimated_from_its_size_and_say_so(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text(TEXT)
    cfg = micro(corpus=str(corpus), tokenizer="gpt2", val_fraction=0.2)
    e = _epochs(cfg, tmp_path / "cache")
    assert e.train == TrainTokens(round(len(TEXT) / BYTES_PER_TOKEN["gpt2"] * 0.8),
                                  counted=False)
    assert epochs_short(e).startswith("~")
    assert epochs_text(e).endswith("(estimated from the corpus's size until it is tokenized)")


def test_an_estimate_from_compressed_bytes_is_an_upper_bound(tmp_path):
    corpus = tmp_path / "a.txt.gz"
    corpus.write_bytes(gzip.compress(TEXT.encode()))
    e = _epochs(micro(corpus=str(corpus), tokenizer="byte"), tmp_path / "cache")
    assert e.train.compressed and e.train.count < len(TEXT) / 10  # it compresses well
    assert epochs_short(e).startswith("at most ~")
    assert "compressed size" in epochs_text(e)


def test_another_split_of_the_same_tokenization_gives_an_estimate_from_its_count(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text(TEXT)
    cache = tmp_path / "cache"
    ready = prepare(str(corpus), "byte", cache, 0.1)
    e = _epochs(micro(corpus=str(corpus), tokenizer="byte", val_fraction=0.5), cache)
    assert e.train == TrainTokens(round(ready.manifest.tokens * 0.5), counted=False)


def test_a_nanogpt_pair_counts_its_train_bin(tmp_path):
    np.arange(5000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(500, dtype=np.uint16).tofile(tmp_path / "val.bin")
    e = _epochs(micro(corpus=str(tmp_path), tokenizer="gpt2"), tmp_path / "cache")
    assert e.train == TrainTokens(5000, counted=True)


def test_an_unreadable_corpus_has_no_epochs(tmp_path):
    assert _epochs(micro(corpus=str(tmp_path / "gone.txt")), tmp_path / "cache") is None


def test_gpt2_bytes_per_token_is_what_the_builtin_corpus_measures(tmp_path):
    text = builtin_text()
    ids = get_tokenizer("gpt2").encode_array(text)
    assert len(text.encode()) / len(ids) == pytest.approx(BYTES_PER_TOKEN["gpt2"], rel=0.01)
    e = _epochs(micro(corpus=BUILTIN, tokenizer="gpt2", val_fraction=0.1), tmp_path)
    assert e.train.count == pytest.approx(len(ids) * 0.9, rel=0.01)


def _at(epochs: float, counted: bool = True) -> Epochs:
    return Epochs(seen=round(epochs * 1000), train=TrainTokens(1000, counted=counted))


def test_more_than_four_epochs_is_warned_of_and_four_is_not():
    assert repeat_warning(_at(4.0)) is None
    warning = repeat_warning(_at(6.2, counted=False))
    assert warning.startswith("This run repeats its training data ~6.2 times, more than 4 ")
    assert REPEAT_NOTE in warning and "\n" not in warning
    assert REPEAT_NOTE == ("Muennighoff et al. 2023: up to about 4 epochs are worth almost as "
                           "much as fresh data; past that returns fall quickly")


def test_a_plan_shows_its_span_of_epochs_and_how_many_runs_repeat_too_often():
    plan = [_at(0.5), None, _at(12), _at(5.5)]
    assert epochs_span(plan) == "0.5 to 12 epochs"
    assert epochs_span([_at(2), _at(2)]) == "2.0 epochs"
    assert epochs_span([None]) is None
    assert plan_warning(plan).startswith("2 of 4 runs repeat their training data more than 4 "
                                         "times (up to 12; ")
    assert plan_warning([_at(1), _at(4)]) is None
