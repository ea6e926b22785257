"""Size, compute and memory of a config before anything is built: pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from gptcore.config import TrainConfig

# Dense bf16 tensor-core peak of common GPUs, for model FLOPs utilisation.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "4090": 165e12, "3090": 71e12}


def param_count(cfg: TrainConfig) -> int:
    """Parameters of the model (tied embedding counted once), as GPTModel.num_params()."""
    m = cfg.model
    d, vocab, layers = m.emb_dim, cfg.vocab_size, m.n_layers
    per_block = (
        2 * 2 * d  # two LayerNorms
        + 3 * d * d + (3 * d if m.qkv_bias else 0)  # qkv
        + d * d + d  # attention output
        + 4 * d * d + 4 * d + 4 * d * d + d  # feed-forward
    )
    embeddings = vocab * d + m.context_length * d
    head = 0 if m.tie_weights else vocab * d
    return embeddings + layers * per_block + 2 * d + head


def hidden_matrix_count(cfg: TrainConfig) -> int:
    """Parameters in the blocks' 2-D weights (``gptcore.optim.hidden_matrices``: what Muon
    trains): qkv, attention output and the two feed-forward matrices of every layer."""
    d = cfg.model.emb_dim
    return cfg.model.n_layers * (3 * d * d + d * d + 8 * d * d)


def flops_per_token(cfg: TrainConfig) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention (PaLM appendix B).

    N excludes position embeddings, as in nanoGPT's estimate_mfu, so MFU figures compare.
    """
    m = cfg.model
    n = param_count(cfg) - m.context_length * m.emb_dim
    return 6 * n + 12 * m.n_layers * m.emb_dim * m.context_length


@dataclass
class MemoryEstimate:
    params_mb: float
    optimizer_mb: float
    gradients_mb: float
    activations_mb: float

    @property
    def total_mb(self) -> float:
        return self.params_mb + self.optimizer_mb + self.gradients_mb + self.activations_mb


def training_flops(cfg: TrainConfig, steps: int) -> float:
    """FLOPs spent training ``steps`` optimizer steps: FLOPs per token times tokens seen."""
    return flops_per_token(cfg) * steps * cfg.tokens_per_step


# Where this machine has measured nothing yet: start-up (imports, data load with the token
# cache warm, model build) and the speed a checkpoint is written at.
DEFAULT_STARTUP_S = 3.0
CHECKPOINT_MB_PER_S = 200.0


@dataclass(frozen=True)
class MachinePace:
    """What this machine was measured doing (``jobs.sweeps.measured_pace``): training FLOP/s,
    evaluation FLOP/s (forward passes, the text sample's included) and start-up seconds."""

    train_flops_per_s: float
    eval_flops_per_s: float | None = None  # None: as fast as training
    startup_s: float = DEFAULT_STARTUP_S
    run_id: int | None = None  # the run it was measured on


@dataclass(frozen=True)
class DurationEstimate:
    """A run's wall time, in its parts."""

    train_s: float
    eval_s: float
    checkpoint_s: float
    startup_s: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.checkpoint_s + self.startup_s


def eval_count(cfg: TrainConfig) -> int:
    """Evaluations in a run: at step 0, every eval_interval steps, and at max_steps."""
    return 1 + cfg.max_steps // cfg.eval_interval + (1 if cfg.max_steps % cfg.eval_interval else 0)


def eval_flops(cfg: TrainConfig) -> float:
    """Forward FLOPs of one evaluation: eval_iters batches of each split, then the text sample
    (sample_tokens forward passes over up to context_length tokens: no KV cache)."""
    forward = flops_per_token(cfg) / 3  # a training step is forward + twice that backward
    tokens = 2 * cfg.eval_iters * cfg.batch_size * cfg.model.context_length
    if cfg.sample_tokens and cfg.sample_prompt:
        tokens += cfg.sample_tokens * cfg.model.context_length
    return forward * tokens


def checkpoint_count(cfg: TrainConfig) -> int:
    """latest.pt saves: every checkpoint_interval steps before the end, and at the end."""
    return (cfg.max_steps - 1) // cfg.checkpoint_interval + 1 if cfg.max_steps > 0 else 1


def duration_estimate(cfg: TrainConfig, pace: MachinePace) -> DurationEstimate:
    """How long ``cfg`` takes at ``pace``: its training steps, its evaluations with their
    samples, its checkpoint saves (latest.pt with the optimizer; best.pt, weights only, at
    each evaluation at most) and start-up."""
    train = training_flops(cfg, cfg.max_steps) / pace.train_flops_per_s
    evals = eval_count(cfg) * eval_flops(cfg) / (pace.eval_flops_per_s or pace.train_flops_per_s)
    mem = memory_estimate(cfg)
    written_mb = (checkpoint_count(cfg) * (mem.params_mb + mem.optimizer_mb)
                  + eval_count(cfg) * mem.params_mb)
    return DurationEstimate(train_s=train, eval_s=evals,
                            checkpoint_s=written_mb / CHECKPOINT_MB_PER_S,
                            startup_s=pace.startup_s)


def memory_estimate(cfg: TrainConfig) -> MemoryEstimate:
    """A rough training-memory estimate in MB (fp32 weights, bf16-or-fp32 activations).

    Activations follow Korthikanti et al. 2022 (34·s·b·h + 5·a·s²·b bytes per layer in 16-bit,
    the s² term dropping with flash attention) plus the fp32 logits, which dominate small models
    with large vocabularies.
    """
    m = cfg.model
    n = param_count(cfg)
    optimizer_states = {"adamw": 2, "adam": 2, "rmsprop": 1, "sgd": 1 if cfg.momentum else 0}
    # Muon keeps one momentum buffer for the blocks' matrices; AdamW's two for the rest.
    hidden = hidden_matrix_count(cfg) if cfg.optimizer == "muon" else 0
    states = hidden + 2 * (n - hidden) if cfg.optimizer == "muon" else \
        n * optimizer_states.get(cfg.optimizer, 2)
    bytes_act = 2 if cfg.precision != "float32" else 4
    s, b, h = m.context_length, cfg.batch_size, m.emb_dim
    per_layer = 34 * s * b * h * bytes_act / 2
    logits = s * b * cfg.vocab_size * 4 * 2  # logits and their gradient, fp32
    mb = 1024**2
    return MemoryEstimate(
        params_mb=n * 4 / mb,
        optimizer_mb=states * 4 / mb,
        gradients_mb=n * 4 / mb,
        activations_mb=(m.n_layers * per_layer + logits) / mb,
    )


def fit_problem(cfg: TrainConfig, available_mb: float | None, *,
                where: str = "the device") -> str | None:
    """A message when the run's estimated memory exceeds ``available_mb`` (what ``where``
    has), else None."""
    if available_mb is None:
        return None
    need = memory_estimate(cfg).total_mb
    if need <= available_mb:
        return None
    return (f"this run needs about {need / 1024:,.1f} GB ({param_count(cfg) / 1e6:,.1f} M "
            f"parameters, batch_size {cfg.batch_size}, context_length "
            f"{cfg.model.context_length}) but {where} has {available_mb / 1024:,.1f} GB: "
            "lower batch_size, context_length, emb_dim or n_layers")


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak for a GPU by its name, or None when unknown."""
    for key, value in PEAK_FLOPS.items():
        if key in device_name:
            return value
    return None
