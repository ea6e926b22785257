"""Does a search that learns find a good config with less compute than grid or random?

    .venv/bin/python bench/search_efficiency.py                  # the issue's size: long
    .venv/bin/python bench/search_efficiency.py --small          # ~15 min on a busy 2-core box

One search space on the ``tiny`` preset (lr, warmup_steps, n_layers, emb_dim), one budget
of training FLOPs (``BUDGET_RUNS`` times a base run's), four ways, each run trained for real
in this process (one thread, a temporary home, ``runner.execute_run``, so the cut and the
pruners act as they do for a worker):

- grid: the space's corners and middles in a fixed order, until the budget is spent;
- random: ``gptdash sweep --range ... --random`` draws (in a shuffled order), until the
  budget is spent;
- tpe+forecast: ``--search tpe --pruner forecast`` (our cut's decision as the pruner);
- tpe+hyperband: ``--search tpe --pruner hyperband`` (Optuna's);
- random+none: ``--search random --pruner none``: Optuna's random draws, the same ones
  TPE starts from (its first ``MAX_STARTUP_TRIALS``), so TPE's own gain shows apart from
  the luck of its first draws.

Compute is the training FLOPs each run spent (a pruned run counts the steps it trained),
as gptcore counts them; evaluations are left out (every way evaluates alike). For each
way it records the best final val loss of a completed run against compute spent, takes the
median over ``SEEDS`` searcher seeds (grid has one order), and says how much compute
tpe+forecast needed to reach random's final best (the issue's target: at most half).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gptcore.config import TrainConfig, apply_overrides, preset  # noqa: E402
from gptcore.estimate import training_flops  # noqa: E402
from jobs import runner  # noqa: E402
from jobs.manager import claim_here  # noqa: E402
from jobs.search import advance, create_search, objective_value, plan_search  # noqa: E402
from jobs.sweeps import plan_sweep, submit_sweep  # noqa: E402
from storage.status import RunStatus  # noqa: E402
from storage.store import RunStore  # noqa: E402

RANGES = ["lr=1e-4:3e-2:log", "warmup_steps=0:30", "n_layers=1:3"]
CHOICES = ["emb_dim=48,96"]
GRID = ["lr=3e-4,3e-3,3e-2", "warmup_steps=0,30", "n_layers=1,3", "emb_dim=48,96"]
SEEDS = (0, 1, 2)
WAYS = ("grid", "random", "tpe+forecast", "tpe+hyperband", "random+none")


def base_config(steps: int) -> TrainConfig:
    # An evaluation every 5 steps: the forecast needs 5 by the first cut (a quarter).
    return apply_overrides(preset("tiny"), {
        "max_steps": steps, "eval_interval": 5, "eval_iters": 4, "sample_tokens": 0,
        "checkpoint_interval": 10_000, "batch_size": 8, "min_lr": 5e-5, "device": "cpu"})


def train(store: RunStore, run_id: int) -> float:
    """Train a queued run here; the training FLOPs it spent."""
    claim_here(store, run_id)
    runner.execute_run(store, run_id)
    run = store.get_run(run_id)
    return training_flops(TrainConfig.from_dict(run.config), run.last_step)


def final_loss(store: RunStore, run_id: int) -> float | None:
    run = store.get_run(run_id)
    if run.status != RunStatus.COMPLETED:
        return None  # pruned or failed: not a config anyone would pick
    return objective_value(store, run, "loss")


def curve_of(store: RunStore, run_ids, budget: float) -> list[tuple[float, float | None]]:
    """Train runs in order until the budget is spent: (compute so far, best so far)."""
    spent, best, curve = 0.0, None, []
    for run_id in run_ids:
        if spent >= budget:
            break
        spent += train(store, run_id)
        loss = final_loss(store, run_id)
        if loss is not None and (best is None or loss < best):
            best = loss
        curve.append((spent, best))
    return curve


def planned_way(store: RunStore, base: TrainConfig, way: str, seed: int,
                budget: float) -> list[tuple[float, float | None]]:
    if way == "grid":
        plan = plan_sweep(base, GRID, [])
    else:  # random: enough draws to spend any budget
        plan = plan_sweep(base, [f"emb_dim={CHOICES[0].split('=')[1]}"], RANGES, random=40,
                          seed=seed)
    _, run_ids = submit_sweep(store, plan, name=way)
    if way == "random":  # the draws come grouped by emb_dim: train them in a random order
        random.Random(seed).shuffle(run_ids)
    return curve_of(store, run_ids, budget)


def search_way(store: RunStore, base: TrainConfig, way: str, seed: int,
               budget: float) -> list[tuple[float, float | None]]:
    searcher, pruner = way.split("+")
    plan = plan_search(base, RANGES, CHOICES, trials=200, searcher=searcher, pruner=pruner,
                       seed=seed)
    sweep_id = create_search(store, plan, name=way)

    def trials():
        while True:
            created = advance(store, sweep_id)  # tells the last trial, asks the next
            if not created:
                return
            yield from created
    return curve_of(store, trials(), budget)


def best_at(curve: list[tuple[float, float | None]], compute: float) -> float | None:
    seen = [b for spent, b in curve if spent <= compute and b is not None]
    return seen[-1] if seen else None


def compute_to_reach(curve, target: float) -> float | None:
    return next((spent for spent, b in curve if b is not None and b <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true",
                        help="120-step runs and a budget of 8 base runs (else 400 and 20)")
    parser.add_argument("--ways", default=",".join(WAYS),
                        help=f"which of {', '.join(WAYS)}")
    parser.add_argument("--target", type=float,
                        help="the loss to reach, when random is not among --ways (its best "
                             "from an earlier run)")
    args = parser.parse_args()
    ways = args.ways.split(",")
    steps, budget_runs = (120, 8) if args.small else (400, 20)
    torch.set_num_threads(1)
    base = base_config(steps)
    budget = budget_runs * training_flops(base, steps)
    curves: dict[str, list] = {}
    started = time.time()
    for way in ways:
        for seed in (SEEDS[:1] if way == "grid" else SEEDS):
            with tempfile.TemporaryDirectory() as home:
                os.environ["GPTDASH_HOME"] = home
                store = RunStore(f"sqlite:///{Path(home) / 'gptdash.db'}")
                run_way = planned_way if way in ("grid", "random") else search_way
                curves.setdefault(way, []).append(run_way(store, base, way, seed, budget))
                store.close()
            print(f"{way} seed {seed}: {time.time() - started:.0f} s", file=sys.stderr)
    fractions = (0.25, 0.5, 0.75, 1.0)
    table = {way: {f"{f:g}": statistics.median(
        [b for c in cs if (b := best_at(c, f * budget)) is not None] or [float("nan")])
        for f in fractions} for way, cs in curves.items()}
    random_best = table["random"]["1"] if "random" in table else args.target
    reach = {way: [None if (c := compute_to_reach(curve, random_best)) is None
                   else round(c / budget, 3) for curve in cs] for way, cs in curves.items()}
    print(json.dumps({
        "steps_per_run": steps, "budget_base_runs": budget_runs,
        "budget_flops": budget, "seeds": list(SEEDS), "space": RANGES + CHOICES,
        "median_best_final_val_loss_by_budget_share": table,
        "random_final_best": random_best,
        "share_of_budget_to_reach_random_final_best": reach,
        "runs_trained": {way: [len(c) for c in cs] for way, cs in curves.items()},
        "seconds": round(time.time() - started)}, indent=1))


if __name__ == "__main__":
    main()
