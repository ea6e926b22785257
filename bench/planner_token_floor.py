"""Why the planner leaves runs of under a million tokens out of its law: steps, tokens, or
tokens per parameter?

    .venv/bin/python bench/planner_own_runs.py --home DIR --family ladder   # first, once
    .venv/bin/python bench/planner_token_floor.py --home DIR                # ~10 min, 2 cores

On the ladder grid of ``planner_own_runs.py`` (batch 16 x 64 = 1,024 tokens a step), runs
of under ~1,000 steps sit well below the law the longer runs follow. At one batch, steps
and tokens are the same thing, and the short runs are also the big models of small
budgets (few tokens per parameter). This bench retrains some of them so the three part:

- ``quarter_batch``: every grid run of under 1 M tokens, on the same tokens at a quarter
  of the batch (four times the steps). If too few steps were the cause, they would move
  onto the law.
- ``larger_batch``: grid runs of 2,000-7,000 steps (on the law), on the same tokens at 4x
  or 8x the batch, so they take under 1,000 steps.
- ``other_tokens``: at the grid's batch, big models on 1.2-1.6 M tokens (two tokens per
  parameter) and small ones on 0.35-0.72 M (6 to 13 tokens per parameter).

Every run evaluates on as many fixed tokens as the grid's (50 batches of 16). The law is
fitted as the planner fits it (``analysis.planner.law_runs``) on the grid's runs of 3e11 to
1e13 FLOPs. The runs go into HOME/floor (kept: a rerun trains only what is missing).
Prints one JSON object: the law, and for each run its N, D, steps, batch, the law's loss
and its own, and the miss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import planner_own_runs as grid_bench  # noqa: E402

from analysis.isoflop import assign_budgets  # noqa: E402
from analysis.ladder import fit_flops_per_token  # noqa: E402
from analysis.planner import MIN_FIT_TOKENS, law_runs  # noqa: E402
from analysis.scaling import fit_loss_law, token_flops  # noqa: E402
from gptcore.config import TrainConfig  # noqa: E402
from gptcore.estimate import flops_per_token, param_count  # noqa: E402

FIT_BUDGETS = (3e11, 6e11, 1.2e12, 3e12, 1e13)
LARGER_STEPS = (2000, 7000)  # the grid runs retrained at a larger batch
# (n_layers, emb_dim, tokens) trained at the grid's batch
OTHER_TOKENS = ((4, 128, 1_597_440), (5, 96, 1_198_080), (2, 64, 716_800),
                (2, 32, 460_800), (2, 32, 348_160))
GRID_BATCH = 16


def grid_runs(home: Path) -> list[tuple[str, TrainConfig, int, float]]:
    """(name, config, tokens, final val loss) of the home's ladder grid runs up to 1e13."""
    os.environ["GPTDASH_HOME"] = str(home)
    from jobs.planning import gather
    from storage.store import RunStore

    base = grid_bench.base_config(grid_bench.corpus(home))
    names = {grid_bench.run_name(*r) for r in
             grid_bench.grid(grid_bench.family_shapes(base, "ladder"), FIT_BUDGETS)}
    store = RunStore()
    try:
        out = []
        for point in gather(store).runs:
            if point.name in names:
                cfg = TrainConfig.from_dict(store.get_run(point.run_id).config)
                out.append((point.name, cfg, point.tokens, point.loss))
        return out
    finally:
        store.close()


def variant(cfg: TrainConfig, tokens: int, batch: int) -> TrainConfig:
    steps = round(tokens / (batch * cfg.model.context_length))
    return replace(cfg, batch_size=batch, max_steps=steps,
                   warmup_steps=max(1, min(steps // 10, 200)), eval_interval=steps,
                   eval_iters=round(50 * GRID_BATCH / batch))


def final_losses(home: Path) -> dict[str, float]:
    """The last val loss of each completed run in ``home``, by name. Read directly, not
    through the planner's ``gather``: that keeps only the runs of one batch, and these
    reruns are at several on purpose."""
    os.environ["GPTDASH_HOME"] = str(home)
    from gptcore.metric_keys import VAL_LOSS
    from storage.status import RunStatus
    from storage.store import RunStore

    store = RunStore()
    try:
        done = {r.id: r.name for r in store.list_runs(limit=10_000)
                if r.status == RunStatus.COMPLETED}
        val = store.metrics(list(done), [VAL_LOSS]) if done else None
        if val is None or val.empty:
            return {}
        last = val.sort_values("step").groupby("run_id")["value"].last()
        return {done[int(run_id)]: float(loss) for run_id, loss in last.items()}
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True,
                        help="the home of planner_own_runs.py --family ladder")
    args = parser.parse_args()
    grid = grid_runs(args.home)
    if len(grid) < 10:
        sys.exit(f"{args.home} holds {len(grid)} ladder grid runs up to 1e13: run "
                 "bench/planner_own_runs.py --family ladder --home there first")
    base = grid[0][1]
    shapes = grid_bench.family_shapes(base, "ladder")
    fpt = fit_flops_per_token(shapes, lambda s: flops_per_token(grid_bench.with_shape(base, s)))
    n = np.array([param_count(c) for _, c, _, _ in grid], dtype=float)
    d = np.array([t for _, _, t, _ in grid], dtype=float)
    loss = np.array([x for *_, x in grid])
    assert (assign_budgets(token_flops(fpt, n) * d, FIT_BUDGETS, 0.15) > 0).all()
    keep = law_runs(n, d)[0]
    law = fit_loss_law(n[keep], d[keep], loss[keep], n_boot=0).law

    plan = []  # (kind, name, config, tokens, the grid run's loss or None)
    for name, cfg, tokens, grid_loss in grid:
        steps = tokens // cfg.tokens_per_step
        if tokens < MIN_FIT_TOKENS:
            plan.append(("quarter_batch", f"{name} b4", variant(cfg, tokens, 4), tokens,
                         grid_loss))
        elif LARGER_STEPS[0] <= steps <= LARGER_STEPS[1]:
            batch = 64 if steps / 4 < 1000 else 128
            plan.append(("larger_batch", f"{name} b{batch}", variant(cfg, tokens, batch),
                         tokens, grid_loss))
    for layers, emb, tokens in OTHER_TOKENS:
        cfg = grid_bench.with_shape(base, next(s for s in shapes if (s.n_layers, s.emb_dim)
                                              == (layers, emb)))
        plan.append(("other_tokens", f"{layers}x{emb} {tokens}",
                     variant(cfg, tokens, GRID_BATCH), tokens, None))
    home = args.home / "floor"
    home.mkdir(exist_ok=True)
    done = set(final_losses(home)) if (home / "gptdash.db").exists() else set()
    for _, name, cfg, _, _ in plan:
        if name not in done:
            grid_bench.train_one(home, replace(cfg, corpus=str(args.home / "stdlib.txt")), name)
    got = final_losses(home)
    rows = []
    for kind, name, cfg, tokens, grid_loss in plan:
        params = param_count(cfg)
        expected = float(law.loss(params, tokens))
        rows.append({"kind": kind, "run": name, "n": params, "tokens": tokens,
                     "tokens_per_param": round(tokens / params, 2),
                     "steps": cfg.max_steps, "batch": cfg.batch_size,
                     "grid_steps": tokens // (GRID_BATCH * cfg.model.context_length),
                     "law": round(expected, 4), "loss": round(got[name], 4),
                     "miss": round(got[name] / expected - 1, 4),
                     "grid_loss": grid_loss and round(grid_loss, 4),
                     "grid_miss": grid_loss and round(grid_loss / expected - 1, 4)})
    print(json.dumps({"law": {k: float(getattr(law, k)) for k in ("E", "A", "B", "alpha",
                                                                   "beta")},
                      "fitted_on": int(keep.sum()), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
