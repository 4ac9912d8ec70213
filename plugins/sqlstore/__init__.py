"""``sqlite:///…`` and ``postgresql://…``: the SQL store (SQLModel/SQLAlchemy, Alembic migrations).

This module is the entry point and stays light: SQLAlchemy is imported when a store is built.
"""

from __future__ import annotations

from legato.hookspecs import hookimpl


def open_sql_storage(url: str, **options):
    """Build a :class:`~legato.plugins.sqlstore.store.SqlStorage` for ``url``."""
    from .store import SqlStorage

    return SqlStorage(url, **options)


def postgresql_unavailable() -> str | None:
    """Why ``postgresql://`` cannot be used here (its driver is an extra), without importing it."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        return "the psycopg driver is not installed: pip install 'legato[postgres]'"
    return None


@hookimpl
def legato_register_storage(registry):
    registry.add("sqlite", open_sql_storage)
    registry.add("postgresql", open_sql_storage, unavailable=postgresql_unavailable)
