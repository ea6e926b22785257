"""Training throughput through the real path, with logging, against a bare loop.

    python bench/throughput.py --preset tiny --steps 200            # the real path
    python bench/throughput.py --preset tiny --steps 200 --bare     # same loop, no DB
    python bench/throughput.py --preset tiny --steps 200 --eager    # plain hand-written loop
    python bench/throughput.py --preset tiny --all                  # all three, one JSON line each
    python bench/throughput.py --preset tiny --guard-cost --repeat 5  # bare, guard on vs off
    python bench/throughput.py --preset gpt2-124m --snapshot-cost     # one roll-back snapshot
    python bench/throughput.py --preset tiny --nanogpt --repeat 5     # against nanoGPT's own

The real path is what `gptdash train` does: a run row, the trainer with its
StoreCallbacks, metrics written to SQLite by the writer thread. ``--bare`` is the
same Trainer with callbacks that do nothing. ``--eager`` is the plain PyTorch loop a
person writes by hand for the same model (``loss.item()`` every step), the yardstick
for "is our loop slow?". ``--guard-cost`` runs the bare Trainer with the guard on
(its checks plus an in-memory roll-back snapshot every ``guard_interval`` steps, no
anomaly) and off, alternating rounds so both see the same machine load;
``--snapshot-cost`` times one such snapshot (model and AdamW state) alone.

``--nanogpt [DIR]`` puts nanoGPT's own ``GPT`` (its model.py, copied from DIR, a checkout
or its git directory, into the ignored ``third_party/nanoGPT/``, never into ours) in its own
loop style (train.py's memmapped uint16 ``get_batch``, ``configure_optimizers``' AdamW,
``clip_grad_norm_``, ``loss.item()`` only at log points) beside the bare Trainer and the real
path, on the same shape, data (our corpus's ids written to ``train.bin``/``val.bin``),
biases (all on, as nanoGPT's ``bias=True``), activation (its erf GELU, our ``gelu_exact``;
``--activation gelu`` for ours, GPT-2's tanh form), dropout, clipping, batch, optimizer
settings and threads, alternating rounds; it prints both sides' settings first. Beside
tokens per wall-clock second it reports tokens per second of the process's CPU time, which
with ``OMP_NUM_THREADS=1`` holds steady on a machine others load. Timing starts after
``--warmup`` steps, so compilation and first-touch allocations are excluded. One JSON line
per measurement on stdout (per run on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptcore.config import ACTIVATIONS, TrainConfig, apply_overrides, preset  # noqa: E402
from gptcore.data import load_data  # noqa: E402
from gptcore.estimate import flops_per_token, peak_flops  # noqa: E402
from gptcore.model import GPTModel  # noqa: E402
from gptcore.optim import build_optimizer  # noqa: E402
from gptcore.schedule import lr_at  # noqa: E402
from gptcore.snapshot import RING_SIZE, SnapshotRing  # noqa: E402
from gptcore.trainer import Trainer, TrainerCallbacks, resolve_device  # noqa: E402


class StepClock(TrainerCallbacks):
    """Notes wall time at each logged step; the trainer's log points are host syncs."""

    def __init__(self, inner: TrainerCallbacks | None = None):
        self.inner = inner or TrainerCallbacks()
        self.marks: list[tuple[int, float, float]] = []

    def on_metrics(self, step, metrics):
        if "tokens_per_sec" in metrics:
            self.marks.append((step, time.perf_counter(), time.process_time()))
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
    if args.activation:
        overrides["activation"] = args.activation
    return apply_overrides(cfg, overrides).validate()


def _rate(cfg: TrainConfig, marks: list[tuple[int, float, float]],
          warmup: int) -> tuple[float, float]:
    """(tokens/s, ms/step) between the first log point at or after warmup and the last."""
    timed = [m for m in marks if m[0] + 1 >= warmup]
    (s0, t0, _), (s1, t1, _) = timed[0], timed[-1]
    steps = s1 - s0
    seconds = t1 - t0
    return steps * cfg.tokens_per_step / seconds, 1000 * seconds / steps


# Tokens per second of this process's CPU time over the same steps: on a machine others
# load, what one thread (OMP_NUM_THREADS=1) costs, whoever else is running.
CPU_RATE = "tokens_per_cpu_sec"


def _cpu_rate(cfg: TrainConfig, marks: list[tuple[int, float, float]], warmup: int) -> float:
    timed = [m for m in marks if m[0] + 1 >= warmup]
    (s0, _, c0), (s1, _, c1) = timed[0], timed[-1]
    return round((s1 - s0) * cfg.tokens_per_step / (c1 - c0), 1)


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
    out[CPU_RATE] = _cpu_rate(cfg, clock.marks, warmup)
    out["metric_rows_written"] = rows
    out["run_id"] = run_id
    return out


def run_bare(cfg: TrainConfig, warmup: int) -> dict:
    """The same Trainer with callbacks that record nothing and write nothing."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(cfg, checkpoint_dir=Path(tmp), cache_dir=_cache_dir(), callbacks=clock).run()
    out = _result("bare", cfg, *_rate(cfg, clock.marks, warmup), resolve_device(cfg.device))
    out[CPU_RATE] = _cpu_rate(cfg, clock.marks, warmup)
    return out


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


# nanoGPT's model.py is copied here at bench time (git-ignored, never committed).
NANOGPT = ROOT / "third_party" / "nanoGPT"
# Where this machine keeps a mirror of nanoGPT's repository (a bare git directory).
NANOGPT_MIRROR = Path("/work/.mirror/karpathy+nanoGPT/repo")


def fetch_nanogpt(src: Path | None) -> str:
    """Copy nanoGPT's model.py from ``src`` (a checkout, or a git directory such as a bare
    mirror) into NANOGPT; without ``src``, keep a copy already there or take the mirror.
    Returns where it came from, with the commit where known."""
    target = NANOGPT / "model.py"
    if src is None:
        if target.exists():
            return (NANOGPT / "SOURCE").read_text().strip() if (NANOGPT / "SOURCE").exists() \
                else str(target)
        if not NANOGPT_MIRROR.exists():
            sys.exit("--nanogpt: give DIR, a nanoGPT checkout or its git directory")
        src = NANOGPT_MIRROR
    NANOGPT.mkdir(parents=True, exist_ok=True)
    if (src / "model.py").exists():
        shutil.copyfile(src / "model.py", target)
        source = str(src)
    else:
        git = ["git", "--git-dir", str(src)]
        target.write_bytes(subprocess.run([*git, "show", "HEAD:model.py"], check=True,
                                          capture_output=True).stdout)
        commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                                text=True).stdout.strip()
        source = f"{src} @ {commit}"
    (NANOGPT / "SOURCE").write_text(source + "\n")
    return source


def _nanogpt_module():
    spec = importlib.util.spec_from_file_location("nanogpt_model", NANOGPT / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_data(cfg: TrainConfig) -> Path:
    """Our corpus's train and val ids as nanoGPT's prepare.py writes them (uint16 .bin)."""
    data = load_data(cfg.corpus, cfg.tokenizer, cfg.val_fraction, _cache_dir())
    folder = NANOGPT / "data" / f"gptdash-{data.corpus_fingerprint[:12]}-{cfg.tokenizer}"
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in (("train", data.train), ("val", data.val)):
        np.asarray(ids, dtype=np.uint16).tofile(folder / f"{split}.bin")
    return folder


def _nanogpt_model(cfg: TrainConfig, device: torch.device):
    """nanoGPT's GPT at our shape, with every bias (bias=True), and its AdamW."""
    nano = _nanogpt_module()
    m = cfg.model
    conf = nano.GPTConfig(block_size=m.context_length, vocab_size=cfg.vocab_size,
                          n_layer=m.n_layers, n_head=m.n_heads, n_embd=m.emb_dim,
                          dropout=m.drop_rate, bias=True)
    with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter counts
        model = nano.GPT(conf).to(device)
        optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2),
                                               device.type)
    return model, optimizer


def run_nanogpt(cfg: TrainConfig, warmup: int) -> dict:
    """nanoGPT's model in train.py's loop: a fresh memmap and two stacks of windows per
    batch, the next batch fetched after the forward pass, clipping, AdamW, and the loss
    fetched only every log_interval steps."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, optimizer = _nanogpt_model(cfg, device)
    data_dir = nanogpt_data(cfg)
    batch_size, block_size = cfg.batch_size, cfg.model.context_length

    def get_batch(split):
        data = np.memmap(data_dir / f"{split}.bin", dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64))
                         for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64))
                         for i in ix])
        return x.to(device), y.to(device)

    model.train()
    X, Y = get_batch("train")
    marks = []  # (steps done, wall time, CPU time) at each log point, as StepClock notes ours
    for it in range(cfg.max_steps):
        lr = lr_at(it, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(cfg.grad_accum_steps):
            _, loss = model(X, Y)
            loss = loss / cfg.grad_accum_steps
            X, Y = get_batch("train")
            loss.backward()
        if cfg.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (it + 1) % cfg.log_interval == 0 or it + 1 == cfg.max_steps:
            loss.item()
            marks.append((it + 1, time.perf_counter(), time.process_time()))
    out = _result("nanogpt", cfg, *_rate(cfg, marks, warmup), device)
    out[CPU_RATE] = _cpu_rate(cfg, marks, warmup)
    return out


def _groups(groups: list[dict]) -> list[dict]:
    return [{"weight_decay": g["weight_decay"], "tensors": len(g["params"]),
             "params": sum(p.numel() for p in g["params"])} for g in groups]


def nanogpt_settings(cfg: TrainConfig, source: str) -> dict:
    """Both sides' settings as they are built, so a mismatch shows before any timing."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    theirs, their_opt = _nanogpt_model(cfg, device)
    ours = GPTModel(replace(cfg.model, vocab_size=cfg.vocab_size))
    our_opt = build_optimizer(ours, cfg, device.type)

    def side(model, opt, n_params, gelu, dropout) -> dict:
        biases = [n for n, p in model.named_parameters() if n.endswith("bias")]
        defaults = opt.defaults
        return {"n_params": n_params, "bias_tensors": len(biases), "dropout": dropout,
                "gelu": gelu, "optimizer": type(opt).__name__,
                "betas": list(defaults["betas"]), "eps": defaults["eps"],
                "foreach": defaults.get("foreach"), "fused": defaults.get("fused"),
                "groups": _groups(opt.param_groups)}

    return {"mode": "settings", "nanogpt_source": source, "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "batch_size": cfg.batch_size, "context_length": cfg.model.context_length,
            "grad_clip": cfg.grad_clip, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "log_interval": cfg.log_interval,
            "gptdash": side(ours, our_opt, ours.num_params(), ours.blocks[0].ff.act.approximate,
                            cfg.model.drop_rate),
            "nanogpt": side(theirs, their_opt, sum(p.numel() for p in theirs.parameters()),
                            theirs.transformer.h[0].mlp.gelu.approximate,
                            theirs.config.dropout)}


def interleaved(runners: dict, cfgs: dict[str, TrainConfig], warmup: int,
                repeat: int) -> dict[str, dict[str, float]]:
    """Run every mode once per round, ``repeat`` rounds, the order reversed every other round
    so a load that rises or falls favours none; per run a JSON line on stderr, then per mode
    its best run with the median tokens/s on stdout. Returns per mode the medians of
    tokens/s and, where measured, of tokens per CPU second."""
    results: dict[str, list[dict]] = {k: [] for k in runners}
    for i in range(repeat):
        for name, fn in list(runners.items())[::-1 if i % 2 else 1]:
            results[name].append({**fn(cfgs[name], warmup), "mode": name})
            print(json.dumps({k: v for k, v in results[name][-1].items() if k != "config"}),
                  file=sys.stderr)
    medians = {name: {key: statistics.median(r[key] for r in rs)
                      for key in ("tokens_per_sec", CPU_RATE) if key in rs[0]}
               for name, rs in results.items()}
    for name, rs in results.items():
        best = max(rs, key=lambda r: r["tokens_per_sec"])
        print(json.dumps({**best, **{f"{k}_median": v for k, v in medians[name].items()},
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
    p.add_argument("--activation", choices=ACTIVATIONS,
                   help="the feed-forward activation (with --nanogpt: gelu_exact, its own)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bare", action="store_true", help="no callbacks, no database")
    mode.add_argument("--eager", action="store_true", help="a plain hand-written loop")
    mode.add_argument("--all", action="store_true", help="eager, bare and gptdash, interleaved")
    mode.add_argument("--guard-cost", action="store_true",
                      help="bare with the guard off and on, interleaved")
    mode.add_argument("--snapshot-cost", action="store_true",
                      help="time one roll-back snapshot of the model and optimizer")
    mode.add_argument("--nanogpt", nargs="?", const="", metavar="DIR",
                      help="nanoGPT's own model and loop against bare and gptdash, "
                           "interleaved; DIR is a nanoGPT checkout or git directory")
    p.add_argument("--guard-interval", type=int, help="steps between roll-back snapshots")
    p.add_argument("--repeat", type=int, default=1,
                   help="with --all or --guard-cost: rounds; with --snapshot-cost: snapshots")
    args = p.parse_args()
    if not os.environ.get("GPTDASH_HOME"):
        os.environ["GPTDASH_HOME"] = tempfile.mkdtemp(prefix="gptdash-bench-")
    cfg = bench_config(args)
    if args.nanogpt is not None:  # "" without DIR: the copy already fetched, or the mirror
        source = fetch_nanogpt(Path(args.nanogpt) if args.nanogpt else None)
        # nanoGPT's bias=True puts a bias in every linear layer and norm: ours too; and its
        # nn.GELU() is the erf form, our gelu_exact, unless --activation says otherwise.
        cfg = replace(cfg, model=replace(cfg.model, qkv_bias=True,
                                         activation=args.activation or "gelu_exact")).validate()
        print(json.dumps(nanogpt_settings(cfg, source)))
        runners = {"nanogpt": run_nanogpt, "bare": run_bare, "gptdash": run_real}
        summary = interleaved(runners, dict.fromkeys(runners, cfg), args.warmup, args.repeat)
        print(json.dumps({f"{mode}_vs_nanogpt{'' if key == 'tokens_per_sec' else '_cpu_time'}":
                          round(summary[mode][key] / summary["nanogpt"][key], 4)
                          for key in ("tokens_per_sec", CPU_RATE)
                          for mode in ("bare", "gptdash")}))
        return
    if args.all:
        runners = {"eager": run_eager, "bare": run_bare, "gptdash": run_real}
        summary = interleaved(runners, dict.fromkeys(runners, cfg), args.warmup, args.repeat)
        tps = {mode: m["tokens_per_sec"] for mode, m in summary.items()}
        print(json.dumps({"gptdash_vs_bare": round(tps["gptdash"] / tps["bare"], 4),
                          "gptdash_vs_eager": round(tps["gptdash"] / tps["eager"], 4)}))
        return
    if args.snapshot_cost:
        print(json.dumps(snapshot_cost(cfg, max(args.repeat, 3))))
        return
    if args.guard_cost:
        cfgs = {"guard off": replace(cfg, guard=False), "guard on": replace(cfg, guard=True)}
        summary = interleaved(dict.fromkeys(cfgs, run_bare), cfgs, args.warmup, args.repeat)
        print(json.dumps({"guard_on_vs_off": round(summary["guard on"]["tokens_per_sec"]
                                                   / summary["guard off"]["tokens_per_sec"], 4)}))
        return
    fn = run_bare if args.bare else run_eager if args.eager else run_real
    print(json.dumps(fn(cfg, args.warmup)))


if __name__ == "__main__":
    main()
