"""Time to a loss: how soon our trainer reaches nanoGPT's final val loss, against nanoGPT.

    .venv/bin/python bench/time_to_loss.py                   # the full recipe, 2000 iters
    .venv/bin/python bench/time_to_loss.py --max-iters 500   # a quick run

nanoGPT's shakespeare-char CPU recipe (its README: 4 layers, 4 heads, 128 wide, context 64,
batch 12, 2000 iters, eval_iters 20, dropout 0) runs with nanoGPT's own ``train.py`` from a
git-ignored copy in third_party/nanoGPT (extracted from the mirror of karpathy/nanoGPT when
missing; never committed). There is no Shakespeare here, so its ``prepare.py`` reads our
built-in corpus with its few non-ASCII characters dropped, written as its ``input.txt``.
Our side trains on the very ids it writes (the ``train.bin``/``val.bin`` folder is a corpus
our data layer reads as it is): the same tokens and the same split, ids below 94 that our
byte tokenizer's 256 take as they come (the text is ASCII, so a token is a character on
both sides and both losses are nats per character).

Our Trainer (bare callbacks) trains the same shape twice: the ``speedrun`` preset (Muon; its
batch and max_steps, the latter scaled by --max-iters / 2000), and AdamW with nanoGPT's own
settings (batch 12, 2000 steps, cosine from 1e-3) as a control.

Val loss is measured the same way on both sides, without sampling noise: the mean loss over
every non-overlapping 64-character window of the validation split (nanoGPT's 20-batch
estimate moves by ~0.1 between evaluations on this text; it is reported too). nanoGPT's is
taken from its checkpoint after the last iteration (``--always_save_checkpoint=True``), ours
from a checkpoint every --every steps. The target is nanoGPT's; a side's time to it is its
training time up to its first measurement at or below it, with evaluations, checkpoints and
the measurement left out (nanoGPT's log times each iteration, an evaluation and checkpoint
inside it: those iterations count at the median iteration's time). Both sides get the same
``--threads`` (OMP_NUM_THREADS and torch.set_num_threads) and run back to back, nanoGPT
first; the load average is printed beside each. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gptcore.checkpoint import load_checkpoint  # noqa: E402
from gptcore.config import TrainConfig, apply_overrides, preset  # noqa: E402
from gptcore.data import builtin_text  # noqa: E402
from gptcore.metric_keys import EVAL_TIME_MS  # noqa: E402
from gptcore.model import GPTModel  # noqa: E402
from gptcore.trainer import Trainer, TrainerCallbacks  # noqa: E402

NANOGPT = ROOT / "third_party" / "nanoGPT"
MIRROR = Path("/work/.mirror/karpathy+nanoGPT/repo")
DATA = NANOGPT / "data" / "shakespeare_char"
EVAL_INTERVAL = 250  # the recipe's config file (config/train_shakespeare_char.py)
CONTEXT = 64
RECIPE_ITERS = 2000  # nanoGPT's; the speedrun preset's max_steps is for the same data


def nanogpt_eval_interval(max_iters: int) -> int:
    """The recipe's, unless a quick run's last iteration would miss an evaluation."""
    return EVAL_INTERVAL if max_iters % EVAL_INTERVAL == 0 else max_iters


def recipe(max_iters: int, out_dir: Path) -> list[str]:
    """nanoGPT's README command for a CPU, with --max-iters for a quick run, and a
    checkpoint at every evaluation (the last one is measured)."""
    return ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
            "--eval_iters=20", "--log_interval=1", f"--block_size={CONTEXT}",
            "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
            f"--max_iters={max_iters}", f"--lr_decay_iters={max_iters}", "--dropout=0.0",
            f"--eval_interval={nanogpt_eval_interval(max_iters)}",
            "--always_save_checkpoint=True", f"--out_dir={out_dir}"]


def prepare_nanogpt() -> None:
    """The git-ignored copy of nanoGPT with our ASCII text as its shakespeare_char data."""
    if not (NANOGPT / "train.py").exists():
        NANOGPT.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(MIRROR), "archive", "HEAD"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(NANOGPT)], input=archive, check=True)
    text = builtin_text().encode("ascii", "ignore").decode("ascii")
    input_txt = DATA / "input.txt"
    if not input_txt.exists() or input_txt.read_text() != text or not (DATA / "val.bin").exists():
        input_txt.write_text(text)  # prepare.py downloads Shakespeare only when this is absent
        subprocess.run([sys.executable, "prepare.py"], cwd=DATA, check=True,
                       capture_output=True)


def full_val_loss(loss_of, batch: int = 64) -> float:
    """Mean loss over every non-overlapping window of the validation split (val.bin)."""
    ids = torch.from_numpy(np.fromfile(DATA / "val.bin", dtype=np.uint16).astype(np.int64))
    starts = range(0, len(ids) - CONTEXT - 1, CONTEXT)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(starts), batch):
            block = torch.stack([ids[s : s + CONTEXT + 1] for s in starts[i : i + batch]])
            x, y = block[:, :-1].contiguous(), block[:, 1:].contiguous()
            total += float(loss_of(x, y)) * len(block)
    return total / len(starts)


def nanogpt_val(ckpt: Path) -> float:
    sys.path.insert(0, str(NANOGPT))
    from model import GPT, GPTConfig  # nanoGPT's own model.py, from the git-ignored copy

    payload = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**payload["model_args"]))
    model.load_state_dict(payload["model"])
    model.eval()
    return full_val_loss(lambda x, y: model(x, y)[1])


def run_nanogpt(max_iters: int) -> dict:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "train.py", *recipe(max_iters, Path(out))],
                              cwd=NANOGPT, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        final = nanogpt_val(Path(out) / "ckpt.pt")
    dts = {int(m[1]): float(m[2]) / 1000 for m in
           re.finditer(r"^iter (\d+): loss \S+, time ([\d.]+)ms", done.stdout, re.M)}
    estimates = {int(m[1]): float(m[2]) for m in
                 re.finditer(r"^step (\d+): train loss \S+, val loss ([\d.]+)", done.stdout,
                             re.M)}
    # An iteration at an evaluation also timed the evaluation and the checkpoint save.
    median = statistics.median(dts.values())
    every = nanogpt_eval_interval(max_iters)
    train_s = sum(median if i % every == 0 else dts[i] for i in range(max_iters))
    return {"val": {max_iters: final}, "train_s": {max_iters: train_s}, "wall_s": wall,
            "own_estimates": estimates, "load": (load, os.getloadavg()[0])}


class Clock(TrainerCallbacks):
    """At each checkpoint: the full val loss, and the training seconds so far (the
    trainer's evaluations and these measurements left out)."""

    def __init__(self, cfg: TrainConfig):
        self.model = GPTModel(replace(cfg.model, vocab_size=cfg.vocab_size)).eval()
        self.start = 0.0
        self.n_params = 0
        self.left_out = 0.0  # seconds of measuring, so far
        self.eval_s: dict[int, float] = {}
        self.at: dict[int, float] = {}
        self.val: dict[int, float] = {}

    def on_start(self, info):
        self.start, self.n_params = time.perf_counter(), info["n_params"]

    def on_metrics(self, step, metrics):
        if EVAL_TIME_MS in metrics:
            self.eval_s[step] = metrics[EVAL_TIME_MS] / 1000

    def on_checkpoint(self, step, path):
        began = time.perf_counter()
        if step not in self.val:
            self.at[step] = began - self.start - self.left_out
            self.model.load_state_dict(load_checkpoint(path)["model"])
            self.val[step] = full_val_loss(self.model)
        self.left_out += time.perf_counter() - began

    def train_s(self) -> dict[int, float]:
        return {step: at - sum(s for e, s in self.eval_s.items() if e <= step)
                for step, at in self.at.items()}


def run_ours(cfg: TrainConfig) -> dict:
    load = os.getloadavg()[0]
    clock = Clock(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = Trainer(cfg, checkpoint_dir=Path(tmp) / "ckpt", cache_dir=Path(tmp) / "cache",
                         callbacks=clock).run()
        wall = time.perf_counter() - start
    if result.status != "completed":
        raise SystemExit(f"our run ended {result.status}: {result.reason}")
    return {"val": clock.val, "train_s": clock.train_s(), "wall_s": wall,
            "n_params": clock.n_params, "load": (load, os.getloadavg()[0])}


def our_configs(max_iters: int, every: int) -> dict[str, TrainConfig]:
    common = {"corpus": str(DATA), "tokenizer": "byte", "device": "cpu", "eval_iters": 20,
              "sample_tokens": 0, "log_interval": 10, "checkpoint_interval": every}
    base = preset("speedrun")
    steps = max(every, round(base.max_steps * max_iters / RECIPE_ITERS))
    speedrun = apply_overrides(base, {**common, "max_steps": steps, "eval_interval": steps})
    # nanoGPT's train.py defaults plus the recipe (its Linear layers have no bias; ours only
    # can leave it out of the query/key/value projection).
    adamw = apply_overrides(base, {
        **common, "max_steps": max_iters, "eval_interval": max_iters, "batch_size": 12,
        "optimizer": "adamw",
        "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100, "schedule": "cosine", "beta1": 0.9,
        "beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0, "tie_weights": True})
    return {"speedrun (muon)": speedrun, "adamw (nanoGPT's settings)": adamw}


def time_to(target: float, side: dict) -> tuple[int, float] | None:
    """The first measurement at or below ``target``: its step and training seconds."""
    for step in sorted(side["val"]):
        if side["val"][step] <= target:
            return step, side["train_s"][step]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-iters", type=int, default=RECIPE_ITERS, help="nanoGPT's (2000)")
    p.add_argument("--every", type=int, default=50,
                   help="steps between our checkpoints, each measured on the full val split")
    p.add_argument("--threads", type=int, default=1, help="per side: with 2 shared cores, "
                   "1 keeps OpenMP from stalling when another process takes a core")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # nanoGPT's subprocess inherits it
    torch.set_num_threads(args.threads)
    prepare_nanogpt()
    sides = {"nanoGPT train.py": run_nanogpt(args.max_iters)}
    for name, cfg in our_configs(args.max_iters, args.every).items():
        sides[name] = run_ours(cfg)
    ref = sides["nanoGPT train.py"]
    target, ref_s = ref["val"][args.max_iters], ref["train_s"][args.max_iters]
    report = {"max_iters": args.max_iters, "threads": args.threads, "target_val": target,
              "nanogpt_own_estimates": ref["own_estimates"]}
    print(f"target: nanoGPT's full-split val loss {target:.4f} after iter {args.max_iters} "
          f"(its own 20-batch estimates: {ref['own_estimates']})")
    for name, side in sides.items():
        hit = time_to(target, side)
        final = side["val"][max(side["val"])]
        ratio = hit[1] / ref_s if hit else None
        report[name] = {"final_val": round(final, 4), "steps": max(side["val"]),
                        "steps_to_target": hit and hit[0],
                        "train_s_to_target": hit and round(hit[1], 2),
                        "ratio_to_nanogpt": ratio and round(ratio, 3),
                        "wall_s": round(side["wall_s"], 1), "n_params": side.get("n_params"),
                        "load_avg": [round(x, 2) for x in side["load"]]}
        reached = (f"reaches it at step {hit[0]} after {hit[1]:.1f} s of training "
                   f"({ratio:.2f}x nanoGPT's)" if hit else "never reaches it")
        print(f"{name:28s} val {final:.4f} after {max(side['val'])} steps; {reached}; "
              f"wall {side['wall_s']:.1f} s; load {side['load'][0]:.1f}->{side['load'][1]:.1f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
