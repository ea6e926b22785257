"""Config validation messages, overrides and JSON round trip."""

import pytest

from gptcore.config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    parse_set_args,
    preset,
)
from gptcore.errors import GptdashError


def problems(**overrides):
    return apply_overrides(TrainConfig(), overrides).problems()


def test_default_and_presets_are_valid():
    assert TrainConfig().problems() == {}
    for name in PRESETS:
        assert preset(name).problems() == {}, name


@pytest.mark.parametrize(
    "overrides, field, text",
    [
        ({"emb_dim": 100, "n_heads": 12}, "emb_dim", "emb_dim 100 is not divisible by n_heads 12"),
        ({"lr": 0}, "lr", "lr must be greater than 0"),
        ({"lr": -1}, "lr", "lr must be greater than 0"),
        ({"batch_size": 0}, "batch_size", "batch_size must be at least 1"),
        ({"optimizer": "lion"}, "optimizer", "optimizer 'lion' is not one of"),
        ({"n_layers": 10000}, "n_layers", "n_layers must be at most 256"),
        ({"drop_rate": 1.5}, "drop_rate", "drop_rate must be at most 0.9"),
        ({"lr": float("nan")}, "lr", "finite"),
        ({"vocab_size": 100}, "vocab_size", "smaller than the byte tokenizer's 256"),
        ({"freeze_blocks": 2}, "init_from", "only makes sense when fine-tuning"),
        ({"warmup_steps": 1000, "max_steps": 10}, "warmup_steps", "longer than max_steps"),
        ({"min_lr": 1.0, "lr": 0.1}, "min_lr", "above lr"),
        ({"schedule": "wsd", "min_lr": 1.0, "lr": 0.1}, "min_lr", "above lr"),
        ({"decay_fraction": 0}, "decay_fraction", "decay_fraction must be greater than 0"),
        ({"decay_fraction": 1.5}, "decay_fraction", "decay_fraction must be at most 1"),
    ],
)
def test_validation_names_the_field_and_what_to_change(overrides, field, text):
    errs = problems(**overrides)
    assert field in errs
    assert text in errs[field]


def test_vocab_size_is_the_tokenizers_or_padding_of_gpt2s():
    assert "vocab_size" in problems(vocab_size=1000)  # byte makes 256 ids, never more
    assert problems(tokenizer="gpt2", vocab_size=50304) == {}  # nanoGPT's padding for speed
    assert "pad it up to 51200" in problems(tokenizer="gpt2", vocab_size=60000)["vocab_size"]


def test_validate_raises_one_error_with_every_problem():
    cfg = apply_overrides(TrainConfig(), {"lr": 0, "batch_size": 0})
    with pytest.raises(GptdashError) as exc:
        cfg.validate()
    assert "lr" in str(exc.value) and "batch_size" in str(exc.value)


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["lr=abc"], "lr must be a number, not 'abc'"),
        (["n_layers=2.5"], "n_layers must be a whole number"),
        (["compile=maybe"], "compile must be true or false"),
        (["nope=1"], "unknown setting 'nope'"),
        (["lrr=1"], "did you mean lr"),
    ],
)
def test_overrides_give_clear_type_errors(pairs, message):
    with pytest.raises(GptdashError, match=message):
        apply_overrides(TrainConfig(), parse_set_args(pairs))


def test_set_args_need_key_value():
    with pytest.raises(GptdashError, match="key=value"):
        parse_set_args(["lr"])


def test_overrides_coerce_types_into_both_model_and_train_fields():
    cfg = apply_overrides(TrainConfig(), parse_set_args(["n_layers=6", "lr=3e-4", "compile=true"]))
    assert cfg.model.n_layers == 6 and cfg.lr == 3e-4 and cfg.compile is True


def test_json_round_trip_keeps_every_field():
    cfg = apply_overrides(preset("small"), {"lr": 2e-4, "activation": "silu"})
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg
    assert TrainConfig.from_dict(cfg.flat()) == cfg


@pytest.mark.parametrize(
    "text, message",
    [("{", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"bogus": 1}', "unknown setting"),
     ('{"model": 3}', "'model' in a config must be an object")],
)
def test_bad_config_json_is_a_clear_error(text, message):
    with pytest.raises(GptdashError, match=message):
        TrainConfig.from_json(text)


def test_unknown_preset():
    with pytest.raises(GptdashError, match="unknown preset"):
        preset("huge")


def test_preset_returns_an_independent_copy():
    a = preset("tiny")
    a.model.emb_dim = 8
    assert preset("tiny").model.emb_dim != 8


def _numeric_fields():
    from gptcore.config import field_info

    return [(n, i) for n, i in field_info().items() if i["type"] in (int, float)]


@pytest.mark.parametrize("name", [n for n, _ in _numeric_fields()])
def test_every_numeric_field_rejects_text_naming_the_field(name):
    with pytest.raises(GptdashError, match=f"^{name} must be a"):
        apply_overrides(TrainConfig(), {name: "not-a-number"})


@pytest.mark.parametrize("name, info", [(n, i) for n, i in _numeric_fields()
                                        if i["min"] is not None])
def test_every_bounded_field_refuses_values_below_its_minimum(name, info):
    below = info["min"] - 1
    errs = apply_overrides(TrainConfig(), {name: below}).problems()
    assert name in errs and name in errs[name]


@pytest.mark.parametrize("name, info", [(n, i) for n, i in _numeric_fields()
                                        if i["max"] is not None])
def test_every_bounded_field_refuses_absurdly_large_values(name, info):
    errs = apply_overrides(TrainConfig(), {name: info["max"] * 10 + 1}).problems()
    assert name in errs and "at most" in errs[name]


def test_wsd_and_its_decay_fraction_come_from_set_and_old_configs_still_load():
    cfg = apply_overrides(TrainConfig(), parse_set_args(["schedule=wsd", "decay_fraction=0.3"]))
    assert (cfg.schedule, cfg.decay_fraction) == ("wsd", 0.3) and cfg.problems() == {}
    old = TrainConfig().to_dict()
    del old["decay_fraction"], old["fixed_eval"]  # a config saved before these fields
    loaded = TrainConfig.from_dict(old)
    assert (loaded.decay_fraction, loaded.fixed_eval) == (0.2, True)
