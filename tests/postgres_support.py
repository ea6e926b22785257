"""A throwaway PostgreSQL 15 server for tests (Debian's ``postgresql`` package).

``start_server`` runs initdb and pg_ctl in a fresh folder under /tmp and
listens on 127.0.0.1 on a free port with trust authentication; ``stop`` shuts
it down and removes the folder. initdb refuses to run as root, so as root the
server runs as the ``postgres`` user (``runuser``), in a folder it owns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from itertools import count
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "gptdash"
# Durability is pointless for a server that lives as long as a test session; dropping it
# makes CREATE DATABASE and every commit several times faster.
_FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server; ``create_database`` gives each test its own database."""

    folder: Path
    port: int
    options: str = ""

    def __post_init__(self) -> None:
        self._names = count(1)

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server (psycopg 3)."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(sql)

    def create_database(self, template: str = "template1") -> str:
        """Create a database as a copy of ``template`` (default: empty) and return its name."""
        name = f"test_{next(self._names)}"
        # FILE_COPY: copying the files beats writing them all to the WAL (PostgreSQL 15's
        # default) for these small databases.
        self.admin(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        return name

    def database_at_head(self) -> str:
        """The URL of a new database that `gptdash db upgrade` brought to the schema head."""
        from storage.migrate import upgrade
        from storage.schema import make_engine

        url = self.url(self.create_database())
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection a test left open to it."""
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def halt(self) -> None:
        """Shut the server down at once, keeping its data (``resume`` starts it again)."""
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w",
              "stop"])

    def resume(self) -> None:
        """Start a halted server again, on the same port and data."""
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-o", self.options,
              "-l", str(self.folder / "server.log"), "-w", "start"])

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server is back in ~1 s."""
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-o", self.options,
              "-l", str(self.folder / "server.log"), "-m", "fast", "-w", "restart"])

    def stop(self) -> None:
        """Shut the server down at once and remove its folder."""
        subprocess.run(_as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"),
                                        "-m", "fast", "-w", "stop"]),
                       capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_server(*, durable: bool = False) -> PostgresServer:
    """initdb and start a server; RuntimeError with the reason if PostgreSQL 15 is missing.

    Tests skip durability (fsync and friends off); ``durable=True`` keeps PostgreSQL's
    defaults, for benchmarks.
    """
    if not (PG_BIN / "initdb").is_file():
        raise RuntimeError(f"PostgreSQL 15 is not installed ({PG_BIN / 'initdb'} is missing); "
                           "`make setup` installs it (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="gptdash-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    server = PostgresServer(folder, _free_port())
    try:
        _run([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
              "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
        options = f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1"
        if not durable:
            options += f" {_FAST}"
        server.options = options
        _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options,
              "-l", str(folder / "server.log"), "-w", "start"])
    except BaseException:
        server.stop()
        raise
    return server


def _run(args: list[str]) -> None:
    result = subprocess.run(_as_server_user(args), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
