"""``legato store copy SRC_URL DST_URL``: move a store from one SQL database to another (e.g. from
a laptop's SQLite file to a team's PostgreSQL), registered through the ``legato.commands`` entry
point group.

Every table of the store is copied as it is (schema.py: definitions and their versions,
instances with their runs, step attempts, the timeline, logs, actions, permits held and tag
limits), keys and timestamps included, in one transaction on the target: a copy that fails leaves
the target as it was. Both stores are opened first (so both are migrated to the same revision).

- The target must hold no Legato rows, unless ``--force`` (they are deleted, in that transaction).
- The source must have no instance running (an unexpired lease): stop its workers first. Leases
  are copied released (``lease_expires`` empty), their generation kept: whoever resumes an
  instance from the target fences any writer left on the source.
- Verified afterwards by reading the target again: each table's row count and checksum (an
  order-free sum of the rows' SHA-256, ``lease_expires`` left out) must equal the source's.
- PostgreSQL's id sequences (timeline, logs, actions) are moved past the copied ids.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import click

CHUNK = 2000  # rows per INSERT batch (executemany) and per progress line
MOD = 1 << 256
# Tables with a generated id whose PostgreSQL sequence must follow the copied ids.
SERIAL = ("legato_events", "legato_logs", "legato_actions")
SKIPPED = {"legato_instances": ("lease_expires",)}  # copied as NULL: a lease is not moved


class CopyError(Exception):
    """The copy was refused or failed; the message says why and what to do."""


def _row_hash(values) -> int:
    text = json.dumps([v for v in values], default=repr, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def _tables():
    from .schema import metadata

    return [metadata.tables[name] for name in sorted(metadata.tables)]


def _summaries(conn, tables) -> dict[str, tuple[int, str]]:
    """(rows, checksum) of each table."""
    out = {}
    for table in tables:
        skip = set(SKIPPED.get(table.name, ()))
        columns = [c for c in table.columns if c.name not in skip]
        import sqlalchemy as sa

        count, total = 0, 0
        result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(sa.select(*columns))
        for row in result:
            count += 1
            total = (total + _row_hash(row)) % MOD
        out[table.name] = (count, f"{total:064x}")
    return out


def copy_store(source, target, *, force: bool = False, say: Callable[[str], None] = lambda line: None) -> dict:
    """Copy the opened SqlStorage ``source`` into ``target``; returns {table: (rows, checksum)}."""
    import sqlalchemy as sa

    tables = _tables()
    src_engine, dst_engine = source._engine, target._engine
    # One snapshot of the source for the whole copy: a read transaction (SQLite's deferred BEGIN,
    # which takes no write lock; PostgreSQL's REPEATABLE READ).
    src_conn = (src_engine.connect().execution_options(isolation_level="REPEATABLE READ")
                if source.dialect == "postgresql" else source._reading())
    with src_conn as src:
        running = src.execute(sa.text(
            f"SELECT instance_id, owner FROM legato_instances WHERE status IN ('CREATED', 'IN_PROGRESS', 'PAUSED') "
            f"AND lease_expires IS NOT NULL AND lease_expires > {source._now_sql()} LIMIT 3")).all()
        if running:
            held = ", ".join(f"{r.instance_id} (held by {r.owner})" for r in running)
            raise CopyError(f"{source.url} has instances running ({held}…): stop its workers (and any "
                            "`legato run`) first, or wait for their leases to expire")
        with dst_engine.begin() as dst:
            present = {t.name: dst.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in tables}
            if any(present.values()):
                rows = ", ".join(f"{n} in {name}" for name, n in present.items() if n)
                if not force:
                    raise CopyError(f"{target.url} is not empty ({rows}): copy into an empty store, or give "
                                    "--force to replace what it holds")
                say(f"--force: deleting what {target.url} holds ({rows})")
                for table in tables:
                    dst.execute(table.delete())
            for table in tables:
                total = src.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                done = 0
                skip = SKIPPED.get(table.name, ())
                result = src.execution_options(stream_results=True, yield_per=CHUNK).execute(sa.select(table))
                for chunk in result.partitions(CHUNK):
                    rows = [dict(r._mapping) for r in chunk]
                    for row in rows:
                        for name in skip:
                            row[name] = None
                    dst.execute(table.insert(), rows)
                    done += len(rows)
                    say(f"{table.name}: {done}/{total} rows")
                if not total:
                    say(f"{table.name}: 0 rows")
            if target.dialect == "postgresql":
                for name in SERIAL:
                    dst.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                        f"coalesce((SELECT max(id) FROM {name}), 0) + 1, false)")
        expected = _summaries(src, tables)
    with dst_engine.connect() as dst:
        got = _summaries(dst, tables)
    wrong = [name for name in expected if expected[name] != got[name]]
    if wrong:
        detail = "; ".join(f"{n}: source {expected[n][0]} rows {expected[n][1][:12]}, target {got[n][0]} rows "
                           f"{got[n][1][:12]}" for n in wrong)
        raise CopyError(f"the copy in {target.url} differs from {source.url} ({detail}); the target is "
                        "not to be used: copy again with --force")
    return got


# -- the command ------------------------------------------------------------------------------------

@click.group()
def store() -> None:
    """Work on whole stores: `legato store copy SRC_URL DST_URL`."""


@store.command("copy")
@click.argument("source_url", metavar="SRC_URL")
@click.argument("target_url", metavar="DST_URL")
@click.option("--force", is_flag=True, help="Replace what the target holds (by default a non-empty target is refused).")
def copy_command(source_url: str, target_url: str, force: bool) -> None:
    """Copy every definition, instance (with its runs, attempts, timeline and logs), action and
    permit from the store SRC_URL into DST_URL, e.g. from sqlite:///.legato/legato.db to
    postgresql://user@host/legato. Verified by each table's row count and checksum. Stop the
    source's workers first; then point workers and `--store` at the target."""
    import sys

    import trio

    from legato.cli.group import EXIT_INVALID
    from legato.storage import StorageError

    from .store import SqlStorage

    def say(line: str) -> None:
        click.echo(f"legato store copy: {line}", err=True)

    stores = []
    for url, which in ((source_url, "SRC_URL"), (target_url, "DST_URL")):
        if not url.startswith(("sqlite:", "postgresql")):
            click.echo(f"legato: {which} {url!r}: give a sqlite:///path.db or postgresql://user@host/db URL", err=True)
            sys.exit(EXIT_INVALID)
        try:
            stores.append(SqlStorage(url))
        except StorageError as exc:
            click.echo(f"legato: {which}: {exc}", err=True)
            sys.exit(EXIT_INVALID)
    source, target = stores
    if source.url == target.url:
        click.echo("legato: SRC_URL and DST_URL are the same store", err=True)
        sys.exit(EXIT_INVALID)
    if not source.exists():
        click.echo(f"legato: no Legato store at {source.path} (SRC_URL)", err=True)
        sys.exit(EXIT_INVALID)

    async def main():
        for s in stores:
            await s.open()
        try:
            return await trio.to_thread.run_sync(lambda: copy_store(source, target, force=force, say=say))
        finally:
            for s in stores:
                await s.aclose()

    try:
        summary = trio.run(main)
    except (CopyError, StorageError) as exc:
        click.echo(f"legato: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # a driver's error: say what failed, without a traceback
        click.echo(f"legato: the copy failed, the target is unchanged: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    total = sum(n for n, _ in summary.values())
    say(f"copied {total} rows, verified (counts and checksums):")
    for name, (n, checksum) in summary.items():
        click.echo(f"  {name:<28} {n:>9} rows  sha256-sum {checksum[:16]}")
