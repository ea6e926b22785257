"""Muon for the block matrices, AdamW for the rest, as one optimizer: the split, the lr
multiple, exact resume, a loaded state and DDP (that it learns: test_gptcore_trainer's
one-batch overfit, with every optimizer)."""

import pytest
import torch
from test_gptcore_trainer import Recorder, micro, run

from gptcore.config import PRESETS, ModelConfig
from gptcore.errors import GptdashError
from gptcore.model import GPT
from gptcore.optim import MuonAdamW, build_optimizer, param_groups
from gptcore.schedule import lr_at
from gptcore.trainer import Trainer


def model_for(cfg):
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**cfg.model.__dict__, "vocab_size": 256}))


@pytest.mark.parametrize("tie", [True, False])
def test_muon_takes_the_block_matrices_and_adamw_embeddings_head_biases_and_norms(tie):
    cfg = micro(optimizer="muon", tie_weights=tie)
    model = model_for(cfg)
    opt = build_optimizer(model, cfg, "cpu")
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    block = model.blocks[0]
    assert muon == {id(p) for p in model.blocks.parameters() if p.dim() == 2}
    assert id(block.att.qkv.weight) in muon and id(block.ff.proj.weight) in muon
    for p in (model.tok_emb.weight, model.pos_emb.weight, model.out_head.weight,
              block.ff.fc.bias, block.norm1.weight, model.final_norm.weight):
        assert id(p) in adamw and id(p) not in muon
    assert muon | adamw == {id(p) for p in model.parameters()}
    assert [g["params"] for g in opt.param_groups] == (
        [g["params"] for g in opt.muon.param_groups + opt.adamw.param_groups])


def test_the_block_matrices_run_at_muon_lr_scale_times_the_schedule(tmp_path):
    cfg = micro(optimizer="muon", max_steps=12, muon_lr_scale=15.0)
    trainer = Trainer(cfg, checkpoint_dir=tmp_path / "ckpt", cache_dir=tmp_path / "cache")
    trainer.run()
    last = lr_at(cfg.max_steps - 1, cfg)
    muon_group = trainer.optimizer.muon.param_groups[0]
    assert muon_group["lr"] == pytest.approx(15.0 * last)
    assert all(g["lr"] == pytest.approx(last) for g in trainer.optimizer.adamw.param_groups)


def test_resume_with_muon_continues_the_same_curve(tmp_path):
    # Muon's momentum buffers and AdamW's moments both come back from the checkpoint, and the
    # lr the trainer sets after resuming still reaches both inner optimizers.
    cfg = micro(optimizer="muon", momentum=0.95, drop_rate=0.1)
    _, full = run(cfg, tmp_path / "a")
    stopped, first = run(cfg, tmp_path / "b", Recorder(stop_at=15))
    assert stopped.status == "stopped" and stopped.step == 15
    resumed, second = run(cfg, tmp_path / "b", resume=True)
    assert resumed.status == "completed"
    joined = {**first.metrics["train/loss"], **second.metrics["train/loss"]}
    assert sorted(joined) == sorted(full.metrics["train/loss"])
    for step, value in full.metrics["train/loss"].items():
        assert joined[step] == pytest.approx(value, abs=1e-5), step


def test_a_loaded_state_reaches_both_inner_optimizers():
    cfg = micro(optimizer="muon")
    model = model_for(cfg)
    opt = build_optimizer(model, cfg, "cpu")
    model(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long)).backward()
    opt.step()
    saved = opt.state_dict()
    fresh = build_optimizer(model, cfg, "cpu")
    fresh.load_state_dict(saved)
    fresh.param_groups[0]["lr"] = 0.123
    assert fresh.muon.param_groups[0]["lr"] == 0.123
    qkv = model.blocks[0].att.qkv.weight
    assert torch.equal(fresh.muon.state[qkv]["momentum_buffer"],
                       opt.state[qkv]["momentum_buffer"])
    assert fresh.adamw.state[model.tok_emb.weight]["exp_avg"].abs().sum() > 0


def test_with_every_block_frozen_muon_has_nothing_and_adamw_does_it_all():
    cfg = micro(optimizer="muon", freeze_blocks=2, init_from="x")
    model = model_for(cfg)
    model.blocks.requires_grad_(False)
    opt = build_optimizer(model, cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW) and not isinstance(opt, MuonAdamW)


def test_muon_lr_scale_must_be_positive():
    with pytest.raises(GptdashError, match="muon_lr_scale must be greater than 0"):
        micro(optimizer="muon", muon_lr_scale=0).validate()


def test_the_speedrun_preset_uses_muon_and_validates():
    cfg = PRESETS["speedrun"]
    assert cfg.optimizer == "muon" and cfg.validate() is cfg


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_on_the_cpu_is_fused_and_steps_as_the_reference_loop_does(name):
    # torch's default on the CPU is a Python loop over tensors; the fused kernel is faster
    # (bench/throughput.py --nanogpt) and must take the same steps.
    cfg = micro(optimizer=name, weight_decay=0.1)
    fused_model, loop_model = model_for(cfg), model_for(cfg)
    fused = build_optimizer(fused_model, cfg, "cpu")
    assert fused.defaults["fused"]
    reference = type(fused)(param_groups(loop_model, cfg.weight_decay), lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), foreach=False)
    torch.manual_seed(1)
    for _ in range(5):
        x, y = torch.randint(0, 256, (4, 16)), torch.randint(0, 256, (4, 16))
        for model, opt in ((fused_model, fused), (loop_model, reference)):
            opt.zero_grad()
            model(x, y).backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_two_ranks_with_muon_match_one_process_with_the_same_global_batch(tmp_path,
                                                                         monkeypatch):
    # After DDP's all-reduce every rank holds the full gradient, so plain Muon on each rank
    # takes the same step as one process on the same global batch.
    import test_gptcore_distributed as ddp

    muon = ddp.two_rank_config(optimizer="muon", momentum=0.95)
    monkeypatch.setattr(ddp, "two_rank_config", lambda **kw: ddp.apply_overrides(muon, kw))
    out = tmp_path / "ddp"
    ddp.launch(out, muon)
    assert ddp.result(out, 0)["status"] == "completed"
    curve = ddp.curve(ddp.calls(out, 0))
    reference = ddp.single_process_same_global_batch(tmp_path, monkeypatch)
    assert sorted(curve) == sorted(reference) == list(range(ddp.STEPS))
    assert curve[ddp.STEPS - 1] < curve[0] - 0.3  # it trained
    # torch's Muon orthogonalizes in bfloat16, so the float32 sums' order (gloo's all-reduce
    # against autograd adding two halves) can flip a rounding: measured at most 6e-4 in 30
    # steps; a wrong global batch moves it far more (0.17 with AdamW, in
    # tests/test_gptcore_distributed.py).
    for step, value in reference.items():
        assert curve[step] == pytest.approx(value, abs=2e-3), step


def test_muons_adamw_is_fused_on_the_cpu_too():
    """The AdamW beside Muon takes the fused kernel on a CPU, as plain AdamW does (torch's
    CPU default is a per-tensor Python loop, ~3x the cost of a tiny model's update)."""
    cfg = micro(optimizer="muon")
    optimizer = build_optimizer(model_for(cfg), cfg, "cpu")
    assert isinstance(optimizer, MuonAdamW) and optimizer.adamw.defaults["fused"] is True
