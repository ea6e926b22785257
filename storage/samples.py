"""Samples: text generated from a prompt at some step of a run.

Part of ``storage.store.RunStore``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import missing_run
from storage.ownership import writing
from storage.schema import Sample, utcnow

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_COLUMNS = ["step", "prompt", "text", "created_at"]


class SamplesMixin:
    """The ``samples`` table."""

    engine: Engine

    def log_sample(self, run_id: int, step: int, prompt: str, text: str, *,
                   claim: int | None = None, once: bool = False) -> None:
        """Record text generated from ``prompt`` at ``step`` (with ``claim``, only while that
        claim owns the run). ``once``: not again when the same sample is there already (a
        write retried after its connection dropped may have committed)."""
        with writing(self.engine, run_id, claim) as session:
            if once and session.scalar(
                    select(Sample.id).where(Sample.run_id == run_id, Sample.step == step,
                                            Sample.prompt == prompt, Sample.text == text)
                    .limit(1)) is not None:
                return
            try:
                session.add(Sample(run_id=run_id, step=step, prompt=prompt, text=text,
                                   created_at=utcnow()))
                session.flush()
            except IntegrityError as exc:
                raise missing_run(run_id) from exc

    def samples(self, run_id: int) -> pd.DataFrame:
        """The run's samples, newest step first: columns step, prompt, text, created_at."""
        import pandas as pd  # here, not at the top: `gptdash list` should not wait for pandas

        stmt = (select(Sample.step, Sample.prompt, Sample.text, Sample.created_at)
                .where(Sample.run_id == run_id)
                .order_by(Sample.step.desc(), Sample.id.desc()))
        with Session(self.engine) as session:
            rows = session.execute(stmt).all()
        frame = pd.DataFrame.from_records(rows, columns=SAMPLE_COLUMNS)
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        return frame.astype({"step": "int64"})
