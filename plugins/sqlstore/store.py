"""The SQL store: SQLite (the embedded default) and PostgreSQL through SQLAlchemy/SQLModel.

- Every call runs in a worker thread: nothing blocks the event loop. One exception: on SQLite the
  writes of one scheduling tick (commits, leases, new instances) share one transaction
  (:mod:`legato.plugins.sqlstore.group`), written on the event loop's thread when it is small and the
  write lock is free (a WAL commit without fsync takes tens of microseconds, less than the hop to
  a worker thread and back); a large one, or one that would wait, goes to the thread, and
  checkpoints (which fsync) always run there.
- :meth:`SqlStorage.commit` writes one instance's scheduling tick (group commit), after checking
  the instance's lease generation (fencing) inside the transaction.
- SQLite runs in WAL mode with a busy timeout; writers take the lock up front (``BEGIN
  IMMEDIATE``) so two writers never deadlock upgrading a read lock. ``synchronous=NORMAL``: a
  commit survives a crash of the process (what the crash tests check); add
  ``?synchronous=FULL`` to the URL to survive power loss too, at a cost per commit.
- The schema is created and upgraded by Alembic migrations when the store is opened; a store at
  the newest revision costs one query to open.
- On SQLite every call is plain SQL on one ``sqlite3`` connection: SQLAlchemy (and Alembic) are
  imported only to migrate, or when something asks for :attr:`SqlStorage._engine`. PostgreSQL
  runs the same SQL on one psycopg connection per store (:meth:`SqlStorage._pg_tx`; SQLAlchemy
  migrates, and serves tools such as ``legato store copy``). The PostgreSQL-only parts are the
  ``_pg_*`` helpers: lease expiry on the server's clock, claims that skip locked rows, advisory
  locks for run strategies, permits and migrations, calls run again across a lost connection,
  and LISTEN/NOTIFY wake-ups (:mod:`.pgwakeups`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import os
import re
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import trio

from legato import strategy
from legato.model import (ActionRecord, AttemptRecord, Batch, DefinitionVersion, Event, InstanceRecord, Lease, LogChunk,
                          SignalRecord)
from legato.processes import this_process
from legato.states import InstanceStatus, StepStatus
from legato.storage import StaleWrite, Storage, StorageError, VersionNotFound, parse_version

from .group import GroupCommit

HEAD = "0008"  # the newest migration: opening a store at another revision runs Alembic

# A new SQLite store is created at HEAD with these statements, what Alembic's migrations build
# (tests/test_sqlstore.py checks the two agree), so that the first run in a directory does not
# import SQLAlchemy and Alembic (~0.4 s). Update it with every new migration.
SQLITE_SCHEMA = (
    'CREATE TABLE legato_alembic_version (\n    version_num VARCHAR(32) NOT NULL,\n    CONSTRAINT legato_alembic_version_pkc PRIMARY KEY (version_num)\n)',
    'CREATE TABLE legato_definition_versions (\n    workflow_id VARCHAR NOT NULL,\n    version INTEGER NOT NULL,\n    document TEXT NOT NULL,\n    created_at FLOAT NOT NULL,\n    active BOOLEAN NOT NULL,\n    PRIMARY KEY (workflow_id, version)\n)',
    'CREATE TABLE legato_instances (\n    instance_id VARCHAR NOT NULL,\n    workflow_id VARCHAR NOT NULL,\n    version INTEGER NOT NULL,\n    status VARCHAR NOT NULL,\n    run_id INTEGER NOT NULL,\n    params TEXT NOT NULL,\n    request_id VARCHAR,\n    initiator VARCHAR NOT NULL,\n    created_at FLOAT NOT NULL,\n    started_at FLOAT,\n    ended_at FLOAT,\n    message TEXT NOT NULL,\n    owner VARCHAR,\n    lease_expires FLOAT,\n    generation INTEGER NOT NULL, owner_host VARCHAR, owner_pid INTEGER, owner_started BIGINT, owner_namespace VARCHAR, ancestors TEXT, run_strategy VARCHAR, workflow_concurrency INTEGER, unblocked_run INTEGER, run_ts FLOAT,\n    PRIMARY KEY (instance_id),\n    CONSTRAINT uq_legato_instances_request UNIQUE (workflow_id, request_id)\n)',
    'CREATE INDEX ix_legato_instances_workflow_created ON legato_instances (workflow_id, created_at)',
    'CREATE INDEX ix_legato_instances_status ON legato_instances (status)',
    'CREATE TABLE legato_attempts (\n    instance_id VARCHAR NOT NULL,\n    step_id VARCHAR NOT NULL,\n    attempt INTEGER NOT NULL,\n    status VARCHAR NOT NULL,\n    run_id INTEGER NOT NULL,\n    params TEXT,\n    outputs TEXT NOT NULL,\n    message TEXT NOT NULL,\n    created_at FLOAT NOT NULL,\n    started_at FLOAT,\n    ended_at FLOAT,\n    handle TEXT,\n    PRIMARY KEY (instance_id, step_id, attempt)\n)',
    'CREATE TABLE legato_events (\n    id INTEGER NOT NULL,\n    instance_id VARCHAR NOT NULL,\n    step_id VARCHAR,\n    attempt INTEGER NOT NULL,\n    status VARCHAR NOT NULL,\n    message TEXT NOT NULL,\n    ts FLOAT NOT NULL,\n    PRIMARY KEY (id)\n)',
    'CREATE INDEX ix_legato_events_instance ON legato_events (instance_id, id)',
    'CREATE TABLE legato_logs (\n    id INTEGER NOT NULL,\n    instance_id VARCHAR NOT NULL,\n    step_id VARCHAR NOT NULL,\n    attempt INTEGER NOT NULL,\n    stream VARCHAR NOT NULL,\n    text TEXT NOT NULL,\n    ts FLOAT NOT NULL,\n    PRIMARY KEY (id)\n)',
    'CREATE INDEX ix_legato_logs_instance ON legato_logs (instance_id, step_id, attempt, id)',
    'CREATE TABLE legato_actions (\n    id INTEGER NOT NULL,\n    instance_id VARCHAR NOT NULL,\n    step_id VARCHAR,\n    verb VARCHAR NOT NULL,\n    params TEXT NOT NULL,\n    requested_by VARCHAR NOT NULL,\n    requested_at FLOAT NOT NULL,\n    applied_at FLOAT,\n    outcome TEXT NOT NULL,\n    PRIMARY KEY (id)\n)',
    'CREATE INDEX ix_legato_actions_instance ON legato_actions (instance_id, id)',
    'CREATE TABLE legato_permits (\n    permit_key VARCHAR NOT NULL,\n    instance_id VARCHAR NOT NULL,\n    step_id VARCHAR NOT NULL,\n    attempt INTEGER NOT NULL,\n    acquired_at FLOAT NOT NULL,\n    PRIMARY KEY (permit_key, instance_id, step_id, attempt)\n)',
    'CREATE INDEX ix_legato_permits_holder ON legato_permits (instance_id, step_id, attempt)',
    'CREATE TABLE legato_tag_permits (\n    tag VARCHAR NOT NULL,\n    max_allowed INTEGER NOT NULL,\n    set_by VARCHAR NOT NULL,\n    set_at FLOAT NOT NULL,\n    PRIMARY KEY (tag)\n)',
    'CREATE INDEX ix_legato_instances_workflow_status ON legato_instances (workflow_id, status)',
    'CREATE TABLE legato_signals (\n    name VARCHAR NOT NULL,\n    seq INTEGER NOT NULL,\n    params TEXT NOT NULL,\n    request_id VARCHAR,\n    created_at FLOAT NOT NULL,\n    PRIMARY KEY (name, seq),\n    CONSTRAINT uq_legato_signals_request UNIQUE (name, request_id)\n)',
    'CREATE TABLE legato_trigger_checkpoints (\n    workflow_id VARCHAR NOT NULL,\n    trigger_key VARCHAR NOT NULL,\n    value TEXT NOT NULL,\n    fired_at FLOAT,\n    saved_at FLOAT NOT NULL,\n    PRIMARY KEY (workflow_id, trigger_key)\n)',
    'CREATE TABLE legato_trigger_pauses (\n    workflow_id VARCHAR NOT NULL,\n    paused_by VARCHAR NOT NULL,\n    paused_at FLOAT NOT NULL,\n    PRIMARY KEY (workflow_id)\n)',
)

# PostgreSQL: seconds a call goes on trying to reach a server that went away, and the backoff
# between tries (the first wait, the longest).
PG_RECONNECT_FOR = 30.0
# Seconds a transaction of the store may sit idle on the server before the server ends it (ours
# take milliseconds; one that idles is a frozen process holding locks that others wait for).
PG_IDLE_IN_TRANSACTION = 5.0
PG_BACKOFF = (0.05, 2.0)
# The key of the PostgreSQL advisory lock migrations take (any constant of Legato's own).
PG_MIGRATION_LOCK = 0x6C6567_61746F

# The tables of schema.py (tests/test_sqlstore.py checks the two agree).
TABLES = frozenset({"legato_definition_versions", "legato_instances", "legato_attempts", "legato_events",
                    "legato_logs", "legato_actions", "legato_permits", "legato_tag_permits",
                    "legato_trigger_checkpoints", "legato_trigger_pauses", "legato_signals"})
# The columns of legato_attempts, in the order of the tuples _write builds.
ATTEMPT_COLUMNS = ("instance_id", "step_id", "attempt", "status", "run_id", "params", "outputs", "message",
                   "created_at", "started_at", "ended_at", "handle")


def _libpq_uri(url: str) -> str:
    """A ``postgresql[+driver]://`` URL as libpq reads it (the driver name dropped)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest


def _row_class(cursor) -> type:
    names = tuple(d[0] for d in cursor.description)
    cls = _ROW_CLASSES.get(names)
    if cls is None:
        cls = _ROW_CLASSES[names] = collections.namedtuple("Row", names, rename=True)
    return cls


_ROW_CLASSES: dict[tuple[str, ...], type] = {}


def _named_row(cursor, values):
    """sqlite3 rows with attribute access by column name, like SQLAlchemy's."""
    return _row_class(cursor)._make(values)


class _RawSql:
    """Runs SQL with ``:name`` parameters on a sqlite3 connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def all(self, sql: str, params: Any = ()) -> list:
        return self.conn.execute(sql, params).fetchall()

    def first(self, sql: str, params: Any = ()):
        return self.conn.execute(sql, params).fetchone()

    def run(self, sql: str, params: Any = ()) -> None:
        self.conn.execute(sql, params)


class _SaSql:
    """The same on a SQLAlchemy connection (PostgreSQL)."""

    __slots__ = ("conn", "text")

    def __init__(self, conn) -> None:
        import sqlalchemy as sa

        self.conn = conn
        self.text = sa.text

    def all(self, sql: str, params: Any = None) -> list:
        return self.conn.execute(self.text(sql), params or {}).all()

    def first(self, sql: str, params: Any = None):
        return self.conn.execute(self.text(sql), params or {}).first()

    def run(self, sql: str, params: Any = None) -> None:
        self.conn.execute(self.text(sql), params or {})


class _PgSql:
    """The same on a psycopg connection: ``:name`` parameters become psycopg's ``%(name)s``."""

    __slots__ = ("conn",)

    def __init__(self, conn) -> None:
        self.conn = conn

    def all(self, sql: str, params: Any = None) -> list:
        return self.conn.execute(_pg_sql(sql), params or {}).fetchall()

    def first(self, sql: str, params: Any = None):
        return self.conn.execute(_pg_sql(sql), params or {}).fetchone()

    def run(self, sql: str, params: Any = None) -> None:
        self.conn.execute(_pg_sql(sql), params or {})


_PG_NAME = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """``:name`` parameters as psycopg's ``%(name)s`` (a cast ``::type`` is left alone; a literal
    ``%`` is doubled)."""
    return _PG_NAME.sub(r"%(\1)s", sql.replace("%", "%%"))


# A commit of at most this many rows and this much log text is written on the event loop's thread
# when the write lock is free (see the module docstring); a larger one in a worker thread.
INLINE_ROWS = 64
INLINE_LOG_CHARS = 16384
# The writer connection never checkpoints inside a commit (SQLite's automatic checkpoint would
# fsync on the event loop): once its commits have written about this many WAL pages (estimated),
# a passive checkpoint runs in a worker thread after the commit. SQLite's own default is 1000.
CHECKPOINT_PAGES = 1000
# The estimate: a small commit writes about 4-5 pages (each table's and index's last leaf), a
# large one a page per ROWS_PER_PAGE rows or so more.
PAGES_PER_COMMIT = 4
ROWS_PER_PAGE = 32


# One encoder for every value the store writes: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _dumps(value: Any) -> str:
    if not value and type(value) is dict:
        return "{}"  # most params and outputs: no encoder call
    return _encode(value)


class SqlStorage(Storage):
    """Storage on a SQL database: ``sqlite:///path/to.db`` or ``postgresql://user@host/db``."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        parts = urlsplit(url)
        self.dialect = parts.scheme.split("+")[0]
        self._query = dict(parse_qsl(parts.query))
        self._sa_engine = None  # SQLAlchemy's Engine: PostgreSQL's, or SQLite's once something asks for it
        self._opened = False
        self._writer: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one writer per process: SQLite allows one anyway
        self._log_cursors: dict[tuple, tuple[int, int]] = {}  # get_logs_since: (offset, id) read up to
        self._event_cursors: dict[str, tuple[int, int]] = {}  # get_timeline_since: (offset, row id) read up to
        self.path: Path | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the SQLite file we opened
        self._written: set[str] = set()  # instances this process committed to, to say what a loss took
        self._wakeups = None  # legato.wakeup's channel to this store's workers, made when first asked for
        self._wal_pages = 0  # WAL pages written since the last checkpoint (an estimate, see CHECKPOINT_PAGES)
        self._pg_retry = False  # PostgreSQL: the call under way is run again after a lost connection
        self._group = GroupCommit(self, INLINE_ROWS, INLINE_LOG_CHARS)  # SQLite's writes, a tick's in one transaction
        self._pg_writer = None  # PostgreSQL: the psycopg connection every call goes through (_pg_tx)
        if self.dialect == "sqlite":
            raw = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
            if not raw or raw == ":memory:":
                raise StorageError(f"{url!r}: give a file, e.g. sqlite:///.legato/legato.db")
            self.path = Path(raw).expanduser()
            self._synchronous, self._busy_ms = self._sqlite_options()
            try:
                st = self.path.stat()
            except FileNotFoundError:
                pass  # created when opened
            except (OSError, ValueError) as exc:  # a name too long, a file where a directory should be, a NUL
                raise StorageError(f"{url!r}: cannot use {raw!r:.80} as a database file: "
                                   f"{getattr(exc, 'strerror', None) or exc}; give the path of a database "
                                   "file, e.g. sqlite:///.legato/legato.db") from None
            else:
                if not stat.S_ISREG(st.st_mode):
                    raise StorageError(f"{url!r}: {raw!r:.80} is not a regular file; give the path of a "
                                       "database file, e.g. sqlite:///.legato/legato.db")
        elif self.dialect == "postgresql":
            import importlib.util

            if importlib.util.find_spec("psycopg") is None:
                raise StorageError(f"{url!r}: postgresql:// needs the psycopg driver: pip install 'legato[postgres]'")

    # -- opening ----------------------------------------------------------------------------

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        try:
            if self.dialect == "sqlite":
                self._prepare_sqlite_file()
                with self._init_lock():
                    writer = self._new_writer()
                    try:
                        self._migrate_sqlite(writer)
                    except BaseException:
                        writer.close()
                        raise
                    self._writer = writer
                    self._identity = self._file_identity()
            elif self.dialect == "postgresql":
                import sqlalchemy as sa

                url = sa.engine.make_url(self.url).set(drivername="postgresql+psycopg")
                self._sa_engine = sa.create_engine(url, pool_size=2, max_overflow=8)  # no pre-ping: a stale connection is a disconnect _pg_reconnecting runs again
                self._migrate()
                self._sa_engine.dispose()  # SQLAlchemy is for migrating and tools: the calls use _pg_tx
            else:
                raise StorageError(f"{self.url!r}: the sql store speaks sqlite:/// and postgresql://")
            self._opened = True
        except StorageError:
            raise
        except Exception as exc:
            raise self._explain(exc, "open") from None

    @property
    def _engine(self):
        """SQLAlchemy's Engine for this store (on SQLite built on first use: only migrations and
        tools need it)."""
        if self._sa_engine is None and self.dialect == "sqlite":
            self._sa_engine = self._sqlite_engine()
        return self._sa_engine

    @contextlib.contextmanager
    def _init_lock(self):
        """Processes opening one SQLite file at once take turns: switching a new file to WAL and
        migrating it are not things SQLite's busy timeout covers."""
        if self.path is None:
            yield
            return
        import fcntl

        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a+")
        except OSError:
            yield  # a read-only directory: nothing to migrate there anyway, let SQLite say why
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    _SQLITE_OPTIONS = ("synchronous", "busy_timeout")
    MAX_BUSY_TIMEOUT = 86400.0  # seconds; SQLite counts milliseconds in a 32-bit int

    def _sqlite_options(self) -> tuple[str, int]:
        """``?synchronous=`` and ``?busy_timeout=`` (seconds), checked when the URL is given so a
        typo is an invalid option (exit 2), not a failure halfway through a run."""
        unknown = sorted(set(self._query) - set(self._SQLITE_OPTIONS))
        if unknown:
            raise StorageError(f"{self.url}: unknown option {unknown[0]!r}; sqlite URLs take "
                               f"{' and '.join(self._SQLITE_OPTIONS)}")
        synchronous = self._query.get("synchronous", "NORMAL").upper()
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StorageError(f"{self.url}: synchronous must be OFF, NORMAL, FULL or EXTRA")
        text = self._query.get("busy_timeout", "30")
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= self.MAX_BUSY_TIMEOUT:  # NaN too
            raise StorageError(f"{self.url}: busy_timeout must be a number of seconds from 0 to "
                               f"{self.MAX_BUSY_TIMEOUT:g}, got {text!r:.40}")
        return synchronous, int(seconds * 1000)

    def _prepare_sqlite_file(self) -> None:
        path = self.path
        parent = path.parent if str(path.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory {parent} for {self.url}: {exc.strerror}") from None
        if path.exists() and not os.access(path, os.R_OK):
            raise StorageError(f"cannot read {path}: permission denied")

    def _configure(self, dbapi_conn) -> None:
        """Every SQLite connection: the busy timeout, WAL, the durability asked for."""
        path = self.path
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal" and os.access(path.parent, os.W_OK):
            raise StorageError(f"{path}: could not switch to WAL mode (journal_mode is {mode})")
        cur.execute(f"PRAGMA synchronous = {self._synchronous}")
        cur.close()

    def _new_writer(self) -> sqlite3.Connection:
        """The connection every call on SQLite uses (one at a time, under ``_lock``): outside
        SQLAlchemy, in autocommit mode, so a read sees the last commit and takes no lock, and a
        write takes the lock at its BEGIN IMMEDIATE."""
        conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            self._configure(conn)
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run in a thread (_checkpoint)
        except BaseException:
            conn.close()
            raise
        conn.row_factory = _named_row
        return conn

    def _sqlite_engine(self):
        import sqlalchemy as sa

        path, busy_ms = self.path, self._busy_ms
        engine = sa.create_engine(
            f"sqlite:///{path}",
            connect_args={"check_same_thread": False, "timeout": busy_ms / 1000, "isolation_level": None},
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record=None):
            self._configure(dbapi_conn)

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn):
            # pysqlite's own transaction handling is off (isolation_level=None); a writer takes
            # the write lock at BEGIN so it never fails halfway through upgrading a read lock. A
            # reader (see _reading) takes none: in WAL mode it sees the last commit at once,
            # whoever is writing.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("legato_read") else "BEGIN IMMEDIATE")

        return engine

    def _reading(self):
        """A connection for reads only: a plain (deferred) transaction that never waits for writers."""
        return self._engine.connect().execution_options(legato_read=True)

    @contextlib.contextmanager
    def _sql_tx(self, write: bool):
        """Plain SQL (``:name`` parameters) in one transaction: on SQLite on the one connection
        (a write takes the lock at BEGIN IMMEDIATE; a read runs outside any transaction, so it
        never waits), on PostgreSQL on its psycopg connection (:meth:`_pg_tx`)."""
        raw = self._writer
        if raw is None and self.dialect == "postgresql":
            with self._pg_tx(write) as sql:
                yield sql
            return
        if raw is None:
            with (self._engine.begin() if write else self._reading()) as conn:
                yield _SaSql(conn)
            return
        if not write or self._group.open:  # a read, or a write inside a group (group.py)
            yield _RawSql(raw)
            return
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield _RawSql(raw)
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")

    def _migrate_sqlite(self, conn: sqlite3.Connection) -> None:
        """One query when the store is up to date; Alembic (and SQLAlchemy) only when it is not."""
        try:
            row = conn.execute("SELECT version_num FROM legato_alembic_version").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not tables & TABLES:
                raise StorageError(
                    f"{self._where()} holds tables that are not Legato's ({', '.join(sorted(tables)[:5])}); "
                    "point --store at another database"
                ) from None
            if not tables:
                self._create_sqlite(conn)
                return
            row = None
        if row is not None and row[0] == HEAD:
            return
        self._upgrade()
        engine, self._sa_engine = self._sa_engine, None
        engine.dispose()  # SQLAlchemy's connections are for migrating only; the calls use ``conn``

    @staticmethod
    def _create_sqlite(conn: sqlite3.Connection) -> None:
        """An empty SQLite file becomes a store at HEAD in one transaction (under ``_init_lock``)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SQLITE_SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO legato_alembic_version (version_num) VALUES (?)", (HEAD,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        import sqlalchemy as sa

        with self._reading() as conn:
            inspector = sa.inspect(conn)
            tables = set(inspector.get_table_names())
            current = None
            if "legato_alembic_version" in tables:
                current = conn.exec_driver_sql("SELECT version_num FROM legato_alembic_version").scalar()
            elif tables and not tables & TABLES:
                raise StorageError(
                    f"{self._where()} holds tables that are not Legato's ({', '.join(sorted(tables)[:5])}); "
                    "point --store at another database"
                )
            if current == HEAD:
                return
        self._upgrade()

    def _upgrade(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self._engine.begin() as conn:
            if self.dialect == "postgresql":
                # Processes opening a new database at once take turns (SQLite's _init_lock): the
                # next one finds it migrated and Alembic does nothing.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _check_file(self) -> None:
        """The file we write to is still the one at our path. Deleted or replaced, SQLite goes on
        committing into the unlinked file and every write would vanish silently: say so instead.
        One stat per commit, against a commit's fsync-free write of a few pages."""
        if self._identity is None or self._file_identity() == self._identity:
            return
        lost = ", ".join(sorted(self._written)[:5]) + (" …" if len(self._written) > 5 else "")
        self._identity = None  # said once
        raise StorageError(
            f"the database {self.path} was deleted or replaced while Legato was writing to it: what this "
            f"process wrote is lost with it (instances {lost or 'none'}). Restore the file from a backup and "
            "run `legato resume`, or run the workflow again")

    def _where(self) -> str:
        return str(self.path) if self.path else self.url

    def _explain(self, exc: Exception, doing: str) -> StorageError:
        """Turn a driver error into a message that says what is wrong and what to do."""
        text = str(getattr(exc, "orig", exc))
        lower = text.lower()
        where = self._where()
        if "malformed" in lower:
            return _corrupt(where, text)
        if "file is not a database" in lower or "not a database" in lower:
            return StorageError(f"{where} is not a Legato database or is corrupt ({text}); "
                                "move it away or point --store at another file")
        if "readonly" in lower or "read-only" in lower or "unable to open" in lower or "permission" in lower:
            return StorageError(f"cannot write to {where} ({text}): check the file and its directory are writable")
        if "disk is full" in lower or "no space" in lower or "disk i/o" in lower:
            return StorageError(f"{where}: the disk is full ({text}); nothing committed before is lost. "
                                "Free space and run `legato resume`")
        if "locked" in lower or "busy" in lower:
            return StorageError(f"{where} stayed locked by another process while trying to {doing} ({text}); try again")
        return StorageError(f"{where}: could not {doing}: {text}")

    async def aclose(self) -> None:
        if self._opened:
            self._opened = False
            engine, self._sa_engine = self._sa_engine, None
            writer, self._writer = self._writer, None

            wakeups = self._wakeups if self.dialect == "postgresql" else None
            pg_writer, self._pg_writer = self._pg_writer, None

            def close() -> None:
                if wakeups is not None:
                    wakeups.close()  # sends what is owed: a `start --no-wait` exits right after
                if pg_writer is not None:
                    pg_writer.close()
                if writer is not None:
                    writer.close()
                if engine is not None:
                    engine.dispose()
                if self._written:
                    self._check_file()  # deleted after the last commit: the run's record is gone all the same

            await trio.to_thread.run_sync(close)

    # -- running in threads -------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any, doing: str) -> Any:
        if not self._opened:
            raise StorageError("the store is not open")

        def call():
            with self._lock:
                if self.dialect == "postgresql":
                    return self._pg_reconnecting(fn, args, doing)
                return self._explained(fn, args, doing)

        return await trio.to_thread.run_sync(call)

    def _pg_reconnecting(self, fn: Callable[..., Any], args: tuple, doing: str) -> Any:
        """``fn(*args)`` on PostgreSQL, run again with backoff while the server cannot be reached
        (a restart, a network cut), for up to PG_RECONNECT_FOR seconds. The transaction that was cut
        was rolled back by the server; run again it is fenced as the first was, so a worker
        whose lease lapsed meanwhile has its writes refused (StaleWrite). A connection lost after
        COMMIT was sent and before its answer came may have committed: a commit run again first
        looks whether its rows are there (``_pg_retry``: :meth:`_pg_landed`), so its timeline and
        log rows are never written twice."""
        delay, deadline = PG_BACKOFF[0], time.monotonic() + PG_RECONNECT_FOR
        self._pg_retry = False
        try:
            while True:
                try:
                    return self._explained(fn, args, doing)
                except StorageError as exc:
                    if not isinstance(exc.__context__, Exception) or not _pg_disconnected(exc.__context__) \
                            or time.monotonic() + delay > deadline:
                        raise
                time.sleep(delay)
                delay = min(delay * 2, PG_BACKOFF[1])
                self._pg_retry = True
        finally:
            self._pg_retry = False

    async def _write_tx(self, fn: Callable[..., Any], *args: Any, doing: str, rows: int = 1, chars: int = 0) -> Any:
        """A write: ``fn(*args)``, whose ``_sql_tx(write=True)`` is its transaction. On SQLite it
        shares one with the other writes of this tick (:mod:`legato.plugins.sqlstore.group`); elsewhere a
        transaction of its own in a worker thread."""
        if not self._opened:
            raise StorageError("the store is not open")
        if self._writer is None:
            return await self._run(fn, *args, doing=doing)
        return await self._group.write(fn, *args, doing=doing, rows=rows, chars=chars)

    def _explained(self, fn: Callable[..., Any], args: tuple, doing: str) -> Any:
        """``fn(*args)`` with driver errors turned into :class:`StorageError` saying what to do."""
        try:
            return fn(*args)
        except Exception as exc:
            converted = self._as_storage_error(exc, doing)
            if converted is exc:
                raise
            raise converted from None

    def _as_storage_error(self, exc: Exception, doing: str) -> Exception:
        """A driver error as the :class:`StorageError` that says what to do; any other as it is."""
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, (sqlite3.Error, OSError)) or _is_sqlalchemy_error(exc) or _is_psycopg_error(exc):
            return self._explain(exc, doing)
        return exc

    def _now_sql(self) -> str:
        if self.dialect == "sqlite":
            return "(julianday('now') - 2440587.5) * 86400.0"
        return "extract(epoch from clock_timestamp())::float8"  # the database's clock (numeric since PG 14)

    # -- definitions ---------------------------------------------------------------------------

    async def push_definition(self, workflow_id: str, document: dict[str, Any],
                              activate: bool = True) -> DefinitionVersion:
        return await self._run(self._push_definition, workflow_id, document, activate,
                               doing="store the definition")

    def _push_definition(self, workflow_id: str, document: dict[str, Any], activate: bool) -> DefinitionVersion:
        with self._sql_tx(write=True) as sql:
            return self._push_in(sql, workflow_id, _dumps(document), activate)

    def _push_in(self, sql, workflow_id: str, text: str, activate: bool = True) -> DefinitionVersion:
        # The active version first: what a run of an unchanged file finds, in one indexed read.
        active = sql.first("SELECT version, document, created_at FROM legato_definition_versions "
                           "WHERE workflow_id = :wid AND active", {"wid": workflow_id})
        if active is not None and active.document == text:
            return DefinitionVersion(workflow_id, active.version, json.loads(text), active.created_at, True)
        same = sql.first("SELECT version, created_at FROM legato_definition_versions "
                         "WHERE workflow_id = :wid AND document = :document ORDER BY version LIMIT 1",
                         {"wid": workflow_id, "document": text})
        if same is not None:
            if activate:
                self._activate_in(sql, workflow_id, same.version)
            return DefinitionVersion(workflow_id, same.version, json.loads(text), same.created_at, activate)
        last = sql.first("SELECT max(version) AS v FROM legato_definition_versions WHERE workflow_id = :wid",
                         {"wid": workflow_id})
        version = (last.v or 0) + 1
        now = time.time()
        if activate:
            sql.run("UPDATE legato_definition_versions SET active = :no WHERE workflow_id = :wid AND active",
                    {"no": False, "wid": workflow_id})
        sql.run("INSERT INTO legato_definition_versions (workflow_id, version, document, created_at, active) "
                "VALUES (:wid, :version, :document, :now, :active)",
                {"wid": workflow_id, "version": version, "document": text, "now": now, "active": activate})
        return DefinitionVersion(workflow_id, version, json.loads(text), now, activate, True)

    @staticmethod
    def _activate_in(sql, workflow_id: str, version: int) -> None:
        sql.run("UPDATE legato_definition_versions SET active = (version = :version) WHERE workflow_id = :wid",
                {"version": version, "wid": workflow_id})

    async def get_definition(self, workflow_id: str, version: str | int | None = None) -> DefinitionVersion | None:
        spec = parse_version(version)

        def read():
            query = "SELECT * FROM legato_definition_versions WHERE workflow_id = :wid"
            if spec == "active":
                query += " AND active"
            elif spec == "latest":
                query += " ORDER BY version DESC LIMIT 1"
            else:
                query += " AND version = :version"
            with self._sql_tx(write=False) as sql:
                row = sql.first(query, {"wid": workflow_id, "version": spec})
            return None if row is None else _version(workflow_id, row)

        return await self._run(read, doing="read the definition")

    async def list_workflows(self) -> list[str]:
        def read():
            with self._sql_tx(write=False) as sql:
                rows = sql.all("SELECT DISTINCT workflow_id FROM legato_definition_versions ORDER BY workflow_id", {})
            return [row.workflow_id for row in rows]

        return await self._run(read, doing="list the workflows")

    async def list_versions(self, workflow_id: str) -> list[DefinitionVersion]:
        def read():
            with self._sql_tx(write=False) as sql:
                rows = sql.all("SELECT * FROM legato_definition_versions WHERE workflow_id = :wid ORDER BY version",
                               {"wid": workflow_id})
            return [_version(workflow_id, row) for row in rows]

        return await self._run(read, doing="list the versions")

    async def activate(self, workflow_id: str, version: int) -> DefinitionVersion:
        def write():
            with self._sql_tx(write=True) as sql:
                row = sql.first("SELECT * FROM legato_definition_versions WHERE workflow_id = :wid "
                                "AND version = :version", {"wid": workflow_id, "version": version})
                if row is not None:
                    self._activate_in(sql, workflow_id, version)
            return row

        row = await self._write_tx(write, doing="activate the version")
        if row is None:
            raise VersionNotFound(await self._no_version(workflow_id, version))
        found = _version(workflow_id, row)
        found.active = True
        return found

    # -- instances ------------------------------------------------------------------------------

    async def create_instance(self, record: InstanceRecord, owner: str | None = None,
                              ttl: float = 0.0) -> tuple[InstanceRecord, bool]:
        found = await self._write_tx(self._create_instance, record, owner, ttl, doing="create the instance")
        if found[1] and found[0].queued:
            self.wakeups().notify()  # queued and committed: an idle worker picks it up now
        return found

    def _create_instance(self, record: InstanceRecord, owner: str | None, ttl: float) -> tuple[InstanceRecord, bool]:
        with self._sql_tx(write=True) as sql:
            return self._create_in(sql, record, owner, ttl)

    def wakeups(self):
        """On SQLite, the workers on this machine: each listens on a named pipe in
        ``<database>.workers/`` (:class:`legato.wakeup.FifoWakeups`). On PostgreSQL every process
        on the database, through LISTEN/NOTIFY (:class:`.pgwakeups.PgWakeups`)."""
        if self._wakeups is None:
            if self.dialect == "postgresql":
                from .pgwakeups import PgWakeups

                self._wakeups = PgWakeups(_libpq_uri(self.url))
                return self._wakeups
            from legato.wakeup import FifoWakeups, Wakeups

            self._wakeups = FifoWakeups(self.path.with_name(self.path.name + ".workers")) if self.path else Wakeups()
        return self._wakeups

    def _create_in(self, sql, record: InstanceRecord, owner: str | None, ttl: float) -> tuple[InstanceRecord, bool]:
        if record.request_id is not None:
            row = sql.first("SELECT * FROM legato_instances WHERE workflow_id = :wid AND request_id = :rid",
                            {"wid": record.workflow_id, "rid": record.request_id})
            if row is not None:
                return _instance(row), False
        arrival = strategy.Arrival(True)
        if record.run_strategy:  # in this transaction: two starts at once see each other
            self._lock_workflow(sql, record.workflow_id)
            if record.request_id is not None and self.dialect == "postgresql":
                # the same request committed by another start while we waited for the lock (two
                # trigger hosts firing one tick): answer with it rather than fail on the unique key
                row = sql.first("SELECT * FROM legato_instances WHERE workflow_id = :wid AND request_id = :rid",
                                {"wid": record.workflow_id, "rid": record.request_id})
                if row is not None:
                    return _instance(row), False
            arrival = strategy.on_arrival(record.run_strategy, record.workflow_concurrency,
                                          self._queue_in(sql, record, arriving=True), record.instance_id)
        now = time.time()
        if arrival.stop_queued:
            rows = sql.all("SELECT instance_id FROM legato_instances WHERE workflow_id = :wid AND status = 'CREATED' "
                           "AND generation = 0", {"wid": record.workflow_id})
            for row in rows:
                self._end_queued_in(sql, row.instance_id, arrival.stop_queued, now)
        if arrival.stopped:
            record.status, record.ended_at, record.message = InstanceStatus.STOPPED, now, arrival.stopped
            owner = None
        elif not arrival.start:
            owner = None  # its run strategy makes it wait: queued, for whoever's turn it becomes
        values = _instance_values(record)
        if owner is None:
            sql.run(f"INSERT INTO legato_instances ({', '.join(values)}, generation) "
                    f"VALUES ({', '.join(':' + k for k in values)}, 0)", values)
            if arrival.stopped:
                self._event_in(sql, strategy.stopped_event(record.instance_id, arrival.stopped, now))
            record.queued = not arrival.stopped
        else:  # taken by its creator, so that nobody sees it as abandoned before it runs
            sql.run(f"INSERT INTO legato_instances ({', '.join(values)}, generation, owner, lease_expires, "
                    f"owner_host, owner_pid, owner_started, owner_namespace) "
                    f"VALUES ({', '.join(':' + k for k in values)}, 1, :owner, {self._now_sql()} + :ttl, "
                    ":host, :pid, :started, :namespace)", {**values, "owner": owner, "ttl": ttl, **_holder()})
        return record, True

    # -- run strategies (legato.strategy decides; this store counts, in the caller's transaction) --

    def _lock_workflow(self, sql, workflow_id: str) -> None:
        """Serialise the strategy decisions of one workflow: SQLite's BEGIN IMMEDIATE does already;
        on PostgreSQL a transaction-scoped advisory lock on the workflow."""
        if self.dialect == "postgresql":
            sql.first("SELECT pg_advisory_xact_lock(hashtext(:wid))", {"wid": workflow_id})

    def _queue_in(self, sql, record: InstanceRecord, arriving: bool = False) -> strategy.Queue:
        """Counted in SQL, each up to what the decision needs (the strategy's limit), so that a
        start costs the same with a long queue as with none."""
        n = strategy.queue_limit(record)
        args = {"wid": record.workflow_id, "iid": record.instance_id, "at": record.created_at, "n": n}
        started = ("FROM legato_instances WHERE workflow_id = :wid AND status IN ('CREATED', 'IN_PROGRESS', "
                   "'PAUSED') AND generation > 0 AND instance_id <> :iid")
        running = sql.first(f"SELECT count(*) AS n FROM (SELECT 1 {started} LIMIT :n) AS r", args).n
        running_id = sql.first(f"SELECT instance_id {started} ORDER BY created_at, instance_id LIMIT 1", args) \
            if running else None
        before = "" if arriving else " AND (created_at < :at OR (created_at = :at AND instance_id < :iid))"
        queued = ("FROM legato_instances WHERE workflow_id = :wid AND status = 'CREATED' AND generation = 0 "
                  f"AND instance_id <> :iid{before}")
        ahead = sql.first(f"SELECT count(*) AS n FROM (SELECT 1 {queued} LIMIT :n) AS q", args).n
        ahead_id = sql.first(f"SELECT instance_id {queued} ORDER BY created_at DESC, instance_id DESC LIMIT 1",
                             args) if ahead else None
        blocked = None
        if record.run_strategy == strategy.STRICT:
            blocked = sql.first("SELECT instance_id FROM legato_instances WHERE workflow_id = :wid AND status = "
                                "'FAILED' AND (unblocked_run IS NULL OR unblocked_run < run_id) "
                                "ORDER BY created_at LIMIT 1", args)
        return strategy.Queue(running, running_id.instance_id if running_id else None, ahead,
                              ahead_id.instance_id if ahead_id else None, blocked.instance_id if blocked else None)

    def _end_queued_in(self, sql, instance_id: str, message: str, now: float, status: str = "STOPPED") -> None:
        sql.run("UPDATE legato_instances SET status = :status, ended_at = :now, message = :message "
                "WHERE instance_id = :iid AND status = 'CREATED' AND generation = 0",
                {"status": status, "now": now, "message": message, "iid": instance_id})
        self._event_in(sql, strategy.stopped_event(instance_id, message, now, status))

    async def end_queued(self, instance_id: str, status: InstanceStatus, message: str) -> InstanceRecord | None:
        def write():
            with self._sql_tx(write=True) as sql:
                row = sql.first("SELECT * FROM legato_instances WHERE instance_id = :iid AND status = 'CREATED' "
                                "AND generation = 0", {"iid": instance_id})
                if row is None:
                    return None
                self._end_queued_in(sql, instance_id, message, time.time(), status.value)
                return _instance(sql.first("SELECT * FROM legato_instances WHERE instance_id = :iid",
                                           {"iid": instance_id}))

        ended = await self._write_tx(write, doing="end the queued instance")
        if ended is not None:
            self.wakeups().notify()  # the ones queued behind it may start now
        return ended

    @staticmethod
    def _event_in(sql, e: Event) -> None:
        sql.run("INSERT INTO legato_events (instance_id, step_id, attempt, status, message, ts) "
                "VALUES (:iid, :sid, :attempt, :status, :message, :ts)",
                {"iid": e.instance_id, "sid": e.step_id, "attempt": e.attempt, "status": e.status,
                 "message": e.message, "ts": e.ts})

    def _startable_in(self, sql, record: InstanceRecord) -> bool:
        """Whether ``record`` may be taken now: any started one may; a queued one when its run
        strategy lets it start."""
        if not record.queued or not record.run_strategy:
            return True
        return strategy.may_start(record.run_strategy, record.workflow_concurrency, self._queue_in(sql, record))

    async def strategy_queue(self, instance_id: str) -> strategy.Queue:
        def read():
            with self._sql_tx(write=False) as sql:
                row = sql.first("SELECT * FROM legato_instances WHERE instance_id = :iid", {"iid": instance_id})
                return strategy.Queue() if row is None else self._queue_in(sql, _instance(row))

        return await self._run(read, doing="read the workflow's queue")

    async def unblock_workflow(self, workflow_id: str, by: str, ts: float) -> list[str]:
        def write():
            with self._sql_tx(write=True) as sql:
                rows = sql.all("SELECT instance_id FROM legato_instances WHERE workflow_id = :wid AND status = "
                               "'FAILED' AND (unblocked_run IS NULL OR unblocked_run < run_id) ORDER BY created_at",
                               {"wid": workflow_id})
                for row in rows:
                    sql.run("UPDATE legato_instances SET unblocked_run = run_id WHERE instance_id = :iid",
                            {"iid": row.instance_id})
                    self._event_in(sql, strategy.unblocked_event(row.instance_id, workflow_id, by, ts))
            return [row.instance_id for row in rows]

        return await self._write_tx(write, doing="unblock the workflow")

    async def start_instance(self, document: dict[str, Any], record: InstanceRecord, owner: str,
                             ttl: float) -> tuple[InstanceRecord, bool]:
        """push_definition + create_instance in one transaction (``record.version`` is set to
        the version the document gets)."""
        def start():
            with self._sql_tx(write=True) as sql:
                record.version = self._push_in(sql, record.workflow_id, _dumps(document)).version
                return self._create_in(sql, record, owner, ttl)

        steps = document.get("workflow", {}).get("steps") if isinstance(document.get("workflow"), dict) else None
        return await self._write_tx(start, doing="start the instance", rows=1 + len(steps or ()))

    async def commit(self, batch: Batch) -> None:
        if self._writer is None or not self._opened:
            await self._run(self._commit, batch, doing="commit")
        else:  # with the other writes of this tick (legato.plugins.sqlstore.group)
            await self._group.write(self._commit_in, batch, doing="commit", rows=_rows(batch),
                                    chars=sum(len(chunk.text) for chunk in batch.logs) if batch.logs else 0)
        self._notify_after(batch)
        await self._after_commit()

    async def _after_commit(self) -> None:
        if self._wal_pages >= CHECKPOINT_PAGES:
            self._wal_pages = 0
            try:
                await self._run(self._checkpoint, doing="checkpoint the write-ahead log")
            except StorageError:
                pass  # as SQLite's own checkpoint after a commit: the commit is durable, the log only grows

    def _checkpoint(self) -> None:
        if self._writer is not None:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _commit(self, batch: Batch) -> None:
        """PostgreSQL's commit, on the store's psycopg connection (:meth:`_pg_tx`): psycopg
        prepares the statements after a few uses and sends each table's rows with executemany,
        the statements after the fence's read in one pipeline with the COMMIT."""
        if self._pg_retry and self._pg_landed(batch):
            return  # the try the connection cut off did commit
        with self._pg_tx(True, pipeline=True) as sql:
            with sql.conn.cursor() as cur:
                self._write(cur.execute, cur.executemany, batch)

    def _pg_landed(self, batch: Batch) -> bool:
        """Whether ``batch`` was committed already (its first timeline or log row is there: a
        row's time, read off the clock as it was made, is as good as unique for one instance)."""
        if batch.events:
            iid, sid, attempt, status, _, ts = event_rows(batch.events[:1])[0]
            query = ("SELECT 1 AS x FROM legato_events WHERE instance_id = :iid AND attempt = :attempt AND ts = :ts "
                     "AND (status = :status OR status LIKE :prefix)")
            args = {"iid": iid, "attempt": attempt, "ts": ts, "status": status, "prefix": status + ",%"}
        elif batch.logs:
            chunk = batch.logs[0]
            query = ("SELECT 1 AS x FROM legato_logs WHERE instance_id = :iid AND step_id = :sid AND attempt = :attempt "
                     "AND ts = :ts")
            args = {"iid": chunk.instance_id, "sid": chunk.step_id, "attempt": chunk.attempt, "ts": chunk.ts}
        else:
            return False  # updates only: writing them again changes nothing
        with self._pg_tx(False) as sql:
            return sql.first(query, args) is not None

    @contextlib.contextmanager
    def _pg_tx(self, write: bool, pipeline: bool = False):
        """PostgreSQL's calls (as SQLite's on its writer): one psycopg connection per store, used
        by one call at a time (under ``_lock``), in autocommit mode so that a read is one
        statement; a write is one transaction. No SQLAlchemy per statement (it is for migrating
        and tools). A connection that fails is dropped: the next call opens another (and
        _pg_reconnecting runs the failed call again)."""
        import psycopg
        from psycopg.rows import namedtuple_row

        conn = self._pg_writer
        if conn is None or conn.closed:
            conn = self._pg_writer = psycopg.connect(
                _libpq_uri(self.url), autocommit=True, application_name="legato", row_factory=namedtuple_row,
                # A process frozen inside a transaction (SIGSTOP, a VM pause) would hold its rows'
                # locks, and so its instances, for ever: the server ends such a transaction.
                options=f"-c idle_in_transaction_session_timeout={int(PG_IDLE_IN_TRANSACTION * 1000)}")
        try:
            if pipeline:  # the statements after the fence's read go out together, COMMIT with them
                with conn.pipeline(), conn.transaction():
                    yield _PgSql(conn)
            elif write:
                with conn.transaction():
                    yield _PgSql(conn)
            else:
                yield _PgSql(conn)
        except psycopg.OperationalError:
            self._pg_writer = None
            conn.close()
            raise

    def _commit_in(self, batch: Batch) -> None:
        """SQLite's, in the group's transaction on the writer connection (statements prepared once
        per connection by the driver; no SQLAlchemy)."""
        raw = self._writer
        self._write(raw.execute, raw.executemany, batch)
        self._wal_pages += PAGES_PER_COMMIT + _rows(batch) // ROWS_PER_PAGE
        self._written.add(batch.instance_id)

    def _notify_after(self, batch: Batch) -> None:
        if batch.actions or batch.permits_released or batch.signals:
            # Whoever waits for them: legato.actions.wait_applied, steps here or in other
            # workers waiting for permits or signals, signal triggers.
            self.wakeups().notify()

    def _write(self, execute, executemany, batch: Batch) -> None:
        sql = self._sql
        row = execute(sql["fence"], (batch.instance_id,)).fetchone()
        if row is None:
            raise StorageError(f"instance {batch.instance_id} is not in {self._where()}")
        if batch.generation < row[0]:
            raise StaleWrite(f"instance {batch.instance_id} is now owned by {row[1]} "
                             f"(generation {row[0]}); this write carried {batch.generation}")
        if batch.attempts:
            executemany(sql["attempt"], [
                (r.instance_id, r.step_id, r.attempt, r.status.value, r.run_id,
                 None if r.params is None else _dumps(r.params), _dumps(r.outputs) if r.outputs else "{}",
                 r.message, r.created_at, r.started_at, r.ended_at,
                 None if r.handle is None else _dumps(r.handle))
                for r in batch.attempts.values()])
        if batch.events:
            executemany(sql["event"], event_rows(batch.events))
        if batch.logs:
            executemany(sql["log"], [
                (c.instance_id, c.step_id, c.attempt, c.stream, c.text, c.ts) for c in batch.logs])
        if batch.actions:
            now = time.time()
            executemany(sql["action"], [(now, outcome, action_id) for action_id, outcome in batch.actions])
        if batch.permits_released:
            iid = batch.instance_id
            executemany(sql["release"], [(iid, sid, attempt) for sid, attempt in batch.permits_released])
        if batch.signals:
            for name, params, request_id in batch.signals:
                self._signal_in(execute, name, params, request_id, time.time())
        if batch.instance is not None:
            r = batch.instance
            execute(sql["instance"], (
                r.status.value, r.run_id, _dumps(r.params), r.started_at, r.ended_at, r.message, r.instance_id))

    @property
    def _sql(self) -> dict[str, str]:
        statements = self.__dict__.get("_statements")
        if statements is None:
            p = "?" if self.dialect == "sqlite" else "%s"

            def marks(n: int) -> str:
                return ", ".join([p] * n)

            columns = ATTEMPT_COLUMNS
            keys = ("instance_id", "step_id", "attempt")
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
            statements = self.__dict__["_statements"] = {
                # On PostgreSQL the fence locks the row until the commit: under READ COMMITTED a
                # plain read would let another worker take the lease between it and the writes
                # (a frozen worker's late commit would then land); a claim skips the locked row.
                "fence": f"SELECT generation, owner FROM legato_instances WHERE instance_id = {p}"
                         + (" FOR UPDATE" if self.dialect == "postgresql" else ""),
                "attempt": f"INSERT INTO legato_attempts ({', '.join(columns)}) VALUES ({marks(len(columns))}) "
                           f"ON CONFLICT (instance_id, step_id, attempt) DO UPDATE SET {updates}",
                "event": "INSERT INTO legato_events (instance_id, step_id, attempt, status, message, ts) "
                         f"VALUES ({marks(6)})",
                "log": f"INSERT INTO legato_logs (instance_id, step_id, attempt, stream, text, ts) VALUES ({marks(6)})",
                "release": f"DELETE FROM legato_permits WHERE instance_id = {p} AND step_id = {p} AND attempt = {p}",
                "instance": f"UPDATE legato_instances SET status = {p}, run_id = {p}, params = {p}, started_at = {p}, "
                            f"ended_at = {p}, message = {p} WHERE instance_id = {p}",
                "action": f"UPDATE legato_actions SET applied_at = {p}, outcome = {p} WHERE id = {p} "
                          "AND applied_at IS NULL",
            }
        return statements

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        def read():
            with self._sql_tx(write=False) as sql:
                row = sql.first("SELECT * FROM legato_instances WHERE instance_id = :iid", {"iid": instance_id})
                if row is None:
                    self._confirm_missing(sql, "legato_instances", instance_id)
            return _instance(row) if row is not None else None

        return await self._run(read, doing="read the instance")

    def _confirm_missing(self, sql, table: str, instance_id: str) -> None:
        """A lookup by key found nothing: make sure the table agrees without its index (a full
        scan, on this rare path only). A corrupt index hides rows that `list` still shows; say the
        database is corrupt rather than answer "no such instance"."""
        if self.dialect != "sqlite":
            return
        found = sql.first(f"SELECT count(*) FROM {table} NOT INDEXED WHERE instance_id = :iid",
                          {"iid": instance_id})[0]
        if found:
            raise _corrupt(self._where(), f"an index of {table} has lost rows that the table holds")

    async def list_instances(self, workflow_id: str | None = None, limit: int = 50,
                             status: InstanceStatus | None = None) -> list[InstanceRecord]:
        def read():
            where = []
            if workflow_id is not None:
                where.append("workflow_id = :wid")
            if status is not None:
                where.append("status = :status")
            query = "SELECT * FROM legato_instances"
            if where:
                query += " WHERE " + " AND ".join(where)
            query += " ORDER BY created_at DESC LIMIT :limit"
            with self._sql_tx(write=False) as sql:
                rows = sql.all(query, {"wid": workflow_id, "status": status and status.value, "limit": limit})
            return [_instance(row) for row in rows]

        return await self._run(read, doing="list instances")

    async def find_instances(self, prefix: str, limit: int = 10) -> list[InstanceRecord]:
        def read():
            # substr, not LIKE: SQLite's LIKE ignores case and reads _ and % as wildcards
            with self._sql_tx(write=False) as sql:
                rows = sql.all("SELECT * FROM legato_instances WHERE substr(instance_id, 1, :n) = :prefix "
                               "ORDER BY instance_id LIMIT :limit", {"n": len(prefix), "prefix": prefix, "limit": limit})
            return [_instance(row) for row in rows]

        return await self._run(read, doing="find instances")

    def exists(self) -> bool:
        return self.path is None or self.path.exists()

    async def get_attempts(self, instance_id: str) -> list[AttemptRecord]:
        def read():
            with self._sql_tx(write=False) as sql:
                rows = sql.all("SELECT * FROM legato_attempts WHERE instance_id = :iid "
                               "ORDER BY created_at, step_id, attempt", {"iid": instance_id})
                if not rows:
                    self._confirm_missing(sql, "legato_attempts", instance_id)
            return [_attempt(row) for row in rows]

        return await self._run(read, doing="read attempts")

    async def get_timeline(self, instance_id: str) -> list[Event]:
        def read():
            with self._sql_tx(write=False) as sql:
                rows = sql.all("SELECT * FROM legato_events WHERE instance_id = :iid ORDER BY id", {"iid": instance_id})
            return expand_events(rows)

        return await self._run(read, doing="read the timeline")

    async def get_timeline_tail(self, instance_id: str, last: int) -> tuple[int, list[Event]]:
        def read():
            with self._sql_tx(write=False) as sql:
                # Counted in SQL (a row holds one event per comma-separated status, see
                # event_rows), then only the last rows read whole: a row holds at least one event.
                count = sql.first("SELECT COUNT(*) AS n_rows, MAX(id) AS last_id, "
                                  "SUM(LENGTH(status) - LENGTH(REPLACE(status, ',', ''))) AS commas "
                                  "FROM legato_events WHERE instance_id = :iid", {"iid": instance_id})
                rows = sql.all("SELECT * FROM legato_events WHERE instance_id = :iid ORDER BY id DESC LIMIT :n",
                               {"iid": instance_id, "n": max(0, last)}) if last > 0 else []
            total = int(count.n_rows or 0) + int(count.commas or 0)
            if count.last_id is not None:  # a follower starting from here reads only what comes after
                if len(self._event_cursors) > 64:
                    self._event_cursors.clear()
                self._event_cursors[instance_id] = (total, count.last_id)
            events = expand_events(reversed(rows))
            return total, events[max(0, len(events) - last):]

        return await self._run(read, doing="read the timeline")

    async def get_timeline_since(self, instance_id: str, offset: int) -> list[Event]:
        def read():
            done, last_id = self._event_cursors.get(instance_id, (0, 0))
            follow = bool(offset) and offset == done  # a follower's next poll: only rows after the last it read
            column = "+instance_id" if follow and self.dialect == "sqlite" else "instance_id"  # as get_logs_since
            query = f"SELECT * FROM legato_events WHERE {column} = :iid" + (" AND id > :last" if follow else "")
            with self._sql_tx(write=False) as sql:
                rows = sql.all(query + " ORDER BY id", {"iid": instance_id, "last": last_id})
            # A row may hold several events (expand_events): the offset counts events, not rows.
            events = expand_events(rows)
            total = (offset if follow else 0) + len(events)
            if rows:
                if len(self._event_cursors) > 64:
                    self._event_cursors.clear()
                self._event_cursors[instance_id] = (total, rows[-1].id)
            return events if follow else events[offset:]

        return await self._run(read, doing="read the timeline")

    async def get_logs(self, instance_id: str, step_id: str | None = None, attempt: int | None = None) -> list[LogChunk]:
        return await self.get_logs_since(instance_id, 0, step_id, attempt)

    async def get_logs_since(self, instance_id: str, offset: int, step_id: str | None = None,
                             attempt: int | None = None) -> list[LogChunk]:
        key = (instance_id, step_id, attempt)

        def read():
            done, last_id = self._log_cursors.get(key, (0, 0))
            follow = bool(offset) and offset == done  # a follower's next poll: only rows after the last it read
            # `+instance_id` keeps SQLite on the rowid range (the rows after the cursor) rather than
            # the instance's index, which would scan all of the instance's rows on each poll.
            column = "+instance_id" if follow and self.dialect == "sqlite" else "instance_id"
            query = f"SELECT * FROM legato_logs WHERE {column} = :iid"
            if step_id is not None:
                query += " AND step_id = :sid"
            if attempt is not None:
                query += " AND attempt = :attempt"
            if follow:
                query += " AND id > :last"
            query += " ORDER BY id"
            if offset and not follow:
                query += " LIMIT -1 OFFSET :off" if self.dialect == "sqlite" else " OFFSET :off"
            with self._sql_tx(write=False) as sql:
                rows = sql.all(query, {"iid": instance_id, "sid": step_id, "attempt": attempt, "last": last_id,
                                       "off": offset})
            if rows:  # ids of one instance grow: its single writer commits one batch after another
                if len(self._log_cursors) > 64:
                    self._log_cursors.clear()
                self._log_cursors[key] = (offset + len(rows), rows[-1].id)
            return [LogChunk(r.instance_id, r.step_id, r.attempt, r.stream, r.text, r.ts) for r in rows]

        return await self._run(read, doing="read logs")

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(self, instance_id: str, owner: str, ttl: float,
                            generation: int | None = None) -> int | None:
        return await self._write_tx(self._acquire_lease, instance_id, owner, ttl, generation, doing="take the lease")

    def _acquire_lease(self, instance_id: str, owner: str, ttl: float, renew: int | None) -> int | None:
        with self._sql_tx(write=True) as sql:
            return self._lease_in(sql, instance_id, owner, ttl, renew)[0]

    def _lease_in(self, sql, instance_id: str, owner: str, ttl: float, renew: int | None,
                  turn_checked: bool = False) -> tuple[int | None, Any]:
        """Take the lease in the caller's transaction: (the generation or None, the instance's row
        as it was). ``turn_checked``: the caller decided, in this transaction, that a queued
        instance may start."""
        now_sql = self._now_sql()
        lock = self._pg_claim_lock(renew) if self.dialect == "postgresql" else ""
        row = sql.first(f"SELECT *, {now_sql} AS now FROM legato_instances "
                        f"WHERE instance_id = :iid{lock}", {"iid": instance_id})
        if row is None:
            if lock.endswith("SKIP LOCKED") and self._pg_exists(sql, instance_id):
                return None, None  # another worker is claiming it (or its owner committing) right now
            raise StorageError(f"no instance {instance_id} in {self._where()}")
        if renew is not None and (row.owner != owner or row.generation != renew):
            return None, row  # a heartbeat of an owner that was replaced: take nothing back
        if not turn_checked and row.generation == 0 and row.status == "CREATED" and row.run_strategy:  # queued
            self._lock_workflow(sql, row.workflow_id)
            if not self._startable_in(sql, _instance(row)):
                return None, row  # not its turn yet
        if row.owner == owner:
            generation = row.generation  # renewal, even past expiry: nobody took it meanwhile
        elif row.owner is None or not _lease(row).live:
            generation = row.generation + 1  # free, expired or its holder dead: take it, fencing the old owner
        else:
            return None, row
        sql.run(f"UPDATE legato_instances SET owner = :owner, lease_expires = {now_sql} + :ttl, generation = :gen, "
                f"{_HOLDER} WHERE instance_id = :iid",
                {"owner": owner, "ttl": ttl, "gen": generation, "iid": instance_id, **_holder()})
        return generation, row

    @staticmethod
    def _pg_claim_lock(renew: int | None) -> str:
        """PostgreSQL: a claim skips a row another transaction holds (another worker claiming it,
        its owner committing: either way not ours to take now) instead of queuing behind it; a
        renewal waits for its row."""
        return " FOR UPDATE" if renew is not None else " FOR UPDATE SKIP LOCKED"

    @staticmethod
    def _pg_exists(sql, instance_id: str) -> bool:
        return sql.first("SELECT 1 AS x FROM legato_instances WHERE instance_id = :iid", {"iid": instance_id}) is not None

    async def get_lease(self, instance_id: str) -> Lease | None:
        def read():
            with self._sql_tx(write=False) as sql:
                row = sql.first(f"SELECT {_LEASE_COLUMNS}, {self._now_sql()} AS now FROM legato_instances "
                                "WHERE instance_id = :iid", {"iid": instance_id})
            return None if row is None or row.owner is None else _lease(row)

        return await self._run(read, doing="read the lease")

    async def release_lease(self, instance_id: str, owner: str) -> None:
        def release():
            with self._sql_tx(write=True) as sql:
                sql.run("UPDATE legato_instances SET lease_expires = NULL WHERE instance_id = :iid AND owner = :owner",
                        {"iid": instance_id, "owner": owner})
                # An ended instance frees its slot: are instances of its workflow queued behind it?
                waiting = sql.first("SELECT 1 AS w FROM legato_instances AS q JOIN legato_instances AS e "
                                    "ON q.workflow_id = e.workflow_id WHERE e.instance_id = :iid AND e.status NOT IN "
                                    "('CREATED', 'IN_PROGRESS', 'PAUSED') AND q.status = 'CREATED' "
                                    "AND q.generation = 0 LIMIT 1", {"iid": instance_id})
            return waiting is not None

        if await self._write_tx(release, doing="release the lease"):
            self.wakeups().notify()

    def _unfinished(self, live: bool, limit: int) -> list[tuple[InstanceRecord, Lease | None]]:
        """Unfinished instances whose lease is live (or not), oldest first. Expiry is decided in
        SQL; whether the holder of an unexpired lease is dead, here (it takes /proc)."""
        now_sql = self._now_sql()
        unexpired = f"owner IS NOT NULL AND lease_expires IS NOT NULL AND lease_expires > {now_sql}"
        out: list[tuple[InstanceRecord, Lease | None]] = []
        # list_resumable finds the queued instances of a run strategy on its own (those it lets start)
        queued = "" if live else f" AND NOT ({_STRATEGY_QUEUED})"
        with self._sql_tx(write=False) as sql:
            rows = sql.all(
                f"SELECT *, {now_sql} AS now FROM legato_instances WHERE status IN ('CREATED', 'IN_PROGRESS', "
                f"'PAUSED') AND {'' if live else 'NOT '}({unexpired}){queued} ORDER BY created_at LIMIT :limit",
                {"limit": limit})
            if live:
                return [(_instance(r), _lease(r)) for r in rows if _lease(r).live]
            out = [(_instance(r), None) for r in rows]
            if len(out) < limit:  # unexpired leases whose holder died on this machine are free too
                rows = sql.all(
                    f"SELECT *, {now_sql} AS now FROM legato_instances WHERE status IN ('CREATED', 'IN_PROGRESS', "
                    f"'PAUSED') AND {unexpired} ORDER BY created_at", {})
                out += [(_instance(r), None) for r in rows if not _lease(r).live]
                out.sort(key=lambda pair: pair[0].created_at)
        return out[:limit]

    async def list_resumable(self, limit: int = 100) -> list[InstanceRecord]:
        """Instances not yet ended whose lease is not live; a queued one only when its run
        strategy lets it start now."""
        def read():
            with self._sql_tx(write=False) as sql:
                return [record for record, _ in self._resumable_in(sql, limit)]

        return await self._run(read, doing="list resumable instances")

    def _resumable_in(self, sql, limit: int, claiming: bool = False) -> list[tuple[InstanceRecord, bool]]:
        """What list_resumable lists, each with whether it is a queued one its run strategy lets
        start (``claiming``: decided under the workflow's lock, for leases taken in ``sql``)."""
        out = [(record, False) for record, _ in self._unfinished(False, limit)]
        for wid in sql.all(f"SELECT DISTINCT workflow_id FROM legato_instances WHERE {_STRATEGY_QUEUED}"):
            if claiming:
                self._lock_workflow(sql, wid.workflow_id)
            out += [(record, True) for record in self._startable_queued(sql, wid.workflow_id, limit)]
        out.sort(key=lambda pair: (pair[0].created_at, pair[0].instance_id))
        return out[:limit]

    async def claim_resumable(self, owner: str, ttl: float, limit: int = 100,
                              skip=frozenset()) -> list[tuple[InstanceRecord, int]]:
        """list_resumable and the leases of what it lists, in one transaction: the queued
        instances' turns are decided once per workflow, not once per instance."""
        return await self._write_tx(self._claim, owner, ttl, limit, frozenset(skip), doing="claim instances",
                                    rows=1 + limit // 4)

    def _claim(self, owner: str, ttl: float, limit: int, skip: frozenset) -> list[tuple[InstanceRecord, int]]:
        out: list[tuple[InstanceRecord, int]] = []
        with self._sql_tx(write=True) as sql:
            for record, turn in self._resumable_in(sql, limit + len(skip), claiming=True):
                if len(out) >= limit:
                    break
                if record.instance_id in skip:
                    continue
                generation, row = self._lease_in(sql, record.instance_id, owner, ttl, None, turn_checked=turn)
                if generation is not None:
                    out.append((_instance(row), generation))
        return out

    def _startable_queued(self, sql, workflow_id: str, limit: int) -> list[InstanceRecord]:
        """The queued instances of ``workflow_id`` its run strategy lets start now, first in first
        (decided by the oldest one's strategy; the claim checks each)."""
        query = (f"SELECT * FROM legato_instances WHERE workflow_id = :wid AND {_STRATEGY_QUEUED} "
                 "ORDER BY created_at, instance_id LIMIT :n")
        head = sql.first(query, {"wid": workflow_id, "n": 1})
        if head is None:
            return []
        first = _instance(head)
        n = min(limit, strategy.slots(first.run_strategy, first.workflow_concurrency, self._queue_in(sql, first)))
        if n <= 0:
            return []
        return [first] if n == 1 else [_instance(r) for r in sql.all(query, {"wid": workflow_id, "n": n})]

    async def list_leased(self, limit: int = 100) -> list[tuple[InstanceRecord, Lease]]:
        return await self._run(self._unfinished, True, limit, doing="list leased instances")

    # -- actions ----------------------------------------------------------------------------------

    async def request_action(self, instance_id: str, verb: str, *, step_id: str | None = None,
                             params: dict[str, Any] | None = None, requested_by: str) -> ActionRecord:
        record = ActionRecord(0, instance_id, verb, step_id, dict(params or {}), requested_by, time.time())

        def write():
            with self._sql_tx(write=True) as sql:
                row = sql.all("INSERT INTO legato_actions (instance_id, step_id, verb, params, requested_by, "
                              "requested_at, outcome) VALUES (:iid, :sid, :verb, :params, :by, :at, '') RETURNING id",
                              {"iid": instance_id, "sid": step_id, "verb": verb, "params": _dumps(record.params),
                               "by": requested_by, "at": record.requested_at})
            record.id = row[0][0]
            return record

        return await self._write_tx(write, doing="record the action")

    async def pending_actions(self, instance_ids) -> list[ActionRecord]:
        ids = list(dict.fromkeys(instance_ids))

        def read():
            out = []
            with self._sql_tx(write=False) as sql:
                for start in range(0, len(ids), 500):  # bounded statements, whatever the number of runs
                    chunk = ids[start:start + 500]
                    names = {f"i{n}": iid for n, iid in enumerate(chunk)}
                    out += sql.all("SELECT * FROM legato_actions WHERE applied_at IS NULL AND instance_id IN "
                                   f"({', '.join(':' + k for k in names)}) ORDER BY id", names)
            return sorted((_action(r) for r in out), key=lambda a: a.id)

        if not ids:
            return []
        return await self._run(read, doing="read pending actions")

    async def mark_action_applied(self, action_id: int, outcome: str) -> bool:
        def write():
            with self._sql_tx(write=True) as sql:
                row = sql.first("SELECT applied_at FROM legato_actions WHERE id = :id", {"id": action_id})
                if row is None or row.applied_at is not None:
                    return False
                sql.run("UPDATE legato_actions SET applied_at = :now, outcome = :outcome WHERE id = :id",
                        {"now": time.time(), "outcome": outcome, "id": action_id})
            return True

        return await self._write_tx(write, doing="mark the action applied")

    async def list_actions(self, instance_id: str) -> list[ActionRecord]:
        def read():
            with self._sql_tx(write=False) as sql:
                rows = sql.all("SELECT * FROM legato_actions WHERE instance_id = :iid ORDER BY id", {"iid": instance_id})
            return [_action(r) for r in rows]

        return await self._run(read, doing="list the actions")
    # -- permits ----------------------------------------------------------------------------------

    async def acquire_permits(self, requests):
        return await self._write_tx(self._acquire_permits, requests, doing="take permits")

    def _acquire_permits(self, requests) -> list:
        now_sql = self._now_sql()
        answers: list = []
        with self._sql_tx(write=True) as sql:
            if self.dialect == "postgresql":  # SQLite's BEGIN IMMEDIATE serialises writers already
                for key in sorted({key for _, wants in requests for key, _ in wants}):
                    sql.run("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", {"key": key})
            limits: dict[str, int | None] = {}
            pruned: set[str] = set()
            for (iid, sid, attempt), wants in requests:
                holder = {"iid": iid, "sid": sid, "attempt": attempt}
                blocked = None
                for key, limit in wants:
                    if key.startswith("tag:"):
                        if key not in limits:
                            row = sql.first("SELECT max_allowed FROM legato_tag_permits WHERE tag = :tag",
                                            {"tag": key[4:]})
                            limits[key] = None if row is None else row.max_allowed
                        if limits[key] is not None:
                            limit = limits[key]
                    if limit is None:
                        continue
                    if key not in pruned:  # holders whose instance's lease is not live hold nothing
                        pruned.add(key)
                        sql.run("DELETE FROM legato_permits WHERE permit_key = :key AND NOT EXISTS (SELECT 1 FROM "
                                "legato_instances i WHERE i.instance_id = legato_permits.instance_id AND "
                                f"i.lease_expires IS NOT NULL AND i.lease_expires > {now_sql})", {"key": key})
                    held = sql.first("SELECT count(*) AS n FROM legato_permits WHERE permit_key = :key AND NOT "
                                     "(instance_id = :iid AND step_id = :sid AND attempt = :attempt)",
                                     {"key": key, **holder}).n
                    if held >= limit and self._drop_dead_holders(sql, key):
                        held = sql.first("SELECT count(*) AS n FROM legato_permits WHERE permit_key = :key AND NOT "
                                         "(instance_id = :iid AND step_id = :sid AND attempt = :attempt)",
                                         {"key": key, **holder}).n
                    if held >= limit:
                        blocked = (key, held, limit)
                        break
                if blocked is None:
                    now = time.time()
                    for key, _ in wants:
                        sql.run("INSERT INTO legato_permits (permit_key, instance_id, step_id, attempt, acquired_at) "
                                "VALUES (:key, :iid, :sid, :attempt, :now) ON CONFLICT DO NOTHING",
                                {"key": key, "now": now, **holder})
                answers.append(blocked)
        return answers

    def _drop_dead_holders(self, sql, key: str) -> bool:
        """A full key: drop the permits of holders whose lease is unexpired but whose process is
        known to be gone (it ran on this machine: :attr:`Lease.live`), as a lease would be taken
        from them. True if any was dropped. Only on this path: it reads /proc."""
        rows = sql.all(f"SELECT DISTINCT i.instance_id, {', '.join('i.' + c for c in _LEASE_COLUMNS.split(', '))}, "
                       f"{self._now_sql()} AS now FROM legato_permits p JOIN legato_instances i ON "
                       "i.instance_id = p.instance_id WHERE p.permit_key = :key", {"key": key})
        dead = [r.instance_id for r in rows if not _lease(r).live]
        for iid in dead:
            sql.run("DELETE FROM legato_permits WHERE permit_key = :key AND instance_id = :iid", {"key": key, "iid": iid})
        return bool(dead)

    async def release_permits(self, instance_id: str, keep=()) -> None:
        def release():
            with self._sql_tx(write=True) as sql:
                kept = [(sid, attempt) for sid, attempt in keep]
                if not kept:
                    sql.run("DELETE FROM legato_permits WHERE instance_id = :iid", {"iid": instance_id})
                else:
                    rows = sql.all("SELECT DISTINCT step_id, attempt FROM legato_permits WHERE instance_id = :iid",
                                   {"iid": instance_id})
                    for row in rows:
                        if (row.step_id, row.attempt) not in kept:
                            sql.run("DELETE FROM legato_permits WHERE instance_id = :iid AND step_id = :sid "
                                    "AND attempt = :attempt", {"iid": instance_id, "sid": row.step_id,
                                                               "attempt": row.attempt})
            self.wakeups().notify()

        await self._write_tx(release, doing="release permits")

    async def set_tag_permit(self, tag: str, limit: int, *, by: str) -> None:
        def write():
            with self._sql_tx(write=True) as sql:
                sql.run("INSERT INTO legato_tag_permits (tag, max_allowed, set_by, set_at) VALUES (:tag, :limit, :by, "
                        ":now) ON CONFLICT (tag) DO UPDATE SET max_allowed = excluded.max_allowed, "
                        "set_by = excluded.set_by, set_at = excluded.set_at",
                        {"tag": tag, "limit": limit, "by": by, "now": time.time()})
            self.wakeups().notify()  # a raised limit lets waiting steps start

        await self._write_tx(write, doing="set the tag permit")

    async def get_tag_permits(self) -> list[dict[str, Any]]:
        def read():
            now_sql = self._now_sql()
            with self._sql_tx(write=False) as sql:
                rows = sql.all(
                    "SELECT t.tag, t.max_allowed, t.set_by, t.set_at, (SELECT count(*) FROM legato_permits p JOIN "
                    "legato_instances i ON i.instance_id = p.instance_id WHERE p.permit_key = 'tag:' || t.tag AND "
                    f"i.lease_expires IS NOT NULL AND i.lease_expires > {now_sql}) AS held "
                    "FROM legato_tag_permits t ORDER BY t.tag")
            return [{"tag": r.tag, "limit": r.max_allowed, "held": r.held, "set_by": r.set_by, "set_at": r.set_at}
                    for r in rows]

        return await self._run(read, doing="read the tag permits")

    async def delete_tag_permit(self, tag: str) -> bool:
        def write():
            with self._sql_tx(write=True) as sql:
                found = sql.first("SELECT tag FROM legato_tag_permits WHERE tag = :tag", {"tag": tag}) is not None
                sql.run("DELETE FROM legato_tag_permits WHERE tag = :tag", {"tag": tag})
            if found:
                self.wakeups().notify()
            return found

        return await self._write_tx(write, doing="remove the tag permit")

    # -- signals ----------------------------------------------------------------------------------

    def _signal_in(self, execute, name: str, params: dict[str, Any], request_id: str | None,
                   now: float) -> tuple[SignalRecord, bool]:
        """Insert one signal in the caller's transaction (driver-level statements, as commit's):
        numbered after its name's last; a request id the name knows answers with that signal."""
        p = "?" if self.dialect == "sqlite" else "%s"
        if self.dialect == "postgresql":  # serialise the numbering of one name (SQLite's writers are)
            execute(f"SELECT pg_advisory_xact_lock(hashtextextended({p}, 1))", ("signal:" + name,))
        if request_id is not None:
            row = execute(f"SELECT name, seq, params, request_id, created_at FROM legato_signals "
                          f"WHERE name = {p} AND request_id = {p}", (name, request_id)).fetchone()
            if row is not None:
                return _signal(row), False
        row = execute(f"SELECT coalesce(max(seq), 0) FROM legato_signals WHERE name = {p}", (name,)).fetchone()
        seq = row[0] + 1
        execute(f"INSERT INTO legato_signals (name, seq, params, request_id, created_at) "
                f"VALUES ({p}, {p}, {p}, {p}, {p})", (name, seq, _dumps(params), request_id, now))
        return SignalRecord(name, seq, dict(params), request_id, now), True

    async def send_signal(self, name: str, params: dict[str, Any], request_id: str | None = None
                          ) -> tuple[SignalRecord, bool]:
        def write():
            with self._sql_tx(write=True) as sql:
                execute = sql.conn.execute  # sqlite3 and psycopg connections alike
                found = self._signal_in(execute, name, params, request_id, time.time())
            if found[1]:
                self.wakeups().notify()  # steps and triggers waiting for it, in every process here
            return found

        return await self._run(write, doing="store the signal")

    async def get_signal(self, name: str, seq: int | None = None) -> SignalRecord | None:
        def read():
            with self._sql_tx(write=False) as sql:
                if seq is None:
                    return sql.first(f"SELECT {_SIGNAL_COLUMNS} FROM legato_signals WHERE name = :name "
                                     "ORDER BY seq DESC LIMIT 1", {"name": name})
                return sql.first(f"SELECT {_SIGNAL_COLUMNS} FROM legato_signals WHERE name = :name AND seq = :seq",
                                 {"name": name, "seq": seq})

        row = await self._run(read, doing="read the signal")
        return None if row is None else _signal(row)

    async def list_signals(self, name: str, after: int = 0, limit: int = 100) -> list[SignalRecord]:
        def read():
            with self._sql_tx(write=False) as sql:
                return sql.all(f"SELECT {_SIGNAL_COLUMNS} FROM legato_signals WHERE name = :name AND seq > :after "
                               "ORDER BY seq LIMIT :n", {"name": name, "after": after, "n": limit})

        return [_signal(r) for r in await self._run(read, doing="list the signals")]


    # -- triggers ---------------------------------------------------------------------------------

    async def list_active_versions(self) -> dict[str, int]:
        def read():
            with self._sql_tx(write=False) as sql:
                rows = sql.all("SELECT workflow_id, version FROM legato_definition_versions WHERE active "
                               "ORDER BY workflow_id")
            return {r.workflow_id: r.version for r in rows}

        return await self._run(read, doing="list the active versions")

    async def get_trigger_checkpoint(self, workflow_id: str, key: str) -> dict[str, Any] | None:
        def read():
            with self._sql_tx(write=False) as sql:
                row = sql.first("SELECT * FROM legato_trigger_checkpoints WHERE workflow_id = :wid AND "
                                "trigger_key = :key", {"wid": workflow_id, "key": key})
            return None if row is None else _checkpoint(row)

        return await self._run(read, doing="read the trigger's checkpoint")

    async def save_trigger_checkpoint(self, workflow_id: str, key: str, value: Any, *,
                                      fired_at: float | None = None) -> None:
        def write():
            with self._sql_tx(write=True) as sql:
                sql.run("INSERT INTO legato_trigger_checkpoints (workflow_id, trigger_key, value, fired_at, saved_at) "
                        "VALUES (:wid, :key, :value, :fired, :now) ON CONFLICT (workflow_id, trigger_key) DO UPDATE "
                        "SET value = excluded.value, saved_at = excluded.saved_at, "
                        "fired_at = coalesce(excluded.fired_at, legato_trigger_checkpoints.fired_at)",
                        {"wid": workflow_id, "key": key, "value": _dumps(value), "fired": fired_at,
                         "now": time.time()})

        await self._write_tx(write, doing="save the trigger's checkpoint")

    async def list_trigger_checkpoints(self, workflow_id: str | None = None) -> list[dict[str, Any]]:
        def read():
            query = "SELECT * FROM legato_trigger_checkpoints"
            if workflow_id is not None:
                query += " WHERE workflow_id = :wid"
            with self._sql_tx(write=False) as sql:
                rows = sql.all(query + " ORDER BY workflow_id, trigger_key", {"wid": workflow_id})
            return [_checkpoint(r) for r in rows]

        return await self._run(read, doing="list the trigger checkpoints")

    async def set_triggers_paused(self, workflow_id: str, paused: bool, *, by: str) -> bool:
        def write():
            with self._sql_tx(write=True) as sql:
                was = sql.first("SELECT workflow_id FROM legato_trigger_pauses WHERE workflow_id = :wid",
                                {"wid": workflow_id}) is not None
                if paused and not was:
                    sql.run("INSERT INTO legato_trigger_pauses (workflow_id, paused_by, paused_at) "
                            "VALUES (:wid, :by, :now)", {"wid": workflow_id, "by": by, "now": time.time()})
                elif was and not paused:
                    sql.run("DELETE FROM legato_trigger_pauses WHERE workflow_id = :wid", {"wid": workflow_id})
            return was != paused

        return await self._write_tx(write, doing="pause the triggers" if paused else "resume the triggers")

    async def get_triggers_paused(self, workflow_id: str) -> dict[str, Any] | None:
        def read():
            with self._sql_tx(write=False) as sql:
                row = sql.first("SELECT * FROM legato_trigger_pauses WHERE workflow_id = :wid", {"wid": workflow_id})
            return None if row is None else {"workflow_id": row.workflow_id, "by": row.paused_by, "at": row.paused_at}

        return await self._run(read, doing="read the triggers' pause")

    async def list_paused_triggers(self) -> list[dict[str, Any]]:
        def read():
            with self._sql_tx(write=False) as sql:
                rows = sql.all("SELECT * FROM legato_trigger_pauses ORDER BY workflow_id")
            return [{"workflow_id": r.workflow_id, "by": r.paused_by, "at": r.paused_at} for r in rows]

        return await self._run(read, doing="list the paused triggers")


# -- timeline rows: the transitions one step makes in one commit share a row --------------------
#
# A step's consecutive events in one batch (CREATED … STARTING when it is created, RUNNING …
# SUCCEEDED when it ends) are one row of legato_events: ``status`` lists them, ``STATE[@dt]`` joined
# by commas, ``dt`` the seconds after the row's ``ts`` (the first event's) exactly as a float's
# repr (omitted when 0), and ``message`` is the last one's (the others' are empty, else they get
# rows of their own). Reading expands such a row into the events it holds, equal to those
# committed; a row of one status, as every row of older stores, reads as it is.

_STEP_STATES = frozenset(s.value for s in StepStatus)

def event_rows(events: list[Event]) -> list[tuple]:
    """The rows of legato_events for ``events`` (one batch's, in order)."""
    rows: list[tuple] = []
    head = None  # the event the row being built starts with
    parts: list[str] = []
    for e in events:
        if (head is not None and e.step_id == head.step_id and e.attempt == head.attempt and not last.message
                and e.status in _STEP_STATES):
            dt = e.ts - head.ts
            if head.ts + dt == e.ts:  # exact, as it is between two clock readings
                parts.append(f"{e.status}@{dt!r}" if dt else e.status)
                last = e
                continue
        if head is not None:
            rows.append((head.instance_id, head.step_id, head.attempt, ",".join(parts), last.message, head.ts))
        if e.step_id is not None and e.status in _STEP_STATES:
            head = last = e
            parts = [e.status]
        else:
            head = None
            rows.append((e.instance_id, e.step_id, e.attempt, e.status, e.message, e.ts))
    if head is not None:
        rows.append((head.instance_id, head.step_id, head.attempt, ",".join(parts), last.message, head.ts))
    return rows


def event_statuses(status: str) -> list[tuple[str, float]]:
    """The (status, seconds after the row's ts) of the events one legato_events row holds."""
    if "," not in status:
        return [(status, 0.0)]
    out = []
    for part in status.split(","):
        name, _, dt = part.partition("@")
        if name not in _STEP_STATES:
            return [(status, 0.0)]  # not a row of several events: some other status, as it is
        try:
            out.append((name, float(dt) if dt else 0.0))
        except ValueError:
            return [(status, 0.0)]
    return out


def expand_events(rows) -> list[Event]:
    """The events of legato_events rows (``ts, instance_id, step_id, attempt, status, message``)."""
    events = []
    for r in rows:
        status = r.status
        if "," not in status:
            events.append(Event(r.ts, r.instance_id, r.step_id, r.attempt, status, r.message))
            continue
        held = event_statuses(status)
        for name, dt in held[:-1]:
            events.append(Event(r.ts + dt, r.instance_id, r.step_id, r.attempt, name, ""))
        name, dt = held[-1]
        events.append(Event(r.ts + dt, r.instance_id, r.step_id, r.attempt, name, r.message))
    return events


def _rows(batch: Batch) -> int:
    return len(batch.attempts) + len(batch.events) + len(batch.logs) + (batch.instance is not None)


def _is_psycopg_error(exc: Exception) -> bool:
    errors = sys.modules.get("psycopg")
    return errors is not None and isinstance(exc, errors.Error)


def _pg_disconnected(exc: Exception) -> bool:
    """Whether ``exc`` (SQLAlchemy's or psycopg's) says the connection to PostgreSQL was lost or
    could not be made (or the server rolled the transaction back: a serialization failure)."""
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        return True
    errors = sys.modules.get("sqlalchemy.exc")
    if errors is None:
        return False
    if isinstance(exc, errors.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, errors.OperationalError) and isinstance(exc.orig, psycopg.OperationalError)


def _is_sqlalchemy_error(exc: Exception) -> bool:
    """Whether ``exc`` is SQLAlchemy's (checked without importing it: on SQLite it may never be)."""
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.SQLAlchemyError)


# A queued instance under a run strategy: created, never taken by anyone.
_STRATEGY_QUEUED = "status = 'CREATED' AND generation = 0 AND run_strategy IS NOT NULL"
_LEASE_COLUMNS = "owner, lease_expires, generation, owner_host, owner_pid, owner_started, owner_namespace"
_HOLDER = ("owner_host = :host, owner_pid = :pid, owner_started = :started, owner_namespace = :namespace")


def _holder() -> dict[str, Any]:
    me = this_process()
    return {"host": me.host, "pid": me.pid, "started": me.started, "namespace": me.namespace}


def _lease(row) -> Lease:
    expires_in = None if row.lease_expires is None else row.lease_expires - row.now
    return Lease(row.owner, row.generation, expires_in, row.owner_host or "", row.owner_pid, row.owner_started,
                 row.owner_namespace or "")


def _corrupt(where: str, why: str) -> StorageError:
    return StorageError(
        f"the database {where} is corrupt ({why}): restore it from a backup, or recover what is readable "
        f"with `sqlite3 {where} .recover | sqlite3 recovered.db` and point --store at recovered.db")


def _instance_values(r: InstanceRecord) -> dict[str, Any]:
    return {
        "instance_id": r.instance_id, "workflow_id": r.workflow_id, "version": r.version, "status": r.status.value,
        "run_id": r.run_id, "params": _dumps(r.params), "request_id": r.request_id, "initiator": r.initiator,
        "created_at": r.created_at, "started_at": r.started_at, "ended_at": r.ended_at, "message": r.message,
        "ancestors": _dumps(r.ancestors) if r.ancestors else None,
        "run_strategy": r.run_strategy or None, "workflow_concurrency": r.workflow_concurrency,
        "run_ts": r.run_ts,
    }


def _version(workflow_id: str, row) -> DefinitionVersion:
    return DefinitionVersion(workflow_id, row.version, json.loads(row.document), row.created_at, bool(row.active))


def _instance(row) -> InstanceRecord:
    return InstanceRecord(
        instance_id=row.instance_id, workflow_id=row.workflow_id, version=row.version,
        status=InstanceStatus(row.status), run_id=row.run_id, params=json.loads(row.params),
        request_id=row.request_id, initiator=row.initiator, created_at=row.created_at,
        started_at=row.started_at, ended_at=row.ended_at, message=row.message,
        ancestors=json.loads(row.ancestors) if row.ancestors else [],
        run_strategy=row.run_strategy or "", workflow_concurrency=row.workflow_concurrency or 1,
        run_ts=row.run_ts,
        queued=row.status == "CREATED" and row.generation == 0,
    )


def _checkpoint(row) -> dict[str, Any]:
    return {"workflow_id": row.workflow_id, "key": row.trigger_key, "value": json.loads(row.value),
            "fired_at": row.fired_at, "saved_at": row.saved_at}


def _action(row) -> ActionRecord:
    return ActionRecord(row.id, row.instance_id, row.verb, row.step_id, json.loads(row.params), row.requested_by,
                        row.requested_at, row.applied_at, row.outcome)


def _attempt(row) -> AttemptRecord:
    return AttemptRecord(
        instance_id=row.instance_id, step_id=row.step_id, attempt=row.attempt, status=StepStatus(row.status),
        run_id=row.run_id, params=None if row.params is None else json.loads(row.params),
        outputs=json.loads(row.outputs), message=row.message, created_at=row.created_at,
        started_at=row.started_at, ended_at=row.ended_at,
        handle=None if row.handle is None else json.loads(row.handle),
    )


_SIGNAL_COLUMNS = "name, seq, params, request_id, created_at"


def _signal(row) -> SignalRecord:
    return SignalRecord(row[0], row[1], json.loads(row[2]), row[3], row[4])
