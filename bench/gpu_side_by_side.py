"""nanoGPT's bench.py and gptdash side by side on one GPU, at the same shape and batch.

Meant to run in one device call (see bench/gpu_side_by_side.sh). For each batch size it
runs nanoGPT's own bench.py (GPT-2 124M, context 1024, bf16 autocast, torch.compile,
synthetic data) from ``third_party/nanoGPT`` (fetched, never committed), then
``bench/throughput.py --preset gpt2-124m`` through the real path with logging on and
``--bare``, and prints one JSON line per batch with both tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NANOGPT = ROOT / "third_party" / "nanoGPT"


def nanogpt(batch: int, context: int) -> dict:
    out = subprocess.run(
        [sys.executable, "bench.py", f"--batch_size={batch}", f"--block_size={context}",
         "--compile=True", "--real_data=False"],
        cwd=NANOGPT, capture_output=True, text=True, check=True).stdout
    match = re.search(r"time per iteration: ([\d.]+)ms, MFU: ([\d.]+)%", out)
    ms, mfu = float(match.group(1)), float(match.group(2)) / 100
    return {"ms_per_step": ms, "tokens_per_sec": batch * context / (ms / 1000), "mfu": mfu}


def ours(batch: int, context: int, steps: int, mode: str) -> dict:
    args = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--preset", "gpt2-124m",
            "--batch-size", str(batch), "--context-length", str(context), "--compile",
            "--steps", str(steps), "--warmup", "30", "--log-interval", "10"]
    if mode == "bare":
        args.append("--bare")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="12,32")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    for batch in [int(b) for b in args.batches.split(",")]:
        ref = nanogpt(batch, args.context)
        real = ours(batch, args.context, args.steps, "gptdash")
        bare = ours(batch, args.context, args.steps, "bare")
        print(json.dumps({
            "batch_size": batch, "context_length": args.context,
            "nanogpt_tokens_per_sec": round(ref["tokens_per_sec"]),
            "nanogpt_mfu": ref["mfu"],
            "gptdash_tokens_per_sec": real["tokens_per_sec"], "gptdash_mfu": real["mfu"],
            "gptdash_peak_mem_mb": real["peak_mem_mb"],
            "bare_tokens_per_sec": bare["tokens_per_sec"],
            "ratio_vs_nanogpt": round(real["tokens_per_sec"] / ref["tokens_per_sec"], 3),
            "logging_cost": round(1 - real["tokens_per_sec"] / bare["tokens_per_sec"], 4),
            "device": real["device"], "torch": real["torch"]}), flush=True)


if __name__ == "__main__":
    main()
