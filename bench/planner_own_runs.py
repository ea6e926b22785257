"""Does the planner's law, fitted on our own small CPU runs, predict our larger ones?

    .venv/bin/python bench/planner_own_runs.py                 # ~25 min on a quiet 2-core box
    .venv/bin/python bench/planner_own_runs.py --home DIR      # keep the runs; a rerun
                                                               # trains only what is missing
    .venv/bin/python bench/planner_own_runs.py --family ladder # the planner's own shapes
    .venv/bin/python bench/planner_own_runs.py --pilot 1e12    # one budget, sizes 23 k-830 k

An IsoFLOP grid of small byte-level GPTs trained for real (``gptdash train``, one thread each,
JOBS at a time, one home): each budget of BUDGETS gets SIZES shapes of one family, at least
1.4x apart and centred on the size a pilot found best at 1e12 FLOPs, moved along with the
budget as the square root of compute (as the planner's ladder centres its sizes). The
families: ``depth2`` (the default), two layers of widths 32 to 256 in steps of 16, heads
as the planner gives them (``analysis.ladder.heads_for``), a family as Chinchilla's was
designed, one shape per size; ``ladder``, the planner's own shape ladder
(``analysis.ladder.shape_ladder``, kept to emb_dim / n_layers of 16 to 64), which mixes
one, two and three layers at these sizes. Each run's steps are chosen so it spends its budget as
gptcore counts FLOPs (6N plus attention per token). Every run evaluates on the same 50 fixed
batches (``fixed_eval``), so two runs' losses differ only by their models.

The corpus is every ``.py`` file of this Python's standard library, its tests included
(30 MB on CPython 3.11, about 27 M training bytes), so no run sees its data much more than
once: repeated data is what the law does not model. Then, through the planner's
own path (``jobs.planning.gather``: each completed run's N, D and last val loss):

1. The law fitted on the runs of budgets up to a tenth of the largest (the issue's split),
   as the planner fits it (``analysis.planner.law_runs``: runs of under a million tokens
   left out; ``--all-runs``: every run), predicts the val loss of every run above it
   (target: 2% mean, 5% worst; and the share inside the 80% band).
2. N_opt of that fit at each larger budget against the budget's own IsoFLOP parabola
   vertex (target: within a factor 1.5), and approach 2's (the trend of the fitted
   budgets' own vertices) beside it.
3. The law fitted on all runs (as the planner fits them), its exponents with bootstrap
   intervals beside Chinchilla's and Epoch AI's.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.isoflop import assign_budgets, fit_isoflop, parabola_vertex  # noqa: E402
from analysis.ladder import (  # noqa: E402
    Shape,
    fit_flops_per_token,
    heads_for,
    nearest_shape,
    shape_ladder,
)
from analysis.planner import law_runs  # noqa: E402
from analysis.scaling import CHINCHILLA, EPOCH, fit_loss_law, token_flops  # noqa: E402
from gptcore.config import TrainConfig, apply_overrides, preset  # noqa: E402
from gptcore.estimate import flops_per_token, param_count  # noqa: E402

# FLOPs; the fit takes those up to a tenth of the last
BUDGETS = (3e11, 6e11, 1.2e12, 3e12, 1e13, 3e13)
SIZES = 5  # shapes per budget
MIN_GAP = 1.4  # the least ratio of two sizes on one budget
CENTRE_AT_1E12 = 60_000  # parameters: the best size the pilot found at 1e12 FLOPs
PILOT_SIZES = (23e3, 44e3, 90e3, 170e3, 370e3, 830e3)
JOBS = 2
# emb_dim / n_layers: the planner's ladder allows 16 to 128; at these sizes depth matters
# more than Kaplan et al. found at theirs, so the bench keeps to GPT-2's neighbourhood.
ASPECT = (16, 64)
DEPTH2_WIDTHS = range(32, 257, 16)
BASE = {"batch_size": 16, "context_length": 64, "lr": 3e-3, "min_lr": 3e-4,
        "schedule": "cosine", "eval_iters": 50, "fixed_eval": True, "sample_tokens": 0,
        "device": "cpu", "checkpoint_interval": 1_000_000, "log_interval": 50}
SET_KEYS = {*BASE, "corpus", "n_layers", "emb_dim", "n_heads", "max_steps", "warmup_steps",
            "eval_interval"}


def corpus(folder: Path) -> Path:
    """The standard library's modules, as one text file (kept if there)."""
    path = folder / "stdlib.txt"
    if path.exists():
        return path
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in stdlib.rglob("*.py")
                   if "site-packages" not in f.relative_to(stdlib).parts)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for f in files:
            out.write(f.read_text(encoding="utf-8", errors="replace") + "\n")
    tmp.rename(path)
    return path


def base_config(text: Path) -> TrainConfig:
    return apply_overrides(preset("tiny"), {**BASE, "corpus": str(text)})


def with_shape(cfg: TrainConfig, shape: Shape) -> TrainConfig:
    return replace(cfg, model=replace(cfg.model, n_layers=shape.n_layers,
                                      emb_dim=shape.emb_dim, n_heads=shape.n_heads))


def family_shapes(base: TrainConfig, family: str) -> list[Shape]:
    def count(layers: int, emb: int, heads: int) -> int:
        return param_count(with_shape(base, Shape(layers, emb, heads, 0)))
    if family == "depth2":
        return [Shape(2, w, heads_for(w), count(2, w, heads_for(w))) for w in DEPTH2_WIDTHS]
    return [s for s in shape_ladder(count, max_layers=8, max_emb_dim=512)
            if ASPECT[0] <= s.emb_dim / s.n_layers <= ASPECT[1]]


def config(base: TrainConfig, shape: Shape, budget: float) -> TrainConfig:
    cfg = with_shape(base, shape)
    steps = max(10, round(budget / (flops_per_token(cfg) * cfg.tokens_per_step)))
    return replace(cfg, max_steps=steps, warmup_steps=max(1, min(steps // 10, 200)),
                   eval_interval=steps).validate()


def grid(shapes: list[Shape], budgets: tuple[float, ...]) -> list[tuple[float, Shape]]:
    """SIZES shapes per budget, centred as N_opt moves (the square root of compute): the
    shapes nearest the centre, each at least MIN_GAP in size from the others picked."""
    runs = []
    for budget in budgets:
        centre = CENTRE_AT_1E12 * math.sqrt(budget / 1e12)
        picked: list[Shape] = []
        for shape in sorted(shapes, key=lambda s: abs(math.log(s.params / centre))):
            if all(abs(math.log(shape.params / p.params)) >= math.log(MIN_GAP) for p in picked):
                picked.append(shape)
            if len(picked) == SIZES:
                break
        runs += [(budget, s) for s in sorted(picked, key=lambda s: s.params)]
    return runs


def run_name(budget: float, shape: Shape) -> str:
    return f"{budget:.0e} {shape.n_layers}x{shape.emb_dim}"


def train_one(home: Path, cfg: TrainConfig, name: str) -> None:
    """``gptdash train`` of ``cfg`` (its SET_KEYS over the tiny preset) into ``home``, on
    one thread."""
    env = {**os.environ, "GPTDASH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("GPTDASH_DB_URL", None)
    sets = [a for k, v in cfg.flat().items() if k in SET_KEYS for a in ("--set", f"{k}={v}")]
    subprocess.run([sys.executable, "-m", "jobs", "train", "--preset", "tiny", *sets,
                    "--quiet", "--threads", "1", "--name", name],
                   cwd=ROOT, env=env, check=True, capture_output=True)


def train_all(home: Path, base: TrainConfig, runs: list[tuple[float, Shape]],
              jobs: int) -> tuple[float, int]:
    """Train the runs the home has not completed yet, JOBS at a time, biggest first."""
    done = completed_names(home)
    todo = sorted((r for r in runs if run_name(*r) not in done), key=lambda r: -r[0])

    def train(item: tuple[float, Shape]) -> None:
        budget, shape = item
        train_one(home, config(base, shape, budget), run_name(budget, shape))

    start = time.monotonic()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(train, todo))
    return time.monotonic() - start, len(todo)


def completed_names(home: Path) -> set[str]:
    if not (home / "gptdash.db").exists():
        return set()
    os.environ["GPTDASH_HOME"] = str(home)
    from storage.status import RunStatus
    from storage.store import RunStore
    store = RunStore()
    try:
        return {r.name for r in store.list_runs(limit=10_000) if r.status == RunStatus.COMPLETED}
    finally:
        store.close()


def points(home: Path, names: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N, D and final val loss of the home's runs named ``names``, read as ``gptdash plan``
    reads them (a home may hold another family's runs too)."""
    os.environ["GPTDASH_HOME"] = str(home)
    from jobs.planning import gather
    from storage.store import RunStore

    store = RunStore()
    try:
        runs = [r for r in gather(store).runs if r.name in names]
    finally:
        store.close()
    return (np.array([r.params for r in runs], dtype=float),
            np.array([r.tokens for r in runs], dtype=float), np.array([r.loss for r in runs]))


def analyse(n: np.ndarray, d: np.ndarray, loss: np.ndarray, compute: np.ndarray,
            budgets: tuple[float, ...], fpt, *, fit_up_to: float | None = None,
            min_steps: int = 0, tokens_per_step: int = 1, all_runs: bool = False) -> dict:
    """The law fitted as the planner fits it (``analysis.planner.law_runs``: runs of too
    few tokens left out; ``all_runs``: every run) on the runs of budgets up to
    ``fit_up_to`` (a tenth of the largest) that trained ``min_steps`` steps or more, asked
    about every run above. Approach 2 takes every run of those budgets, as the planner's."""
    budget = assign_budgets(compute, budgets, 0.15)
    fit_up_to = fit_up_to or budgets[-1] / 10
    fitted = (budget <= fit_up_to) & (budget > 0)
    train = fitted & (d / tokens_per_step >= min_steps)
    if not all_runs:
        train[train] = law_runs(n[train], d[train])[0]
    test = budget > fit_up_to
    fit = fit_loss_law(n[train], d[train], loss[train], n_boot=200)
    band = fit.predict(n[test], d[test])
    err = np.abs(band.value / loss[test] - 1)
    inside = (band.low <= loss[test]) & (loss[test] <= band.high)
    try:  # approach 2 on the fitted budgets whose IsoFLOP minimum lies inside their sizes
        iso = fit_isoflop(n[fitted], loss[fitted], budget[fitted], flops_per_token=fpt,
                          n_boot=50)
    except ValueError:
        iso = None
    per_budget = []
    for b in budgets:
        on = budget == b
        vertex = parabola_vertex(n[on], loss[on])
        n3 = float(fit.optimal(b, fpt).n.value)
        row = {"budget": b, "fitted": bool(b <= fit_up_to),
               "isoflop_n_opt": vertex[0] if vertex else None,
               "vertex_inside": vertex[2] if vertex else None,
               "approach3_n_opt": n3, "ratio": n3 / vertex[0] if vertex else None,
               "approach2_n_opt": float(iso.optimal(b).n.value) if iso else None,
               "approach2_ratio": (float(iso.optimal(b).n.value) / vertex[0]
                                   if iso and vertex else None),
               "runs": [{"n": int(a), "loss": round(float(c), 4)}
                        for a, c in sorted(zip(n[on], loss[on], strict=True))]}
        if b > fit_up_to:
            mine = on[test]
            row["loss_mean_error"] = float(err[mine].mean())
            row["loss_worst_error"] = float(err[mine].max())
        per_budget.append(row)
    every = budget > 0
    if not all_runs:
        every[every] = law_runs(n[every], d[every])[0]
    everything = fit_loss_law(n[every], d[every], loss[every], n_boot=200)
    exponents = {name: {"fit": float(getattr(everything.law, name)),
                        "interval": everything.interval(name),
                        "fit_below_tenth": float(getattr(fit.law, name)),
                        "chinchilla": getattr(CHINCHILLA, name), "epoch": getattr(EPOCH, name)}
                 for name in ("alpha", "beta", "n_exponent", "E")}
    return {"fitted_on": int(train.sum()), "fit_up_to": fit_up_to, "min_steps": min_steps,
            "planners_rule": not all_runs,
            "predicted": int(test.sum()), "loss_mean_error": float(err.mean()),
            "loss_worst_error": float(err.max()), "inside_80_band": float(inside.mean()),
            "budgets": per_budget, "exponents_all_runs": exponents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--jobs", type=int, default=JOBS, help="runs trained at once")
    parser.add_argument("--family", choices=("depth2", "ladder"), default="depth2",
                        help="the shapes (see above)")
    parser.add_argument("--budgets", metavar="C1,C2,...",
                        type=lambda text: tuple(sorted(float(c) for c in text.split(","))),
                        default=BUDGETS, help="the grid's budgets in FLOPs (default: BUDGETS)")
    parser.add_argument("--fit-up-to", type=float, metavar="FLOPS",
                        help="fit on the budgets up to this (default: a tenth of the largest)")
    parser.add_argument("--min-steps", type=int, default=0,
                        help="also leave runs of fewer optimizer steps out of the fit")
    parser.add_argument("--all-runs", action="store_true",
                        help="fit the law on every run (not as the planner does, without "
                             "the runs of too few tokens)")
    parser.add_argument("--pilot", type=float, metavar="FLOPS",
                        help="train PILOT_SIZES at this one budget and print their losses")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp) / "home"
        home.mkdir(parents=True, exist_ok=True)
        base = base_config(corpus(home))
        shapes = family_shapes(base, args.family)
        if args.pilot:
            budgets = (args.pilot,)
            runs = [(args.pilot, nearest_shape(shapes, size)) for size in PILOT_SIZES]
        else:
            budgets, runs = args.budgets, grid(shapes, args.budgets)
        train_s, trained = train_all(home, base, runs, args.jobs)
        n, d, loss = points(home, {run_name(*r) for r in runs})
    fpt = fit_flops_per_token(shapes, lambda s: flops_per_token(with_shape(base, s)))
    compute = token_flops(fpt, n) * d
    out = {"family": args.family, "runs": len(n), "trained_now": trained, "train_s": round(train_s),
           "load_before": load, "load_after": os.getloadavg()}
    if args.pilot:
        on = assign_budgets(compute, budgets, 0.15) == args.pilot
        vertex = parabola_vertex(n[on], loss[on])
        out["pilot"] = {"budget": args.pilot, "isoflop_n_opt": vertex[0] if vertex else None,
                        "runs": [{"n": int(a), "d": int(b), "loss": round(float(c), 4)}
                                 for a, b, c in sorted(zip(n[on], d[on], loss[on],
                                                           strict=True))]}
    else:
        out |= analyse(n, d, loss, compute, budgets, fpt, fit_up_to=args.fit_up_to,
                       min_steps=args.min_steps, tokens_per_step=base.tokens_per_step,
                       all_runs=args.all_runs)
        out["points"] = [{"n": int(a), "d": int(b), "loss": float(c)}
                         for a, b, c in zip(n, d, loss, strict=True)]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
