"""The queue and the metric writes on SQLite and on PostgreSQL, side by side.

For each backend, on a fresh database at the latest schema:

- **claim latency**: ``--runs`` queued runs are claimed one at a time by one worker
  (``RunStore.claim_next_queued``, the call every worker makes); median and p95 ms.
- **contended claims**: ``--workers`` processes claim from one queue of ``--runs`` runs
  at once until it is empty; claims per second overall, and a check that every run
  was claimed exactly once.
- **metric rows/s**: ``RunStore.log_metrics`` with batches of 1, 100 and 1,000 rows
  (the training bridge writes about once a second, so 100 rows is a typical batch).

PostgreSQL is a throw-away Debian ``postgresql`` 15 server started here as the tests
do, but with its durable defaults (the tests turn fsync off), so both backends commit
to disk: SQLite in WAL mode with ``synchronous=NORMAL`` (the store's setting),
PostgreSQL with its defaults, on loopback.

    .venv/bin/python bench/storage_bench.py [--runs 200] [--workers 3] [--rows 20000]

Prints one JSON line per backend, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from storage.migrate import upgrade  # noqa: E402
from storage.schema import make_engine  # noqa: E402
from storage.store import RunStore  # noqa: E402
from tests.postgres_support import start_server  # noqa: E402

BATCHES = (1, 100, 1000)


def _queue(store: RunStore, n: int) -> list[int]:
    return [store.create_run(f"bench-{i}", {"preset": "tiny"}, max_steps=100) for i in range(n)]


def claim_latency(url: str, runs: int) -> dict:
    store = RunStore(url)
    _queue(store, runs)
    times = []
    while True:
        start = time.perf_counter()
        got = store.claim_next_queued("bench", host="bench", pid=1)
        elapsed = time.perf_counter() - start
        if got is None:
            break
        times.append(elapsed * 1000)
    store.close()
    times.sort()
    return {"claims": len(times), "median_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2)}


def _claimer(url: str, name: str, out: mp.Queue, go: mp.Event) -> None:
    store = RunStore(url)
    go.wait()
    mine = []
    while (got := store.claim_next_queued(name, host="bench", pid=0)) is not None:
        mine.append(got.run_id)
    store.close()
    out.put(mine)


def contended(url: str, runs: int, workers: int) -> dict:
    store = RunStore(url)
    ids = _queue(store, runs)
    store.close()
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claimer, args=(url, f"w{i}", out, go)) for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every process has imported and connected before the start signal
    start = time.perf_counter()
    go.set()
    claimed = [out.get(timeout=300) for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    flat = [i for mine in claimed for i in mine]
    return {"workers": workers, "claims": len(flat), "claims_per_s": round(len(flat) / elapsed),
            "each_once": sorted(flat) == sorted(ids),
            "per_worker": [len(mine) for mine in claimed]}


def metric_rows(url: str, rows: int) -> dict:
    store = RunStore(url)
    result = {}
    for batch in BATCHES:
        run_id = store.create_run(f"metrics-{batch}", {}, status="running", max_steps=rows)
        n = min(rows, 2000) if batch == 1 else rows  # single-row commits are slow everywhere
        start = time.perf_counter()
        for first in range(0, n, batch):
            store.log_metrics(run_id, [("train/loss", s, 1.0 / (s + 1), time.time())
                                       for s in range(first, min(first + batch, n))])
        result[f"rows_per_s_batch_{batch}"] = round(n / (time.perf_counter() - start))
    store.close()
    return result


def bench(name: str, url_for, args) -> dict:
    out = {"backend": name}
    out["claim"] = claim_latency(url_for("claim"), args.runs)
    out["contended"] = contended(url_for("contended"), args.runs, args.workers)
    out.update(metric_rows(url_for("metrics"), args.rows))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="gptdash-storage-bench-") as tmp:
        results.append(bench("sqlite", lambda part: f"sqlite:///{Path(tmp) / part}.db", args))
    server = start_server(durable=True)  # the tests' server skips fsync; a benchmark must not
    try:
        def pg_url(part: str) -> str:
            server.admin(f"CREATE DATABASE bench_{part}")
            url = server.url(f"bench_{part}")
            engine = make_engine(url)
            upgrade(engine)  # `gptdash db upgrade`: RunStore never creates a server's schema
            engine.dispose()
            return url

        results.append(bench("postgresql", pg_url, args))
    finally:
        server.stop()

    for r in results:
        print(json.dumps(r))
    print()
    print("| backend | claim median | claim p95 | contended claims/s "
          f"({args.workers} processes) | each run once | rows/s, batch 1 | rows/s, batch 100 "
          "| rows/s, batch 1,000 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['claim']['median_ms']} ms | {r['claim']['p95_ms']} ms "
              f"| {r['contended']['claims_per_s']:,} | {r['contended']['each_once']} "
              f"| {r['rows_per_s_batch_1']:,} | {r['rows_per_s_batch_100']:,} "
              f"| {r['rows_per_s_batch_1000']:,} |")
    return 0 if all(r["contended"]["each_once"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
