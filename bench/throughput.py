"""Training throughput through the real path, with logging, against a bare loop.

    python bench/throughput.py --preset tiny --steps 200            # the real path
    python bench/throughput.py --preset tiny --steps 200 --bare     # same loop, no DB
    python bench/throughput.py --preset tiny --steps 200 --eager    # plain hand-written loop
    python bench/throughput.py --preset tiny --all                  # all three, one JSON line each
    python bench/throughput.py --preset tiny --guard-cost --repeat 5  # bare, guard on vs off
    python bench/throughput.py --preset gpt2-124m --snapshot-cost     # one roll-back snapshot

The real path is what `gptdash train` does: a run row, the trainer with its
StoreCallbacks, metrics written to SQLite by the writer thread. ``--bare`` is the
same Trainer with callbacks that do nothing. ``--eager`` is the plain PyTorch loop a
person writes by hand for the same model (``loss.item()`` every step), the yardstick
for "is our loop slow?". ``--guard-cost`` runs the bare Trainer with the guard on
(its checks plus an in-memory roll-back snapshot every ``guard_interval`` steps, no
anomaly) and off, alternating rounds so both see the same machine load;
``--snapshot-cost`` times one such snapshot (model and AdamW state) alone. Timing starts
after ``--warmup`` steps, so compilation and first-touch allocations are excluded.
One JSON line per measurement on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gptcore.config import TrainConfig, apply_overrides, preset  # noqa: E402
from gptcore.data import load_data  # noqa: E402
from gptcore.estimate import flops_per_token, peak_flops  # noqa: E402
from gptcore.model import GPTModel  # noqa: E402
from gptcore.optim import build_optimizer  # noqa: E402
from gptcore.snapshot import RING_SIZE, SnapshotRing  # noqa: E402
from gptcore.trainer import Trainer, TrainerCallbacks, resolve_device  # noqa: E402


class StepClock(TrainerCallbacks):
    """Notes wall time at each logged step; the trainer's log points are host syncs."""

    def __init__(self, inner: TrainerCallbacks | None = None):
        self.inner = inner or TrainerCallbacks()
        self.marks: list[tuple[int, float]] = []

    def on_metrics(self, step, metrics):
        if "tokens_per_sec" in metrics:
            self.marks.append((step, time.perf_counter()))
        self.inner.on_metrics(step, metrics)

    def on_start(self, info):
        self.inner.on_start(info)

    def on_sample(self, step, prompt, text):
        self.inner.on_sample(step, prompt, text)

    def on_checkpoint(self, step, path):
        self.inner.on_checkpoint(step, path)

    def on_status(self, status, message=None):
        self.inner.on_status(status, message)

    def flush(self):
        self.inner.flush()

    def should_stop(self):
        return self.inner.should_stop()


def bench_config(args) -> TrainConfig:
    cfg = preset(args.preset)
    overrides = {"max_steps": args.warmup + args.steps, "log_interval": args.log_interval,
                 # one eval before the timer and one after it: the loop itself is measured
                 "eval_interval": args.warmup + args.steps, "checkpoint_interval": 10**7,
                 "warmup_steps": 0, "sample_tokens": 0, "compile": args.compile}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.context_length:
        overrides["context_length"] = args.context_length
    if args.device:
        overrides["device"] = args.device
    if args.guard_interval:
        overrides["guard_interval"] = args.guard_interval
    return apply_overrides(cfg, overrides).validate()


def _rate(cfg: TrainConfig, marks: list[tuple[int, float]], warmup: int) -> tuple[float, float]:
    """(tokens/s, ms/step) between the first log point at or after warmup and the last."""
    timed = [(s, t) for s, t in marks if s + 1 >= warmup]
    (s0, t0), (s1, t1) = timed[0], timed[-1]
    steps = s1 - s0
    seconds = t1 - t0
    return steps * cfg.tokens_per_step / seconds, 1000 * seconds / steps


def _result(mode: str, cfg: TrainConfig, tps: float, ms: float, device: torch.device) -> dict:
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"mode": mode, "tokens_per_sec": round(tps, 1), "ms_per_step": round(ms, 3),
            "mfu": round(flops_per_token(cfg) * tps / peak, 4) if peak else None,
            "peak_mem_mb": round(mem, 1) if mem is not None else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)",
            "torch": torch.__version__, "config": cfg.to_dict()}


def run_real(cfg: TrainConfig, warmup: int) -> dict:
    """Through jobs.runner.execute_run: a run row, StoreCallbacks, SQLite writes."""
    from jobs import runner
    from storage.store import RunStore

    store = RunStore()
    run_id = runner.create_run(store, cfg, name="throughput bench", tags=["bench"])
    store.update_run(run_id, status="running", worker="bench")
    clock = StepClock()
    runner.execute_run(store, run_id, extra_callbacks=clock)
    rows = len(store.metrics([run_id]))
    device = resolve_device(cfg.device)
    out = _result("gptdash", cfg, *_rate(cfg, clock.marks, warmup), device)
    out["metric_rows_written"] = rows
    out["run_id"] = run_id
    return out


def run_bare(cfg: TrainConfig, warmup: int) -> dict:
    """The same Trainer with callbacks that record nothing and write nothing."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(cfg, checkpoint_dir=Path(tmp), cache_dir=_cache_dir(), callbacks=clock).run()
    return _result("bare", cfg, *_rate(cfg, clock.marks, warmup), resolve_device(cfg.device))


def run_eager(cfg: TrainConfig, warmup: int) -> dict:
    """A plain hand-written loop of the same model: what people write in a notebook."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.corpus, cfg.tokenizer, cfg.val_fraction, _cache_dir())
    model = GPTModel(replace(cfg.model, vocab_size=cfg.vocab_size)).to(device)
    opt = build_optimizer(model, cfg, device.type)
    gen = torch.Generator().manual_seed(cfg.seed)
    amp = device.type == "cuda"
    total = cfg.max_steps  # warmup steps included, then timed
    start = None
    for step in range(total):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = data.batch("train", cfg.batch_size, cfg.model.context_length, gen)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    seconds = time.perf_counter() - start
    steps = total - warmup
    return _result("eager", cfg, steps * cfg.tokens_per_step / seconds, 1000 * seconds / steps,
                   device)


def interleaved(runners: dict, cfgs: dict[str, TrainConfig], warmup: int,
                repeat: int) -> dict[str, float]:
    """Run every mode once per round, ``repeat`` rounds; per run a JSON line on stderr, then
    per mode its best run with the median tokens/s on stdout. Returns the medians."""
    results: dict[str, list[dict]] = {k: [] for k in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            results[name].append({**fn(cfgs[name], warmup), "mode": name})
            print(json.dumps({k: v for k, v in results[name][-1].items() if k != "config"}),
                  file=sys.stderr)
    medians = {name: statistics.median(r["tokens_per_sec"] for r in rs)
               for name, rs in results.items()}
    for name, rs in results.items():
        best = max(rs, key=lambda r: r["tokens_per_sec"])
        print(json.dumps({**best, "tokens_per_sec_median": medians[name],
                          "tokens_per_sec_all": [r["tokens_per_sec"] for r in rs]}))
    return medians


def snapshot_cost(cfg: TrainConfig, repeat: int) -> dict:
    """Milliseconds to take one roll-back snapshot of the model and its AdamW state."""
    device = resolve_device(cfg.device)
    model = GPTModel(replace(cfg.model, vocab_size=cfg.vocab_size)).to(device)
    opt = build_optimizer(model, cfg, device.type)
    for p in model.parameters():  # one step with zero gradients creates the optimizer state
        p.grad = torch.zeros_like(p)
    opt.step()
    ring, times = SnapshotRing(), []
    for step in range(repeat + RING_SIZE):  # the first RING_SIZE allocate their buffers
        start = time.perf_counter()
        ring.take(step, model, opt, {})
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    snap = ring.snapshots[-1]
    tensors = [*snap.model.values(),
               *(t for state in snap.optimizer["state"].values() for t in state.values())]
    state_mb = sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())
    return {"mode": "snapshot", "ms_first": round(1000 * times[0], 2),
            "ms_median": round(1000 * statistics.median(times[RING_SIZE:]), 2),
            "mb_per_snapshot": round(state_mb / 2**20, 1), "n_params": model.num_params(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__}


def _cache_dir() -> Path:
    from storage import home

    return home.cache_dir()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--context-length", type=int)
    p.add_argument("--device")
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bare", action="store_true", help="no callbacks, no database")
    mode.add_argument("--eager", action="store_true", help="a plain hand-written loop")
    mode.add_argument("--all", action="store_true", help="eager, bare and gptdash, interleaved")
    mode.add_argument("--guard-cost", action="store_true",
                      help="bare with the guard off and on, interleaved")
    mode.add_argument("--snapshot-cost", action="store_true",
                      help="time one roll-back snapshot of the model and optimizer")
    p.add_argument("--guard-interval", type=int, help="steps between roll-back snapshots")
    p.add_argument("--repeat", type=int, default=1,
                   help="with --all or --guard-cost: rounds; with --snapshot-cost: snapshots")
    args = p.parse_args()
    if not os.environ.get("GPTDASH_HOME"):
        os.environ["GPTDASH_HOME"] = tempfile.mkdtemp(prefix="gptdash-bench-")
    cfg = bench_config(args)
    if args.all:
        runners = {"eager": run_eager, "bare": run_bare, "gptdash": run_real}
        summary = interleaved(runners, dict.fromkeys(runners, cfg), args.warmup, args.repeat)
        print(json.dumps({"gptdash_vs_bare": round(summary["gptdash"] / summary["bare"], 4),
                          "gptdash_vs_eager": round(summary["gptdash"] / summary["eager"], 4)}))
        return
    if args.snapshot_cost:
        print(json.dumps(snapshot_cost(cfg, max(args.repeat, 3))))
        return
    if args.guard_cost:
        cfgs = {"guard off": replace(cfg, guard=False), "guard on": replace(cfg, guard=True)}
        summary = interleaved(dict.fromkeys(cfgs, run_bare), cfgs, args.warmup, args.repeat)
        print(json.dumps({"guard_on_vs_off": round(summary["guard on"] / summary["guard off"],
                                                   4)}))
        return
    fn = run_bare if args.bare else run_eager if args.eager else run_real
    print(json.dumps(fn(cfg, args.warmup)))


if __name__ == "__main__":
    main()
