"""Persistence for gptdash: the home folder, the database schema and RunStore."""
