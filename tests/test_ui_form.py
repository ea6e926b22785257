import pytest

from gptcore.config import PRESETS, TrainConfig, field_info
from gptcore.estimate import MachinePace, duration_estimate, training_flops
from ui.form import form_groups, form_problems, launch_summary
from ui.format import human_duration


def test_form_groups_cover_every_field_in_order():
    groups = form_groups()
    assert list(groups) == ["model", "data", "optimization", "schedule", "evaluation",
                            "fine-tune", "system"]
    assert sorted(n for names in groups.values() for n in names) == sorted(field_info())
    assert groups["model"][:3] == ["vocab_size", "context_length", "emb_dim"]
    assert "lr" in groups["optimization"] and "seed" in groups["system"]


def test_valid_values_give_config_and_no_problems():
    cfg, problems = form_problems({"emb_dim": 192, "n_heads": 6.0, "lr": "3e-4"})
    assert problems == {}
    assert cfg.model.emb_dim == 192 and cfg.model.n_heads == 6 and cfg.lr == 3e-4


def test_cross_field_problem_reported_on_emb_dim():
    cfg, problems = form_problems({"emb_dim": 100, "n_heads": 12})
    assert cfg is not None
    assert set(problems) == {"emb_dim"}
    assert "divisible" in problems["emb_dim"]


def test_type_errors_attributed_to_each_field():
    cfg, problems = form_problems({"lr": "abc", "n_layers": "four", "emb_dim": 64})
    assert cfg is None
    assert set(problems) == {"lr", "n_layers"}
    assert problems["lr"].startswith("lr must be a number")


def test_unknown_field_and_base():
    cfg, problems = form_problems({"learning_rate": 1.0})
    assert cfg is None and "learning_rate" in problems
    cfg, problems = form_problems({"max_steps": 10}, base=PRESETS["tiny"])
    assert cfg.max_steps == 10 and cfg.model.emb_dim == 96
    assert problems == {"warmup_steps": "warmup_steps 20 is longer than max_steps 10: lower "
                        "warmup_steps to 10 or less, or raise max_steps"}


def test_launch_summary_strings():
    summary = launch_summary(PRESETS["small"])
    assert summary == {
        "Parameters": "10.8 M",
        "FLOPs per token": "71.5 M",
        "Memory estimate": "1.4 GB",
        "Tokens per step": "16,384",
        "Estimated duration": "—",
    }
    assert launch_summary(PRESETS["tiny"])["Memory estimate"] == "21 MB"


def test_launch_summary_duration_from_this_machines_pace():
    cfg = TrainConfig(max_steps=100)
    pace = MachinePace(train_flops_per_s=training_flops(cfg, 100) / 200, startup_s=5.0)
    expected = duration_estimate(cfg, pace).total_s  # 200 s of steps, evaluations and more
    assert expected > 205
    assert launch_summary(cfg, pace)["Estimated duration"] == human_duration(expected)
    assert launch_summary(cfg, None)["Estimated duration"] == "—"


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_no_problems(name):
    assert form_problems(PRESETS[name].flat()) == (PRESETS[name], {})


def test_an_unreadable_field_does_not_hide_the_other_fields_problems():
    # min_lr 0.5 is above the default lr, but lr was typed (badly): that check is left out.
    cfg, problems = form_problems({"lr": "abc", "emb_dim": 100, "n_heads": 12,
                                   "n_layers": 10**6, "min_lr": "0.5"})
    assert cfg is None
    assert set(problems) == {"lr", "emb_dim", "n_layers"}
    assert "divisible" in problems["emb_dim"]
