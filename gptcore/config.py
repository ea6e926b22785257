"""Typed run configuration: the model shape and everything about training.

One vocabulary for the form, the config file, ``--set`` and the code. Each
field carries its group, a short help text and its bounds as metadata, so the
CLI, the dashboard form and ``validate()`` all read the same source.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from gptcore.errors import GptdashError

ACTIVATIONS = ("gelu", "gelu_exact", "relu", "leaky_relu", "silu", "tanh")
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "muon")
SCHEDULES = ("constant", "step", "cosine", "linear", "wsd")
# Schedules that decay to min_lr by max_steps (min_lr must not be above lr).
DECAYING_SCHEDULES = ("cosine", "linear", "wsd")
TOKENIZERS = ("byte", "gpt2")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16")
TOKENIZER_VOCAB = {"byte": 256, "gpt2": 50257}
# The largest vocab_size each tokenizer allows: ids past the tokenizer's own are never seen,
# so they only pay as padding, as GPT-2's 50304 (a multiple of 64) does for GPU speed.
TOKENIZER_MAX_VOCAB = {"byte": 256, "gpt2": 51200}

# Bounds that keep a typo from asking for a model no machine holds.
MAX_EMB_DIM = 16384
MAX_LAYERS = 256
MAX_CONTEXT = 131072

# Recorded beside a run's settings in its stored config (jobs.runner), not settings: which
# corpus text it trains on, so a resume refuses a corpus that changed. Runs recorded since
# corpora may be gigabytes keep its fingerprint (gptcore.corpus.fingerprint: names, sizes
# and samples, found in milliseconds); older runs kept the sha256 of the whole text.
CORPUS_SHA256 = "corpus_sha256"
CORPUS_FINGERPRINT = "corpus_fingerprint"
RECORDED_KEYS = (CORPUS_SHA256, CORPUS_FINGERPRINT)


def _f(default: Any, group: str, help: str, lo: float | None = None, hi: float | None = None,
       choices: tuple[str, ...] | None = None, lo_open: bool = False) -> Any:
    """A dataclass field with the metadata the form and validation use."""
    meta = {"group": group, "help": help, "min": lo, "max": hi, "choices": choices,
            "min_exclusive": lo_open}
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The GPT's shape. Names follow LLMs-from-scratch's ``cfg`` dict."""

    vocab_size: int = _f(0, "model", "Vocabulary size; 0 takes the tokenizer's.", 0, 1_000_000)
    context_length: int = _f(128, "model", "Tokens the model sees at once.", 1, MAX_CONTEXT)
    emb_dim: int = _f(128, "model", "Width of the residual stream.", 1, MAX_EMB_DIM)
    n_heads: int = _f(4, "model", "Attention heads per block; must divide emb_dim.", 1, 1024)
    n_layers: int = _f(4, "model", "Transformer blocks.", 1, MAX_LAYERS)
    drop_rate: float = _f(0.0, "model", "Dropout probability.", 0.0, 0.9)
    qkv_bias: bool = _f(False, "model", "Bias in the query/key/value projections.")
    activation: str = _f("gelu", "model", "Feed-forward activation: gelu is GPT-2's tanh "
                         "approximation; gelu_exact the erf form (PyTorch's default, nanoGPT's), "
                         "several times faster on the CPU.", choices=ACTIVATIONS)
    tie_weights: bool = _f(True, "model", "Share the token embedding with the output head.")

    def resolved_vocab_size(self, tokenizer: str) -> int:
        return self.vocab_size or TOKENIZER_VOCAB.get(tokenizer, 0)


@dataclass
class TrainConfig:
    """Everything about a run. ``model`` holds the shape; the rest is flat."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # data
    corpus: str = _f("builtin", "data", "'builtin' (Python's docs), or a path to a text, JSON "
                     "Lines or Parquet file (gzip/zstd too), a folder of them, or a nanoGPT "
                     "train.bin/val.bin folder.")
    text_field: str = _f("text", "data", "The JSON Lines field or Parquet column holding "
                         "each document's text.")
    tokenizer: str = _f("byte", "data", "byte (256 ids) or gpt2 (GPT-2 BPE).", choices=TOKENIZERS)
    val_fraction: float = _f(0.1, "data", "Share of the corpus held out for validation.",
                             0.0, 0.5, lo_open=True)
    # optimization
    max_steps: int = _f(500, "optimization", "Optimizer steps to train.", 1, 10_000_000)
    batch_size: int = _f(32, "optimization", "Sequences per micro-batch.", 1, 65536)
    grad_accum_steps: int = _f(1, "optimization", "Micro-batches per optimizer step.", 1, 4096)
    optimizer: str = _f("adamw", "optimization", "Optimizer. muon: Muon for the matrices "
                        "inside the blocks, AdamW for embeddings, head, biases and norms.",
                        choices=OPTIMIZERS)
    lr: float = _f(1e-3, "optimization", "Peak learning rate.", 0.0, 10.0, lo_open=True)
    muon_lr_scale: float = _f(20.0, "optimization", "muon: the block matrices' learning rate "
                              "as a multiple of lr (AdamW's, for the rest).", 0.0, 1000.0,
                              lo_open=True)
    weight_decay: float = _f(0.1, "optimization",
                             "Weight decay of matrices, not biases/norms/embeddings (AdamW; "
                             "Muon's is times its own lr).",
                             0.0, 10.0)
    beta1: float = _f(0.9, "optimization", "Adam/AdamW beta1.", 0.0, 1.0)
    beta2: float = _f(0.95, "optimization", "Adam/AdamW beta2.", 0.0, 1.0)
    momentum: float = _f(0.9, "optimization", "Momentum for SGD, RMSprop and Muon (Nesterov; "
                         "its authors use 0.95).", 0.0, 1.0)
    grad_clip: float = _f(1.0, "optimization", "Clip the gradient norm to this; 0 turns it off.",
                          0.0, 1e6)
    label_smoothing: float = _f(0.0, "optimization", "Cross-entropy label smoothing.", 0.0, 0.99)
    # schedule
    schedule: str = _f("cosine", "schedule", "Learning-rate schedule.", choices=SCHEDULES)
    warmup_steps: int = _f(50, "schedule", "Linear warmup steps from 0 to lr.", 0, 10_000_000)
    min_lr: float = _f(1e-4, "schedule", "Floor of cosine, linear and wsd decay.", 0.0, 10.0)
    decay_fraction: float = _f(0.2, "schedule", "wsd (warmup-stable-decay): the last share of "
                               "the run, in which lr decays linearly to min_lr.", 0.0, 1.0,
                               lo_open=True)
    step_size: int = _f(200, "schedule", "Step decay: multiply by gamma every step_size steps.",
                        1, 10_000_000)
    gamma: float = _f(0.5, "schedule", "Step decay factor.", 0.0, 1.0, lo_open=True)
    # evaluation and checkpoints
    eval_interval: int = _f(50, "evaluation", "Evaluate train/val loss every N steps.",
                            1, 10_000_000)
    eval_iters: int = _f(10, "evaluation", "Batches per evaluation.", 1, 100_000)
    fixed_eval: bool = _f(True, "evaluation", "Evaluate on the same batches every time (the "
                          "same for every seed), so the val curve moves only when the model "
                          "does; off draws new batches at each evaluation.")
    log_interval: int = _f(10, "evaluation", "Fetch and log training metrics every N steps.",
                           1, 100_000)
    early_stopping_patience: int = _f(0, "evaluation",
                                      "Stop after N evals without val loss improving; 0 is off.",
                                      0, 100_000)
    sample_prompt: str = _f("The ", "evaluation", "Prompt for the sample generated at each eval.")
    sample_tokens: int = _f(120, "evaluation", "Tokens generated per eval sample; 0 is off.",
                            0, 10_000)
    checkpoint_interval: int = _f(250, "evaluation", "Save a checkpoint every N steps.",
                                  1, 10_000_000)
    # guard: a spike or NaN rolls the run back to before it instead of ending it
    guard: bool = _f(True, "evaluation", "Roll back past loss spikes and NaNs instead of "
                     "failing; off ends the run at the first NaN.")
    guard_threshold: float = _f(6.0, "evaluation", "A loss this many standard deviations above "
                                "its recent mean is a spike.", 0.0, 1000.0, lo_open=True)
    guard_window: int = _f(50, "evaluation", "Recent steps the spike threshold is measured "
                           "against.", 2, 100_000)
    guard_interval: int = _f(50, "evaluation", "Keep a roll-back point (in memory) every N "
                             "steps.", 1, 10_000_000)
    guard_max_rollbacks: int = _f(3, "evaluation", "Roll-backs allowed before the run fails.",
                                  0, 10_000)
    guard_lr_factor: float = _f(0.5, "evaluation", "Multiply the lr by this each time the same "
                                "kind of anomaly comes back.", 0.0, 1.0, lo_open=True)
    # fine-tuning
    init_from: str = _f("", "fine-tune",
                        "Start from a finished run's weights: a run id (its best checkpoint; "
                        "'7:latest' for its last), a checkpoint file, or hf:DIR, a Hugging "
                        "Face GPT-2 folder (its shape and tokenizer come with it).")
    freeze_embeddings: bool = _f(False, "fine-tune", "Fine-tune: keep embeddings fixed.")
    freeze_blocks: int = _f(0, "fine-tune", "Fine-tune: keep the first N blocks fixed.", 0,
                            MAX_LAYERS)
    # system
    seed: int = _f(1337, "system", "Random seed.", 0, 2**31 - 1)
    device: str = _f("auto", "system", "auto picks cuda, then mps, then cpu.", choices=DEVICES)
    precision: str = _f("auto", "system", "auto uses bfloat16 autocast on CUDA.",
                        choices=PRECISIONS)
    compile: bool = _f(False, "system", "torch.compile the model (GPU; slow to start).")
    nproc: int = _f(1, "system", "Processes (GPUs) on each machine, under torchrun (or Ray "
                    "Train); each trains on its own batch_size sequences.", 1, 64)
    nodes: int = _f(1, "system", "Machines of a Ray cluster to spread the run over (--on ray), "
                    "nproc processes on each; 1 is one machine.", 1, 1024)
    max_auto_resumes: int = _f(-1, "system", "Times the run resumes by itself from its last "
                               "checkpoint when its worker, machine or Ray job is lost; -1 "
                               "leaves it to the worker (--auto-resume, 3 unless set), 0 "
                               "never.", -1, 1000)

    # ---- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a nested ({"model": {...}, ...}) or flat dict; unknown keys are errors
        (``RECORDED_KEYS``, which a run's stored config holds beside its settings, are
        skipped)."""
        if not isinstance(data, dict):
            raise GptdashError("a config must be a JSON object of field names to values")
        flat = {key: value for key, value in data.items() if key not in RECORDED_KEYS}
        nested = flat.pop("model", {}) or {}
        if not isinstance(nested, dict):
            raise GptdashError("'model' in a config must be an object")
        return apply_overrides(TrainConfig(), {**nested, **flat})

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GptdashError(
                f"config is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        except RecursionError:  # json nests one Python call per level
            raise GptdashError("config nests objects or lists too deeply to read: a config is "
                               "one object of settings, with 'model' the only object inside "
                               "it") from None
        return cls.from_dict(data)

    def flat(self) -> dict[str, Any]:
        """All fields in one namespace, as the form, ``--set`` and config diffs see them."""
        out = asdict(self.model)
        out.update({k: v for k, v in asdict(self).items() if k != "model"})
        return out

    @property
    def vocab_size(self) -> int:
        return self.model.resolved_vocab_size(self.tokenizer)

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step over every process: the global batch is
        batch_size x grad_accum_steps x nproc x nodes sequences of context_length tokens."""
        return (self.batch_size * self.grad_accum_steps * self.world_size
                * self.model.context_length)

    @property
    def world_size(self) -> int:
        """Processes that train the run together: ``nproc`` on each of ``nodes`` machines."""
        return self.nproc * self.nodes

    # ---- validation ----------------------------------------------------------------
    def problems(self) -> dict[str, str]:
        """Every problem, keyed by field name, each saying what to change."""
        errs: dict[str, str] = {}
        for name, value, meta in _field_specs(self):
            msg = _check_bounds(name, value, meta)
            if msg:
                errs[name] = msg
        # Combination checks never hide a field's own bound error (setdefault).
        m = self.model
        if "emb_dim" not in errs and "n_heads" not in errs and m.emb_dim % m.n_heads:
            errs.setdefault("emb_dim", f"emb_dim {m.emb_dim} is not divisible by n_heads "
                                       f"{m.n_heads}: pick an emb_dim that is a multiple of "
                                       f"{m.n_heads}")
        vocab_problem = _vocab_problem(m.vocab_size, self.tokenizer)
        if vocab_problem and "vocab_size" not in errs:
            errs["vocab_size"] = vocab_problem
        if self.freeze_blocks > m.n_layers:
            errs.setdefault("freeze_blocks", f"freeze_blocks {self.freeze_blocks} is more than "
                                             f"n_layers {m.n_layers}")
        if (self.freeze_blocks or self.freeze_embeddings) and not self.init_from:
            errs.setdefault("init_from", "freezing only makes sense when fine-tuning: set "
                                         "init_from to a run id or checkpoint, or unfreeze")
        if self.schedule in DECAYING_SCHEDULES and self.min_lr > self.lr and "lr" not in errs:
            errs.setdefault("min_lr", f"min_lr {self.min_lr} is above lr {self.lr}: lower min_lr")
        if self.warmup_steps > self.max_steps and "max_steps" not in errs:
            errs.setdefault("warmup_steps", f"warmup_steps {self.warmup_steps} is longer than "
                                            f"max_steps {self.max_steps}: lower warmup_steps "
                                            f"to {self.max_steps} or less, or raise max_steps")
        if not self.corpus.strip():
            errs.setdefault("corpus", "corpus is empty: use 'builtin' or a path to a text file")
        return errs

    def validate(self) -> TrainConfig:
        """Raise GptdashError naming every problem; return self when there is none."""
        errs = self.problems()
        if errs:
            raise GptdashError("; ".join(errs.values()))
        return self


def _vocab_problem(vocab_size: int, tokenizer: str) -> str | None:
    """Why ``vocab_size`` does not fit ``tokenizer``'s ids (0 is the tokenizer's own), or None."""
    known, most = TOKENIZER_VOCAB.get(tokenizer), TOKENIZER_MAX_VOCAB.get(tokenizer)
    if not vocab_size or known is None or most is None:
        return None
    if vocab_size < known:
        return (f"vocab_size {vocab_size} is smaller than the {tokenizer} tokenizer's {known} "
                f"ids: set it to 0 (automatic) or {known}")
    if vocab_size > most:
        padded = -(-known // 64) * 64
        pad = f", or pad it up to {most} (e.g. {padded})" if most > known else ""
        return (f"vocab_size {vocab_size} is more than the {tokenizer} tokenizer needs (it "
                f"makes {known} ids): set it to 0 (automatic) or {known}{pad}")
    return None


def _field_specs(cfg: TrainConfig):
    for f in fields(cfg.model):
        yield f.name, getattr(cfg.model, f.name), f.metadata
    for f in fields(cfg):
        if f.name != "model":
            yield f.name, getattr(cfg, f.name), f.metadata


def _check_bounds(name: str, value: Any, meta: Any) -> str | None:
    choices = meta.get("choices")
    if choices and value not in choices:
        return f"{name} {value!r} is not one of {', '.join(choices)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, not {value}"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and not isinstance(value, bool):
        if meta.get("min_exclusive") and value <= lo:
            return f"{name} must be greater than {lo}, not {value}"
        if value < lo:
            return f"{name} must be at least {lo}, not {value}"
    if hi is not None and not isinstance(value, bool) and value > hi:
        return f"{name} must be at most {hi:g}, not {value}"
    return None


# ---- field lookup and --set parsing --------------------------------------------------
def field_info() -> dict[str, dict[str, Any]]:
    """Name -> {type, default, group, help, min, max, choices} for every flat field."""
    out: dict[str, dict[str, Any]] = {}
    for owner in (ModelConfig, TrainConfig):
        for f in fields(owner):
            if f.name == "model":
                continue
            default = f.default if f.default is not MISSING else None
            out[f.name] = {"type": type(default), "default": default, **f.metadata}
    return out


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    text = str(raw).strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            return int(text)
        if kind is float:
            return float(text)
    except (TypeError, ValueError):
        kind_name = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
        raise GptdashError(f"{name} must be {kind_name}, not {raw!r}") from None
    return text


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with flat ``name: value`` overrides, values coerced to field types."""
    info = field_info()
    model_names = {f.name for f in fields(ModelConfig)}
    model_updates: dict[str, Any] = {}
    train_updates: dict[str, Any] = {}
    for name, raw in overrides.items():
        if name not in info:
            close = difflib.get_close_matches(name, list(info), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise GptdashError(f"unknown setting {name!r}{hint}")
        value = _coerce(name, raw, info[name]["type"])
        (model_updates if name in model_names else train_updates)[name] = value
    return replace(cfg, model=replace(cfg.model, **model_updates), **train_updates)


def parse_set_args(pairs: list[str]) -> dict[str, str]:
    """['lr=3e-4', 'n_layers=6'] -> {'lr': '3e-4', 'n_layers': '6'}."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise GptdashError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = value
    return out


# ---- presets -------------------------------------------------------------------------
PRESETS: dict[str, TrainConfig] = {
    # A few hundred thousand parameters: learns byte-level English on two CPU cores in seconds.
    # tiny and small use the erf GELU, as nanoGPT and PyTorch do: on a CPU torch's kernel for
    # it is ~5x faster forward than GPT-2's tanh form (bench/throughput.py), same learning.
    "tiny": TrainConfig(
        model=ModelConfig(context_length=64, emb_dim=96, n_heads=4, n_layers=2,
                          activation="gelu_exact"),
        tokenizer="byte", max_steps=400, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=20,
        eval_interval=50, eval_iters=8, log_interval=10, checkpoint_interval=200,
        sample_tokens=80, device="auto",
    ),
    # ~10.7M parameters, the nanoGPT character-level shape; meant for a GPU.
    "small": TrainConfig(
        model=ModelConfig(context_length=256, emb_dim=384, n_heads=6, n_layers=6, drop_rate=0.2,
                          activation="gelu_exact"),
        tokenizer="byte", max_steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100,
        beta2=0.99, eval_interval=250, eval_iters=50, log_interval=10, checkpoint_interval=1000,
        sample_tokens=200,
    ),
    # nanoGPT's shakespeare-char CPU shape, trained with what modded-nanogpt's speedrun
    # records proved and these options can say (README, "Muon, and the speedrun preset"):
    # Muon for the block matrices, untied head, no qkv bias, Adam betas (0.8, 0.95), no
    # weight decay or clipping, stable then linear decay to 0.1 x lr. Batch 24 (twice the
    # recipe's): a Muon step costs more than an AdamW one, so fewer, larger steps pay; on
    # the same tokens 24 x 400 beat 48 x 200 (bench/time_to_loss.py's data).
    "speedrun": TrainConfig(
        model=ModelConfig(context_length=64, emb_dim=128, n_heads=4, n_layers=4, drop_rate=0.0,
                          qkv_bias=False, tie_weights=False),
        tokenizer="byte", max_steps=400, batch_size=24, optimizer="muon", lr=3e-3,
        muon_lr_scale=10.0, momentum=0.95, beta1=0.8, beta2=0.95, weight_decay=0.0,
        grad_clip=0.0, schedule="wsd", warmup_steps=0, decay_fraction=0.4, min_lr=3e-4,
        eval_interval=50, eval_iters=20, log_interval=10, checkpoint_interval=200,
        sample_tokens=80,
    ),
    # GPT-2 small: 124M parameters with the GPT-2 BPE.
    "gpt2-124m": TrainConfig(
        model=ModelConfig(context_length=1024, emb_dim=768, n_heads=12, n_layers=12,
                          drop_rate=0.0, qkv_bias=True),
        tokenizer="gpt2", max_steps=5000, batch_size=12, grad_accum_steps=1, lr=6e-4,
        min_lr=6e-5, warmup_steps=200, weight_decay=0.1, beta2=0.95, eval_interval=250,
        eval_iters=20, log_interval=10, checkpoint_interval=1000, sample_tokens=100,
    ),
}


# Config fields that tell repeats of one experiment apart. A run's name, tags and notes
# are on its row, not in its config, so only the seed is left out.
REPEAT_FIELDS = ("seed",)


def repeat_key(config: dict[str, Any]) -> str:
    """A run's config without its seed, as a string: equal for runs that differ only in
    seed (repeats of one experiment, drawn and judged as one group).

    A config this version reads is compared with its defaults filled in, so a config
    saved before a field existed still groups with one that names the field's default.
    """
    try:
        flat = TrainConfig.from_dict(dict(config)).flat()
    except GptdashError:
        flat = dict(config)  # an older config: compare what it says
    kept = {k: v for k, v in flat.items() if k not in REPEAT_FIELDS}
    return json.dumps(kept, sort_keys=True, default=str)


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise GptdashError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], model=replace(PRESETS[name].model))
