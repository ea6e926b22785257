"""Hugging Face GPT-2 folders in and out: ``init_from=hf:DIR`` and ``export --format hf``.

Our GPT is GPT-2's architecture, so the mapping is names and one transpose: GPT-2 stores
its projections as ``Conv1D`` (weight ``(in, out)``), we as ``nn.Linear`` (``(out, in)``).
A folder is ``config.json`` plus ``model.safetensors`` (or a sharded index of them) or
``pytorch_model.bin``; nothing is downloaded, and ``transformers`` is never imported here:
``config.json`` is plain JSON, and the weights are read with ``safetensors`` (or
``torch.load(weights_only=True)`` for a pickle). Torch is imported only by the functions
that read or write tensors, so checking a folder's config stays as quick as ``submit``.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptcore.config import TOKENIZER_MAX_VOCAB, TOKENIZER_VOCAB, TrainConfig
from gptcore.errors import GptdashError

if TYPE_CHECKING:
    import torch

    from gptcore.model import GPTModel

PREFIX = "hf:"
CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
# GPT-2's LayerNorm epsilon, which our nn.LayerNorm uses too.
LAYER_NORM_EPS = 1e-5
# Our activation -> GPT-2's activation_function (our "gelu" is the tanh approximation,
# GPT-2's "gelu_new"; Hugging Face's "gelu" is the erf form, our "gelu_exact"); read back,
# both tanh spellings are ours.
ACTIVATION_TO_HF = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu",
                    "leaky_relu": "leaky_relu", "silu": "silu", "tanh": "tanh"}
ACTIVATION_FROM_HF = {**{v: k for k, v in ACTIVATION_TO_HF.items()},
                      "gelu_pytorch_tanh": "gelu", "swish": "silu"}
# Settings the form fills from the folder: the model's shape and its tokenizer.
SHAPE_FIELDS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias",
                "activation", "tie_weights", "tokenizer")
# Buffers older GPT-2 files keep beside the weights (the causal mask): not parameters.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def hf_folder(init_from: str) -> Path | None:
    """The folder ``init_from`` names with ``hf:``, or None when it names something else."""
    value = init_from.strip()
    if not value.startswith(PREFIX):
        return None
    path = value[len(PREFIX):].strip()
    if not path:
        raise GptdashError("init_from 'hf:' names no folder: write hf:/path/to/folder (a "
                           "folder with config.json and model.safetensors)")
    return Path(path).expanduser()


# ---- reading a folder's config (no torch) --------------------------------------------------
def hf_settings(folder: Path) -> dict[str, Any]:
    """The settings a run takes from a GPT-2 folder's ``config.json``: its shape and tokenizer.

    Refuses, in one line naming the file, a folder that is not a GPT-2 gptdash's model can
    hold (another architecture, a feed-forward width, activation, norm epsilon, attention
    scale or vocabulary ours does not have)."""
    if not folder.is_dir():
        raise GptdashError(f"init_from hf:{folder} is not a folder: give a folder holding "
                           f"{CONFIG_NAME} and {SAFETENSORS_NAME} (or {PICKLE_NAME})")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise GptdashError(f"{path} does not exist: a Hugging Face model folder has a "
                           f"{CONFIG_NAME} beside its weights")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GptdashError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise GptdashError(f"{path} is not a JSON object of settings")
    if raw.get("model_type") != "gpt2":
        raise GptdashError(f"{path} describes a {raw.get('model_type')!r} model, not GPT-2: "
                           "gptdash can start only from GPT-2 weights (gpt2, gpt2-medium, "
                           "distilgpt2, ...)")

    def need(key: str, default: Any = None) -> Any:
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise GptdashError(f"{path}: {key} is {value!r}, not a positive whole number")
        return value

    vocab, emb_dim, n_heads = need("vocab_size"), need("n_embd"), need("n_head")
    n_inner = raw.get("n_inner")
    act = raw.get("activation_function", "gelu_new")
    problems = []
    if n_inner not in (None, 4 * emb_dim):
        problems.append(f"n_inner {n_inner} (gptdash's feed-forward is 4 x n_embd = "
                        f"{4 * emb_dim})")
    if act not in ACTIVATION_FROM_HF:
        problems.append(f"activation_function {act!r} (gptdash has "
                        f"{', '.join(sorted(ACTIVATION_FROM_HF))})")
    if raw.get("layer_norm_epsilon", LAYER_NORM_EPS) != LAYER_NORM_EPS:
        problems.append(f"layer_norm_epsilon {raw['layer_norm_epsilon']} (gptdash's is "
                        f"{LAYER_NORM_EPS})")
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("scale_attn_weights") is False:
        problems.append("a non-standard attention scale")
    if raw.get("add_cross_attention"):
        problems.append("cross-attention")
    if problems:
        raise GptdashError(f"{path} asks for {'; '.join(problems)}, which gptdash's GPT does "
                           "not have")
    if TOKENIZER_VOCAB["gpt2"] <= vocab <= TOKENIZER_MAX_VOCAB["gpt2"]:
        tokenizer = "gpt2"
    elif vocab == TOKENIZER_VOCAB["byte"]:
        tokenizer = "byte"
    else:
        raise GptdashError(f"{path}: vocab_size {vocab} fits neither the GPT-2 BPE "
                           f"({TOKENIZER_VOCAB['gpt2']} ids) nor bytes (256): gptdash has only "
                           "these tokenizers")
    return {"vocab_size": vocab, "context_length": need("n_positions", raw.get("n_ctx")),
            "emb_dim": emb_dim, "n_heads": n_heads, "n_layers": need("n_layer"),
            "qkv_bias": True, "activation": ACTIVATION_FROM_HF[act],
            "tie_weights": bool(raw.get("tie_word_embeddings", True)), "tokenizer": tokenizer}


def with_hf_shape(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """``cfg`` with the shape and tokenizer of the folder its ``init_from`` names, and one
    line saying which of its settings the folder replaced (None when none, or no folder)."""
    folder = hf_folder(cfg.init_from)
    if folder is None:
        return cfg, None
    settings = hf_settings(folder)
    flat = cfg.flat()
    changed = [f"{k} {settings[k]} (not {flat[k]})" for k in SHAPE_FIELDS
               if flat[k] != settings[k]]
    model = replace(cfg.model, **{k: v for k, v in settings.items() if k != "tokenizer"})
    adopted = replace(cfg, model=model, tokenizer=settings["tokenizer"])
    note = (f"the model's shape comes from {folder}: {', '.join(changed)}" if changed
            else None)
    return adopted, note


def shape_problem(cfg: TrainConfig) -> str | None:
    """Why ``cfg`` cannot start from its ``init_from`` folder (the folder's config is not one
    gptdash can start from, or the shape differs), or None; its weights are not read."""
    try:
        _, note = with_hf_shape(cfg)
    except GptdashError as exc:
        return str(exc)
    if note is None:
        return None
    return (f"init_from {cfg.init_from.strip()}: {note.replace('comes from', 'is that of')}; "
            "set these to the folder's (the New run page and `gptdash train/submit` do it)")


# ---- the weights ------------------------------------------------------------------------
def _name_map(n_layers: int, tied: bool) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2's name, transposed) for every parameter."""
    rows = [("tok_emb.weight", "wte.weight", False), ("pos_emb.weight", "wpe.weight", False)]
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        for o, t, transposed in (("norm1", "ln_1", False), ("att.qkv", "attn.c_attn", True),
                                 ("att.out_proj", "attn.c_proj", True), ("norm2", "ln_2", False),
                                 ("ff.fc", "mlp.c_fc", True), ("ff.proj", "mlp.c_proj", True)):
            rows.append((f"{ours}{o}.weight", f"{theirs}{t}.weight", transposed))
            rows.append((f"{ours}{o}.bias", f"{theirs}{t}.bias", False))
    rows += [("final_norm.weight", "ln_f.weight", False), ("final_norm.bias", "ln_f.bias", False)]
    if not tied:
        rows.append(("out_head.weight", "lm_head.weight", False))
    return rows


def _hf_shapes(s: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every GPT-2 tensor ``config.json``'s settings call for."""
    e, v = s["emb_dim"], s["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (v, e),
                                          "wpe.weight": (s["context_length"], e),
                                          "ln_f.weight": (e,), "ln_f.bias": (e,)}
    for i in range(s["n_layers"]):
        h = f"h.{i}."
        for name, shape in (("ln_1.weight", (e,)), ("ln_1.bias", (e,)),
                            ("attn.c_attn.weight", (e, 3 * e)), ("attn.c_attn.bias", (3 * e,)),
                            ("attn.c_proj.weight", (e, e)), ("attn.c_proj.bias", (e,)),
                            ("ln_2.weight", (e,)), ("ln_2.bias", (e,)),
                            ("mlp.c_fc.weight", (e, 4 * e)), ("mlp.c_fc.bias", (4 * e,)),
                            ("mlp.c_proj.weight", (4 * e, e)), ("mlp.c_proj.bias", (e,))):
            shapes[h + name] = shape
    if not s["tie_weights"]:
        shapes["lm_head.weight"] = (v, e)
    return shapes


def _plain_name(name: str) -> str:
    # GPT2LMHeadModel saves "transformer.h.0...", GPT2Model (the original gpt2 files) "h.0...".
    return name.removeprefix("transformer.")


def _weight_files(folder: Path) -> list[Path]:
    """The files holding a folder's weights: safetensors first (one, or the shards an index
    names), else the pickle."""
    single, index = folder / SAFETENSORS_NAME, folder / SAFETENSORS_INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise GptdashError(f"{index} is not a readable safetensors index: {exc}") from None
    if (folder / PICKLE_NAME).is_file():
        return [folder / PICKLE_NAME]
    raise GptdashError(f"{folder} has {CONFIG_NAME} but no weights: it needs "
                       f"{SAFETENSORS_NAME} (or {PICKLE_NAME})")


def _check_names_and_shapes(found: dict[str, tuple[tuple[int, ...], Path]],
                            settings: dict[str, Any], files: list[Path]) -> None:
    """``found``: each tensor's shape and the file holding it."""
    for name, shape in _hf_shapes(settings).items():
        if name not in found:
            where = files[0] if len(files) == 1 else files[0].parent
            raise GptdashError(f"{where} has no tensor {name}, which a GPT-2 of its "
                               f"{CONFIG_NAME} needs: the weights are incomplete or not GPT-2's")
        got, path = found[name]
        if tuple(got) != shape:
            raise GptdashError(f"{path}: {name} has shape {list(got)}, but {CONFIG_NAME} calls "
                               f"for {list(shape)}: the weights and the config disagree")


def check_hf_folder(folder: Path) -> dict[str, Any]:
    """Refuse, in one line naming the file, a folder gptdash cannot start from, before any
    run exists; return its settings (``hf_settings``). Safetensors headers are read without
    torch; a pickle is opened with ``weights_only`` (memory-mapped, not read whole)."""
    settings = hf_settings(folder)
    files = _weight_files(folder)
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    if files[0].name == PICKLE_NAME:
        state = _load_pickle(files[0])
        found = {_plain_name(k): (tuple(t.shape), files[0]) for k, t in state.items()}
    else:
        for path in files:
            found.update({_plain_name(k): (shape, path)
                          for k, shape in _safetensors_shapes(path).items()})
    _check_names_and_shapes(found, settings, files)
    return settings


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    safetensors = _need_safetensors()
    if not path.is_file():
        raise GptdashError(f"{path} does not exist (its safetensors index names it)")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise GptdashError(f"{path} is not a readable safetensors file: {exc}") from None


def _need_safetensors():
    try:
        import safetensors
    except ImportError:
        raise GptdashError("reading or writing Hugging Face weights needs the safetensors "
                           "package: pip install 'gptdash[hf]'") from None
    return safetensors


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        # Memory-mapped, not read whole, unless it is a pre-zip (legacy) torch file.
        state = torch.load(path, map_location="cpu", weights_only=True,
                           mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise GptdashError(f"refused to load {path}: it holds objects that could run code, "
                           f"which weights_only refuses: {str(exc).splitlines()[0][:200]}"
                           ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise GptdashError(f"{path} is corrupt or not a PyTorch file: "
                           f"{str(exc).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or not all(hasattr(t, "shape") for t in state.values()):
        raise GptdashError(f"{path} is not a state dict of tensors")
    return state


def _load_tensors(files: list[Path]) -> dict[str, tuple[torch.Tensor, Path]]:
    """Every tensor by its plain GPT-2 name, with the file it came from; buffers left out."""
    if files[0].name == PICKLE_NAME:
        loaded = [(_load_pickle(files[0]), files[0])]
    else:
        safetensors = _need_safetensors()
        from safetensors.torch import load_file

        loaded = []
        for path in files:
            try:
                loaded.append((load_file(str(path)), path))
            except (safetensors.SafetensorError, OSError, ValueError) as exc:
                raise GptdashError(f"{path} is not a readable safetensors file: {exc}") from None
    return {_plain_name(k): (t, path) for state, path in loaded for k, t in state.items()
            if not k.endswith(_BUFFER_SUFFIXES)}


def load_hf_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A GPT-2 folder as (the settings a run takes from it, our model's state dict over the
    real vocabulary, fp32): checked as ``check_hf_folder`` does, Conv1D weights transposed."""
    settings = hf_settings(folder)
    files = _weight_files(folder)
    tensors = _load_tensors(files)
    _check_names_and_shapes({k: (tuple(t.shape), p) for k, (t, p) in tensors.items()},
                            settings, files)
    state = {}
    for ours, theirs, transposed in _name_map(settings["n_layers"], settings["tie_weights"]):
        t = tensors[theirs][0]
        state[ours] = (t.t() if transposed else t).float().contiguous()
    return settings, state


def load_hf_weights(model: GPTModel, folder: Path) -> None:
    """Copy a GPT-2 folder's weights into ``model``, whose shape must be the folder's.

    The padded vocabulary rows stay as they are: the loss never gives them probability."""
    import torch

    settings, state = load_hf_folder(folder)
    cfg = model.cfg
    mine = {k: getattr(cfg, k) for k in SHAPE_FIELDS if k not in ("tokenizer", "qkv_bias")}
    theirs = {k: settings[k] for k in mine}
    if mine != theirs or not cfg.qkv_bias:
        raise GptdashError(f"cannot start from {folder}: its shape {theirs} (with qkv_bias) "
                           f"differs from this run's {mine}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name][: tensor.shape[0]].copy_(tensor)


# ---- export -------------------------------------------------------------------------------
def hf_config(cfg: TrainConfig) -> dict[str, Any]:
    """GPT2Config's fields for a run: our activation, biases, tying and context mapped.

    Every gptdash setting has a GPT-2 spelling: ``qkv_bias=False`` is written as zero
    biases, and one dropout rate is GPT-2's three."""
    m = cfg.model
    gpt2 = cfg.tokenizer == "gpt2"
    end = TOKENIZER_VOCAB["gpt2"] - 1 if gpt2 else None  # bytes have no end-of-text id
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": m.context_length,
            "n_ctx": m.context_length, "n_embd": m.emb_dim, "n_layer": m.n_layers,
            "n_head": m.n_heads, "n_inner": None,
            "activation_function": ACTIVATION_TO_HF[m.activation],
            "resid_pdrop": m.drop_rate, "embd_pdrop": m.drop_rate, "attn_pdrop": m.drop_rate,
            "layer_norm_epsilon": LAYER_NORM_EPS, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "tie_word_embeddings": m.tie_weights,
            "use_cache": True, "bos_token_id": end, "eos_token_id": end,
            "torch_dtype": "float32"}


def hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """Our weights under GPT2LMHeadModel's names (fp32, the real vocabulary, Conv1D layout).
    ``qkv_bias=False`` becomes zero biases, which compute the same."""
    import torch

    params = dict(model.named_parameters())
    vocab = model.vocab_size
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, transposed in _name_map(model.cfg.n_layers, model.cfg.tie_weights):
        if ours in params:
            t = params[ours].detach()
        else:  # a qkv bias the run never had
            t = torch.zeros(3 * model.cfg.emb_dim, device=params["tok_emb.weight"].device)
        if ours in ("tok_emb.weight", "out_head.weight"):
            t = t[:vocab]
        t = t.t() if transposed else t
        key = theirs if theirs == "lm_head.weight" else f"transformer.{theirs}"
        out[key] = t.float().cpu().contiguous().clone()
    return out


def export_hf(model: GPTModel, cfg: TrainConfig, folder: Path) -> list[Path]:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer's files to ``folder``;
    returns the files written."""
    from gptcore.hf_tokenizer import write_tokenizer

    _need_safetensors()
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / CONFIG_NAME
    config.write_text(json.dumps(hf_config(cfg), indent=2) + "\n", encoding="utf-8")
    weights = folder / SAFETENSORS_NAME
    save_file(hf_state_dict(model), str(weights), metadata={"format": "pt"})
    return [config, weights, *write_tokenizer(cfg.tokenizer, cfg.model.context_length, folder)]
