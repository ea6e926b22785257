"""Keeping the database password out of what Ray shows.

Whatever a Ray job gets in its runtime environment, Ray shows to anyone who asks: `ray job
list`, the dashboard's `GET /api/jobs/` (unauthenticated unless the cluster uses token
authentication) and each node's ``runtime_env_agent.log``. So a job is given its database
URL without the password (after the user name or in the query as ``?password=``), and the
password in a file that libpq reads by itself (``PGPASSFILE``, the standard pgpass format):
``<artifacts>/secrets/pgpass-<digest>``, mode 0600 in a 0700 folder on the shared folder
every node reaches, readable only by the user the Ray nodes run as (the submitter's user). A
URL without a password passes as it is and no file is written: the nodes' own environment
(``PGPASSWORD``, ``~/.pgpass``, ``PGPASSFILE`` of ``ray start``) supplies it then.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sqlalchemy.engine import URL

from storage import home
from storage.diagnose import parse_url

PASSFILE_ENV = "PGPASSFILE"  # libpq's own variable: psycopg reads the password there
PASSWORD_PARAM = "password"  # libpq's connection parameter, also accepted in a URL's query


def db_env(url: str) -> dict[str, str]:
    """``GPTDASH_DB_URL`` for a Ray job's processes, and ``PGPASSFILE`` naming the file that
    holds its password when the URL has one: nothing in it is secret."""
    parsed = parse_url(url)
    # libpq takes the password after the user (user:pw@host) or as ?password=pw: either way
    # it leaves the URL for the file.
    in_query = parsed.query.get(PASSWORD_PARAM)
    if isinstance(in_query, tuple):  # ?password=a&password=b: libpq takes the last
        in_query = in_query[-1]
    password = parsed.password or in_query
    if not password:
        return {"GPTDASH_DB_URL": url}
    query = {k: v for k, v in parsed.query.items() if k != PASSWORD_PARAM}
    # (URL.set ignores a None: the URL is rebuilt without its password.)
    bare = URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port,
                      parsed.database, query).render_as_string(hide_password=False)
    entry = ":".join(_pgpass_field(part) for part in (
        parsed.host, parsed.port, parsed.database, parsed.username, password))
    passfile = _write_private(f"pgpass-{hashlib.sha256(bare.encode()).hexdigest()[:16]}",
                              f"{entry}\n")
    return {"GPTDASH_DB_URL": bare, PASSFILE_ENV: str(passfile)}


def _pgpass_field(value: object) -> str:
    """One field of a pgpass line; ``*`` (any) for what the URL leaves to libpq's default."""
    if value is None or value == "":
        return "*"
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


def _write_private(name: str, text: str) -> Path:
    """``text`` in ``<artifacts>/secrets/name``, readable by this user alone; replaced whole,
    so a job never reads half a file."""
    folder = home.artifacts_dir().resolve() / "secrets"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / name
    partial = folder / f".{name}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when a leftover of a killed writer had wider rights
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(partial, path)
    return path
