"""Models in and out: a Hugging Face GPT-2 folder as a run's start (init_from=hf:DIR), and a
run exported for transformers (`gptdash export --format hf`), both exact to 1e-4 in fp32.

The "pretrained" folders are tiny GPT-2s that transformers itself builds and saves, with
random weights; nothing touches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hf_support import make_pretrained, micro, write_corpus
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, pipeline

from gptcore.checkpoint import model_from_checkpoint
from gptcore.config import ModelConfig, TrainConfig
from gptcore.errors import GptdashError
from gptcore.hf import hf_settings, load_hf_weights, with_hf_shape
from gptcore.hf_cache import cached_gpt2_folders, hf_cache_dir
from gptcore.metric_keys import VAL_LOSS
from gptcore.model import GPTModel
from gptcore.tokenizer import get_tokenizer
from jobs import runner
from jobs.cli import main
from jobs.export import export_run
from jobs.manager import claim_here

TOL = 1e-4


def gptdash_model(folder: Path) -> GPTModel:
    settings = hf_settings(folder)
    shape = {k: v for k, v in settings.items() if k != "tokenizer"}
    model = GPTModel(ModelConfig(**shape))
    load_hf_weights(model, folder)
    return model.eval()


def ids(vocab: int, length: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2-tiny")
    make_pretrained(folder)
    return folder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.txt")


def train(store, cfg: TrainConfig) -> int:
    run_id = runner.create_run(store, cfg)
    claim_here(store, run_id)
    assert runner.execute_run(store, run_id).status == "completed"
    return run_id


def val_losses(store, run_id: int) -> list[float]:
    return store.metrics([run_id], [VAL_LOSS])["value"].tolist()


# ---- in: a GPT-2 folder as the start of a run ------------------------------------------------
@pytest.mark.parametrize("kind", ["safetensors", "pickle", "sharded", "hub-layout",
                                  "untied-relu", "erf-gelu"])
def test_logits_equal_transformers_on_the_same_folder(tmp_path, kind):
    extra = {"untied-relu": {"tie_word_embeddings": False, "activation_function": "relu"},
             "erf-gelu": {"activation_function": "gelu"}}.get(kind, {})
    reference = make_pretrained(tmp_path, pickle_file=kind == "pickle", **extra)
    if kind == "sharded":  # as gpt2-xl-sized folders come: an index and its shards
        (tmp_path / "model.safetensors").unlink()
        reference.save_pretrained(tmp_path, max_shard_size="1MB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    if kind == "hub-layout":  # as the gpt2 repository's file: GPT2Model's names, mask buffers
        weights = {k.removeprefix("transformer."): v
                   for k, v in load_file(tmp_path / "model.safetensors").items()
                   if k != "lm_head.weight"}
        weights.update({f"h.{i}.attn.bias": torch.ones(1, 1, 32, 32) for i in range(2)})
        save_file(weights, tmp_path / "model.safetensors")
    x = ids(50257)
    with torch.no_grad():
        expected = reference(x).logits
        got = gptdash_model(tmp_path)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOL


def test_new_run_lists_the_gpt2_models_in_the_hugging_face_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    gpt2 = hub / "models--gpt2" / "snapshots" / "607a30d783dfa663caf39e06633721c8d4cfcd7e"
    make_pretrained(gpt2)
    other = hub / "models--meta-llama--Llama-3.2-1B" / "snapshots" / "4e20de3"
    other.mkdir(parents=True)
    (other / "config.json").write_text('{"model_type": "llama"}')
    (hub / "models--gpt2" / "refs").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert hf_cache_dir() == hub
    assert cached_gpt2_folders() == [gpt2]


def test_the_loss_gives_padded_ids_no_probability(pretrained):
    """GPT-2's 50257 ids pad to 50304 rows: the 47 extra rows must not take probability from
    weights that never saw them, or fine-tuning would start from a broken loss."""
    model = gptdash_model(pretrained)
    reference = GPT2LMHeadModel.from_pretrained(pretrained).eval()
    x = ids(50257, 25)
    with torch.no_grad():
        expected = reference(x[:, :-1], labels=x[:, :-1]).loss  # HF shifts the labels itself
        ours = model(x[:, :-2], x[:, 1:-1])
        smoothed = model(x[:, :-2], x[:, 1:-1], label_smoothing=0.1)
        reference_smoothed = torch.nn.functional.cross_entropy(
            reference(x[:, :-2]).logits.reshape(-1, 50257), x[:, 1:-1].reshape(-1),
            label_smoothing=0.1)
    assert abs(ours.item() - expected.item()) <= TOL
    assert abs(smoothed.item() - reference_smoothed.item()) <= TOL


def test_the_run_takes_the_folders_shape_and_says_so(pretrained):
    cfg, note = with_hf_shape(TrainConfig(init_from=f"hf:{pretrained}"))
    m = cfg.model
    assert (m.n_layers, m.emb_dim, m.n_heads, m.context_length, m.vocab_size, m.qkv_bias,
            cfg.tokenizer) == (2, 32, 4, 32, 50257, True, "gpt2")
    assert note is not None and "n_layers 2 (not 4)" in note and "emb_dim 32 (not 128)" in note
    assert "\n" not in note
    assert with_hf_shape(cfg) == (cfg, None)  # nothing left to say once it agrees


def test_submit_takes_the_folders_shape_without_torch_or_transformers(tmp_path, pretrained):
    """`gptdash submit --set init_from=hf:DIR` says which settings the folder replaced, and
    answers at once: checking a safetensors folder reads its header, not the weights."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    code = ("import sys\nfrom jobs.cli import main\n"
            f"code = main(['submit', '--set', 'init_from=hf:{pretrained}', '--set', "
            f"'corpus={corpus}'])\n"
            "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    env = {**os.environ, "GPTDASH_HOME": str(tmp_path)}
    env.pop("GPTDASH_DB_URL", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "0 False False", out.stderr
    assert f"the model's shape comes from {pretrained}: " in out.stderr
    assert "n_layers 2 (not 4)" in out.stderr and "tokenizer gpt2 (not byte)" in out.stderr


def test_a_config_whose_shape_disagrees_is_refused_before_a_row(store, pretrained, corpus):
    cfg, _ = with_hf_shape(micro(init_from=f"hf:{pretrained}", corpus=str(corpus)))
    with pytest.raises(GptdashError, match=r"n_layers 2 \(not 3\)") as err:
        runner.create_run(store, replace(cfg, model=replace(cfg.model, n_layers=3)))
    assert "\n" not in str(err.value)
    assert store.list_runs() == []


def _broken(folder: Path, how: str) -> None:
    """Spoil a copy of a pretrained folder in one way."""
    config = json.loads((folder / "config.json").read_text())
    if how == "not-gpt2":
        config["model_type"] = "llama"
    elif how == "shape":
        config["n_positions"] = 64  # wpe holds 32 rows
    elif how == "missing":
        weights = load_file(folder / "model.safetensors")
        del weights["transformer.h.1.mlp.c_fc.weight"]
        save_file(weights, folder / "model.safetensors")
    elif how == "pickle":
        (folder / "model.safetensors").unlink()
        torch.save({"wte.weight": _Evil()}, folder / "pytorch_model.bin")
    elif how == "no-weights":
        (folder / "model.safetensors").unlink()
    (folder / "config.json").write_text(json.dumps(config))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("how, words", [
    ("not-gpt2", r"config.json describes a 'llama' model, not GPT-2"),
    ("shape", r"model.safetensors: wpe.weight has shape \[32, 32\], but config.json calls "
              r"for \[64, 32\]"),
    ("missing", r"model.safetensors has no tensor h.1.mlp.c_fc.weight"),
    ("pickle", r"refused to load .*pytorch_model.bin: it holds objects that could run code"),
    ("no-weights", r"has config.json but no weights"),
])
def test_a_folder_gptdash_cannot_start_from_is_one_line_before_a_row(store, tmp_path, corpus,
                                                                     how, words):
    folder = tmp_path / "model"
    make_pretrained(folder)
    _broken(folder, how)
    cfg = micro(init_from=f"hf:{folder}", corpus=str(corpus))
    if how not in ("not-gpt2", "shape"):
        cfg, _ = with_hf_shape(cfg)
    with pytest.raises(GptdashError, match=words) as err:
        runner.create_run(store, cfg)
    assert "\n" not in str(err.value)
    assert store.list_runs() == []


def test_fine_tuning_from_a_folder_with_frozen_blocks(store, pretrained, corpus):
    cfg, _ = with_hf_shape(micro(init_from=f"hf:{pretrained}", corpus=str(corpus),
                                 freeze_blocks=1, freeze_embeddings=True, lr=1e-2))
    run_id = train(store, cfg)
    trained, _, _ = model_from_checkpoint(runner.run_checkpoint(store.get_run(run_id),
                                                                "latest"))
    start = gptdash_model(pretrained)
    mine, theirs = trained.state_dict(), start.state_dict()
    for name in ("tok_emb.weight", "pos_emb.weight", "blocks.0.att.qkv.weight",
                 "blocks.0.ff.fc.bias"):
        assert torch.equal(mine[name][:50257], theirs[name][:50257]), name  # pads aside
    assert not torch.equal(mine["blocks.1.att.qkv.weight"], theirs["blocks.1.att.qkv.weight"])


# ---- out: a run as a transformers folder ----------------------------------------------------
@pytest.fixture
def byte_run(store, corpus) -> int:
    """A tiny byte-tokenizer run, untied, without qkv biases (written as zeros)."""
    return train(store, micro(corpus=str(corpus), tie_weights=False, qkv_bias=False,
                              activation="silu", drop_rate=0.1))


def test_export_loads_in_transformers_with_the_same_logits(store, byte_run, tmp_path):
    folder = tmp_path / "export"
    files = export_run(store, byte_run, folder)
    assert {p.name for p in files} == {"config.json", "model.safetensors", "vocab.json",
                                       "merges.txt", "tokenizer_config.json", "README.md"}
    ours, cfg, _ = model_from_checkpoint(runner.run_checkpoint(store.get_run(byte_run)))
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    x = ids(256, 16)
    with torch.no_grad():
        assert (ours(x) - theirs(x).logits).abs().max().item() <= TOL
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "Héllo, wörld!\n  日本"
    assert tokenizer(text)["input_ids"] == get_tokenizer("byte").encode(text)
    assert tokenizer.decode(list(text.encode())) == text
    out = pipeline("text-generation", model=str(folder), device="cpu")(
        "The ", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The ")
    assert len(out[0]["generated_text"]) > len("The ")
    card = (folder / "README.md").read_text()
    best = store.get_run(byte_run).best_val_loss
    assert f"Validation loss at that step: {best:.4f}" in card
    assert "## A sample" in card and "convert_hf_to_gguf.py" in card
    assert '"tie_weights": false' in card


def test_round_trip_reproduces_the_runs_val_loss(store, byte_run, tmp_path, corpus):
    folder = tmp_path / "export"
    export_run(store, byte_run, folder)
    cfg, _ = with_hf_shape(micro(corpus=str(corpus), init_from=f"hf:{folder}", max_steps=1,
                                 drop_rate=0.1))
    again = train(store, cfg)
    best = store.get_run(byte_run).best_val_loss
    assert abs(val_losses(store, again)[0] - best) <= TOL  # step 0: the exported weights


def test_a_gpt2_bpe_run_exports_a_tokenizer_equal_to_tiktoken(store, pretrained, corpus,
                                                              tmp_path):
    cfg, _ = with_hf_shape(micro(init_from=f"hf:{pretrained}", corpus=str(corpus),
                                 max_steps=1))
    run_id = train(store, cfg)
    folder = tmp_path / "export"
    assert main(["export", str(run_id), "--format", "hf", str(folder),
                 "--checkpoint", "latest"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = Path(__file__).read_text()[:3000] + " ünïcode 日本語  1234567\n\n"
    assert tokenizer(text)["input_ids"] == get_tokenizer("gpt2").encode(text)
    assert tokenizer.eos_token_id == 50256
    ours, _, _ = model_from_checkpoint(runner.run_checkpoint(store.get_run(run_id), "latest"))
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    x = ids(50257, 20)
    with torch.no_grad():
        assert (ours(x) - theirs(x).logits).abs().max().item() <= TOL
    out = pipeline("text-generation", model=str(folder), device="cpu")(
        "The", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("The")


def test_export_refuses_a_folder_of_other_files_and_gguf(store, byte_run, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert main(["export", str(byte_run), str(folder)]) == 2
    assert "already holds other files (notes.txt)" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "keep me"
    assert not (folder / "config.json").exists()
    assert main(["export", str(byte_run), "--format", "gguf", str(tmp_path / "g")]) == 2
    assert "convert_hf_to_gguf.py" in capsys.readouterr().err
