"""The monitoring database's migrations, oldest first (loaded by Alembic, not imported)."""
