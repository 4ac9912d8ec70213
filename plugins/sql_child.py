"""The child side of the ``sql`` step type: the process that runs one step's query with DuckDB.

``python -m legato.plugins.sql_child CONTROL_FD`` runs one step (started by the step in the
instance's working directory); ``python -m legato.plugins.sql_child --serve SOCKET_FD`` is the
fork server, which imports duckdb once and forks each step's process into the working directory
the request names (:func:`serve`). Either way the step's process sits in the instance's working
directory, so every relative path DuckDB meets (``read_csv``, ``FROM 'x.parquet'``, globs,
``COPY … TO``, ``EXPORT DATABASE``, ``ATTACH``) resolves there. It reads its spec (a JSON
object) on stdin, writes each statement's first line and row count to stdout (the step's log,
streamed), and writes one JSON line to ``CONTROL_FD`` before it exits:
``{"outcome": "DONE" | "USER_ERROR" | "PLATFORM_ERROR", "message": …, "outputs": …}``.

SIGTERM interrupts the running query (``con.interrupt()``, repeated until the work is over: an
interrupt that lands between two statements is forgotten) and the process exits with 128+15;
statements already run stay committed (autocommit). The step sends SIGKILL if that takes too long.

Standard library and duckdb only (imported by :func:`serve`, or once the spec is read): this
module is also imported by the worker, for :func:`to_json_value`, and must stay cheap there.
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

__all__ = ["to_json_value", "first_line"]

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


def main(argv: list[str]) -> int:
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
                _log(f"sql> {first_line(statement.query)}\n")
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


def first_line(query: str) -> str:
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


def serve(sock_fd: int) -> int:
    """The fork server (``python -m legato.plugins.sql_child --serve SOCKET_FD``): import duckdb
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
    """In a process just forked by :func:`serve`: become the step's process, then run it."""
    os.setsid()  # its own session and process group, killed as a group
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stdin, stdout, stderr, control = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    return main([str(control)])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve(int(sys.argv[2])))
    sys.exit(main(sys.argv[1:]))
