"""How well does the loss forecast predict real runs? Train, forecast from 40%, compare.

    .venv/bin/python bench/forecast_accuracy.py                  # 11 runs + 1 reference, 5-10 min
    .venv/bin/python bench/forecast_accuracy.py --fractions 0.4,0.6,0.8
    .venv/bin/python bench/forecast_accuracy.py --runs cos-3e-3,step-late
    .venv/bin/python bench/forecast_accuracy.py --save /tmp/curves.json   # keep the curves
    .venv/bin/python bench/forecast_accuracy.py --load /tmp/curves.json   # re-forecast only

Each run is a small CPU training run through ``gptcore.trainer.train`` (byte-level
``tiny`` shapes, a few hundred steps, an evaluation every ``--eval-interval`` steps)
with its own shape, learning rate and schedule (cosine, linear, constant, step). From
the evaluations up to each ``--fractions`` share of max_steps it forecasts the final val
loss three ways, each with the run's own lr per step from ``gptcore.schedule.lr_at``:

- alone: ``forecast_final`` on the run's evaluations only;
- with reference: C (the annealing constant) taken from a finished reference run (a
  cosine run with another seed, fitted on its whole curve) as the paper does;
- plain: a power law in steps (the same fit with a constant lr), the yardstick.

It then compares each with the val loss the run reached at max_steps. One JSON line per
run and fraction (config, predicted, low, high, actual, error %, whether the band held
the actual value) and one summary line per fraction (median and worst error, share
within 5%, band coverage, and which runs ``should_cut`` would have stopped against the
run with the lowest forecast, and how many of those in fact beat it). Checkpoints and
token caches live in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.forecast import Forecast, forecast_final  # noqa: E402
from analysis.sweep import should_cut  # noqa: E402
from gptcore.config import TrainConfig, apply_overrides, preset  # noqa: E402
from gptcore.schedule import lr_at  # noqa: E402
from gptcore.trainer import TrainerCallbacks, train  # noqa: E402

# name -> overrides on the tiny preset (ctx 64, emb 96, 2 layers, lr 3e-3, warmup 20).
RUNS: dict[str, dict[str, Any]] = {
    "cos-3e-3": {"schedule": "cosine", "lr": 3e-3},
    "cos-1e-3": {"schedule": "cosine", "lr": 1e-3, "min_lr": 1e-4},
    "cos-1e-2": {"schedule": "cosine", "lr": 1e-2, "min_lr": 1e-3},
    "linear-3e-3": {"schedule": "linear", "lr": 3e-3},
    "const-3e-3": {"schedule": "constant", "lr": 3e-3},
    "const-1e-3": {"schedule": "constant", "lr": 1e-3},
    "step-early": {"schedule": "step", "lr": 3e-3, "step_size": 60, "gamma": 0.5},
    # Its first drop comes after the forecast point: the annealing is never seen.
    "step-late": {"schedule": "step", "lr": 3e-3, "step_size": 150, "gamma": 0.3},
    "cos-narrow": {"schedule": "cosine", "lr": 5e-3, "emb_dim": 64, "n_layers": 1},
    "cos-deep": {"schedule": "cosine", "lr": 2e-3, "emb_dim": 64, "n_layers": 4},
    "linear-to-0": {"schedule": "linear", "lr": 3e-3, "min_lr": 0.0, "emb_dim": 64,
                    "warmup_steps": 60},
}


# The finished run whose fitted C the "with reference" forecasts borrow; another seed, so
# it is none of the runs judged.
REFERENCE = "cos-3e-3"
REFERENCE_SEED_OFFSET = 1


class ValRecorder(TrainerCallbacks):
    """Keeps each step's latest val loss (a roll-back past a spike evaluates a step again,
    as the database's one row per step would); the rest of the protocol is a no-op."""

    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if "val/loss" in metrics:
            self.by_step[step] = metrics["val/loss"]


def run_config(overrides: dict[str, Any], args: argparse.Namespace, seed: int) -> TrainConfig:
    common = {"max_steps": args.steps, "eval_interval": args.eval_interval,
              "eval_iters": args.eval_iters, "sample_tokens": 0, "seed": seed,
              "checkpoint_interval": args.steps, "device": "cpu"}
    return apply_overrides(preset("tiny"), {**common, **overrides})


def train_curve(cfg: TrainConfig, tmp: Path, name: str) -> dict[str, Any]:
    recorder = ValRecorder()
    start = time.perf_counter()
    result = train(cfg, checkpoint_dir=tmp / name, cache_dir=tmp / "cache",
                   callbacks=recorder)
    print(f"trained {name} in {time.perf_counter() - start:.0f} s: {result.status}",
          file=sys.stderr, flush=True)
    steps = sorted(recorder.by_step)
    return {"config": cfg.flat(), "steps": steps,
            "val_loss": [recorder.by_step[step] for step in steps],
            "status": result.status, "reason": result.reason,
            "train_seconds": round(time.perf_counter() - start, 1)}


def train_curves(names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The reference run's curve and every named run's, trained one after another."""
    with tempfile.TemporaryDirectory(prefix="gptdash-forecast-") as tmp:
        ref_cfg = run_config(RUNS[REFERENCE], args, args.seed + REFERENCE_SEED_OFFSET)
        return {"reference": train_curve(ref_cfg, Path(tmp), "reference"),
                "runs": {name: train_curve(run_config(RUNS[name], args, args.seed), Path(tmp),
                                           name) for name in names}}


def lr_per_step(cfg: TrainConfig) -> list[float]:
    return [lr_at(step, cfg) for step in range(cfg.max_steps)]


def reference_c(curve: dict[str, Any]) -> float:
    """C fitted on the reference run's whole curve."""
    cfg = TrainConfig.from_dict(curve["config"])
    fit = forecast_final(curve["steps"], curve["val_loss"], lr_per_step(cfg), cfg.max_steps)
    if fit is None:
        raise SystemExit("the reference run has too few evaluations to fit")
    return fit.params["C"]


def outcome(forecast: Forecast | None, actual: float, prefix: str) -> dict[str, Any]:
    if forecast is None:
        return {f"{prefix}predicted": None}
    return {f"{prefix}predicted": round(forecast.predicted_final, 4),
            f"{prefix}low": round(forecast.low, 4), f"{prefix}high": round(forecast.high, 4),
            f"{prefix}error_pct": round(100 * (forecast.predicted_final - actual) / actual, 2),
            f"{prefix}covered": bool(forecast.low <= actual <= forecast.high)}


def judge(name: str, curve: dict[str, Any], fraction: float, ref_c: float) -> dict[str, Any]:
    """Forecast from ``fraction`` of the run three ways and compare with where it ended."""
    cfg = TrainConfig.from_dict(curve["config"])
    lrs = lr_per_step(cfg)
    steps, values = curve["steps"], curve["val_loss"]
    upto = int(fraction * cfg.max_steps)
    summary = {"run": name, "fraction": fraction, "schedule": cfg.schedule, "lr": cfg.lr,
               "min_lr": cfg.min_lr, "emb_dim": cfg.model.emb_dim,
               "n_layers": cfg.model.n_layers, "max_steps": cfg.max_steps, "upto_step": upto}
    if cfg.max_steps not in steps:  # it diverged or stopped: nothing to compare with
        return {**summary, "actual": None, "predicted": None, "ref_predicted": None,
                "plain_predicted": None, "note": f"no final evaluation: {curve.get('reason')}"}
    actual = values[steps.index(cfg.max_steps)]
    alone = forecast_final(steps, values, lrs, cfg.max_steps, upto_step=upto)
    with_ref = forecast_final(steps, values, lrs, cfg.max_steps, upto_step=upto,
                              annealing_c=ref_c)
    plain = forecast_final(steps, values, np.ones(cfg.max_steps), cfg.max_steps,
                           upto_step=upto)
    return {
        **summary, "n_points": alone.n_points if alone else 0, "actual": round(actual, 4),
        **outcome(alone, actual, ""), **outcome(with_ref, actual, "ref_"),
        **{k: v for k, v in outcome(plain, actual, "plain_").items()
           if k in ("plain_predicted", "plain_error_pct")},
        "note": alone.note if alone else "too few evaluations to forecast",
    }


def cut_check(curves: dict[str, Any], fraction: float) -> dict[str, Any]:
    """What ``should_cut`` would do at ``fraction``: runs cut against the run with the
    lowest forecast, and how many of them in fact finished below that run."""
    forecasts, finals = {}, {}
    for name, curve in curves.items():
        cfg = TrainConfig.from_dict(curve["config"])
        if cfg.max_steps not in curve["steps"]:
            continue
        forecasts[name] = forecast_final(curve["steps"], curve["val_loss"], lr_per_step(cfg),
                                         cfg.max_steps, upto_step=int(fraction * cfg.max_steps))
        finals[name] = curve["val_loss"][curve["steps"].index(cfg.max_steps)]
    ranked = [n for n in forecasts if forecasts[n] is not None]
    if not ranked:
        return {"cut": []}
    best = min(ranked, key=lambda n: forecasts[n].predicted_final)
    cut = [n for n in ranked if should_cut(forecasts[n], forecasts[best])]
    return {"best_forecast": best, "cut": cut,
            "wrongly_cut": [n for n in cut if finals[n] < finals[best]]}


def figures(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    done = [r for r in rows if r[f"{prefix}predicted"] is not None]
    errors = [abs(r[f"{prefix}error_pct"]) for r in done]
    if not errors:
        return {"forecast": 0}
    out = {"forecast": len(done), "median_error_pct": round(statistics.median(errors), 2),
           "worst_error_pct": round(max(errors), 2),
           "within_5pct": round(sum(e <= 5 for e in errors) / len(errors), 3)}
    if f"{prefix}covered" in done[0]:
        out["band_coverage"] = round(sum(r[f"{prefix}covered"] for r in done) / len(done), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated run names")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-interval", type=int, default=15)
    parser.add_argument("--eval-iters", type=int, default=10)
    parser.add_argument("--fractions", default="0.4",
                        help="forecast from the evaluations up to these shares of max_steps")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--save", type=Path, help="write the recorded curves to this JSON file")
    parser.add_argument("--load", type=Path, help="forecast curves saved by --save; no training")
    args = parser.parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]

    start = time.perf_counter()
    if args.load:
        curves = json.loads(args.load.read_text())
    else:
        names = [n.strip() for n in args.runs.split(",") if n.strip()]
        unknown = [n for n in names if n not in RUNS]
        if unknown:
            parser.error(f"unknown runs {unknown}: choose from {', '.join(RUNS)}")
        torch.set_num_threads(1)  # a shared 2-core box: one core per run is the fair share
        curves = train_curves(names, args)
        if args.save:
            args.save.write_text(json.dumps(curves))
    ref_c = reference_c(curves["reference"])
    for fraction in fractions:
        rows = [judge(name, curve, fraction, ref_c) for name, curve in curves["runs"].items()]
        for row in rows:
            print(json.dumps(row), flush=True)
        print(json.dumps({
            "summary": True, "fraction": fraction, "runs": len(rows),
            "alone": figures(rows, ""), "with_reference": figures(rows, "ref_"),
            "plain_power_law": figures(rows, "plain_"),
            "should_cut": cut_check(curves["runs"], fraction),
            "reference_C": round(ref_c, 4), "seconds": round(time.perf_counter() - start, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
