"""How much of its data a run will see: tokens per step x steps against the corpus's
training tokens, in epochs, and a warning when it repeats them too often.

The training tokens are counted when the shared cache has the corpus tokenized with the
run's tokenizer and split; before that they are estimated from the corpus's size, and the
pages say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptcore.config import TrainConfig
from ui.corpora import Corpus
from ui.format import human_count

# Bytes of text per token. byte: one by definition. gpt2: measured on the built-in corpus
# (466,273 bytes of Python's reference docs -> 139,015 GPT-2 tokens); English prose runs
# nearer 4, so an estimate from it errs towards more tokens, fewer epochs.
BYTES_PER_TOKEN = {"byte": 1.0, "gpt2": 3.35}
# Muennighoff et al. 2023, "Scaling Data-Constrained Language Models".
REPEAT_LIMIT = 4.0
REPEAT_NOTE = ("Muennighoff et al. 2023: up to about 4 epochs are worth almost as much as "
               "fresh data; past that returns fall quickly")


@dataclass(frozen=True)
class TrainTokens:
    """A corpus's training tokens for one tokenizer and split."""

    count: int
    counted: bool  # from the token cache's manifest; else an estimate from the size
    compressed: bool = False  # estimated from compressed bytes: the text holds more


@dataclass(frozen=True)
class Epochs:
    """The tokens a run trains on against the corpus's training tokens."""

    seen: int  # tokens per step x max_steps
    train: TrainTokens

    @property
    def epochs(self) -> float:
        return self.seen / max(1, self.train.count)

    @property
    def approx(self) -> str:
        """``""``, ``~`` for an estimate, ``at most ~`` when from compressed bytes."""
        if self.train.counted:
            return ""
        return "at most ~" if self.train.compressed else "~"


def train_tokens(c: Corpus, tokenizer: str, val_fraction: float,
                 text_field: str) -> TrainTokens | None:
    """The corpus's training tokens for this tokenizer and split: counted when the cache
    has exactly this tokenization (a nanoGPT pair's ``train.bin`` is counted by its size),
    else estimated from another split's count or from the bytes; None when it cannot be
    read or the tokenizer is one this does not know."""
    if c.source is None:
        return None
    if c.source.kind == "nanogpt":
        return TrainTokens(c.source.files[0].size // 2, counted=True)
    for m in c.manifests:
        if (m.tokenizer == tokenizer and m.val_fraction == val_fraction
                and (m.kind != "files" or m.text_field == text_field)):
            return TrainTokens(m.train_tokens, counted=True)
    if (m := c.manifest(tokenizer)) is not None:  # the same text, another split
        return TrainTokens(round(m.tokens * (1 - val_fraction)), counted=False)
    if tokenizer not in BYTES_PER_TOKEN or c.size is None:
        return None
    return TrainTokens(round(c.size / BYTES_PER_TOKEN[tokenizer] * (1 - val_fraction)),
                       counted=False, compressed=c.compressed)


def run_epochs(cfg: TrainConfig, c: Corpus) -> Epochs | None:
    """Epochs ``cfg`` trains on corpus ``c`` (``ui.corpora.look(cfg.corpus, ...)``)."""
    train = train_tokens(c, cfg.tokenizer, cfg.val_fraction, cfg.text_field)
    return None if train is None else Epochs(cfg.tokens_per_step * cfg.max_steps, train)


def epochs_short(e: Epochs) -> str:
    """``2.3 epochs``, ``~0.41 epochs``: a metric tile's value, a planned run's note."""
    return f"{e.approx}{_number(e.epochs)} epochs"


def epochs_text(e: Epochs) -> str:
    """What the epochs are made of, and how the training tokens were found: the line
    under ``epochs_short``."""
    how = ("" if e.train.counted else
           " (estimated from the compressed size until it is tokenized: the text inside is "
           "larger)" if e.train.compressed else
           " (estimated from the corpus's size until it is tokenized)")
    return (f"{human_count(e.seen)} tokens trained on, of "
            f"{'' if e.train.counted else '~'}{human_count(e.train.count)} training tokens"
            f"{how}")


def repeat_warning(e: Epochs) -> str | None:
    """A warning when the run repeats its data more than ``REPEAT_LIMIT`` times; None else."""
    if e.epochs <= REPEAT_LIMIT:
        return None
    return (f"This run repeats its training data {e.approx}{_number(e.epochs)} times, more than "
            f"{REPEAT_LIMIT:g} ({REPEAT_NOTE}): fewer steps or a larger corpus spend the "
            "compute better.")


def epochs_span(epochs: list[Epochs | None]) -> str | None:
    """A plan's runs in epochs, ``0.41 to 2.0 epochs`` (``~`` for an estimate), or the one
    value they share; None when no run's corpus could be read."""
    known = sorted((e for e in epochs if e is not None), key=lambda e: e.epochs)
    if not known:
        return None
    low, high = known[0], known[-1]
    if epochs_short(low) == epochs_short(high):
        return epochs_short(low)
    return f"{low.approx}{_number(low.epochs)} to {epochs_short(high)}"


def plan_warning(epochs: list[Epochs | None]) -> str | None:
    """A warning when some planned runs repeat their data more than ``REPEAT_LIMIT`` times."""
    over = [e for e in epochs if e is not None and e.epochs > REPEAT_LIMIT]
    if not over:
        return None
    top = max(over, key=lambda e: e.epochs)
    return (f"{len(over)} of {len(epochs)} runs repeat their training data more than "
            f"{REPEAT_LIMIT:g} times (up to {top.approx}{_number(top.epochs)}; "
            f"{REPEAT_NOTE}): fewer steps or a larger corpus spend the compute better.")


def _number(x: float) -> str:
    """12, 4.3, 0.41, 0.0012: as many digits as tell the size."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"
