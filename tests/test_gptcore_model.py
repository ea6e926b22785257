"""The model: shapes, causality, weight tying, parameter counts, padded vocabulary."""

import pytest
import torch

from gptcore.config import ModelConfig, TrainConfig, preset
from gptcore.estimate import flops_per_token, memory_estimate, param_count
from gptcore.model import GPT, padded_vocab


def small_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=256, context_length=16, emb_dim=32, n_heads=4, n_layers=2)
    base.update(kw)
    return ModelConfig(**base)


def test_logits_shape_is_batch_time_vocab():
    model = GPT(small_cfg(vocab_size=100))
    logits = model(torch.randint(0, 100, (3, 10)))
    assert logits.shape == (3, 10, 100)  # padded ids are cut off


def test_changing_a_later_token_never_changes_earlier_logits():
    torch.manual_seed(0)
    model = GPT(small_cfg()).eval()
    idx = torch.randint(0, 256, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 256
    a, b = model(idx), model(changed)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


@pytest.mark.parametrize("activation", ["gelu", "gelu_exact", "relu", "leaky_relu", "silu",
                                        "tanh"])
def test_every_activation_builds_and_runs(activation):
    model = GPT(small_cfg(activation=activation))
    loss = model(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8)))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_gelu_is_gpt2s_tanh_approximation_and_gelu_exact_the_erf_form():
    x = torch.linspace(-4, 4, 101)
    tanh_form = 0.5 * x * (1 + torch.tanh(0.7978845608 * (x + 0.044715 * x**3)))
    erf_form = 0.5 * x * (1 + torch.erf(x / 2**0.5))
    for name, want in (("gelu", tanh_form), ("gelu_exact", erf_form)):
        act = GPT(small_cfg(activation=name)).blocks[0].ff.act
        torch.testing.assert_close(act(x), want, atol=1e-6, rtol=0)
    assert (tanh_form - erf_form).abs().max() > 1e-4  # two different functions


def test_weight_tying_shares_one_matrix():
    tied, untied = GPT(small_cfg(tie_weights=True)), GPT(small_cfg(tie_weights=False))
    assert tied.out_head.weight is tied.tok_emb.weight
    assert untied.out_head.weight is not untied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 256 * 32


def test_initial_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(small_cfg())
    loss = model(torch.randint(0, 256, (4, 16)), torch.randint(0, 256, (4, 16)))
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.3


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    model = GPT(small_cfg(n_layers=8, emb_dim=256, n_heads=4))
    assert model.blocks[0].ff.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)
    assert model.blocks[0].ff.fc.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="longer than context_length"):
        GPT(small_cfg())(torch.zeros((1, 17), dtype=torch.long))


def test_vocab_is_padded_to_a_multiple_of_64():
    assert padded_vocab(50257) == 50304
    assert padded_vocab(256) == 256


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_estimated_param_count_matches_the_built_model(name):
    cfg = preset(name)
    model = GPT(ModelConfig(**{**cfg.model.__dict__, "vocab_size": cfg.vocab_size}))
    assert param_count(cfg) == model.num_params()


def test_gpt2_124m_preset_has_gpt2_small_size():
    n = param_count(preset("gpt2-124m"))
    assert 123e6 < n < 126e6
    assert 8e8 < flops_per_token(preset("gpt2-124m")) < 9e8


def test_small_preset_is_about_ten_million_parameters():
    assert 9e6 < param_count(preset("small")) < 12e6


def test_memory_estimate_grows_with_batch():
    a = memory_estimate(TrainConfig())
    b = memory_estimate(TrainConfig(batch_size=64))
    assert b.activations_mb > a.activations_mb and b.params_mb == a.params_mb
    assert a.total_mb > 0


def test_fit_problem_compares_the_estimate_with_available_memory():
    from gptcore.estimate import fit_problem

    cfg = preset("gpt2-124m")
    need = memory_estimate(cfg).total_mb
    assert fit_problem(cfg, need * 2) is None
    assert fit_problem(cfg, None) is None
    message = fit_problem(cfg, need / 2)
    assert "lower batch_size" in message and "124.4 M parameters" in message


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_optimizer_memory_is_the_state_torch_keeps(optimizer):
    # Counted on the optimizer's real state after a step: Muon keeps one buffer for the
    # blocks' matrices and AdamW two for the rest (the estimate counted two for all).
    from gptcore.estimate import hidden_matrix_count
    from gptcore.optim import build_optimizer, hidden_matrices

    cfg = TrainConfig(model=ModelConfig(vocab_size=64, context_length=16, emb_dim=32,
                                        n_heads=2, n_layers=2), optimizer=optimizer)
    model = GPT(cfg.model)
    assert hidden_matrix_count(cfg) == sum(p.numel() for p in hidden_matrices(model))
    opt = build_optimizer(model, cfg, "cpu")
    ids = torch.randint(0, 64, (2, 16))
    model(ids, ids).backward()
    opt.step()
    kept = sum(t.numel() for state in opt.state.values() for t in state.values()
               if torch.is_tensor(t) and t.numel() > 1)
    assert memory_estimate(cfg).optimizer_mb * 1024**2 / 4 == kept
