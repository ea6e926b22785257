"""How well does the planner's law, fitted on small budgets, predict larger ones?

    cd third_party && git clone https://github.com/epoch-research/analyzing-chinchilla
    git -C analyzing-chinchilla checkout 92258837425e1b5f2851d624287f0120583a3d0e && cd ..
    .venv/bin/python bench/planner_accuracy.py            # about 15 s on two cores
    .venv/bin/python bench/planner_accuracy.py --csv runs.csv --n params --d tokens --loss loss
                                                          # any other table of runs

With ``--csv`` the same checks run on any table of (N, C or D, loss), one row per run; its
IsoFLOP budgets are found in it (``analysis.isoflop.infer_budgets``) unless ``--budgets``
names them, and the plan is made for ten times its largest. Without it, the data are
the (N, C, loss) points Epoch AI extracted from Figure 4 of Hoffmann et al. 2022 for
their replication (Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"),
``data/svg_extracted_data.csv`` of github.com/epoch-research/analyzing-chinchilla at the
commit above. The repository carries no licence, so its data is not copied into ours: the
bench reads it from the ignored ``third_party/`` folder. As Epoch did, D = C / 6N and the
five points of highest loss (the smallest models, far off the law) are left out.

1. The whole data: approach 3 (``analysis.scaling``) and approach 2 (``analysis.isoflop``,
   on the points within 12% of the paper's IsoFLOP budgets) with 80% bootstrap intervals,
   beside the paper's and Epoch's published values.
2. Held out: both approaches fitted on the points of compute up to a tenth of the largest
   IsoFLOP budget (3e21 FLOPs), then (a) the loss of every point above that compute,
   against the target of 2% mean and 5% worst error, and the share inside the 80% band
   (which the fit widens by the drift it measures on its own points: ``LawFit.predict``);
   (b) N_opt at each larger IsoFLOP budget against that budget's own parabola vertex (the
   data's IsoFLOP minimum), against the target of a factor 1.5, with how well the
   budget's own points fix that vertex (80% of resamples of them).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.isoflop import (  # noqa: E402
    assign_budgets,
    fit_isoflop,
    infer_budgets,
    parabola_vertex,
)
from analysis.planner import plan  # noqa: E402
from analysis.scaling import CHINCHILLA, EPOCH, fit_loss_law  # noqa: E402

DATA = ROOT / "third_party" / "analyzing-chinchilla"
CSV = DATA / "data" / "svg_extracted_data.csv"
COMMIT = "92258837425e1b5f2851d624287f0120583a3d0e"
BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)  # the paper's IsoFLOPs
BUDGET_TOLERANCE = 0.12  # the points' FLOPs are read off a figure
LEFT_OUT = 5  # Epoch's: the points of highest loss
CHINCHILLA_BUDGET = 5.76e23  # Chinchilla's own training compute
# Approach 2's exponents as the paper reports them (Table 2): a for N_opt, b for D_opt.
PAPER_APPROACH2 = {"n_exponent": 0.49, "d_exponent": 0.51}


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not CSV.exists():
        sys.exit(f"{CSV} is missing: clone the repository as this file's docstring says")
    with CSV.open() as f:
        rows = list(csv.DictReader(f))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = loss < np.sort(loss)[-LEFT_OUT]
    return n[keep], c[keep], loss[keep]


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(DATA), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def whole(n, c, loss, n_boot: int, budgets=BUDGETS) -> dict:
    d = c / (6 * n)
    fit = fit_loss_law(n, d, loss, n_boot=n_boot)
    law = fit.law
    rows = {}
    for name in ("E", "A", "B", "alpha", "beta", "n_exponent"):
        rows[name] = {"fit": getattr(law, name), "interval": fit.interval(name),
                      "paper": getattr(CHINCHILLA, name), "epoch": getattr(EPOCH, name)}
    at = fit.optimal(CHINCHILLA_BUDGET)
    rows["tokens_per_param@5.76e23"] = {
        "fit": float(at.tokens_per_param.value),
        "interval": (float(at.tokens_per_param.low), float(at.tokens_per_param.high)),
        "paper": float(np.divide(*CHINCHILLA.optimal(CHINCHILLA_BUDGET)[::-1])),
        "epoch": float(np.divide(*EPOCH.optimal(CHINCHILLA_BUDGET)[::-1]))}
    iso = fit_isoflop(n, loss, assign_budgets(c, budgets, BUDGET_TOLERANCE), n_boot=n_boot)
    approach2 = {name: {"fit": getattr(iso, name), "interval": iso.interval(name),
                        "paper": PAPER_APPROACH2[name]} for name in PAPER_APPROACH2}
    return {"points": int(n.size), "approach3": rows, "approach2": approach2,
            "isoflop_points": int(sum(m.n_points for m in iso.minima))}


def vertex_interval(n: np.ndarray, loss: np.ndarray, n_boot: int = 1000,
                    level: float = 0.8) -> tuple[float, float] | None:
    """How well one budget's own points fix its IsoFLOP vertex: the central ``level``
    interval of the vertex over resamples of those points (seeded)."""
    rng = np.random.default_rng(0)
    vertices = []
    for _ in range(n_boot):
        pick = rng.integers(0, n.size, n.size)
        vertex = parabola_vertex(n[pick], loss[pick])
        if vertex is not None:
            vertices.append(vertex[0])
    if not vertices:
        return None
    low, high = np.quantile(vertices, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def held_out(n, c, loss, n_boot: int, budgets=BUDGETS) -> dict:
    """Fitted below a tenth of the largest budget, predicted above. Each larger budget's
    row also gives N_opt from approach 3 fitted on all points (``all_points_n_opt``): where
    even that fit misses the budget's own vertex, the vertex is off the others' trend."""
    d = c / (6 * n)
    everything = fit_loss_law(n, d, loss, n_boot=0)
    cut = max(budgets) / 10 * (1 + BUDGET_TOLERANCE)
    train = c <= cut
    fit = fit_loss_law(n[train], d[train], loss[train], n_boot=n_boot)
    band = fit.predict(n[~train], d[~train])
    err = np.abs(band.value / loss[~train] - 1)
    inside = (band.low <= loss[~train]) & (loss[~train] <= band.high)
    budget = assign_budgets(c, budgets, BUDGET_TOLERANCE)
    try:  # approach 2 needs IsoFLOP minima at two budgets below the cut
        iso = fit_isoflop(n[train], loss[train], budget[train], n_boot=n_boot)
    except ValueError:
        iso = None
    by_budget, ratios3, ratios2 = [], [], []
    for b in sorted(set(budget[~train & np.isfinite(budget)].tolist())):
        on = budget == b
        vertex = parabola_vertex(n[on], loss[on])
        truth = vertex[0] if vertex and vertex[2] else None
        n3 = float(fit.optimal(b).n.value)
        n2 = float(iso.optimal(b).n.value) if iso is not None else None
        row = {"budget": b, "points": int(on.sum()),
               "isoflop_n_opt_80": vertex_interval(n[on], loss[on]),
               "loss_mean_error": float(err[on[~train]].mean()),
               "loss_worst_error": float(err[on[~train]].max()),
               "isoflop_n_opt": truth, "approach3_n_opt": n3, "approach2_n_opt": n2,
               "all_points_n_opt": float(everything.law.optimal(b)[0])}
        if truth:
            ratios3.append(max(n3 / truth, truth / n3))
            if n2 is not None:
                ratios2.append(max(n2 / truth, truth / n2))
        by_budget.append(row)
    return {"fit_points": int(train.sum()), "cut_flops": cut, "held_out_points": int(err.size),
            "loss_mean_error": float(err.mean()), "loss_worst_error": float(err.max()),
            "band_coverage": float(inside.mean()), "by_budget": by_budget,
            "n_opt_worst_factor_approach3": max(ratios3, default=None),
            "n_opt_worst_factor_approach2": max(ratios2, default=None),
            "fitted": {"alpha": fit.law.alpha, "beta": fit.law.beta, "E": fit.law.E},
            "drift_per_decade": fit.drift, "drift_measured": fit.drift_measured}


def plan_at(n, c, loss, n_boot: int, budget: float = CHINCHILLA_BUDGET) -> dict:
    p = plan(n, c / (6 * n), loss, budget, n_boot=n_boot).main
    return {"budget": budget, "n_opt": float(p.n_opt.value),
            "n_opt_band": (float(p.n_opt.low), float(p.n_opt.high)), "tokens": p.tokens,
            "loss": float(p.loss.value), "loss_band": (float(p.loss.low), float(p.loss.high))}


def show(result: dict) -> None:
    w = result["whole"]
    print(f"\nsource: {result['source']}; {w['points']} points")
    print(f"{'approach 3':<26}{'fit':>10}{'80% interval':>24}{'paper':>10}{'Epoch':>10}")
    for name, r in w["approach3"].items():
        lo, hi = r["interval"]
        print(f"{name:<26}{r['fit']:>10.4g}{f'({lo:.4g}, {hi:.4g})':>24}"
              f"{r['paper']:>10.4g}{r['epoch']:>10.4g}")
    print(f"approach 2 ({w['isoflop_points']} IsoFLOP points)")
    for name, r in w["approach2"].items():
        lo, hi = r["interval"]
        print(f"{name:<26}{r['fit']:>10.4g}{f'({lo:.4g}, {hi:.4g})':>24}{r['paper']:>10.4g}")
    h = result["held_out"]
    print(f"\nheld out: fitted on {h['fit_points']} points with C <= {h['cut_flops']:.3g}, "
          f"predicted {h['held_out_points']} above: loss error mean "
          f"{h['loss_mean_error']:.2%}, worst {h['loss_worst_error']:.2%}, 80% band holds "
          f"{h['band_coverage']:.0%} (widened by {h['drift_per_decade']:.2%} per decade, "
          f"{'measured on the fitted points' if h['drift_measured'] else 'the default'})")
    for r in h["by_budget"]:
        truth = r["isoflop_n_opt"]
        lo, hi = r["isoflop_n_opt_80"] or (float("nan"), float("nan"))
        print(f"  C {r['budget']:.0e} ({r['points']} pts): loss err mean "
              f"{r['loss_mean_error']:.2%} worst {r['loss_worst_error']:.2%}; N_opt IsoFLOP "
              f"{truth or float('nan'):.3g} (its points resampled: {lo:.3g}-{hi:.3g}), "
              f"approach 3 {r['approach3_n_opt']:.3g}, "
              f"approach 2 {r['approach2_n_opt'] or float('nan'):.3g} (approach 3 on all points "
              f"{r['all_points_n_opt']:.3g})")
    print(f"  worst N_opt factor: approach 3 {h['n_opt_worst_factor_approach3'] or 0:.2f}, "
          f"approach 2 {h['n_opt_worst_factor_approach2'] or 0:.2f}")
    p = result["plan"]
    (n_lo, n_hi), (l_lo, l_hi) = p["n_opt_band"], p["loss_band"]
    print(f"\nplan at {p['budget']:.3g} FLOPs: N {p['n_opt']:.3g} ({n_lo:.3g}, {n_hi:.3g}), "
          f"D {p['tokens']:.3g}, loss {p['loss']:.4f} ({l_lo:.4f}, {l_hi:.4f})")


def load_csv(path: Path, n_col: str, loss_col: str, c_col: str | None,
             d_col: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, loss) from any table of runs; C = 6 N D where the table gives D."""
    if (c_col is None) == (d_col is None):
        sys.exit("give the compute one way: --c COLUMN (FLOPs) or --d COLUMN (tokens)")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        n = np.array([float(r[n_col]) for r in rows])
        loss = np.array([float(r[loss_col]) for r in rows])
        c = (np.array([float(r[c_col]) for r in rows]) if c_col else
             6 * n * np.array([float(r[d_col]) for r in rows]))
    except (OSError, KeyError, ValueError) as exc:
        sys.exit(f"cannot read {path}: {exc!r}")
    keep = np.isfinite(n) & np.isfinite(c) & np.isfinite(loss) & (n > 0) & (c > 0) & (loss > 0)
    return n[keep], c[keep], loss[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=300, help="bootstrap resamples")
    parser.add_argument("--csv", type=Path, help="another table of runs (default: "
                        "Chinchilla's, as above): one row per run, with --n, --loss and --c "
                        "or --d naming its columns")
    parser.add_argument("--n", default="N", help="the parameters column (--csv)")
    parser.add_argument("--loss", default="loss", help="the final loss column (--csv)")
    parser.add_argument("--c", help="the training FLOPs column (--csv)")
    parser.add_argument("--d", help="the training tokens column (--csv; C = 6ND)")
    parser.add_argument("--budgets", type=lambda t: tuple(float(x) for x in t.split(",")),
                        help="the table's IsoFLOP budgets (--csv; default: found in it, "
                             "runs within 12%% of one another's FLOPs at 3 sizes or more)")
    args = parser.parse_args()
    if args.csv:
        n, c, loss = load_csv(args.csv, args.n, args.loss, args.c, args.d)
        budgets = tuple(args.budgets or infer_budgets(c, n, BUDGET_TOLERANCE))
        if len(budgets) < 2:
            sys.exit(f"{args.csv}: {len(budgets)} IsoFLOP budget(s) found; give --budgets")
        source, plan_budget = f"{args.csv}", max(budgets) * 10
    else:
        n, c, loss = load()
        budgets, plan_budget = BUDGETS, CHINCHILLA_BUDGET
        source = (f"epoch-research/analyzing-chinchilla @ {commit()}, "
                  "data/svg_extracted_data.csv")
        if commit() != COMMIT:
            print(f"note: third_party checkout is at {commit()}, not {COMMIT}")
    result = {"source": source, "budgets": budgets,
              "whole": whole(n, c, loss, args.boot, budgets),
              "held_out": held_out(n, c, loss, args.boot, budgets),
              "plan": plan_at(n, c, loss, args.boot, plan_budget)}
    print(json.dumps(result, default=float))
    show(result)

if __name__ == "__main__":
    main()
