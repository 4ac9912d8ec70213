"""Alembic environment for the SQL store. Legato runs migrations itself (on open), handing the
connection in through ``config.attributes["connection"]``; no alembic.ini is involved."""

from alembic import context

from legato.plugins.sqlstore.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  version_table="legato_alembic_version")
with context.begin_transaction():
    context.run_migrations()
