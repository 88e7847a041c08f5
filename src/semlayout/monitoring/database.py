"""Where the monitoring store lives, and how its connections behave when storage fails.

`--db` (or `SEMLAYOUT_MONITOR_DB`) names one of two backends behind the same schema:
- a **SQLite file** (the embedded default, WAL mode): any path;
- a **PostgreSQL server**: `postgresql://[user[:password]@]host[:port]/dbname` (also
  `postgres://` and `postgresql+psycopg://`). A user or password left out of the URL comes from
  libpq's environment (`PGUSER`, `PGPASSWORD`), so a URL without secrets can sit in a config
  map while the credentials come from a secret.

`parse_db` tells the two apart by the URL scheme, so `--db postgresql://...` is never taken as
a relative file name. `open_engine` builds a SQLAlchemy engine with a connection pool:
- SQLite: every write transaction is `BEGIN IMMEDIATE` (the write lock up front, no upgrade
  deadlock), reads are `BEGIN` (WAL lets them run beside the writer), `busy_timeout` makes a
  second writer wait instead of failing;
- PostgreSQL (psycopg 3): a pre-ping on checkout, a connect timeout and a statement timeout,
  so a dead or hung server fails a request in seconds instead of hanging it.

Storage faults (disk full, a read-only file or server, the server restarting) reach callers as
`StoreUnavailable` with the driver's one-line reason; the API answers them with a JSON 503 and
`Retry-After`. No connection that saw a fault outlives it (`_FaultGuard`): every fault retires
the whole pool (`handle_error` reports it as a disconnect), and a connection opened while a
fault lasts — a SQLite handle that a read-only file system opened read-only for good, a socket
to a server that is restarting — is used once and closed, until a write commits again. So the
first request after the fault clears gets a connection that sees the storage as it is now.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semlayout.errors import SemlayoutError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine

BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5
PG_STATEMENT_TIMEOUT_MS = 15_000
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
DB_ENV = "SEMLAYOUT_MONITOR_DB"
# execution option marking a read-only unit of work (SQLite: a deferred BEGIN)
READ_OPTION = "semlayout_read"


class StoreUnavailable(SemlayoutError):
    """The monitoring store (or the feedback object store) cannot be read or written now: disk
    full, read-only, server down. Nothing of the request was stored; retrying later may work.
    The API answers 503 with `Retry-After`."""

    retry_after_s = 5


@dataclass(frozen=True)
class Database:
    """A parsed `--db` value: `url` for SQLAlchemy, `path` for a SQLite file (else None)."""

    url: URL
    path: Path | None

    @property
    def kind(self) -> str:
        return "sqlite" if self.path is not None else "postgresql"

    def describe(self) -> str:
        """The database for messages and logs: a path, or the URL without its password."""
        if self.path is not None:
            return str(self.path)
        return self.url.set(drivername="postgresql").render_as_string(hide_password=True)


def parse_db(db: str | os.PathLike[str] | Database) -> Database:
    """`--db` as a `Database`: a `postgresql://` URL is a server, anything else a SQLite path."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if isinstance(db, Database):
        return db
    text = os.fspath(db).strip()
    if not text:
        raise SemlayoutError("--db is empty: expected a SQLite file path or a postgresql:// URL")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in POSTGRES_SCHEMES:
        try:
            url = make_url(text).set(drivername="postgresql+psycopg")
        except (ArgumentError, ValueError) as err:
            raise SemlayoutError(f"--db: not a valid PostgreSQL URL ({err})") from None
        if not url.database:
            raise SemlayoutError(
                "--db: the PostgreSQL URL names no database; expected "
                "postgresql://[user[:password]@]host[:port]/DBNAME"
            )
        return Database(url, None)
    if scheme:
        raise SemlayoutError(
            f"--db: unsupported scheme '{scheme}://'; expected a SQLite file path or "
            "postgresql://[user[:password]@]host[:port]/DBNAME"
        )
    path = Path(text)
    from sqlalchemy.engine import URL as SAURL

    return Database(SAURL.create("sqlite+pysqlite", database=str(path)), path)


def reason_of(err: BaseException) -> str:
    """The driver's own words for a database error, one line, no SQL or parameters."""
    orig = getattr(err, "orig", None) or err
    text = " ".join(str(orig).split())
    return text[:300] or type(orig).__name__


def unavailable(err: BaseException, what: str = "monitoring store") -> StoreUnavailable:
    return StoreUnavailable(f"{what} unavailable: {reason_of(err)}")


def open_engine(db: Database) -> Engine:
    """A pooled engine for `db` (nothing connects until first use)."""
    import sqlalchemy as sa
    from sqlalchemy import event

    if db.path is not None:
        engine = sa.create_engine(
            db.url,
            poolclass=sa.QueuePool,
            pool_size=8,
            max_overflow=24,
            pool_timeout=30,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "do_connect", _sqlite_refuse_read_only(db.path))
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = sa.create_engine(
            db.url,
            pool_size=8,
            max_overflow=8,
            pool_timeout=10,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "semlayout",
                "options": f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}",
            },
        )
    _FaultGuard().install(engine)
    return engine


def _sqlite_refuse_read_only(path: Path) -> Any:
    """A `do_connect` hook: no connection to a file the process may not write. SQLite would
    open it read-only, and a process's connections to a file share its state: one opened on
    a read-only file system keeps the file read-only for every connection opened after it
    even once the file system is writable again (measured: for good, under steady load). So
    while the file cannot be written, opening fails like a write would."""
    import sqlite3

    def refuse(_dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        # access(2), not open(2): closing any descriptor of the file would drop SQLite's locks
        if path.exists() and not os.access(path, os.W_OK):
            raise sqlite3.OperationalError(f"attempt to write a readonly database ({path})")

    return refuse


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # the driver's own transaction handling off: the "begin" listener says BEGIN itself
    dbapi_conn.isolation_level = None
    for pragma in (
        f"busy_timeout = {BUSY_TIMEOUT_MS}",
        "journal_mode = WAL",
        "synchronous = NORMAL",
    ):
        dbapi_conn.execute(f"PRAGMA {pragma}")


def _sqlite_begin(conn: Any) -> None:
    read = conn.get_execution_options().get(READ_OPTION, False)
    conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


class _FaultGuard:
    """Retires the connections a storage fault may have spoiled (see the module docstring)."""

    def __init__(self) -> None:
        self.active = False  # a fault happened and no write has committed since
        self.fault_at = 0.0  # when the last fault happened (time.monotonic)

    def install(self, engine: Engine) -> None:
        from sqlalchemy import event

        event.listen(engine, "handle_error", self.on_error)
        event.listen(engine, "connect", self.on_connect)
        event.listen(engine, "checkin", self.on_checkin)
        event.listen(engine, "commit", self.on_commit)

    def on_error(self, ctx: Any) -> None:
        """A storage fault retires every pooled connection (SQLAlchemy's disconnect path); a
        constraint violation or a bug in a statement leaves the pool alone."""
        from sqlalchemy import exc

        err = ctx.sqlalchemy_exception
        if isinstance(err, exc.IntegrityError | exc.ProgrammingError | exc.DataError):
            return
        if isinstance(err, exc.DBAPIError) or isinstance(ctx.original_exception, OSError):
            self.active = True
            self.fault_at = time.monotonic()
            ctx.is_disconnect = True

    def on_connect(self, _dbapi_conn: Any, record: Any) -> None:
        record.info["opened_at"] = time.monotonic()
        if self.active:
            record.info["opened_in_fault"] = True

    def on_checkin(self, _dbapi_conn: Any, record: Any) -> None:
        # closed at once, not when next checked out: SQLite shares one WAL index (-shm) among
        # a process's connections to a file, and a read-only one opened during the fault stays
        # read-only until every connection to the file has closed
        if record is None or record.dbapi_connection is None:
            return
        info = record.info
        if info.get("opened_in_fault") or info.get("opened_at", 0.0) <= self.fault_at:
            record.invalidate()

    def on_commit(self, _conn: Any) -> None:
        self.active = False
