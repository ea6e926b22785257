"""Persistence for gptdash: the home folder, the database schema, its migrations and RunStore."""
