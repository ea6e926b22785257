"""``gptdash plan``'s answer as words for a terminal and as one JSON object for scripts."""

from __future__ import annotations

import math
from typing import Any

from analysis.planner import PlanMode
from jobs.planning import BudgetPlan, left_out_of_law, narrowing, time_text


def _band(band: Any) -> dict[str, float | None]:
    def num(x: Any) -> float | None:
        x = float(x)
        return x if math.isfinite(x) else None
    return {"value": num(band.value), "low": num(band.low), "high": num(band.high)}


def report(bp: BudgetPlan) -> dict[str, Any]:
    """The plan as plain values (for ``--json``)."""
    g, p = bp.gathered, bp.plan
    fit = p.fit
    law = None
    if fit is not None:
        law = {name: {"value": float(getattr(fit.law, name)), "interval": fit.interval(name)}
               for name in ("E", "A", "B", "alpha", "beta", "n_exponent")}
    points = []
    for r in bp.recommended:
        pt, m = r.point, r.config.model
        points.append({
            "multiple": pt.multiple, "flops": pt.compute, "n_layers": m.n_layers,
            "emb_dim": m.emb_dim, "n_heads": m.n_heads, "params": int(pt.params),
            "steps": r.config.max_steps,
            "tokens": r.config.max_steps * r.config.tokens_per_step, "lr": r.config.lr,
            "loss": _band(pt.loss) if pt.loss is not None else None,
            "seconds": pt.seconds if bp.throughput is not None else None,
            "epochs": r.epochs, "n_opt": _band(pt.n_opt), "d_opt": _band(pt.d_opt),
            "tokens_per_param": _band(pt.tokens_per_param)})
    ladder = None
    if p.ladder is not None:
        ladder = {"total_s": p.ladder.total_s, "budgets": p.ladder.budgets,
                  "runs": [{"flops": lr.compute, "n_layers": c.model.n_layers,
                            "emb_dim": c.model.emb_dim, "n_heads": c.model.n_heads,
                            "params": lr.shape.params, "steps": c.max_steps,
                            "seconds": lr.seconds}
                           for lr, c in zip(p.ladder.runs, bp.ladder_configs, strict=True)]}
    return {"corpus": g.corpus, "tokenizer": g.tokenizer, "budget": bp.budget,
            "device": bp.device, "throughput_runs": bp.throughput_runs, "mode": p.mode,
            "n_runs": p.n_runs, "n_sizes": p.n_sizes,
            "runs": [{"run_id": r.run_id, "params": r.params, "tokens": r.tokens,
                      "loss": r.loss, "source": r.source, "low": r.low, "high": r.high}
                     for r in g.runs],
            "left_out": [{"run_id": i, "why": why} for i, why in g.left_out],
            "left_out_of_law": [{"run_id": g.runs[i].run_id, "why": why}
                                for i, why in p.fit_left_out.items()],
            "lr_how": bp.lr_how, "train_tokens": bp.train_tokens, "points": points,
            "law": law, "ladder": ladder, "narrowing": narrowing(bp), "notes": p.notes,
            "warnings": bp.warnings,
            "counting": "N: total parameters (tied embedding once); FLOPs: gptcore's "
                        "flops_per_token (6N plus attention) x tokens"}


def lines(bp: BudgetPlan) -> list[str]:
    """The plan in words, for a terminal."""
    g, p = bp.gathered, bp.plan
    how = {PlanMode.FITTED: "the law fitted on your runs",
           PlanMode.FIXED_EXPONENTS: "your runs with Epoch AI's exponents",
           PlanMode.PRIOR: "Epoch AI's refit of Chinchilla (too few of your runs to fit)"}
    out = [f"plan for {bp.budget} on {g.corpus!r} ({g.tokenizer}): {p.n_runs} run(s) of "
           f"{p.n_sizes} size(s); from {how[p.mode]}"]
    out.append(f"{'budget':>7}  {'shape (layers x emb / heads)':<28}  {'params':>9}  "
               f"{'steps':>8}  {'tokens':>9}  {'lr':>8}  {'val loss (80% band)':<22}  "
               f"{'time':>8}  epochs")
    for r in bp.recommended:
        pt, cfg = r.point, r.config
        m = cfg.model
        loss = (f"{float(pt.loss.value):.3f} ({float(pt.loss.low):.3f}-"
                f"{float(pt.loss.high):.3f})" if pt.loss is not None else "-")
        seconds = pt.seconds if bp.throughput is not None else None
        epochs = f"{r.epochs:.2g}" if r.epochs is not None else "-"
        out.append(f"{pt.multiple:>6g}x  {f'{m.n_layers} x {m.emb_dim} / {m.n_heads}':<28}  "
                   f"{pt.params:>9.3g}  {cfg.max_steps:>8,}  "
                   f"{cfg.max_steps * cfg.tokens_per_step:>9.3g}  {cfg.lr:>8.2g}  "
                   f"{loss:<22}  {time_text(seconds):>8}  {epochs}")
    out.append(f"learning rate: {bp.lr_how}")
    if bp.train_tokens is None:
        out.append("epochs: unknown until the corpus is tokenized (`gptdash corpus prepare`)")
    if p.fit is not None:
        a = p.fit.interval("alpha")
        b = p.fit.interval("beta")
        out.append(f"fitted law: L = {p.fit.law.E:.3g} + {p.fit.law.A:.3g}/N^{p.fit.law.alpha:.3f}"
                   f" + {p.fit.law.B:.3g}/D^{p.fit.law.beta:.3f} (alpha {a[0]:.2f}-{a[1]:.2f}, "
                   f"beta {b[0]:.2f}-{b[1]:.2f})")
    if (text := narrowing(bp)) is not None:
        out.append(text)
    if p.ladder is not None:
        out.append(f"to fit the law, train this IsoFLOP ladder ({len(p.ladder.runs)} runs, "
                   f"about {time_text(p.ladder.total_s)} of training; `--queue` queues it as "
                   "a sweep):")
        for run, cfg in zip(p.ladder.runs, bp.ladder_configs, strict=True):
            m = cfg.model
            out.append(f"  {run.compute:9.3g} FLOPs: {m.n_layers} x {m.emb_dim} / {m.n_heads} "
                       f"({run.shape.params:.3g} params), {cfg.max_steps:,} steps, "
                       f"{time_text(run.seconds)}")
    out += [f"note: {n}" for n in p.notes]
    out += [f"warning: {w}" for w in bp.warnings]
    out += [f"left out run {i}: {why}" for i, why in g.left_out]
    if (line := left_out_of_law(bp)) is not None:
        out.append(line)
    return out
