"""Metrics: scalars per (run, key, step) in long format, written in bulk, read for charts.

Part of ``storage.store.RunStore``. Bulk reads and writes use the Core table,
skipping the ORM's per-row work; long series are thinned in SQL before they
reach Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    Engine,
    Select,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    union,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import missing_run
from storage.ownership import writing
from storage.schema import Metric

if TYPE_CHECKING:
    import pandas as pd

METRIC_COLUMNS = ["run_id", "key", "step", "value", "wall_time"]
METRIC_DTYPES = {"run_id": "int64", "key": "object", "step": "int64", "value": "float64",
                 "wall_time": "float64"}

_metrics = Metric.__table__


def _metric_frame(rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """Build the long-format frame column by column (several times faster than from_records)."""
    # Imported here, not at the top: `gptdash list` should not wait for pandas and numpy.
    import numpy as np
    import pandas as pd

    columns = list(zip(*rows, strict=True)) if rows else [()] * len(METRIC_COLUMNS)
    # np.array(dtype=float64) also turns the NULL that SQLite stores for a NaN back into NaN.
    return pd.DataFrame({name: np.array(values, dtype=METRIC_DTYPES[name])
                         for name, values in zip(METRIC_COLUMNS, columns, strict=True)})


class MetricsMixin:
    """The ``metrics`` table: many rows per run, one per (key, step)."""

    engine: Engine

    def log_metrics(self, run_id: int, rows: Iterable[tuple[str, int, float, float]], *,
                    claim: int | None = None) -> None:
        """Write ``(key, step, value, wall_time)`` rows in one transaction.

        A row for an existing (run, key, step) replaces it; within one call the
        last row for a (key, step) wins. With ``claim`` (the run's owner), only while that
        claim owns the run (ClaimLost otherwise).
        """
        # Deduplicate first: one multi-row upsert may not touch the same row twice (PostgreSQL).
        latest = {(key, int(step)): (float(value), float(wall)) for key, step, value, wall in rows}
        if not latest:
            return
        params = [{"run_id": run_id, "key": key, "step": step, "value": value, "wall_time": wall}
                  for (key, step), (value, wall) in latest.items()]
        dialect = self.engine.dialect.name
        with writing(self.engine, run_id, claim) as session:
            try:
                if dialect in ("sqlite", "postgresql"):
                    stmt = _dialect_insert(dialect)(_metrics)
                    stmt = stmt.on_conflict_do_update(
                        index_elements=["run_id", "key", "step"],
                        set_={"value": stmt.excluded.value, "wall_time": stmt.excluded.wall_time},
                    )
                    session.execute(stmt, params)
                else:
                    c = _metrics.c
                    session.execute(
                        delete(_metrics).where(c.run_id == bindparam("b_run"),
                                               c.key == bindparam("b_key"),
                                               c.step == bindparam("b_step")),
                        [{"b_run": run_id, "b_key": p["key"], "b_step": p["step"]}
                         for p in params],
                    )
                    session.execute(insert(_metrics), params)
            except IntegrityError as exc:
                raise missing_run(run_id) from exc

    def metric_keys(self, run_ids: Sequence[int]) -> list[str]:
        """The metric keys any of these runs has logged, sorted."""
        keys: set[str] = set()
        with Session(self.engine) as session:
            for run_id in dict.fromkeys(run_ids):
                keys.update(session.scalars(_distinct_keys(run_id)))
        return sorted(keys)

    def metrics(
        self,
        run_ids: Sequence[int],
        keys: Sequence[str] | None = None,
        *,
        after_step: int | None = None,
        max_step: int | None = None,
    ) -> pd.DataFrame:
        """Metrics in long format (run_id, key, step, value, wall_time), sorted by run, key, step.

        ``after_step`` keeps only steps after it (exclusive), for reading just
        what is new since the last refresh; ``max_step`` is inclusive.
        """
        if not run_ids or (keys is not None and not keys):
            return _metric_frame([])
        c = _metrics.c
        stmt = select(c.run_id, c.key, c.step, c.value, c.wall_time).where(
            c.run_id.in_(list(run_ids)))
        if keys is not None:
            stmt = stmt.where(c.key.in_(list(keys)))
        if after_step is not None:
            stmt = stmt.where(c.step > after_step)
        if max_step is not None:
            stmt = stmt.where(c.step <= max_step)
        stmt = stmt.order_by(c.run_id, c.key, c.step)
        with Session(self.engine) as session:
            return _metric_frame(session.execute(stmt).all())

    def metrics_downsampled(
        self,
        run_ids: Sequence[int],
        key: str,
        *,
        buckets: int = 2000,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> pd.DataFrame:
        """One metric of several runs, thinned for plotting without losing spikes.

        A run with at most ``2 * buckets`` points in [min_step, max_step]
        comes back whole. A longer one is cut into ``buckets`` equal-width
        step ranges and each range keeps its lowest and its highest point,
        plus the run's first and last point, so no spike disappears. The work
        happens in SQL over the (run_id, key, step) index. Same columns as
        ``metrics``, sorted by run_id then step.
        """
        c = _metrics.c
        series = [c.key == key]
        if min_step is not None:
            series.append(c.step >= min_step)
        if max_step is not None:
            series.append(c.step <= max_step)
        cap = 2 * buckets
        frames = []
        with Session(self.engine) as session:
            small, large = [], []
            for run_id in dict.fromkeys(run_ids):
                count, lo, hi = session.execute(_extent(run_id, series, cap)).one()
                if count > cap:
                    large.append((run_id, lo, hi))
                elif count:
                    small.append(run_id)
            if small:
                stmt = (select(c.run_id, c.key, c.step, c.value, c.wall_time)
                        .where(c.run_id.in_(small), *series))
                frames.append(_metric_frame(session.execute(stmt).all()))
            for run_id, lo, hi in large:
                # Two queries, not one with ``step IN (subquery)``: PostgreSQL, without fresh
                # statistics on a table filled seconds ago, joined that as a nested loop over
                # every row (15 s for 100k points); a list of steps is an index lookup anywhere.
                steps = session.scalars(_extreme_steps(run_id, key, lo, hi, buckets)).all()
                stmt = (select(c.run_id, c.key, c.step, c.value, c.wall_time)
                        .where(c.run_id == run_id, c.key == key,
                               c.step.in_([step for step in steps if step is not None]))
                        .order_by(c.step))
                frames.append(_metric_frame(session.execute(stmt).all()))
        if not frames:
            return _metric_frame([])
        import pandas as pd

        frame = pd.concat(frames, ignore_index=True)
        return frame.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)

    def last_step(self, run_id: int, key: str) -> int | None:
        """The highest step logged for ``key``, or None if there is none yet."""
        stmt = select(func.max(_metrics.c.step)).where(
            _metrics.c.run_id == run_id, _metrics.c.key == key)
        with Session(self.engine) as session:
            return session.scalar(stmt)


def _extreme_steps(run_id: int, key: str, lo: int, hi: int, buckets: int) -> CompoundSelect:
    """SELECT the steps of the lowest and highest point of each equal-width bucket, and lo, hi.

    Bucket ``i`` holds the steps with ``(step - lo) * buckets // (hi - lo + 1) == i``.
    A recursive CTE lists each bucket's step bounds, and two correlated
    ``ORDER BY value LIMIT 1`` subqueries per bucket pick its extremes through
    a short range read of the (run_id, key, step) index. That reads every row
    about twice but sorts nothing big, several times faster on SQLite than a
    GROUP BY or window function over a computed bucket (which sorts all rows).
    """
    width = hi - lo + 1
    # BigInteger: i * width overflows a 32-bit integer on PostgreSQL for long runs.
    seed = select(literal(0, BigInteger).label("i")).cte("bucket", recursive=True)
    index = seed.union_all(select(seed.c.i + 1).where(seed.c.i < buckets - 1))
    bounds = select(
        (lo + (index.c.i * width + buckets - 1) // buckets).label("first"),
        (lo + ((index.c.i + 1) * width + buckets - 1) // buckets - 1).label("last"),
    ).cte("bounds")
    inner = _metrics.alias("inner")

    def extreme(*order: Any) -> Select:
        step = (select(inner.c.step)
                .where(inner.c.run_id == run_id, inner.c.key == key,
                       inner.c.step.between(bounds.c.first, bounds.c.last))
                .order_by(*order, inner.c.step)
                .limit(1)
                .correlate(bounds)
                .scalar_subquery())
        return select(step).select_from(bounds)

    # An empty bucket (steps logged sparsely) gives NULL; the caller drops those.
    return union(extreme(inner.c.value), extreme(inner.c.value.desc()),
                 select(literal(lo, BigInteger)), select(literal(hi, BigInteger)))


def _extent(run_id: int, series: list[Any], cap: int) -> Select:
    """SELECT (number of points capped at cap + 1, first step, last step) of one run's series.

    Separate scalar subqueries let min and max each be one index probe, and
    the capped count stops reading after ``cap + 1`` rows instead of counting
    a million.
    """
    c = _metrics.c
    rows = [c.run_id == run_id, *series]
    capped = select(c.step).where(*rows).limit(cap + 1).subquery()
    return select(
        select(func.count()).select_from(capped).scalar_subquery(),
        select(func.min(c.step)).where(*rows).scalar_subquery(),
        select(func.max(c.step)).where(*rows).scalar_subquery(),
    )


def _distinct_keys(run_id: int) -> Select:
    """SELECT the run's distinct metric keys by hopping from key to key through the index.

    A plain DISTINCT reads every metric row of the run; this recursive
    "loose index scan" does one index probe per key instead.
    """
    c = _metrics.c
    keys = select(func.min(c.key).label("key")).where(c.run_id == run_id).cte(
        "run_keys", recursive=True)
    inner = _metrics.alias("inner")
    following = (select(func.min(inner.c.key))
                 .where(inner.c.run_id == run_id, inner.c.key > keys.c.key)
                 .scalar_subquery())
    keys = keys.union_all(select(following).where(keys.c.key.is_not(None)))
    return select(keys.c.key).where(keys.c.key.is_not(None))




def _dialect_insert(dialect: str) -> Any:
    """The INSERT construct of ``dialect`` that knows ON CONFLICT.

    Imported on first write: the PostgreSQL dialect alone costs a CLI command ~0.1 s.
    """
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    from sqlalchemy.dialects.postgresql import insert as postgresql_insert

    return postgresql_insert
