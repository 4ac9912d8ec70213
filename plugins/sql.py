"""``sql``: runs SQL with DuckDB, in a process of its own started in the instance's working directory.

Params (the sql configuration):

- ``query`` (string) XOR ``query_file`` (path of a ``.sql`` file): exactly one. ``query`` is code:
  Legato never interpolates ``${…}`` in it. It may hold several statements (split with DuckDB's
  own parser), run one after the other in autocommit mode. ``query_file`` resolves against the
  definition's directory (else the current directory).
- ``database`` (string, default ``:memory:``): the DuckDB database file; a relative path resolves
  against the instance's working directory (where bash steps write their files).
- ``query_params`` (map): values bound to the named parameters ``$name`` of the statements. They
  are bound by DuckDB, never pasted into the SQL text. A name a statement uses but
  ``query_params`` lacks is looked up in the step's other params, then the workflow's params.
- ``read_only`` (bool, default false): open the database read-only (writes fail).
- ``max_rows`` (int, 0–1000, default 20): how many rows of the last statement's result the
  outputs carry.
- ``result_path`` (string, optional, ``.parquet`` or ``.csv``): write the whole result of the last
  statement there (relative to the instance's working directory; parent directories are made).

``database`` and ``result_path`` are confined (:mod:`legato.paths`): once symlinks and ``..`` are
resolved they must lie in the instance's working directory or under a directory the operator
lists in the ``allowed_paths`` setting (``sql: {allowed_paths: [/data/warehouse]}``); anything
else ends the step FATALLY_FAILED, saying where the path led. In ``database`` a backslash is a
path separator, as DuckDB reads it when it opens the file. ``${}`` in them (and in every
param but ``query``) is text interpolation; ``query`` is code and never interpolated: bind
values with ``$name``.

Relative paths inside the query resolve in the instance's working directory, where bash steps
write their files, like every other path: reads (``read_csv('sales.csv')``, ``FROM
'orders.parquet'``, globs), writes (``COPY … TO 'out.csv'``, ``EXPORT DATABASE 'dump'``) and
``ATTACH 'other.db'``. DuckDB runs in a process of its own whose current directory is that
directory (a process's directory is the whole process's, so not a thread of the worker), and
nothing lands in, or is read from, the worker's directory.

Outputs: ``row_count`` (rows in the last statement's result; for INSERT/UPDATE/DELETE the count
of rows they changed), ``columns`` (names), ``rows`` (the first ``max_rows`` rows, each a list of
JSON values in column order: dates and times as ISO strings, decimals as floats, blobs as escaped
strings; read one as ``rows[0][1]``), ``records`` (the same rows as maps from column name to
value: ``records[0].total``; a repeated column name gets ``_1``, ``_2``… appended), ``truncated``
(whether ``rows`` is not the whole result) and ``result_path`` (absolute) when written.

Errors: SQL errors (syntax, catalog, constraint, read-only) and a missing ``query_file`` are user
errors carrying DuckDB's message (and which statement failed). A database file locked by another
process is a platform error (retried under ``platform_retry_limit``); DuckDB lets one process at a
time open a file read-write, and each step is a process, so two steps running at once on one
database file conflict unless both are ``read_only``. A DuckDB process that dies without a result
(killed, out of memory) is a platform error. Each statement's first line is logged before it runs,
its row count after, as they happen.

The process: its own session and process group, recorded as the step's handle, killed as a group
and reaped after a crash. On Linux it is forked from a fork server (``python -m
legato.plugins.sql --serve``, one per trio run and environment, started by the first sql
step as a system task's child and killed when the run ends), which imported duckdb once: a step
pays a fork and DuckDB's connect (tens of ms) instead of an interpreter's start and duckdb's
import (~0.2 s of CPU). At most ``MAX_PROCESSES`` (40) DuckDB processes run at once per run, the
bound trio's thread limiter set when DuckDB ran in threads of the worker; later steps wait. A forked process's environment is the server's, so its handle names
it by its start time (``started``), which a reused pid does not share. Where there is no
``os.pidfd_open`` to follow a process that is not the worker's child, or the server fails, the
step starts ``python -m legato.plugins.sql`` itself, in the working directory, carrying
``LEGATO_INSTANCE_ID``, ``LEGATO_STEP_ID``, ``LEGATO_ATTEMPT`` and ``LEGATO_IDEMPOTENCY_KEY``
like a bash step's (``Sql.fork_server = False`` forces that). Either way the process gets from
the worker's environment only the minimal base (:data:`legato.processes.BASE_ENV`) and what the
operator lists in the ``inherit_env`` setting (``sql: {inherit_env: [AWS_*]}`` for S3
credentials). The spec, with the bound values, travels on its stdin, never in a file or its
arguments; statement lines and row counts come back on its stdout, the result on a pipe of its
own. On cancellation (stop, timeout) the group gets SIGTERM, which interrupts the running query
(statements already run stay committed: autocommit), then SIGKILL after ``term_grace``; the
step ends once the process is gone.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import os
import re
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# The child side: the process that runs one step's query. ``python -m legato.plugins.sql
# CONTROL_FD`` runs one step (started by the step in the instance's working directory);
# ``python -m legato.plugins.sql --serve SOCKET_FD`` is the fork server, which imports duckdb once
# and forks each step's process into the working directory a request names (:func:`_serve`).
# The step's process reads its spec (a JSON object) on stdin, writes each statement's first line
# and row count to stdout (the step's log, streamed), and one JSON line to ``CONTROL_FD`` before
# it exits: ``{"outcome": "DONE" | "USER_ERROR" | "PLATFORM_ERROR", "message": …, "outputs": …}``.
# SIGTERM interrupts the running query (``con.interrupt()``, repeated until the work is over: an
# interrupt that lands between two statements is forgotten) and the process exits with 128+15.
# It comes first, before the parent's imports (pydantic, trio), which it does not need; duckdb is
# imported by the fork server or once the spec is read, never when the worker imports this module.
# ---------------------------------------------------------------------------------------------

#: Statements whose result is the count of rows they changed (unless they have RETURNING); CREATE
#: TABLE … AS answers the rows it wrote.
_DML = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE_INTO", "COPY", "CREATE"})
_FETCH_CHUNK = 8192
#: Seconds between two interrupts of a query being stopped.
_INTERRUPT_EVERY = 0.05


class _Stop(Exception):
    """Raised in the work thread once SIGTERM arrived."""


class _Failure(Exception):
    """An outcome other than DONE, reported as the result."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


class _Shared:
    """What the main thread (which takes SIGTERM) and the work thread share: the connection."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.con: Any = None
        self.stopping = False

    def attach(self, con: Any) -> None:
        with self.lock:
            if self.stopping:
                raise _Stop
            self.con = con

    def detach(self) -> None:
        with self.lock:
            self.con = None

    def interrupt(self) -> None:
        with self.lock:
            self.stopping = True
            if self.con is not None:
                self.con.interrupt()

    def check(self) -> None:
        if self.stopping:
            raise _Stop


def _child_main(argv: list[str]) -> int:
    control = int(argv[0])
    shared = _Shared()
    # Only a flag: the handler may run while this thread holds the lock (in interrupt()).
    signal.signal(signal.SIGTERM, lambda signum, frame: setattr(shared, "stopping", True))
    spec = json.load(sys.stdin)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = {"outcome": "DONE", "outputs": _Work(spec, shared)()}
        except _Failure as failure:
            box["result"] = {"outcome": failure.outcome, "message": failure.message}
        except _Stop:
            box["result"] = None

    # In a thread: DuckDB holds the main thread in C++ while a query runs, and Python runs a
    # signal handler only in the main thread, between two bytecodes (here: between two joins).
    thread = threading.Thread(target=work, name="legato-sql")
    thread.start()
    while thread.is_alive():
        thread.join(_INTERRUPT_EVERY)
        if shared.stopping:
            shared.interrupt()
    result = box.get("result")
    if result is None:  # stopped (or the thread died, which its traceback on stderr says)
        return 128 + signal.SIGTERM if shared.stopping else 1
    data = (json.dumps(result) + "\n").encode()
    while data:
        data = data[os.write(control, data):]
    return 0


def _log(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class _Work:
    """Connect, run the statements one after the other, build the outputs."""

    def __init__(self, spec: dict[str, Any], shared: _Shared) -> None:
        self.database: str = spec["database"]
        self.read_only: bool = spec["read_only"]
        self.query: str | None = spec["query"]
        self.query_file: str | None = spec["query_file"]
        self.bindings: dict[str, Any] = spec["bindings"]
        self.max_rows: int = spec["max_rows"]
        self.result_path = None if spec["result_path"] is None else Path(spec["result_path"])
        self.spill = None if spec["spill"] is None else Path(spec["spill"])
        self.shared = shared

    def __call__(self) -> dict[str, Any]:
        text = self._text()
        try:
            import duckdb  # once the spec is read: the import is most of this process's start-up
        except ImportError as exc:
            raise _Failure("PLATFORM_ERROR", f"cannot import duckdb ({exc}): pip install 'legato[sql]'") from None
        self.duckdb = duckdb
        self.shared.check()
        con = self._connect()
        try:
            self.shared.attach(con)
            try:
                statements = con.extract_statements(text)
            except duckdb.Error as exc:
                raise _Failure("USER_ERROR", _message(exc)) from None
            if not statements:
                raise _Failure("USER_ERROR", "the query holds no SQL statement")
            count = len(statements)
            for number, statement in enumerate(statements, start=1):
                self.shared.check()
                _log(f"sql> {_first_line(statement.query)}\n")
                try:
                    if number == count:
                        outputs = self._last(con, statement)
                    else:
                        cursor = con.execute(statement, self._params_for(statement))
                        outputs = self._summarise(cursor, statement, 0)
                except duckdb.InterruptException:
                    raise _Stop from None
                except (duckdb.Error, OSError) as exc:
                    self.shared.check()
                    where = f"statement {number} of {count}: " if count > 1 else ""
                    raise _Failure("USER_ERROR", f"{where}{_message(exc)}") from None
                _log(f"({outputs['row_count']} {'row' if outputs['row_count'] == 1 else 'rows'})\n")
            return outputs
        finally:
            self.shared.detach()
            try:
                con.close()
            except Exception:  # noqa: BLE001 - closing is best effort once the work is over
                pass

    def _text(self) -> str:
        if self.query_file is None:
            return self.query or ""
        try:
            with open(self.query_file, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise _Failure("USER_ERROR", f"query_file {self.query_file!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _Failure("USER_ERROR", f"cannot read query_file {self.query_file!r}: {exc}") from None

    def _connect(self):
        duckdb = self.duckdb
        try:
            if self.database != ":memory:" and not self.read_only:
                Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _Failure("USER_ERROR", f"cannot create the directory of database {self.database!r}: {exc}") from None
        try:
            return duckdb.connect(self.database, read_only=self.read_only)
        except duckdb.Error as exc:
            text = str(exc)
            if "Could not set lock on file" in text:
                holder = re.search(r"Conflicting lock is held in (.*?)(?:\. See also|$)", text)
                who = f" ({holder.group(1)})" if holder else ""
                raise _Failure("PLATFORM_ERROR",
                               f"database file {self.database!r} is locked: another process holds it{who}") from None
            raise _Failure("USER_ERROR", f"cannot open database {self.database!r}: {_message(exc)}") from None

    def _params_for(self, statement) -> dict[str, Any] | None:
        names = statement.named_parameters
        if not names:
            return None
        # Only the names the statement uses: DuckDB refuses values it has no parameter for. A name
        # nobody provides is left out, so DuckDB's own error names it.
        return {name: self.bindings[name] for name in names if name in self.bindings}

    def _last(self, con, statement) -> dict[str, Any]:
        if self.result_path is None:
            cursor = con.execute(statement, self._params_for(statement))
            return self._summarise(cursor, statement, self.max_rows)
        # One execution: spill the whole result to Parquet (exact types) with the relation API,
        # count and preview from it, then move it (or convert it to CSV) to result_path. Paths
        # are arguments or bound values, never pasted into SQL text by this step.
        relation = con.sql(statement, params=self._params_for(statement))
        spill, target = self.spill, self.result_path
        spill.unlink(missing_ok=True)
        try:
            if relation is None:  # a statement without a result (older DuckDB)
                raise _Failure("USER_ERROR", "result_path needs the last statement to return rows; it returned none")
            relation.write_parquet(str(spill))
            self.shared.check()
            where = {"spill": str(spill)}
            total = con.execute("SELECT count(*) FROM read_parquet($spill)", where).fetchall()[0][0]
            preview = {**where, "n": max(self.max_rows, 1)}
            cursor = con.execute("SELECT * FROM read_parquet($spill) LIMIT $n", preview)
            outputs = self._summarise(cursor, statement, self.max_rows, total=total)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.suffix.lower() == ".csv":
                con.read_parquet(str(spill)).write_csv(str(target), header=True)
            else:
                spill.replace(target)
        finally:
            spill.unlink(missing_ok=True)
        outputs["result_path"] = str(target)
        return outputs

    def _summarise(self, cursor, statement, max_rows: int, total: int | None = None) -> dict[str, Any]:
        """Outputs from a cursor, fetching the preview and counting (not keeping) the rest."""
        columns = [d[0] for d in (cursor.description or [])]
        if columns == ["Count"] and statement.type.name in _DML:
            # DuckDB's answer to INSERT/UPDATE/DELETE/COPY: one row, the number of rows changed.
            every = cursor.fetchall()
            if len(every) == 1 and isinstance(every[0][0], int):
                return _outputs(every[0][0], columns, every[:max_rows], len(every))
            return _outputs(len(every), columns, every[:max_rows], len(every))
        rows = cursor.fetchmany(max_rows) if max_rows else []
        if total is not None:  # the caller counted: finish the (limited) result unread
            cursor.fetchall()
        else:
            total = len(rows)
            while True:
                self.shared.check()
                chunk = cursor.fetchmany(_FETCH_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
        return _outputs(total, columns, rows, total)


def _outputs(row_count: int, columns: list[str], rows: list, result_rows: int) -> dict[str, Any]:
    values = [[to_json_value(v) for v in row] for row in rows]
    keys = _record_keys(columns)
    return {
        "row_count": row_count,
        "columns": columns,
        "rows": values,
        "records": [dict(zip(keys, row)) for row in values],
        "truncated": result_rows > len(rows),
    }


def _record_keys(columns: list[str]) -> list[str]:
    """Column names as map keys: a repeated name (``SELECT 1 AS a, 2 AS a``) gets ``_1``, ``_2``…"""
    keys: list[str] = []
    taken: set[str] = set()
    for name in columns:
        key, n = name, 0
        while key in taken:
            n += 1
            key = f"{name}_{n}"
        taken.add(key)
        keys.append(key)
    return keys


def _first_line(query: str) -> str:
    """The statement's first line of code (comment lines skipped), shortened for the log."""
    lines = [line.strip() for line in query.strip().splitlines() if line.strip()]
    code = [line for line in lines if not line.startswith("--")]
    line = (code or lines or [""])[0]
    return line if len(line) <= 200 else line[:197] + "..."


def _message(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


_INT64 = (-(2**63), 2**63 - 1)


def to_json_value(value: Any) -> Any:
    """A DuckDB value as JSON: numbers and strings as they are, temporal values as ISO strings,
    decimals as floats, non-finite floats and huge integers as strings, blobs escaped like DuckDB
    prints them, lists and structs recursively."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        number = float(value)
        return number if math.isfinite(number) else str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}" for b in bytes(value))
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return str(value)


def _serve(sock_fd: int) -> int:
    """The fork server (``python -m legato.plugins.sql --serve SOCKET_FD``): import duckdb
    once, then for each request on the socket (a JSON ``{"cwd": …}`` with four file descriptors:
    the step's stdin, stdout, stderr and control pipe) fork a step's process and answer its pid.
    Forking from here spares each step the interpreter's start and duckdb's import (~150 ms of
    CPU). This process never opens a database, so it has one thread when it forks. It ends when
    the worker closes its end of the socket."""
    import socket

    import duckdb  # noqa: F401 - imported once, for every process forked from here

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the forked processes
    sock = socket.socket(fileno=sock_fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 65536, 4)
        except OSError:
            return 0
        if not message:
            return 0  # the worker is gone
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            sock.send(b"0")
            continue
        pid = os.fork()
        if pid == 0:  # the step's process
            code = 1
            try:
                sock.close()
                code = _forked(json.loads(message), fds)
            except BaseException:  # noqa: BLE001 - said on the step's stderr, then exit
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        for fd in fds:
            os.close(fd)
        sock.send(str(pid).encode())


def _forked(request: dict[str, Any], fds: list[int]) -> int:
    """In a process just forked by :func:`_serve`: become the step's process, then run it."""
    os.setsid()  # its own session and process group, killed as a group
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stdin, stdout, stderr, control = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    return _child_main([str(control)])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(_serve(int(sys.argv[2])))
    sys.exit(_child_main(sys.argv[1:]))


# ---------------------------------------------------------------------------------------------
# The step type (the parent side, in the Legato process).
# ---------------------------------------------------------------------------------------------

import array  # noqa: E402
import importlib.util  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402

import pydantic  # noqa: E402
import pydantic_core  # noqa: E402
import trio  # noqa: E402

from legato import StepResult, StepType  # noqa: E402
from legato.hookspecs import hookimpl  # noqa: E402
from legato.paths import PathRefused, confine  # noqa: E402
from legato.process_settings import PathSettings, ProcessSettings  # noqa: E402
from legato.processes import (  # noqa: E402
    HandleNotRecorded,
    inherit_allowed,
    kill_if_attempts,
    killpg,
    last_line,
    legato_variables,
    process_environment,
    pump,
    signal_name,
    start_time,
    supervise,
    this_process,
)

__all__ = ["SqlParams", "SqlSettings", "Sql", "to_json_value"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONFIG_KEYS = frozenset({"database", "query", "query_file", "query_params", "read_only", "max_rows",
                          "result_path"})
_RESULT_SUFFIXES = (".parquet", ".csv")
_READ_CHUNK = 65536


class SqlParams(pydantic.BaseModel):
    """The params the ``sql`` step type reads; any other param is user data."""

    model_config = pydantic.ConfigDict(extra="allow")

    database: str = ":memory:"
    query: str | None = None
    query_file: str | None = None
    query_params: dict[str, Any] = {}
    read_only: bool = False
    max_rows: int = pydantic.Field(20, ge=0, le=1000)
    result_path: str | None = None

    @pydantic.field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("`database` is empty: give a file path or `:memory:`")
        return value

    @pydantic.field_validator("query_params")
    @classmethod
    def _param_names(cls, params: dict[str, Any]) -> dict[str, Any]:
        for name in params:
            if not _NAME.match(name):
                raise ValueError(f"`query_params` key {name!r} is not a parameter name "
                                 "(letters, digits and `_`, used as `$name` in the query)")
        return params

    @pydantic.field_validator("result_path")
    @classmethod
    def _result_suffix(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().endswith(_RESULT_SUFFIXES):
            raise ValueError("`result_path` must end with .parquet or .csv")
        return value

    @pydantic.model_validator(mode="after")
    def _query_xor_file(self) -> "SqlParams":
        if self.query is not None and self.query_file is not None:
            raise ValueError("give exactly one of `query` or `query_file`, not both")
        if self.query is None and self.query_file is None:
            # A "missing" error, so a definition whose `query` is an expression (checked only
            # once evaluated) is not refused at load time.
            raise pydantic_core.PydanticCustomError("missing", "give exactly one of `query` or `query_file`")
        return self


class SqlSettings(ProcessSettings, PathSettings):
    """The operator's settings of the ``sql`` step type (``--settings``: ``sql: {…}``):
    ``allowed_paths``, where `database` and `result_path` may point besides the working directory,
    and ``inherit_env``, what DuckDB's process inherits from the worker's environment."""


class Sql(StepType):
    """Runs ``query`` (or ``query_file``) with DuckDB; see the module docstring."""

    name = "sql"
    description = "runs SQL with DuckDB; params are bound as $name parameters, never pasted"
    Params = SqlParams
    Settings = SqlSettings
    # The query is code: `${x}` in it is never Legato's paste (bind `$x` through query_params).
    raw_params = frozenset({"query"})

    #: Seconds between SIGTERM (which interrupts the query) and SIGKILL when the step is cancelled.
    term_grace: float = 1.0
    #: Seconds to keep reading output once the process group is gone (see the bash step type).
    drain_timeout: float = 2.0
    #: Fork each step's process from this run's fork server (Linux), not start a Python of its own.
    fork_server: bool = True

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("duckdb") is None:
            return "the `duckdb` Python package is not installed: pip install 'legato[sql]'"
        return None

    async def run(self, ctx):
        cfg = ctx.config
        if not isinstance(cfg, SqlParams):
            try:
                cfg = SqlParams.model_validate(ctx.params)
            except pydantic.ValidationError as exc:
                return StepResult.fatal_error(f"invalid sql params: {exc}")

        allowed = self.settings["allowed_paths"]
        try:
            # DuckDB's connect() reads a backslash as a path separator (`..\\..\\x` climbs out):
            # confine the path DuckDB will open, not the one Python would.
            database = cfg.database if cfg.database == ":memory:" else str(confine(
                cfg.database.replace("\\", "/"), ctx.workdir, allowed, what="database", setting="sql.allowed_paths"))
            result_path = None if cfg.result_path is None else confine(
                cfg.result_path, ctx.workdir, allowed, what="result_path", setting="sql.allowed_paths")
            inherit = inherit_allowed(self.settings)
        except (PathRefused, ValueError) as exc:
            return StepResult.fatal_error(str(exc))
        query_file = None
        if cfg.query_file is not None:
            base = Path(ctx.definition_dir) if ctx.definition_dir is not None else Path.cwd()
            query_file = str((base / cfg.query_file).absolute())
        spec = {
            "database": database,
            "read_only": cfg.read_only,
            "query": cfg.query,
            "query_file": query_file,
            "bindings": _bindings(ctx, cfg),
            "max_rows": cfg.max_rows,
            "result_path": None if result_path is None else str(result_path),
            "spill": None if result_path is None else os.path.abspath(ctx.attempt_dir / "result.parquet"),
        }
        try:
            # Through a pipe, not a file or the arguments: the bound values may hold secrets.
            data = json.dumps(spec, default=str).encode()
            server_env = process_environment({}, inherit)
            env = process_environment(legato_variables(ctx), inherit)
        except (TypeError, ValueError) as exc:
            return StepResult.user_error(f"cannot start the query: {exc}")
        # As many at once as trio's default thread limit let run when DuckDB ran in threads.
        async with _limiter():
            server = _fork_server(server_env) if self.fork_server else None
            if server is not None:
                result = await self._forked(ctx, server, data)
                if result is not None:
                    return result
            return await self._in_child(ctx, data, env)

    async def _forked(self, ctx, server: "_ForkServer", spec: bytes) -> StepResult | None:
        """Run the query in a process the fork server forks in the instance's working directory;
        None when the server cannot fork (the caller starts a process of its own)."""
        pipes = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, control
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
        ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]
        pid = None
        try:
            pid = await server.fork(os.path.abspath(ctx.workdir), theirs)
        except OSError:
            pass
        finally:
            for fd in theirs:
                os.close(fd)
            if pid is None:  # it did not fork (or the step was cancelled before it did)
                for fd in ours:
                    os.close(fd)
        if pid is None:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already (it could not even start): what it said is in its stderr
            pidfd = None
        except OSError as exc:  # it cannot be followed: stop it
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            killpg(pid, signal.SIGKILL)
            for fd in ours:
                os.close(fd)
            return StepResult.platform_error(f"cannot follow DuckDB's process: {exc}")
        streams = [trio.lowlevel.FdStream(fd) for fd in ours]
        stdin, stdout, stderr, control = streams
        tail, answer = [""], []
        exited = pidfd is None
        try:
            # No LEGATO_* ids in a forked process's environment (it is the server's): the handle
            # names it by its start time instead, which a reused pid does not share.
            handle = {"pid": pid, "pgid": pid, "started": start_time(pid), "namespace": this_process().namespace}
            try:
                await ctx.record_handle(handle)
            except Exception as exc:  # storage trouble: the finally below stops the process
                return StepResult.platform_error(f"could not record the process handle: {exc}")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_spec, stdin, spec)
                nursery.start_soon(pump, ctx, stdout, "stdout", None)
                nursery.start_soon(pump, ctx, stderr, "stderr", tail)
                nursery.start_soon(_read_all, control, answer)
                if pidfd is not None:
                    await trio.lowlevel.wait_readable(pidfd)
                exited = True
                killpg(pid, signal.SIGKILL)  # anything it left in its group
                nursery.cancel_scope.deadline = trio.current_time() + self.drain_timeout
        finally:
            with trio.CancelScope(shield=True):
                if not exited:  # cancelled: SIGTERM interrupts the query, SIGKILL if it lingers
                    _kill(pidfd, pid, signal.SIGTERM)
                    with trio.move_on_after(self.term_grace):
                        await trio.lowlevel.wait_readable(pidfd)
                    _kill(pidfd, pid, signal.SIGKILL)
                    await trio.lowlevel.wait_readable(pidfd)
                if pidfd is not None:
                    trio.lowlevel.notify_closing(pidfd)
                    os.close(pidfd)
                for stream in streams:
                    await stream.aclose()
        return _result(b"".join(answer), None, tail[0])

    async def _in_child(self, ctx, spec: bytes, env: dict[bytes, bytes]) -> StepResult:
        """Run DuckDB in a child process in the instance's working directory; see the module docstring."""
        read_fd, write_fd = os.pipe()
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-u", "-m", "legato.plugins.sql", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(ctx.workdir),
                env=env,
                pass_fds=(write_fd,),
                # Its own process group, so one killpg reaches it whatever happens.
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            return StepResult.platform_error(f"cannot start DuckDB's process ({sys.executable}): {exc}")
        finally:
            os.close(write_fd)
        control = trio.lowlevel.FdStream(read_fd)
        answer: list[bytes] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_spec, proc.stdin, spec)
                nursery.start_soon(_read_all, control, answer)
                try:
                    rc, stderr_tail = await supervise(ctx, proc, term_grace=self.term_grace,
                                                      drain_timeout=self.drain_timeout)
                except HandleNotRecorded as exc:
                    nursery.cancel_scope.cancel()
                    return StepResult.platform_error(str(exc))
                # The group is gone, so the control pipe is at EOF (or about to be).
                nursery.cancel_scope.deadline = trio.current_time() + self.drain_timeout
        finally:
            with trio.CancelScope(shield=True):
                await control.aclose()
        return _result(b"".join(answer), rc, stderr_tail)

    def reap(self, ctx, handle) -> None:
        """Kill the process group a dead kernel left behind, if it is still this attempt's: a
        forked one has the start time its handle records, one started on its own carries this
        attempt's idempotency key in its environment; a reused pid is left alone."""
        if not isinstance(handle, dict):
            return
        pgid = handle.get("pgid")
        if "started" not in handle:
            kill_if_attempts(pgid, ctx.idempotency_key)
        elif (isinstance(pgid, int) and not isinstance(pgid, bool) and pgid > 1 and handle["started"] is not None
              and handle.get("namespace") == this_process().namespace
              and start_time(pgid, zombie=True) == handle["started"]):
            killpg(pgid, signal.SIGKILL)


async def _send_spec(stream, data: bytes) -> None:
    """Hand the child its spec on stdin, then close it (a child that died first never reads it)."""
    try:
        await stream.send_all(data)
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _read_all(stream, into: list[bytes]) -> None:
    while chunk := await stream.receive_some(_READ_CHUNK):
        into.append(chunk)


class _ForkServer:
    """A process that imported duckdb once and forks each step's process (:func:`_serve`), one
    per trio run and environment, owned by a system task: it ends with the run."""

    def __init__(self, env: dict[bytes, bytes]) -> None:
        self.env = env
        self.lock = trio.Lock()
        self.started = trio.Event()
        self.sock = None
        self.proc = None
        self.dead = False

    async def serve(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                self.proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "legato.plugins.sql", "--serve", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    cwd="/", env=self.env, pass_fds=(theirs.fileno(),), start_new_session=True)
            finally:
                theirs.close()
            self.sock = trio.socket.from_stdlib_socket(ours)
            self.started.set()
            await self.proc.wait()
        except Exception:  # noqa: BLE001 - a system task must not raise: steps start their own process
            pass
        finally:
            self.dead = True
            self.started.set()
            with trio.CancelScope(shield=True):
                if self.proc is not None:
                    killpg(self.proc.pid, signal.SIGKILL)  # its own group only: forked steps have theirs
                    await self.proc.wait()
                (self.sock or ours).close()

    async def fork(self, cwd: str, fds: list[int]) -> int:
        """Fork a step's process in ``cwd`` with ``fds`` as its stdin, stdout, stderr and control
        pipe; its pid. OSError when the server cannot."""
        await self.started.wait()
        if self.dead:
            raise OSError("the fork server is gone")
        # Shielded: an answer left unread would be the next request's. Bounded: a server that does
        # not answer (still importing duckdb at first) is abandoned.
        with trio.CancelScope(shield=True), trio.move_on_after(_FORK_TIMEOUT):
            async with self.lock:
                if self.dead:
                    raise OSError("the fork server is gone")
                try:
                    await self.sock.sendmsg([json.dumps({"cwd": cwd}).encode()],
                                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                    answer = await self.sock.recv(64)
                except (OSError, trio.ClosedResourceError):  # the server is gone (or going)
                    answer = b""
                pid = int(answer) if answer.isdigit() else 0
                if pid > 0:
                    return pid
        self.dead = True  # it failed or did not answer: its answers can no longer be matched
        if self.proc is not None:
            killpg(self.proc.pid, signal.SIGKILL)
        raise OSError("the fork server did not fork")


_FORK_TIMEOUT = 30.0
_SERVERS: trio.lowlevel.RunVar = trio.lowlevel.RunVar("legato_sql_fork_servers")
_LIMITER: trio.lowlevel.RunVar = trio.lowlevel.RunVar("legato_sql_limiter")
#: DuckDB processes one run keeps at once (each uses every core): what trio's default thread
#: limiter allowed when the queries ran in threads of the worker.
MAX_PROCESSES = 40


def _limiter() -> trio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(MAX_PROCESSES)
        _LIMITER.set(limiter)
        return limiter


def _fork_server(env: dict[bytes, bytes]) -> _ForkServer | None:
    """This run's fork server for processes with environment ``env``, started on first use;
    None where a process cannot be followed by a pidfd (not Linux)."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        servers = _SERVERS.get()
    except LookupError:
        servers = {}
        _SERVERS.set(servers)
    key = tuple(sorted(env.items()))
    server = servers.get(key)
    if server is None or server.dead:
        server = servers[key] = _ForkServer(env)
        trio.lowlevel.spawn_system_task(server.serve, name="legato-sql-fork-server")
    return server


def _kill(pidfd: int, pid: int, sig: int) -> None:
    """Signal the process (through its pidfd: even before it has made its own process group) and
    its process group."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except OSError:  # it is gone
        pass
    killpg(pid, sig)


_OUTCOMES = {"DONE": StepResult.done, "USER_ERROR": StepResult.user_error,
             "PLATFORM_ERROR": StepResult.platform_error}


def _result(answer: bytes, rc: int | None, stderr_tail: str) -> StepResult:
    """The step's result from the child's control line, else from how the child ended."""
    try:
        message = json.loads(answer)
        make = _OUTCOMES[message["outcome"]]
        return make(message["outputs"] if message["outcome"] == "DONE" else message["message"])
    except (ValueError, KeyError, TypeError):
        pass  # no result (or not one this step wrote)
    if rc is None:  # a forked process: its exit status went to the fork server
        how = "ended without a result (killed, or out of memory?)"
    elif rc < 0:
        how = f"was killed by signal {signal_name(-rc)}"
    else:
        how = f"exited with code {rc} without a result"
    last = last_line(stderr_tail)
    return StepResult.platform_error(f"DuckDB's process {how}" + (f": {last}" if last else ""))


def _bindings(ctx, cfg: SqlParams) -> dict[str, Any]:
    """The values ``$name`` may bind: workflow params, then the step's other params, then
    ``query_params`` (later wins)."""
    values: dict[str, Any] = {}
    for name, value in (ctx.workflow_params or {}).items():
        if isinstance(name, str) and _NAME.match(name):
            values[name] = value
    for name, value in (ctx.params or {}).items():
        if isinstance(name, str) and name not in _CONFIG_KEYS and _NAME.match(name):
            values[name] = value
    values.update(cfg.query_params)
    return values


@hookimpl
def legato_register_step_types(registry):
    registry.add(Sql)
