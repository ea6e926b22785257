"""The Plan page's tables and figures, from a ``jobs.planning.BudgetPlan``: the recommended
runs for half, the whole and twice the budget, IsoFLOP curves, the optimal N and D against
compute, tokens per parameter, and the fitted exponents beside the published ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.planner import PRIOR, PlanMode
from analysis.scaling import CHINCHILLA, EPOCH, LawFit, token_flops
from jobs.planning import BudgetPlan, arrays
from ui.compute import FIGURE_MARGIN, LEGEND_RIGHT
from ui.format import human_count, human_duration
from ui.plain_text import chart_text

# Bootstrap refits drawn for a figure's band: each refit is optimised per point drawn.
FIGURE_REFITS = 100
CURVE_POINTS = 40
BAND_POINTS = 10
BUDGET_COLORS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
RUN_COLOR = "#7f7f7f"
MODES = {PlanMode.FITTED: "fitted on your runs",
         PlanMode.FIXED_EXPONENTS: "your runs, with Epoch AI's exponents",
         PlanMode.PRIOR: "Epoch AI's refit of Chinchilla (too few of your runs to fit a law)"}


def recommendation_table(bp: BudgetPlan) -> pd.DataFrame:
    """One row per budget multiple: the run to train and what it is predicted to reach."""
    rows = []
    for r in bp.recommended:
        pt, cfg = r.point, r.config
        m = cfg.model
        band = pt.loss
        rows.append({
            "budget": f"{pt.multiple:g}×",
            "FLOPs": f"{pt.compute:.3g}",
            "n_layers": m.n_layers, "emb_dim": m.emb_dim, "n_heads": m.n_heads,
            "parameters": human_count(pt.params),
            "steps": cfg.max_steps,
            "tokens": human_count(cfg.max_steps * cfg.tokens_per_step),
            "lr": f"{cfg.lr:.3g}",
            "val loss": None if band is None else float(band.value),
            "80% band": None if band is None else f"{float(band.low):.3f} – "
                                                    f"{float(band.high):.3f}",
            "time": human_duration(pt.seconds) if bp.throughput is not None else None,
            "epochs": None if r.epochs is None else f"{r.epochs:.2g}",
        })
    return pd.DataFrame(rows)


def exponents_table(bp: BudgetPlan) -> pd.DataFrame:
    """The fitted constants with their bootstrap intervals beside Chinchilla's (Hoffmann
    et al. 2022) and Epoch AI's (Besiroglu et al. 2024); approach 2's exponent when the
    runs hold IsoFLOP curves. Empty without a fit."""
    fit = bp.plan.fit
    rows = []
    if fit is not None:
        for name, label in (("alpha", "alpha (N)"), ("beta", "beta (D)"),
                            ("n_exponent", "a: N_opt ∝ C^a"), ("E", "E")):
            low, high = fit.interval(name)
            held = fit.fixed_exponents and name in ("alpha", "beta", "n_exponent")
            rows.append({"constant": label, "yours": float(getattr(fit.law, name)),
                         "80% interval": "held at Epoch's" if held else
                         f"{low:.3g} – {high:.3g}",
                         "Chinchilla": float(getattr(CHINCHILLA, name)),
                         "Epoch AI": float(getattr(EPOCH, name))})
    iso = bp.plan.isoflop
    if iso is not None:
        low, high = iso.interval("n_exponent")
        rows.append({"constant": "a by IsoFLOP minima (approach 2)", "yours": iso.n_exponent,
                     "80% interval": f"{low:.3g} – {high:.3g}", "Chinchilla": 0.49,
                     "Epoch AI": EPOCH.n_exponent})
    return pd.DataFrame(rows, columns=["constant", "yours", "80% interval", "Chinchilla",
                                       "Epoch AI"])


# For the figures drawn side by side: their legends are too long for the title's line.
LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0}


def _layout(title: str, x: str, y: str, *, narrow: bool = False) -> dict:
    return {"title": {"text": title, "x": 0, "xanchor": "left"}, "margin": FIGURE_MARGIN,
            "legend": LEGEND_BELOW if narrow else LEGEND_RIGHT, "height": 480 if narrow else 420,
            "xaxis": {"title": {"text": x}, "type": "log", "exponentformat": "power"},
            "yaxis": {"title": {"text": y}, "type": "log", "exponentformat": "power"}}


def _run_hover(bp: BudgetPlan) -> dict:
    runs = bp.gathered.runs
    text = [f"#{r.run_id} {chart_text(r.name)}<br>{human_count(r.params)} parameters, "
            f"{human_count(r.tokens)} tokens<br>val loss {r.loss:.4g}"
            + (" (forecast)" if r.source == "forecast" else "")
            + ("<br>left out of the law's fit: too few tokens"
               if i in bp.plan.fit_left_out else "")
            for i, r in enumerate(runs)]
    return {"text": text, "hovertemplate": "%{text}<extra></extra>"}


def _run_compute(bp: BudgetPlan) -> np.ndarray:
    n, d, _ = arrays(bp.gathered.runs)
    return token_flops(bp.flops_per_token, n) * d if n.size else n


def isoflop_figure(bp: BudgetPlan) -> go.Figure:
    """Loss against N along the law's IsoFLOP curves (the plan's budgets and a ladder's),
    each with its minimum marked, and the user's runs coloured by compute. Without a fitted
    law only the runs are drawn: a published law's loss says nothing of this corpus."""
    fig = go.Figure(layout=_layout("IsoFLOP curves: val loss against model size",
                                   "parameters N", "val loss"))
    fit = bp.plan.fit
    budgets = [p.compute for p in bp.plan.points]
    if bp.plan.ladder is not None:
        budgets = sorted({*budgets, *bp.plan.ladder.budgets})
    n_runs, _, loss = arrays(bp.gathered.runs)
    if fit is not None:
        for i, c in enumerate(budgets):
            n_opt = float(fit.law.optimal(c, bp.flops_per_token)[0])
            ns = np.geomspace(n_opt / 8, n_opt * 8, CURVE_POINTS)
            ys = fit.law.loss(ns, c / token_flops(bp.flops_per_token, ns))
            color = BUDGET_COLORS[i % len(BUDGET_COLORS)]
            fig.add_scatter(x=ns, y=ys, mode="lines", name=f"{c:.2g} FLOPs",
                            line={"color": color},
                            hovertemplate="N %{x:.3s}<br>law %{y:.4g}<extra></extra>")
            best = float(fit.law.loss(n_opt, c / token_flops(bp.flops_per_token,
                                                              np.asarray(n_opt))))
            fig.add_scatter(x=[n_opt], y=[best], mode="markers", showlegend=False,
                            marker={"color": color, "size": 10, "symbol": "diamond"},
                            hovertemplate="optimum: N %{x:.3s}<br>loss %{y:.4g}<extra></extra>")
    if n_runs.size:
        fig.add_scatter(x=n_runs, y=loss, mode="markers", name="your runs",
                        marker={"size": 9, "color": np.log10(_run_compute(bp)),
                                "colorscale": "Greys", "line": {"width": 1, "color": "black"},
                                # open: left out of the law's fit, still on its IsoFLOP curve
                                "symbol": ["circle-open" if i in bp.plan.fit_left_out
                                           else "circle" for i in range(n_runs.size)]},
                        **_run_hover(bp))
    return fig


def _figure_fit(fit: LawFit) -> LawFit:
    """The fit with at most FIGURE_REFITS of its bootstrap refits, for a figure's bands."""
    return replace(fit, boot=fit.boot[:FIGURE_REFITS])


def _compute_span(bp: BudgetPlan) -> np.ndarray:
    spent = [*_run_compute(bp).tolist(), *(p.compute for p in bp.plan.points)]
    return np.geomspace(min(spent) / 3, max(spent) * 3, BAND_POINTS)


def _allocation(bp: BudgetPlan, c: np.ndarray):
    """The allocation the plan uses along ``c`` (approach 2's where the runs hold IsoFLOP
    minima, else the law's), with its bands; None without a fit."""
    if bp.plan.isoflop is not None:
        iso = bp.plan.isoflop
        return iso.optimal(c) if len(iso.boot) <= FIGURE_REFITS else replace(
            iso, boot=iso.boot[:FIGURE_REFITS]).optimal(c)
    if bp.plan.fit is not None:
        return _figure_fit(bp.plan.fit).optimal(c, bp.flops_per_token)
    return None


def optimum_figure(bp: BudgetPlan) -> go.Figure:
    """The compute-optimal N and D against compute, with bands (without a fit: Epoch's law,
    no band), the user's runs at their own N and D, and the budget asked for."""
    fig = go.Figure(layout=_layout("Optimal model size and tokens against compute",
                                   "training compute C (FLOPs)", "N (parameters), D (tokens)",
                                   narrow=True))
    c = _compute_span(bp)
    fit = bp.plan.fit
    alloc = _allocation(bp, c)
    if alloc is not None:
        by = " (IsoFLOP minima)" if bp.plan.isoflop is not None else ""
        bands = ((f"N_opt{by}", alloc.n, BUDGET_COLORS[0]),
                 (f"D_opt{by}", alloc.d, BUDGET_COLORS[2]))
        for name, band, color in bands:
            fig.add_scatter(x=np.concatenate([c, c[::-1]]),
                            y=np.concatenate([band.high, band.low[::-1]]), fill="toself",
                            mode="lines", line={"width": 0}, fillcolor=color, opacity=0.2,
                            name=f"{name} {band.level:.0%} band", hoverinfo="skip")
            fig.add_scatter(x=c, y=band.value, mode="lines", name=name, line={"color": color},
                            hovertemplate="C %{x:.3g}<br>%{y:.3s}<extra></extra>")
        if bp.plan.isoflop is not None and fit is not None:  # the law's own optimum, to compare
            fig.add_scatter(x=c, y=fit.law.optimal(c, bp.flops_per_token)[0], mode="lines",
                            name="N_opt by the law", line={"color": BUDGET_COLORS[0],
                                                           "dash": "dash", "width": 1})
    else:
        n_opt, d_opt = PRIOR.optimal(c, bp.flops_per_token)
        for name, values, color in (("N_opt (Epoch AI)", n_opt, BUDGET_COLORS[0]),
                                    ("D_opt (Epoch AI)", d_opt, BUDGET_COLORS[2])):
            fig.add_scatter(x=c, y=values, mode="lines", name=name,
                            line={"color": color, "dash": "dash"})
    n, d, _ = arrays(bp.gathered.runs)
    if n.size:
        spent = _run_compute(bp)
        fig.add_scatter(x=spent, y=n, mode="markers", name="your runs: N",
                        marker={"color": BUDGET_COLORS[0], "size": 8, "symbol": "circle-open"},
                        **_run_hover(bp))
        fig.add_scatter(x=spent, y=d, mode="markers", name="your runs: D",
                        marker={"color": BUDGET_COLORS[2], "size": 8, "symbol": "square-open"},
                        **_run_hover(bp))
    main = bp.main.point
    fig.add_vline(x=main.compute, line={"color": "black", "dash": "dot"},
                  annotation_text="your budget")
    return fig


def tokens_per_param_figure(bp: BudgetPlan) -> go.Figure:
    """Tokens per parameter of the optimal run against compute, with its band, beside
    Epoch's law's and the user's runs' own ratios."""
    fig = go.Figure(layout=_layout("Tokens per parameter at the optimum",
                                   "training compute C (FLOPs)", "tokens per parameter D/N",
                                   narrow=True))
    c = _compute_span(bp)
    alloc = _allocation(bp, c)
    if alloc is not None:
        band = alloc.tokens_per_param
        fig.add_scatter(x=np.concatenate([c, c[::-1]]),
                        y=np.concatenate([band.high, band.low[::-1]]), fill="toself",
                        mode="lines", line={"width": 0}, fillcolor=BUDGET_COLORS[1], opacity=0.2,
                        name=f"{band.level:.0%} band", hoverinfo="skip")
        fig.add_scatter(x=c, y=band.value, mode="lines", name="yours",
                        line={"color": BUDGET_COLORS[1]},
                        hovertemplate="C %{x:.3g}<br>%{y:.3g} tokens/param<extra></extra>")
    n_opt, d_opt = EPOCH.optimal(c, bp.flops_per_token)
    fig.add_scatter(x=c, y=d_opt / n_opt, mode="lines", name="Epoch AI",
                    line={"color": RUN_COLOR, "dash": "dash"})
    n, d, _ = arrays(bp.gathered.runs)
    if n.size:
        fig.add_scatter(x=_run_compute(bp), y=d / n, mode="markers", name="your runs",
                        marker={"color": RUN_COLOR, "size": 8}, **_run_hover(bp))
    return fig


def summary_text(bp: BudgetPlan) -> str:
    """One line: what the plan stands on."""
    p = bp.plan
    speed = (f"times at the speed of {bp.throughput_runs} run(s) on {bp.device}"
             if bp.throughput is not None else "no measured speed: no times")
    return (f"{p.n_runs} run(s) of {p.n_sizes} model size(s) on {bp.gathered.corpus} "
            f"({bp.gathered.tokenizer}); law {MODES[p.mode]}; {speed}.")


def ladder_table(bp: BudgetPlan) -> pd.DataFrame:
    """The proposed IsoFLOP ladder's runs, one row each (empty without one)."""
    ladder = bp.plan.ladder
    if ladder is None:
        return pd.DataFrame(columns=["FLOPs", "n_layers", "emb_dim", "n_heads", "parameters",
                                     "steps", "time"])
    return pd.DataFrame([{"FLOPs": f"{run.compute:.3g}", "n_layers": cfg.model.n_layers,
                          "emb_dim": cfg.model.emb_dim, "n_heads": cfg.model.n_heads,
                          "parameters": human_count(run.shape.params), "steps": cfg.max_steps,
                          "time": human_duration(run.seconds)}
                         for run, cfg in zip(ladder.runs, bp.ladder_configs, strict=True)])
