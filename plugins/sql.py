"""``sql``: runs SQL with DuckDB, in a worker thread, interrupted for real when cancelled.

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

Relative paths inside the query (``read_csv('sales.csv')``, ``FROM 'orders.parquet'``) are looked up
in the instance's working directory, where bash steps write their files, like every other path:
the step sets DuckDB's ``file_search_path`` to it for the session (the query may set it again).
DuckDB looks in its process's own directory first, so a file of the same name there wins, and it
writes relative ``COPY … TO`` targets there: write those with ``result_path``, or an absolute path.

Outputs: ``row_count`` (rows in the last statement's result; for INSERT/UPDATE/DELETE the count
of rows they changed), ``columns`` (names), ``rows`` (the first ``max_rows`` rows, each a list of
JSON values in column order: dates and times as ISO strings, decimals as floats, blobs as escaped
strings; read one as ``rows[0][1]``), ``records`` (the same rows as maps from column name to
value: ``records[0].total``; a repeated column name gets ``_1``, ``_2``… appended), ``truncated``
(whether ``rows`` is not the whole result) and ``result_path`` (absolute) when written.

Errors: SQL errors (syntax, catalog, constraint, read-only) and a missing ``query_file`` are user
errors carrying DuckDB's message (and which statement failed); a database file locked by another
process, or open in this worker with the other ``read_only`` setting, is a platform error
(retried under ``platform_retry_limit``). Each statement's first line is logged before it runs,
its row count after.

The work runs in a thread of its own (counted against trio's default thread limiter); duckdb is
imported there, never at module import. On cancellation the running query is interrupted
(``con.interrupt()``, repeated until the thread ends) and the step returns only once its thread
has exited, so no thread is left working. Statements already run stay committed (autocommit).
"""

from __future__ import annotations

import datetime
import decimal
import importlib.util
import math
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import pydantic
import pydantic_core
import trio

from legato import StepResult, StepType
from legato.hookspecs import hookimpl
from legato.paths import PathRefused, confine
from legato.process_settings import PathSettings

__all__ = ["SqlParams", "SqlSettings", "Sql", "to_json_value"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONFIG_KEYS = frozenset({"database", "query", "query_file", "query_params", "read_only", "max_rows",
                          "result_path"})
_RESULT_SUFFIXES = (".parquet", ".csv")
#: Statements whose result is the count of rows they changed (unless they have RETURNING); CREATE
#: TABLE … AS answers the rows it wrote.
_DML = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE_INTO", "COPY", "CREATE"})
_FETCH_CHUNK = 8192
#: Seconds between two interrupts of a cancelled query (an interrupt that lands between two
#: statements is forgotten by DuckDB, so the watcher repeats it until the thread has ended).
_INTERRUPT_EVERY = 0.05
#: Seconds after which a cancelled query that has not stopped is reported in the step's log.
_STOP_BOUND = 1.0


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


class SqlSettings(PathSettings):
    """The operator's settings of the ``sql`` step type (``--settings``: ``sql: {…}``):
    ``allowed_paths``, where `database` and `result_path` may point besides the working directory."""


class _Stop(Exception):
    """Raised in the worker thread when the step was cancelled before a statement started."""


class _Failure(Exception):
    """A failure the worker thread reports as a StepResult."""

    def __init__(self, result: StepResult) -> None:
        super().__init__(result.message)
        self.result = result


class _Shared:
    """What the event loop and the worker thread share: the connection, to interrupt it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.con: Any = None
        self.cancelled = False

    def attach(self, con: Any) -> None:
        with self.lock:
            if self.cancelled:
                raise _Stop
            self.con = con

    def detach(self) -> Any:
        with self.lock:
            con, self.con = self.con, None
            return con

    def interrupt(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.con is not None:
                self.con.interrupt()

    def check(self) -> None:
        if self.cancelled:
            raise _Stop


class Sql(StepType):
    """Runs ``query`` (or ``query_file``) with DuckDB; see the module docstring."""

    name = "sql"
    description = "runs SQL with DuckDB; params are bound as $name parameters, never pasted"
    Params = SqlParams
    Settings = SqlSettings
    # The query is code: `${x}` in it is never Legato's paste (bind `$x` through query_params).
    raw_params = frozenset({"query"})

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
        except PathRefused as exc:
            return StepResult.fatal_error(str(exc))
        if cfg.query_file is not None:
            base = Path(ctx.definition_dir) if ctx.definition_dir is not None else Path.cwd()
            query_file: Path | None = base / cfg.query_file
        else:
            query_file = None
        bindings = _bindings(ctx, cfg)
        spill = ctx.attempt_dir / "result.parquet" if result_path is not None else None

        token = trio.lowlevel.current_trio_token()

        def log(text: str) -> None:  # called in the worker thread; ctx.log belongs to the loop
            try:
                trio.from_thread.run_sync(ctx.log, "stdout", text, trio_token=token)
            except trio.RunFinishedError:  # pragma: no cover - the loop is gone
                pass

        shared = _Shared()
        work = _Work(cfg, database, query_file, result_path, spill, bindings, shared, log, Path(ctx.workdir))
        # The global thread bound trio.to_thread uses, so DuckDB steps share it with other
        # blocking work.
        async with trio.to_thread.current_default_thread_limiter():
            return await _in_thread(work, shared, token, f"legato-sql {ctx.idempotency_key}", ctx)


async def _in_thread(work: "_Work", shared: "_Shared", token, name: str, ctx) -> StepResult:
    """Run ``work`` in a thread of its own and return its result once the thread is gone.

    Not ``trio.to_thread.run_sync``: its worker thread still runs for a moment after handing back
    the result (until it gets the GIL back), so a step would end with a thread still busy. Here
    the step ends only once its thread has exited. On cancellation the query is interrupted
    (again and again until the thread is done: an interrupt that lands between two statements is
    forgotten by DuckDB) and the step waits for the thread, so nothing is left working.
    """
    finished = trio.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, re-raised there
            box["error"] = exc
        finally:
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:  # pragma: no cover - the loop is gone
                pass

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        await finished.wait()
    finally:
        with trio.CancelScope(shield=True):
            if not finished.is_set():  # cancelled while the query runs
                await _interrupt_until_done(shared, finished, ctx)
            while thread.is_alive():  # it is past its last line: let it exit
                await trio.sleep(0.001)
    if "error" in box:
        raise box["error"]
    return box["result"]


async def _interrupt_until_done(shared: _Shared, finished: trio.Event, ctx) -> None:
    started = trio.current_time()
    warned = False
    while not finished.is_set():
        shared.interrupt()
        with trio.move_on_after(_INTERRUPT_EVERY):
            await finished.wait()
        if not warned and trio.current_time() - started > _STOP_BOUND:
            warned = True
            ctx.log("stderr", "[legato] the interrupted query has not stopped yet; still waiting for it\n")


class _Work:
    """The blocking part, run in a worker thread: connect, run the statements, build outputs."""

    def __init__(self, cfg: SqlParams, database: str, query_file: Path | None, result_path: Path | None,
                 spill: Path | None, bindings: dict[str, Any], shared: _Shared, log, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.database = database
        self.query_file = query_file
        self.result_path = result_path
        self.spill = spill
        self.bindings = bindings
        self.shared = shared
        self.log = log

    def __call__(self) -> StepResult:
        try:
            return self._run()
        except _Failure as failure:
            return failure.result
        except _Stop:
            return StepResult.user_error("cancelled")

    def _run(self) -> StepResult:
        cfg = self.cfg
        if self.query_file is not None:
            try:
                text = self.query_file.read_text(encoding="utf-8")
            except FileNotFoundError:
                return StepResult.user_error(f"query_file {str(self.query_file)!r} does not exist")
            except (OSError, UnicodeDecodeError) as exc:
                return StepResult.user_error(f"cannot read query_file {str(self.query_file)!r}: {exc}")
        else:
            text = cfg.query or ""

        try:
            import duckdb  # here, in the worker thread: importing it takes a while
        except ImportError as exc:
            return StepResult.platform_error(f"cannot import duckdb ({exc}): pip install 'legato[sql]'")

        con = self._connect(duckdb)
        try:
            self.shared.attach(con)
            # Per session, not in connect()'s config: two connections to one database file with
            # different configs refuse each other. The value is bound, never pasted; DuckDB splits
            # the setting at commas, so a directory whose path has one cannot be named in it.
            if "," in str(self.workdir):
                self.log("[legato] the instance's working directory has a comma in its path: relative paths "
                         "in the query resolve in the worker's own directory\n")
            else:
                con.execute("SET SESSION file_search_path = $dir", {"dir": str(self.workdir)})
            try:
                statements = con.extract_statements(text)
            except duckdb.Error as exc:
                return StepResult.user_error(_message(exc))
            if not statements:
                return StepResult.user_error("the query holds no SQL statement")
            count = len(statements)
            for number, statement in enumerate(statements, start=1):
                self.shared.check()
                last = number == count
                self.log(f"sql> {_first_line(statement.query)}\n")
                try:
                    if last:
                        outputs = self._last(con, statement)
                    else:
                        cursor = con.execute(statement, self._params_for(statement))
                        outputs = self._summarise(cursor, statement, 0)
                except duckdb.InterruptException:
                    raise _Stop from None
                except (duckdb.Error, OSError) as exc:
                    self.shared.check()
                    where = f"statement {number} of {count}: " if count > 1 else ""
                    return StepResult.user_error(f"{where}{_message(exc)}")
                self.log(f"({outputs['row_count']} {'row' if outputs['row_count'] == 1 else 'rows'})\n")
            return StepResult.done(outputs)
        finally:
            self.shared.detach()
            try:
                con.close()
            except Exception:  # noqa: BLE001 - closing is best effort once the work is over
                pass

    def _connect(self, duckdb):
        cfg = self.cfg
        try:
            if self.database != ":memory:" and not cfg.read_only:
                Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _Failure(StepResult.user_error(f"cannot create the directory of database {self.database!r}: {exc}"))
        try:
            return duckdb.connect(self.database, read_only=cfg.read_only)
        except duckdb.Error as exc:
            text = str(exc)
            if "Could not set lock on file" in text:
                holder = re.search(r"Conflicting lock is held in (.*?)(?:\. See also|$)", text)
                who = f" ({holder.group(1)})" if holder else ""
                raise _Failure(StepResult.platform_error(
                    f"database file {self.database!r} is locked: another process holds it{who}")) from None
            if isinstance(exc, duckdb.ConnectionException) and "different configuration" in text:
                raise _Failure(StepResult.platform_error(
                    f"database file {self.database!r} is open in this worker with a different configuration "
                    f"(read_only={not cfg.read_only}) by another step: {text}")) from None
            raise _Failure(StepResult.user_error(f"cannot open database {self.database!r}: {_message(exc)}")) from None

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
            return self._summarise(cursor, statement, self.cfg.max_rows)
        # One execution: spill the whole result to Parquet (exact types) with the relation API,
        # count and preview from it, then move it (or convert it to CSV) to result_path. Paths
        # are arguments or bound values, never pasted into SQL text by this step.
        relation = con.sql(statement, params=self._params_for(statement))
        spill, target = self.spill, self.result_path
        spill.unlink(missing_ok=True)
        try:
            if relation is None:  # a statement without a result (older DuckDB)
                raise _Failure(StepResult.user_error(
                    "result_path needs the last statement to return rows; it returned none"))
            relation.write_parquet(str(spill))
            self.shared.check()
            where = {"spill": str(spill)}
            total = con.execute("SELECT count(*) FROM read_parquet($spill)", where).fetchall()[0][0]
            preview = {**where, "n": max(self.cfg.max_rows, 1)}
            cursor = con.execute("SELECT * FROM read_parquet($spill) LIMIT $n", preview)
            outputs = self._summarise(cursor, statement, self.cfg.max_rows, total=total)
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


@hookimpl
def legato_register_step_types(registry):
    registry.add(Sql)
