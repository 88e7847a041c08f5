"""Alembic's entry point: migrate on the connection `semlayout.monitoring.migrations.upgrade`
hands over (inside its transaction, holding its lock)."""

from alembic import context

from semlayout.monitoring.migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
