"""Alembic migrations of the monitoring database, run by the store when it opens.

`upgrade(engine)` brings a database to the newest revision in one transaction, under a lock
(PostgreSQL: an advisory lock; SQLite: the write lock of `BEGIN IMMEDIATE`), so replicas that
start together migrate it once. A database that is already current costs one query.

The revisions live in `versions/` (`0001_baseline` is the schema as it was before migrations
existed: it only creates what is missing, so a SQLite file from an older version is adopted as
it is). The version is kept in the table `semlayout_schema_version` (not Alembic's default
name, so the database could be shared with another Alembic-managed application such as
MLflow without the two colliding). To add a column: copy the newest revision, set
`revision` / `down_revision`, `op.add_column(...)` in `upgrade()`, and add the column to
`semlayout.monitoring.schema`. A revision spells its tables out instead of importing
`schema.py` on purpose: it must build the schema as it was at that revision, whatever
`schema.py` says later (tests/test_monitoring_store.py checks that the revisions together build
exactly `schema.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

VERSION_TABLE = "semlayout_schema_version"
HERE = Path(__file__).parent
# any fixed 64-bit number: the key of the PostgreSQL advisory lock held while migrating
ADVISORY_LOCK_KEY = 0x5E31A70


def _config():  # -> alembic.config.Config
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def head() -> str:
    """The newest revision."""
    from alembic.script import ScriptDirectory

    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None
    return rev


def current(conn: Connection) -> str | None:
    """The database's revision; None when it has never been migrated."""
    import sqlalchemy as sa

    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    row = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
    return None if row is None else str(row[0])


def upgrade(engine: Engine) -> None:
    """Bring the database to `head()` (nothing to do: one read)."""
    import sqlalchemy as sa
    from alembic import command

    target = head()
    with engine.connect() as conn:
        if current(conn) == target:
            return
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, the write lock until commit
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        if current(conn) == target:  # another process migrated while we waited
            return
        cfg = _config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
