"""Alembic migrations of the gptdash database; run them through ``storage.migrate``."""
