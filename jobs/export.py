"""Hand a run to Hugging Face transformers: `gptdash export` and the pages' Export button.

``gptcore.hf`` maps the weights and writes config, weights and tokenizer; this module picks
the run's checkpoint, the folder (refusing one that holds other files), and writes the model
card from what the database recorded. Imports torch (through the checkpoint) when called.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.metric_keys import VAL_LOSS
from jobs.runner import run_checkpoint
from storage import home
from storage.store import RunRecord, RunStore

FORMATS = ("hf", "gguf")
CARD_NAME = "README.md"
# What an export writes; a folder holding anything else is someone's, and refused.
EXPORT_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt",
                "tokenizer_config.json", CARD_NAME)
GGUF_HINT = ("GGUF: convert the exported folder with llama.cpp's script, `python "
             "convert_hf_to_gguf.py DIR --outfile model.gguf` (llama.cpp reads GPT-2 folders)")
CARD_SAMPLE_TOKENS = 80


def export_run(store: RunStore, run_id: int, folder: str | Path, *, which: str = "best",
               fmt: str = "hf") -> list[Path]:
    """Write run ``run_id``'s ``best`` (or ``latest``) weights to ``folder`` as a Hugging
    Face GPT-2 folder with its tokenizer and a model card; returns the files written."""
    from gptcore.checkpoint import model_from_checkpoint
    from gptcore.hf import export_hf

    if fmt == "gguf":
        raise GptdashError(f"gptdash does not write GGUF itself: export with --format hf, "
                           f"then {GGUF_HINT.removeprefix('GGUF: ')}")
    if fmt not in FORMATS:
        raise GptdashError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    run = store.get_run(run_id)
    target = _check_target(Path(folder).expanduser())
    path = run_checkpoint(run, which)
    if path is None:
        raise GptdashError(f"run {run.id} has no checkpoint to export yet: wait for its first "
                           "checkpoint, or export a run that has finished")
    model, cfg, payload = model_from_checkpoint(path)
    files = export_hf(model, cfg, target)
    step = int(payload["step"])
    card = target / CARD_NAME
    card.write_text(model_card(run, cfg, step=step, which=path.stem,
                               val_loss=_val_loss_at(store, run.id, step),
                               sample=_sample(model, cfg)), encoding="utf-8")
    return [*files, card]


def export_to_home(store: RunStore, run_id: int, which: str = "best") -> Path:
    """Export into ``exports/run-<id>-<which>`` of the artifacts folder (the pages' Export
    button; a second export of the same run replaces the first); returns the folder."""
    folder = home.exports_dir() / f"run-{int(run_id)}-{which}"
    export_run(store, run_id, folder, which=which)
    return folder


def zip_folder(folder: Path) -> bytes:
    """An export folder as zip bytes, its files under the folder's name (for a download)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{folder.name}/{path.name}")
    return buffer.getvalue()


def _check_target(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise GptdashError(f"{folder} is a file: export into a new or empty folder")
    others = sorted(p.name for p in folder.iterdir() if p.name not in EXPORT_FILES) \
        if folder.is_dir() else []
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise GptdashError(f"{folder} already holds other files ({shown}): export into a new "
                           "or empty folder")
    return folder


def _val_loss_at(store: RunStore, run_id: int, step: int) -> float | None:
    """The val loss of the last evaluation at or before ``step`` (the checkpoint's)."""
    frame = store.metrics([run_id], [VAL_LOSS], max_step=step)
    return float(frame["value"].iloc[-1]) if len(frame) else None


def _sample(model, cfg: TrainConfig) -> str | None:
    """A short sample from the exported weights (seeded), for the card."""
    from gptcore.generate import sample_text
    from gptcore.sampling import SamplingConfig
    from gptcore.tokenizer import get_tokenizer

    if not cfg.sample_prompt:
        return None
    sampling = SamplingConfig(max_new_tokens=CARD_SAMPLE_TOKENS, seed=0)
    return cfg.sample_prompt + sample_text(model, get_tokenizer(cfg.tokenizer),
                                           cfg.sample_prompt, sampling)


def _fenced(text: str, lang: str = "text") -> str:
    """``text`` as a Markdown code block whose fence no backtick run inside it can close:
    a run's name, corpus and sample are shown as written, never as Markdown."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def model_card(run: RunRecord, cfg: TrainConfig, *, step: int, which: str,
               val_loss: float | None, sample: str | None) -> str:
    """The exported folder's README.md: what the model is, how it was trained, how it did."""
    m = cfg.model
    loss = f"{val_loss:.4f}" if val_loss is not None else "not evaluated"
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation",
        "tags: [gptdash, gpt2]", "---", "",
        f"# gptdash run {run.id}", "", "Run name:", "", _fenced(run.name), "",
        f"A GPT-2-architecture model trained with gptdash: {m.n_layers} layers, "
        f"{m.emb_dim}-wide, {m.n_heads} heads, context {m.context_length}, "
        f"{run.n_params or 0:,} parameters, the {cfg.tokenizer} tokenizer "
        f"(vocab {cfg.vocab_size}).", "",
        "## Training", "",
        f"- Weights: the run's {which} checkpoint, step {step} of {run.max_steps}",
        f"- Validation loss at that step: {loss}",
        f"- Tokens seen by the run: {run.tokens_seen or 0:,}",
        "- Data (the corpus):", "", _fenced(cfg.corpus), "",
        "## Use", "",
        _fenced("from transformers import pipeline\n\n"
                "generate = pipeline(\"text-generation\", model=\"PATH/TO/THIS/FOLDER\")\n"
                "print(generate(\"The \", max_new_tokens=40)[0][\"generated_text\"])", "python"),
        "",
        f"{GGUF_HINT}.", "",
    ]
    if cfg.tokenizer == "byte":
        lines += ["The tokenizer is bytes: id b is byte b (a byte-level BPE with no merges, "
                  "so `AutoTokenizer` loads it); it has no end-of-text token.", ""]
    if sample is not None:
        lines += ["## A sample (seed 0, temperature 0.8)", "", _fenced(sample), ""]
    lines += ["## Config", "", _fenced(json.dumps(cfg.to_dict(), indent=2, sort_keys=True),
                                       "json"), ""]
    return "\n".join(lines)
