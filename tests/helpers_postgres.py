"""A real PostgreSQL server for tests, started from the machine's own binaries.

`start_postgres()` runs `initdb` and `pg_ctl` in a fresh temporary folder on a free port
(listening on 127.0.0.1 only, its socket in that folder). PostgreSQL refuses to run as root,
so under root both run as the `postgres` user (`runuser`), in folders that user owns. The
binaries are looked up on PATH, then in /usr/lib/postgresql/*/bin; with none there the
fixtures skip with a message saying so (the only reason they skip).

Usable two ways:
- as pytest fixtures: `postgres` (one server per session) and `pg_url` (a fresh, empty
  database on it for each test): in a test module `import helpers_postgres as hp` then
  `postgres, pg_url = hp.postgres, hp.pg_url`;
- as a context manager outside pytest (the benchmarks): `with start_postgres() as pg: ...`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MISSING = "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"


def pg_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(found).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    as_user: list[str]  # the `runuser -u postgres --` prefix under root, else []
    options: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        subprocess.run(
            self.as_user + cmd, check=True, capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {self.options}"
        self._pg_ctl("-o", opts, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def sql(self, statement: str, database: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement)
            return list(cur.fetchall()) if cur.description else []

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def start_postgres(options: str = "") -> Iterator[PostgresServer]:
    """A running server for the block: `options` are extra `-c key=value` settings."""
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError(MISSING)
    root = Path(tempfile.mkdtemp(prefix="semlayout-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bindir, root, _free_port(), as_user, options)
    try:
        subprocess.run(
            as_user
            + [str(bindir / "initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres"]
            + ["-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if pg_bindir() is None:
        pytest.skip(MISSING)
    # fsync off: the tests kill and restart the server process, never the machine
    with start_postgres("-c fsync=off -c max_connections=200") as server:
        yield server


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.create_database()
