"""Sweep specs: parsing, expansion counts and types, reproducible draws, cut decisions."""

import math

import numpy as np
import pytest

from analysis.forecast import forecast_final
from analysis.sweep import (
    Range,
    cut_steps,
    expand,
    parse_grid,
    parse_range,
    parse_value,
    should_cut,
    sweep_size,
)


def test_values_are_typed():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("1e-3") == pytest.approx(0.001)
    assert parse_value("0.5") == 0.5
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("cosine") == "cosine"


def test_a_grid_value_given_twice_counts_once_in_its_first_place():
    assert parse_grid("lr=3e-3,1e-3,0.001,3e-3") == ("lr", [3e-3, 1e-3])
    key, values = parse_grid("qkv_bias=1,true,1.0")  # True == 1, but not as a setting
    assert values == [1, True] and values[1] is True


def test_sweep_size_counts_the_runs_expand_makes_without_making_them():
    grids, ranges = ["lr=1e-3,2e-3,1e-3", "n_layers=2,4"], ["emb_dim=32:64"]
    assert sweep_size(grids, ranges, random=3) == len(expand(grids, ranges, random=3)) == 12
    assert sweep_size(grids) == len(expand(grids)) == 4
    assert sweep_size([f"{k}=" + ",".join(map(str, range(1000))) for k in "abc"]) == 10**9
    with pytest.raises(ValueError, match="given more than once"):
        sweep_size(["lr=1,2", "lr=3"])


def test_grid_parses_key_and_values():
    assert parse_grid("lr=1e-3,3e-3,1e-2") == ("lr", [1e-3, 3e-3, 1e-2])
    assert parse_grid(" n_layers = 2,4 ") == ("n_layers", [2, 4])
    assert parse_grid("schedule=cosine,constant") == ("schedule", ["cosine", "constant"])


@pytest.mark.parametrize("spec", ["lr", "lr=", "=1,2", "lr=,"])
def test_bad_grid_says_the_syntax(spec):
    with pytest.raises(ValueError, match=r"--grid needs KEY=V1,V2,\.\.\.: got"):
        parse_grid(spec)


def test_bad_grid_message_quotes_the_input():
    with pytest.raises(ValueError) as err:
        parse_grid("lr")
    assert str(err.value) == "--grid needs KEY=V1,V2,...: got 'lr'"


def test_range_parses_scale_and_integer_ends():
    assert parse_range("lr=1e-4:1e-2:log") == Range("lr", 1e-4, 1e-2, "log", integer=False)
    assert parse_range("n_layers=2:8") == Range("n_layers", 2, 8, "lin", integer=True)
    assert parse_range("drop_rate=0:0.2:lin").integer is False


@pytest.mark.parametrize("spec, message", [
    ("lr=1e-4", "--range needs KEY=LOW:HIGH"),
    ("lr", "--range needs KEY=LOW:HIGH"),
    ("lr=1e-4:1e-2:cubic", "the scale must be log or lin"),
    ("lr=a:b", "LOW and HIGH must be numbers"),
    ("lr=1e-2:1e-4", "LOW must be below HIGH"),
    ("lr=0:1e-2:log", "a log range needs LOW above 0"),
])
def test_bad_range_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_range(spec)


def test_grid_expands_to_the_cartesian_product():
    runs = expand(["lr=1e-3,3e-3,1e-2", "n_layers=2,4"])
    assert len(runs) == 6
    assert runs[0] == {"lr": 1e-3, "n_layers": 2}
    assert {(r["lr"], r["n_layers"]) for r in runs} == {
        (lr, n) for lr in (1e-3, 3e-3, 1e-2) for n in (2, 4)}


def test_ranges_draw_reproducibly_within_bounds():
    runs = expand(ranges=["lr=1e-4:1e-2:log", "n_layers=1:6"], random=50, seed=3)
    assert len(runs) == 50
    assert runs == expand(ranges=["lr=1e-4:1e-2:log", "n_layers=1:6"], random=50, seed=3)
    assert runs != expand(ranges=["lr=1e-4:1e-2:log", "n_layers=1:6"], random=50, seed=4)
    lrs = np.array([r["lr"] for r in runs])
    assert all(isinstance(r["lr"], float) for r in runs)
    assert all(isinstance(r["n_layers"], int) and 1 <= r["n_layers"] <= 6 for r in runs)
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
    # Log scale: about half the draws fall below the geometric middle (1e-3), not ~9%.
    assert 0.3 < np.mean(lrs < 1e-3) < 0.7


def test_log_range_of_whole_numbers_draws_whole_numbers():
    runs = expand(ranges=["batch_size=8:256:log"], random=30, seed=0)
    sizes = [r["batch_size"] for r in runs]
    assert all(isinstance(b, int) and 8 <= b <= 256 for b in sizes)
    assert min(sizes) < 32 < max(sizes)


def test_grid_times_random_pairs_every_combination_with_the_same_draws():
    runs = expand(["batch_size=16,32"], ["lr=1e-4:1e-2:log"], random=4, seed=0)
    assert len(runs) == 8
    first = [r["lr"] for r in runs if r["batch_size"] == 16]
    second = [r["lr"] for r in runs if r["batch_size"] == 32]
    assert first == second and len(set(first)) == 4


def test_expand_refuses_inconsistent_specs():
    with pytest.raises(ValueError, match="lr given more than once"):
        expand(["lr=1e-3,3e-3"], ["lr=1e-4:1e-2:log"], random=2)
    with pytest.raises(ValueError, match="--range needs --random N"):
        expand(ranges=["lr=1e-4:1e-2:log"])
    with pytest.raises(ValueError, match="needs at least one --range"):
        expand(["lr=1e-3"], random=3)
    assert expand() == []


def test_cut_steps_are_fractions_of_the_run():
    assert cut_steps(400) == [100, 200]
    assert cut_steps(400, (0.5, 0.25, 0.5, 1.0)) == [100, 200]


def _forecast(final_drop: float, noise: float, seed: int):
    """A forecast of a constant-lr run whose curve is known, from evals up to step 100."""
    rng = np.random.default_rng(seed)
    steps = np.arange(10, 101, 10)
    loss = 1.5 + final_drop + 2.0 * steps ** -0.5 + rng.normal(0, noise, steps.size)
    return forecast_final(steps, loss, np.ones(400), 400)


def test_should_cut_a_run_confidently_worse_than_the_best():
    best, worse = _forecast(0.0, 0.005, 1), _forecast(0.5, 0.005, 2)
    reason = should_cut(worse, best)
    assert reason is not None
    assert reason.startswith("stopped at step 100: forecast ")
    assert f"vs best {best.predicted_final:.2f} ± " in reason
    assert math.isclose(worse.half_width, (worse.high - worse.low) / 2)


def test_should_not_cut_when_bands_overlap_or_forecasts_are_missing():
    best = _forecast(0.0, 0.005, 1)
    assert should_cut(_forecast(0.01, 0.005, 2), best) is None  # within the noise
    assert should_cut(_forecast(0.5, 0.4, 2), best) is None  # worse, but too noisy to tell
    assert should_cut(best, best) is None
    assert should_cut(None, best) is None and should_cut(best, None) is None


def test_seeds_repeat_every_point_with_consecutive_seeds():
    runs = expand(["lr=1e-3,3e-3"], seeds=3, first_seed=7)
    assert runs == [{"lr": 1e-3, "seed": 7}, {"lr": 1e-3, "seed": 8}, {"lr": 1e-3, "seed": 9},
                    {"lr": 3e-3, "seed": 7}, {"lr": 3e-3, "seed": 8}, {"lr": 3e-3, "seed": 9}]
    assert sweep_size(["lr=1e-3,3e-3"], seeds=3) == 6
    drawn = expand(["n_layers=2,4"], ["lr=1e-4:1e-2:log"], random=2, seed=0, seeds=2)
    assert len(drawn) == sweep_size(["n_layers=2,4"], ["lr=1e-4:1e-2:log"], random=2,
                                    seeds=2) == 8
    assert drawn[0]["lr"] == drawn[1]["lr"] and [r["seed"] for r in drawn[:2]] == [0, 1]


def test_seeds_alone_repeat_the_base_config():
    assert expand(seeds=2, first_seed=1337) == [{"seed": 1337}, {"seed": 1338}]
    assert sweep_size(seeds=2) == 2


def test_seeds_refuse_a_swept_seed_or_a_negative_count():
    with pytest.raises(ValueError, match="--seeds 3 sets seed itself"):
        expand(["seed=1,2"], seeds=3)
    with pytest.raises(ValueError, match="--seeds 2 sets seed itself"):
        sweep_size(ranges=["seed=0:100"], random=2, seeds=2)
    with pytest.raises(ValueError, match="--seeds must be 0 or more"):
        expand(["lr=1e-3"], seeds=-1)
    assert expand(["seed=1,2"]) == [{"seed": 1}, {"seed": 2}]  # a seed grid alone is fine
