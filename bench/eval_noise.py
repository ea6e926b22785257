"""How much of a val curve's wiggle is the evaluation's own draw, with and without fixed_eval?

    .venv/bin/python bench/eval_noise.py                  # tiny preset, 400 steps, 20 evals
    .venv/bin/python bench/eval_noise.py --steps 100 --evals 50 --preset tiny

Trains the preset on the CPU in a temporary folder, then evaluates the final weights
``--evals`` times, as if at that many successive evaluation steps, once with the old
random draw (``fixed_eval=False``: new batches at each evaluation) and once with the fixed
set (``fixed_eval=True``). The weights never change, so any spread is evaluation noise
that a val curve would show as the model's. For reference it also gives the loss on every
non-overlapping window of the validation split (what both estimate), so the fixed set's
constant offset from it can be read beside the random draw's spread. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gptcore.config import apply_overrides, preset  # noqa: E402
from gptcore.trainer import Trainer  # noqa: E402


def full_val_loss(trainer: Trainer, batch_size: int = 64) -> float:
    """Mean loss over every non-overlapping context window of the validation split."""
    n = trainer.cfg.model.context_length
    ids = np.asarray(trainer.data.val, dtype=np.int64)
    windows = torch.from_numpy(ids[: (len(ids) - 1) // n * n + 1])
    starts = range(0, len(windows) - n, n)
    total, count = 0.0, 0
    trainer.model.eval()
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            block = torch.stack([windows[s : s + n + 1] for s in starts[i : i + batch_size]])
            loss = trainer.model(block[:, :-1].to(trainer.device), block[:, 1:].to(trainer.device))
            total += float(loss) * len(block)
            count += len(block)
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="max_steps (preset's by default)")
    parser.add_argument("--evals", type=int, default=20)
    args = parser.parse_args()
    overrides = {"device": "cpu", "sample_tokens": 0}
    if args.steps:
        overrides["max_steps"] = args.steps
    cfg = apply_overrides(preset(args.preset), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, checkpoint_dir=Path(tmp) / "ckpt", cache_dir=Path(tmp) / "cache")
        result = trainer.run()
        out = {"preset": args.preset, "steps": result.step, "eval_iters": cfg.eval_iters,
               "batch_size": cfg.batch_size, "evals": args.evals}
        for fixed in (False, True):
            trainer.cfg = replace(cfg, fixed_eval=fixed)
            vals = []
            for k in range(args.evals):
                trainer.step = result.step + k * cfg.eval_interval
                vals.append(trainer.evaluate()["val"])
            name = "fixed" if fixed else "random"
            out[f"{name}_mean"] = round(statistics.fmean(vals), 5)
            out[f"{name}_std"] = round(statistics.stdev(vals), 5)
            out[f"{name}_range"] = round(max(vals) - min(vals), 5)
        out["full_val_loss"] = round(full_val_loss(trainer), 5)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
