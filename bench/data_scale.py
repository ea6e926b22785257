"""A corpus of gigabytes, tokenized once in bounded memory, and a run on 10 GB of token ids.

Generates a varied corpus (a seeded word-level Markov chain over the built-in corpus's
words and paragraph breaks: thousands of chains at once, each a document; half the files
plain text, half JSON Lines), then, with the GPT-2 tokenizer, prints one JSON line per
figure:

- ``prepare``: ``gptdash corpus prepare`` on the first 0.5 GB and on all 2 GB: the peak
  resident memory of its process tree (the preparer and its encoding processes, summed,
  sampled from /proc every 0.1 s), its wall time and MB/s;
- ``single_thread``: one tiktoken thread encoding a sample of the same text in the same
  64 KiB pieces, and the preparation's speed as a multiple of it;
- ``first_step``: the wall time of ``gptdash train --preset tiny --set max_steps=1`` on
  the tokenized corpus (its second run: the cache is found, not made) against the same on
  the built-in corpus, interleaved, and the part of it that is the corpus's (the check
  before queueing, loading the prepared ids, one batch) timed inside a fresh process;
- ``train_10gb``: the resident memory of a run training a few hundred steps from a
  nanoGPT-style ``train.bin`` of random GPT-2 ids of 10 GB, sampled over time.

    .venv/bin/python bench/data_scale.py [--dir bench/out/data_scale] [--sizes-gb 0.5,2]
        [--token-gb 10] [--steps 300] [--sample-mb 200] [--keep]

The big files are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptcore.corpus import builtin_text  # noqa: E402
from gptcore.tokenizer import get_tokenizer  # noqa: E402

GB = 1e9
FILE_BYTES = 32 * 1024**2
CHAINS = 2048  # documents generated at once
PIECE_CHARS = 65536  # the pieces gptcore.tokens cuts a large corpus into
# A smaller model than `tiny` for the runs: data is measured here, and GPT-2's 50,257-id head
# makes even `tiny` take seconds a step on a shared 2-core CPU.
SMALL = [arg for kv in ("batch_size=4", "context_length=32", "emb_dim=32", "n_heads=2",
                        "eval_iters=2", "sample_tokens=0", "device=cpu") for arg in ("--set", kv)]


# ---- the corpus --------------------------------------------------------------------------

class Markov:
    """A bigram chain over the built-in corpus's words (paragraph breaks are words too)."""

    def __init__(self, seed: int):
        words = re.findall(r"\S+|\n\n", builtin_text())
        vocab, ids = np.unique(np.array(words, dtype=object), return_inverse=True)
        self.vocab = vocab
        a, b = ids[:-1], ids[1:]
        order = np.argsort(a, kind="stable")
        self.successors = b[order]
        self.count = np.bincount(a, minlength=len(vocab))
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.rng = np.random.default_rng(seed)

    def documents(self, n: int, max_words: int) -> list[str]:
        """``n`` documents of 50 to ``max_words`` words each."""
        cur = self.rng.integers(0, len(self.vocab), n)
        out = np.empty((max_words, n), dtype=np.int64)
        for step in range(max_words):
            out[step] = cur
            at = self.start[cur] + (self.rng.random(n) * self.count[cur]).astype(np.int64)
            nxt = self.successors[np.minimum(at, len(self.successors) - 1)]
            # The text's last word has no successor: start anew anywhere.
            cur = np.where(self.count[cur] > 0, nxt, self.rng.integers(0, len(self.vocab), n))
        lengths = self.rng.integers(50, max_words, n)
        words = self.vocab[out.T]
        return [" ".join(words[i, : lengths[i]]).replace(" \n\n ", "\n\n")
                for i in range(n)]


def generate(folder: Path, total_bytes: int, seed: int = 0) -> list[Path]:
    """Files of about 32 MB, alternately plain text (its documents joined by blank lines:
    one document to gptdash) and JSON Lines (one document a line), until ``total_bytes``."""
    folder.mkdir(parents=True, exist_ok=True)
    chain = Markov(seed)
    files: list[Path] = []
    written = 0
    docs: list[str] = []
    while written < total_bytes:
        i = len(files)
        path = folder / f"part-{i:04d}.{'jsonl' if i % 2 else 'txt'}"
        size = 0
        with path.open("w", encoding="utf-8") as f:
            while size < FILE_BYTES and written + size < total_bytes:
                if not docs:
                    docs = chain.documents(CHAINS, 2000)
                doc = docs.pop()
                line = json.dumps({"text": doc, "id": size}) + "\n" if i % 2 else doc + "\n\n"
                f.write(line)
                size += len(line.encode("utf-8"))
        written += size
        files.append(path)
    return files


def subset(files: list[Path], folder: Path, total_bytes: int) -> None:
    """The first files up to ``total_bytes``, hard-linked into ``folder`` (no copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    size = 0
    for f in files:
        if size >= total_bytes:
            break
        os.link(f, folder / f.name)
        size += f.stat().st_size


# ---- memory of a process tree ------------------------------------------------------------

def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss(pid: int) -> tuple[int, int]:
    """(resident, resident anonymous) bytes of one process; 0s when it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return (int(fields.get("VmRSS", "0 kB").split()[0]) * 1024,
                int(fields.get("RssAnon", "0 kB").split()[0]) * 1024)
    except (OSError, ValueError):
        return 0, 0


class Sampler:
    """Samples the summed RSS of a process and its descendants (forkserver, encoders) until
    it ends."""

    def __init__(self, proc: subprocess.Popen, every: float = 0.1):
        self.proc, self.every = proc, every
        self.samples: list[tuple[float, int, int]] = []  # (t, rss, anon)
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.proc.poll() is None:
            pids = _tree(self.proc.pid)
            rss = [_rss(p) for p in pids]
            self.samples.append((time.monotonic() - self.started, sum(r for r, _ in rss),
                                 sum(a for _, a in rss)))
            time.sleep(self.every)

    def join(self) -> None:
        self.thread.join()

    @property
    def peak(self) -> int:
        return max((s[1] for s in self.samples), default=0)

    @property
    def peak_anon(self) -> int:
        return max((s[2] for s in self.samples), default=0)


def gptdash(args: list[str], env: dict[str, str], timeout: float) -> tuple[float, Sampler, str]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jobs", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc)
    out, _ = proc.communicate(timeout=timeout)
    sampler.join()
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"gptdash {' '.join(args)} failed ({proc.returncode}):\n{out[-2000:]}")
    return took, sampler, out


# ---- the measurements --------------------------------------------------------------------

def measure_prepare(corpus: Path, env: dict[str, str]) -> dict:
    took, sampler, out = gptdash(["corpus", "prepare", str(corpus), "--tokenizer", "gpt2"],
                                 env, timeout=4 * 3600)
    size = sum(f.stat().st_size for f in corpus.iterdir())
    manifest = next(m for m in _manifests(env) if m["corpus"] == str(corpus))
    return {"bench": "prepare", "corpus_gb": round(size / GB, 3), "files": manifest["files"],
            "documents": manifest["documents"], "tokens": manifest["train_tokens"]
            + manifest["val_tokens"], "wall_s": round(took, 1),
            "prepare_s": manifest["seconds"],
            "mb_per_s": round(size / 1e6 / manifest["seconds"], 2),
            "peak_rss_mb": round(sampler.peak / 1e6),
            "peak_anon_mb": round(sampler.peak_anon / 1e6),
            "samples": len(sampler.samples), "summary": out.strip().splitlines()[-1]}


def _manifests(env: dict[str, str]) -> list[dict]:
    cache = Path(env["GPTDASH_HOME"]) / "cache"
    return [json.loads(p.read_text()) for p in cache.glob("tokens-*/manifest.json")
            if not p.parent.name.endswith(".tmp")]


def sample_pieces(corpus: Path, sample_bytes: int) -> list[str]:
    """The corpus's first documents' text, about ``sample_bytes``, in 64 KiB pieces."""
    texts, size = [], 0
    for path in sorted(corpus.iterdir()):
        if size >= sample_bytes:
            break
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"] if path.suffix == ".jsonl" else line
                texts.append(text)
                size += len(text.encode("utf-8"))
                if size >= sample_bytes:
                    break
    joined = "".join(texts)
    return [joined[i:i + PIECE_CHARS] for i in range(0, len(joined), PIECE_CHARS)]


def measure_single_thread(corpus: Path, sample_mb: int) -> dict:
    pieces = sample_pieces(corpus, sample_mb * 1024**2)
    size = sum(len(p.encode("utf-8")) for p in pieces)
    tok = get_tokenizer("gpt2")
    tok.encode_array(pieces[0])  # the ranks loaded
    start = time.perf_counter()
    tokens = sum(len(tok.encode_array(p)) for p in pieces)
    took = time.perf_counter() - start
    return {"bench": "single_thread", "sample_mb": round(size / 1e6), "tokens": tokens,
            "seconds": round(took, 1), "mb_per_s": round(size / 1e6 / took, 2)}


def measure_first_step(corpus: Path, env: dict[str, str], repeats: int) -> dict:
    base = ["train", "--preset", "tiny", "--quiet", "--set", "tokenizer=gpt2",
            "--set", "max_steps=1", "--set", "warmup_steps=0", *SMALL]
    times: dict[str, list[float]] = {"builtin": [], "corpus": []}
    for name in times:  # the first run of each: builtin's cache is made here
        gptdash([*base, "--set", f"corpus={corpus if name == 'corpus' else 'builtin'}"],
                env, timeout=600)
    for _ in range(repeats):
        for name in times:
            took, _, _ = gptdash([*base, "--set",
                                  f"corpus={corpus if name == 'corpus' else 'builtin'}"],
                                 env, timeout=600)
            times[name].append(took)
    data: dict[str, list[float]] = {"builtin": [], "corpus": []}
    for _ in range(repeats):
        for name in data:
            data[name].append(_data_start(str(corpus) if name == "corpus" else "builtin", env))
    med = {name: statistics.median(t) for name, t in times.items()}
    med_data = {name: statistics.median(t) for name, t in data.items()}
    return {"bench": "first_step", "corpus_gb": round(sum(
        f.stat().st_size for f in corpus.iterdir()) / GB, 3), "repeats": repeats,
        "builtin_s": round(med["builtin"], 2), "corpus_s": round(med["corpus"], 2),
        "difference_s": round(med["corpus"] - med["builtin"], 2),
        "data_builtin_s": round(med_data["builtin"], 3),
        "data_corpus_s": round(med_data["corpus"], 3),
        "all": {name: [round(t, 2) for t in ts] for name, ts in times.items()}}


def _data_start(corpus: str, env: dict[str, str]) -> float:
    """What a run does with its corpus before its first step, timed in a fresh process:
    the check before it is queued, loading the prepared ids, one batch."""
    code = f"""
import time
import torch
t = time.perf_counter()
from gptcore.data import check_corpus, load_data
from storage.home import cache_dir
check_corpus({corpus!r}, "gpt2", 0.1, cache_dir(), 64)
data = load_data({corpus!r}, "gpt2", 0.1, cache_dir())
data.batch("train", 32, 64, torch.Generator().manual_seed(0))
print(time.perf_counter() - t)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    return float(out)


def write_token_file(folder: Path, total_bytes: int, seed: int = 1) -> None:
    """A nanoGPT-style pair: ``train.bin`` of random GPT-2 ids, ``total_bytes`` long, and a
    small ``val.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chunk = 1 << 27  # ids: 256 MB at a time
    left = total_bytes // 2
    with (folder / "train.bin").open("wb") as f:
        while left:
            n = min(chunk, left)
            rng.integers(0, 50257, n, dtype=np.uint16).tofile(f)
            left -= n
    rng.integers(0, 50257, 1 << 20, dtype=np.uint16).tofile(folder / "val.bin")


def measure_train_big(folder: Path, env: dict[str, str], steps: int) -> dict:
    args = ["train", "--preset", "tiny", "--quiet", "--set", f"corpus={folder}",
            "--set", "tokenizer=gpt2", "--set", f"max_steps={steps}", *SMALL,
            "--set", "eval_interval=100", "--set", "warmup_steps=10"]
    took, sampler, out = gptdash(args, env, timeout=3600)
    samples = sampler.samples
    # After start-up (model built, first steps): from a tenth of the way on.
    steady = [s for s in samples if s[0] >= samples[-1][0] * 0.1] or samples
    anon = [s[2] for s in steady]
    quarter = max(1, len(steady) // 4)
    return {"bench": "train_10gb", "train_bin_gb": round((folder / "train.bin").stat().st_size
                                                         / GB, 2),
            "steps": steps, "wall_s": round(took, 1), "samples": len(samples),
            "peak_rss_mb": round(sampler.peak / 1e6),
            "peak_anon_mb": round(sampler.peak_anon / 1e6),
            "anon_first_quarter_mb": round(statistics.median(anon[:quarter]) / 1e6),
            "anon_last_quarter_mb": round(statistics.median(anon[-quarter:]) / 1e6),
            "rss_first_quarter_mb": round(statistics.median(s[1] for s in steady[:quarter])
                                          / 1e6),
            "rss_last_quarter_mb": round(statistics.median(s[1] for s in steady[-quarter:])
                                         / 1e6),
            "summary": out.strip().splitlines()[-1][:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=REPO / "bench" / "out" / "data_scale")
    ap.add_argument("--sizes-gb", default="0.5,2", help="corpus sizes to prepare, GB")
    ap.add_argument("--token-gb", type=float, default=10.0, help="size of the train.bin")
    ap.add_argument("--steps", type=int, default=300, help="steps trained on the train.bin")
    ap.add_argument("--sample-mb", type=int, default=200,
                    help="text encoded by one tiktoken thread")
    ap.add_argument("--repeats", type=int, default=3, help="of each start-to-first-step run")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    sizes = sorted(float(s) for s in args.sizes_gb.split(","))
    home = args.dir / "home"
    env = {**os.environ, "GPTDASH_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("GPTDASH_DB_URL", None)
    env.pop("GPTDASH_ARTIFACTS", None)
    print(json.dumps({"bench": "machine", "cpus": os.cpu_count(),
                      "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                      "loadavg": os.getloadavg()}), flush=True)
    try:
        started = time.perf_counter()
        full = args.dir / f"corpus-{sizes[-1]:g}gb"
        files = generate(full, int(sizes[-1] * GB))
        print(json.dumps({"bench": "generate", "gb": sizes[-1], "files": len(files),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        corpora = []
        for size in sizes:
            folder = full if size == sizes[-1] else args.dir / f"corpus-{size:g}gb"
            if folder != full:
                subset(files, folder, int(size * GB))
            corpora.append(folder)
        results = []
        for folder in corpora:
            results.append(measure_prepare(folder, env))
            print(json.dumps({**results[-1], "loadavg": os.getloadavg()}), flush=True)
        single = measure_single_thread(full, args.sample_mb)
        single["prepare_vs_single"] = round(results[-1]["mb_per_s"] / single["mb_per_s"], 2)
        print(json.dumps({**single, "loadavg": os.getloadavg()}), flush=True)
        print(json.dumps({**measure_first_step(full, env, args.repeats),
                          "loadavg": os.getloadavg()}), flush=True)
        if args.token_gb > 0:
            started = time.perf_counter()
            tokens = args.dir / f"tokens-{args.token_gb:g}gb"
            write_token_file(tokens, int(args.token_gb * GB))
            print(json.dumps({"bench": "write_token_file", "gb": args.token_gb,
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
            print(json.dumps({**measure_train_big(tokens, env, args.steps),
                              "loadavg": os.getloadavg()}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
