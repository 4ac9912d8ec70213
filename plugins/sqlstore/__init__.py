"""``sqlite:///…`` and ``postgresql://…``: the SQL store (SQLModel/SQLAlchemy, Alembic migrations).

This module is the entry point and stays light: SQLAlchemy is imported when a store is built.
"""

from __future__ import annotations

from legato.hookspecs import hookimpl


def open_sql_storage(url: str, **options):
    """Build a :class:`~legato.plugins.sqlstore.store.SqlStorage` for ``url``."""
    from .store import SqlStorage

    return SqlStorage(url, **options)


@hookimpl
def legato_register_storage(registry):
    registry.add("sqlite", open_sql_storage)
    registry.add("postgresql", open_sql_storage)
