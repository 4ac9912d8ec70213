"""The ``sql`` step type (DuckDB), through the real engine, plus its conformance suite."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import pytest
import trio

from legato.conformance.suites import StepTypeSuite, _busy_threads, _runqueue_wait
from legato.definition import DefinitionError
from legato.engine import Engine
from legato.storage import open_storage

duckdb = pytest.importorskip("duckdb")

from legato.plugins import sql as sql_plugin  # noqa: E402

NO_RETRY = {"error_retry_limit": 0, "platform_retry_limit": 0}
#: A query that runs for minutes unless interrupted (one DuckDB thread, so it does not hog the host).
LONG_QUERY = "SET threads TO 1;\nSELECT count(*) FROM range(1000000000) a, range(1000000) b"


# -- harness -----------------------------------------------------------------------------------


def make_engine(tmp_path: Path) -> Engine:
    # Databases these tests keep beside the workspace (tmp_path/…) are allowed by the operator.
    return Engine(open_storage("memory://"), workspace=tmp_path / "runs",
                  step_settings={"sql": {"allowed_paths": [str(tmp_path)]}})


def step(sid: str = "q", retry: dict | None = None, **params) -> dict:
    return {"step": {"id": sid, "type": "sql", "params": params, "retry_policy": retry or NO_RETRY}}


def workflow(*steps: dict, params: dict | None = None) -> dict:
    doc = {"workflow": {"id": "sqlwf", "steps": list(steps)}}
    if params:
        doc["workflow"]["params"] = params
    return doc


class Done:
    def __init__(self, engine, instance, attempts, logs) -> None:
        self.engine = engine
        self.instance = instance
        self.attempts = attempts
        self.by_step = {a.step_id: a for a in attempts}  # the last attempt of each step
        self.logs = logs

    def status(self, sid: str = "q") -> str:
        return self.by_step[sid].status.value

    def fatal(self, failure: str, sid: str = "q") -> bool:
        """The step ended FATALLY_FAILED as a ``failure`` (USER_FAILED, PLATFORM_FAILED) with no retry
        left: the engine names the class in the message (states.next_status)."""
        attempt = self.by_step[sid]
        return attempt.status.value == "FATALLY_FAILED" and f"({failure}, no " in attempt.message

    def outputs(self, sid: str = "q") -> dict:
        return self.by_step[sid].outputs

    def message(self, sid: str = "q") -> str:
        return self.by_step[sid].message

    def log(self, sid: str = "q") -> str:
        return "".join(c.text for c in self.logs if c.step_id == sid)

    @property
    def workdir(self) -> Path:
        return self.engine.workspace / self.instance.instance_id


async def run(tmp_path: Path, doc, params: dict | None = None, engine: Engine | None = None) -> Done:
    engine = engine or make_engine(tmp_path)
    instance = await engine.execute(engine.load(doc), params)
    attempts = await engine.storage.get_attempts(instance.instance_id)
    logs = await engine.storage.get_logs(instance.instance_id)
    return Done(engine, instance, attempts, logs)


# -- statements, outputs, files ------------------------------------------------------------------


async def test_statements_run_in_order_in_a_file_database(tmp_path):
    doc = workflow(step(
        database="data/shop.db",
        query="""
            CREATE TABLE sales(region VARCHAR, amount DECIMAL(10, 2), day DATE);
            INSERT INTO sales VALUES ('eu', 10.50, DATE '2024-01-02'), ('us', 7, DATE '2024-01-03'),
                                     ('eu', 1.25, NULL);
            -- the result the step reports
            SELECT region, amount, day FROM sales ORDER BY amount DESC;
        """))
    done = await run(tmp_path, doc)
    assert done.status() == "SUCCEEDED", done.message()
    out = done.outputs()
    assert out["row_count"] == 3
    assert out["columns"] == ["region", "amount", "day"]
    assert out["rows"] == [["eu", 10.5, "2024-01-02"], ["us", 7.0, "2024-01-03"], ["eu", 1.25, None]]
    assert out["truncated"] is False
    json.dumps(out)  # plain JSON
    db = done.workdir / "data" / "shop.db"
    assert db.is_file(), "the database lives in the instance's working directory"
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM sales").fetchall() == [(3,)]
    finally:
        con.close()
    log = done.log()
    assert "sql> CREATE TABLE sales(region VARCHAR, amount DECIMAL(10, 2), day DATE);" in log
    assert "sql> INSERT INTO sales VALUES" in log and "(3 rows)" in log
    assert "sql> SELECT region, amount, day FROM sales ORDER BY amount DESC;" in log


async def test_a_later_step_reads_the_same_database_and_conditions_see_row_count(tmp_path):
    doc = workflow(
        {"step": {**step(database="w.db", query="CREATE TABLE t AS SELECT range AS i FROM range(5); "
                                                 "SELECT * FROM t WHERE i >= $low",
                         query_params={"low": 2})["step"],
                  "transition": {"successors": {"many": "steps.q.outputs.row_count > 2",
                                                "few": "steps.q.outputs.row_count <= 2"}}}},
        step("many", database="w.db", read_only=True, query="SELECT sum(i) AS total FROM t"),
        step("few", query="SELECT 1"),
    )
    done = await run(tmp_path, doc)
    assert done.status("q") == "SUCCEEDED", done.message("q")
    assert done.outputs("q")["row_count"] == 3
    assert done.status("many") == "SUCCEEDED", done.message("many")
    assert done.outputs("many")["rows"] == [[10]]
    assert "few" not in done.by_step or done.status("few") != "SUCCEEDED"


async def test_rows_are_also_records_keyed_by_column(tmp_path):
    """``rows[0][1]`` and ``records[0].total`` are the same value; a repeated column name is kept apart."""
    doc = workflow({"step": {**step(query="SELECT 'north' AS region, 150 AS total, 1 AS n, 2 AS n "
                                          "UNION ALL SELECT 'south', 80, 3, 4 ORDER BY total DESC")["step"],
                             "transition": {"successors": {"big": "steps.q.outputs.records[0].total == "
                                                                  "steps.q.outputs.rows[0][1]"}}}},
                   step("big", query="SELECT 1"))
    done = await run(tmp_path, doc)
    assert done.status() == "SUCCEEDED", done.message()
    assert done.outputs()["records"] == [{"region": "north", "total": 150, "n": 1, "n_1": 2},
                                         {"region": "south", "total": 80, "n": 3, "n_1": 4}]
    assert done.status("big") == "SUCCEEDED", done.message("big")


async def test_relative_paths_in_the_query_resolve_in_the_instance_working_directory(tmp_path, monkeypatch):
    """A bash step writes ``sales.csv`` into the instance's working directory; the query's
    ``read_csv('sales.csv')`` finds it there, whatever directory the worker runs in."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    doc = workflow({"step": {"id": "extract", "type": "bash",
                             "params": {"script": "printf 'region,total\\nnorth,150\\nsouth,80\\n' > sales.csv"},
                             "transition": {"successors": ["q"]}}},
                   step(query="SELECT sum(total) AS total FROM read_csv('sales.csv'); "
                              "SELECT count(*) AS n FROM 'sales.csv'"))
    done = await run(tmp_path, doc)
    assert done.status() == "SUCCEEDED", done.message()
    assert done.outputs()["records"] == [{"n": 2}]
    assert not (elsewhere / "sales.csv").exists()


async def test_the_instance_directorys_file_wins_over_the_workers(tmp_path, monkeypatch):
    """A file of the same name in the worker's own directory and in the instance's working
    directory: every read (a path, ``read_csv``, a glob) gets the instance's."""
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "data.csv").write_text("origin\nworker\n")
    (worker / "data2.csv").write_text("origin\nworker\n")
    monkeypatch.chdir(worker)
    doc = workflow({"step": {"id": "extract", "type": "bash",
                             "params": {"script": "printf 'origin\\ninstance\\n' > data.csv"},
                             "transition": {"successors": ["q"]}}},
                   step(query="SELECT origin FROM 'data.csv' UNION ALL SELECT origin FROM read_csv('data.csv') "
                              "UNION ALL SELECT origin FROM read_csv('data*.csv')"))
    done = await run(tmp_path, doc)
    assert done.status() == "SUCCEEDED", done.message()
    assert done.outputs()["rows"] == [["instance"]] * 3


async def test_relative_writes_and_attach_land_in_the_instance_working_directory(tmp_path, monkeypatch):
    """``COPY … TO``, ``EXPORT DATABASE`` and ``ATTACH`` with relative paths write into the
    instance's working directory; nothing appears in the worker's own directory."""
    worker = tmp_path / "worker"
    worker.mkdir()
    monkeypatch.chdir(worker)
    done = await run(tmp_path, workflow(step(query=(
        "COPY (SELECT 1 AS one) TO 'out.csv' (HEADER);\n"
        "ATTACH 'side.db' AS side; CREATE TABLE side.t AS SELECT 42 AS answer; DETACH side;\n"
        "CREATE TABLE kept AS SELECT 7 AS seven; EXPORT DATABASE 'dump';\n"
        "SELECT * FROM read_csv('out.csv')"))))
    assert done.status() == "SUCCEEDED", done.message()
    assert done.outputs()["records"] == [{"one": 1}]
    assert (done.workdir / "out.csv").read_text().splitlines() == ["one", "1"]
    assert (done.workdir / "dump" / "schema.sql").is_file()
    con = duckdb.connect(str(done.workdir / "side.db"), read_only=True)
    try:
        assert con.execute("SELECT answer FROM t").fetchall() == [(42,)]
    finally:
        con.close()
    assert list(worker.iterdir()) == [], "the query wrote into the worker's directory"


async def test_dml_reports_the_rows_it_changed(tmp_path):
    doc = workflow(step(query="CREATE TABLE t AS SELECT range AS i FROM range(10); "
                              "UPDATE t SET i = i + 1 WHERE i < 4"))
    done = await run(tmp_path, doc)
    assert done.status() == "SUCCEEDED", done.message()
    assert done.outputs()["row_count"] == 4
    assert done.log().count("(10 rows)") == 1 and "(4 rows)" in done.log()


async def test_max_rows_truncates_the_rows_not_the_count(tmp_path):
    done = await run(tmp_path, workflow(step(query="SELECT range AS i FROM range(50)", max_rows=5)))
    out = done.outputs()
    assert out["row_count"] == 50 and out["truncated"] is True
    assert out["rows"] == [[0], [1], [2], [3], [4]]
    default = await run(tmp_path, workflow(step(query="SELECT range AS i FROM range(50)")))
    assert len(default.outputs()["rows"]) == 20
    none = await run(tmp_path, workflow(step(query="SELECT 1 AS one", max_rows=0)))
    assert none.outputs() == {"row_count": 1, "columns": ["one"], "rows": [], "records": [], "truncated": True}


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
async def test_result_path_holds_the_full_result(tmp_path, suffix):
    doc = workflow(step(
        query="SELECT range AS i, 'it''s ' || range AS s FROM range(100) WHERE range % $m = 0",
        query_params={"m": 2}, max_rows=3, result_path=f"out/evens.{suffix}"))
    done = await run(tmp_path, doc)
    assert done.status() == "SUCCEEDED", done.message()
    out = done.outputs()
    path = Path(out["result_path"])
    assert path == done.workdir / "out" / f"evens.{suffix}" and path.is_file()
    assert out["row_count"] == 50 and out["truncated"] is True
    assert out["rows"] == [[0, "it's 0"], [2, "it's 2"], [4, "it's 4"]]
    con = duckdb.connect()
    try:
        reader = "read_parquet" if suffix == "parquet" else "read_csv"
        rows = con.execute(f"SELECT i, s FROM {reader}($p) ORDER BY i", {"p": str(path)}).fetchall()
    finally:
        con.close()
    assert rows == [(i, f"it's {i}") for i in range(0, 100, 2)]
    assert not list(done.workdir.glob(".legato/q.*/result.parquet")), "the spill file was left behind"


async def test_values_become_json():
    to = sql_plugin.to_json_value
    assert to(decimal.Decimal("1.50")) == 1.5
    assert to(datetime.date(2024, 1, 2)) == "2024-01-02"
    assert to(datetime.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05"
    assert to(datetime.time(3, 4)) == "03:04:00"
    assert to(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert to(b"a\x00\\") == "a\\x00\\x5C"
    assert to(float("nan")) == "nan" and to(float("inf")) == "inf"
    assert to(2**70) == str(2**70)
    assert to([1, {"k": decimal.Decimal("2")}]) == [1, {"k": 2.0}]
    assert to(datetime.timedelta(days=1)) == "1 day, 0:00:00"


async def test_nested_and_temporal_columns_round_trip_as_json(tmp_path):
    done = await run(tmp_path, workflow(step(query=(
        "SELECT [1, 2] AS l, {'a': 1, 'b': 'x'} AS s, TIMESTAMP '2024-01-02 03:04:05' AS ts, "
        "INTERVAL 2 DAY AS iv, 12345678901234567890123::HUGEINT AS big, 'ab'::BLOB AS bl"))))
    assert done.status() == "SUCCEEDED", done.message()
    row = done.outputs()["rows"][0]
    assert row[:3] == [[1, 2], {"a": 1, "b": "x"}, "2024-01-02T03:04:05"]
    assert row[4] == "12345678901234567890123" and row[5] == "ab"
    json.dumps(row)


# -- parameters are data ---------------------------------------------------------------------------


async def test_bound_params_are_never_pasted(tmp_path):
    marker = tmp_path / "pwned"
    nasty = "x'; DROP TABLE t; --"
    shell = f"$(touch {marker})"
    doc = workflow(step(
        database="p.db",
        query="CREATE TABLE t(v VARCHAR); INSERT INTO t VALUES ($nasty), ($shell); SELECT v FROM t ORDER BY v DESC",
        query_params={"nasty": nasty, "shell": shell}))
    done = await run(tmp_path, doc)
    assert done.status() == "SUCCEEDED", done.message()
    assert done.outputs()["rows"] == [[nasty], [shell]], "the values did not round-trip byte for byte"
    again = await run(tmp_path, workflow(step(database=str(done.workdir / "p.db"), read_only=True,
                                              query="SELECT count(*) FROM t")))
    assert again.outputs()["rows"] == [[2]], "the table is gone"
    assert not marker.exists()


async def test_params_come_from_expressions_and_other_params(tmp_path):
    """`$name` binds query_params first, then the step's other params, then the workflow's."""
    doc = workflow(
        step(query="SELECT $r AS r, $n AS n, $limit AS lim, $region AS region",
             query_params={"r": "${region}!"}, n={"type": "LONG", "expression": "size(region) + 1"},
             region="step's"),
        params={"region": {"type": "STRING", "value": "eu'--"}, "limit": {"type": "LONG", "value": 7}})
    done = await run(tmp_path, doc)
    assert done.status() == "SUCCEEDED", done.message()
    assert done.outputs()["rows"] == [["eu'--!", 6, 7, "step's"]]


async def test_dollar_brace_in_the_query_is_not_interpolated(tmp_path):
    params = {"name": {"type": "STRING", "value": "PASTED"}}
    literal = await run(tmp_path, workflow(step(query="SELECT '${name}' AS v"), params=params))
    assert literal.status() == "SUCCEEDED", literal.message()
    assert literal.outputs()["rows"] == [["${name}"]]

    bare = await run(tmp_path, workflow(step(query="SELECT ${name} AS v"), params=params))
    assert bare.fatal("USER_FAILED")
    assert "PASTED" not in bare.message() and "PASTED" not in bare.log()
    assert "${name}" in bare.message() or "syntax error" in bare.message()


async def test_a_missing_parameter_is_a_user_error_naming_it(tmp_path):
    done = await run(tmp_path, workflow(step(query="SELECT $nope")))
    assert done.fatal("USER_FAILED")
    assert "nope" in done.message()


# -- query files -----------------------------------------------------------------------------------


async def test_query_file_resolves_against_the_definition(tmp_path):
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "report.sql").write_text(
        "CREATE TABLE t AS SELECT range AS i FROM range(4);\nSELECT sum(i) AS s FROM t WHERE i > $min;\n")
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow(step(query_file="sql/report.sql", query_params={"min": 0}))))
    done = await run(tmp_path, path)
    assert done.status() == "SUCCEEDED", done.message()
    assert done.outputs()["rows"] == [[6]]

    path.write_text(json.dumps(workflow(step(query_file="sql/missing.sql"))))
    missing = await run(tmp_path, path)
    assert missing.fatal("USER_FAILED")
    assert "missing.sql" in missing.message() and "does not exist" in missing.message()


async def test_query_file_without_a_definition_file_resolves_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "q.sql").write_text("SELECT 42 AS answer")
    monkeypatch.chdir(tmp_path)
    done = await run(tmp_path, workflow(step(query_file="q.sql")))
    assert done.outputs()["rows"] == [[42]]


@pytest.mark.parametrize("params, pointer", [
    ({"query": "SELECT 1", "query_file": "x.sql"}, ""),
    ({}, ""),
    ({"query": "SELECT 1", "max_rows": 1001}, "/max_rows"),
    ({"query": "SELECT 1", "result_path": "out.json"}, "/result_path"),
    ({"query": "SELECT 1", "query_params": {"not a name": 1}}, "/query_params"),
])
async def test_bad_params_are_refused_at_load(tmp_path, params, pointer):
    with pytest.raises(DefinitionError) as info:
        make_engine(tmp_path).load(workflow(step(**params)))
    want = f"/workflow/steps/0/step/params{pointer}"
    assert want in [p.pointer for p in info.value.problems], [str(p) for p in info.value.problems]


# -- failures --------------------------------------------------------------------------------------


async def test_sql_errors_are_user_failures_with_duckdbs_message(tmp_path):
    done = await run(tmp_path, workflow(step(query="SELECT 1; SELECT * FROM no_such_table")))
    assert done.fatal("USER_FAILED")
    assert "statement 2 of 2" in done.message()
    assert "no_such_table does not exist" in done.message()

    syntax = await run(tmp_path, workflow(step(query="SELEC 1")))
    assert syntax.fatal("USER_FAILED") and "syntax error" in syntax.message()

    constraint = await run(tmp_path, workflow(step(query="CREATE TABLE k(a INT PRIMARY KEY); "
                                                         "INSERT INTO k VALUES (1), (1)")))
    assert constraint.fatal("USER_FAILED") and "constraint" in constraint.message().lower()


async def test_user_errors_follow_the_error_retry_limit(tmp_path):
    retry = {"error_retry_limit": 2, "platform_retry_limit": 0, "backoff": {"type": "fixed", "base": 0}}
    done = await run(tmp_path, workflow(step(query="SELECT * FROM nowhere", retry=retry)))
    assert [a.status.value for a in done.attempts] == ["USER_FAILED"] * 2 + ["FATALLY_FAILED"]


async def test_read_only_refuses_writes(tmp_path):
    first = await run(tmp_path, workflow(step(database=str(tmp_path / "ro.db"), query="CREATE TABLE t(a INT)")))
    assert first.status() == "SUCCEEDED", first.message()
    done = await run(tmp_path, workflow(step(database=str(tmp_path / "ro.db"), read_only=True,
                                             query="INSERT INTO t VALUES (1)")))
    assert done.fatal("USER_FAILED")
    assert "read-only" in done.message()
    memory = await run(tmp_path, workflow(step(read_only=True, query="SELECT 1")))
    assert memory.fatal("USER_FAILED") and "read-only" in memory.message()


async def test_a_database_locked_by_another_process_is_a_platform_failure(tmp_path):
    db = tmp_path / "locked.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\n"
         "print('ready', flush=True)\ntime.sleep(60)\n", str(db)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        retry = {"error_retry_limit": 0, "platform_retry_limit": 2, "backoff": {"type": "fixed", "base": 0}}
        done = await run(tmp_path, workflow(step(database=str(db), query="SELECT 1", retry=retry)))
    finally:
        holder.kill()
        holder.wait()
    assert [a.status.value for a in done.attempts] == ["PLATFORM_FAILED"] * 2 + ["FATALLY_FAILED"]
    assert str(db) in done.message() and "another process holds it" in done.message()
    # Once the other process is gone, the same step works.
    after = await run(tmp_path, workflow(step(database=str(db), query="SELECT 1 AS ok")))
    assert after.status() == "SUCCEEDED", after.message()


async def test_a_database_the_worker_holds_open_is_locked_for_the_step(tmp_path):
    """Each step opens the database in a process of its own: one the worker itself holds open
    read-write (as a library user's connection would) is another process's lock, whatever the
    step's ``read_only``: a platform failure naming the holder."""
    db = tmp_path / "shared.db"
    con = duckdb.connect(str(db))  # read-write, in this process
    try:
        con.execute("CREATE TABLE t AS SELECT 1 AS a")
        writer = await run(tmp_path, workflow(step(database=str(db), query="SELECT a FROM t")))
        reader = await run(tmp_path, workflow(step(database=str(db), read_only=True, query="SELECT a FROM t")))
    finally:
        con.close()
    for done in (writer, reader):
        assert done.fatal("PLATFORM_FAILED"), done.message()
        assert str(db) in done.message() and "another process holds it" in done.message()
        assert f"PID {os.getpid()}" in done.message()
    after = await run(tmp_path, workflow(step(database=str(db), read_only=True, query="SELECT a FROM t")))
    assert after.outputs()["rows"] == [[1]]


def test_unavailable_without_duckdb(monkeypatch):
    assert sql_plugin.Sql.unavailable() is None
    real = sql_plugin.importlib.util.find_spec
    monkeypatch.setattr(sql_plugin.importlib.util, "find_spec",
                        lambda name, *a: None if name == "duckdb" else real(name, *a))
    reason = sql_plugin.Sql.unavailable()
    assert reason and "pip install 'legato[sql]'" in reason


def test_loading_the_plugin_does_not_import_duckdb():
    proc = subprocess.run([sys.executable, "-c", "import sys, legato.plugins.sql\nprint('duckdb' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


# -- long queries: the loop stays live, cancellation interrupts ---------------------------------


async def _child(engine: Engine, instance_id: str, logged: str | None = None) -> tuple[int, int | None]:
    """The pid of the step's DuckDB process (from the handle it records) and its start time, once
    the handle is recorded (and, with ``logged``, once the step's log holds that text)."""
    with trio.fail_after(60):  # a hang guard
        while True:
            attempts = await engine.storage.get_attempts(instance_id)
            handle = attempts[0].handle if attempts else None
            if handle and (logged is None or logged in "".join(
                    c.text for c in await engine.storage.get_logs(instance_id))):
                break
            await trio.sleep(0.02)
    assert handle["pid"] == handle["pgid"] != os.getpid()
    started = _start_time(handle["pid"])
    if "started" in handle:  # forked by the fork server: known by its start time
        assert handle["started"] == started
    return handle["pid"], started


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _gone(pid: int, started: int | None) -> bool:
    """The process so identified no longer runs (a zombie nobody has reaped yet has ended) and
    its process group is empty."""
    if started is not None and _start_time(pid) == started and _state(pid) != "Z":
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return _state(pid) == "Z"  # the group's only member is its leader's zombie


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


async def _start_long(tmp_path: Path, check, **params) -> dict:
    engine = make_engine(tmp_path)
    facts: dict = {"before": _busy_threads()}
    definition = engine.load(workflow(step(**(params or {"query": LONG_QUERY}))))
    instance, _ = await engine.start(definition)
    running = trio.Event()

    def observer(event):
        if event.step_id == "q" and event.status == "RUNNING":
            running.set()

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(lambda task_status: engine.run(
            definition, instance, observer=observer, task_status=task_status))
        with trio.fail_after(10):
            await running.wait()
        # the last statement has started: the query runs
        facts["child"] = await _child(engine, instance.instance_id, logged="sql> SELECT ")
        pid = facts["child"][0]
        facts["cwd"] = Path(os.readlink(f"/proc/{pid}/cwd"))
        facts["environ"] = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        facts["workdir"] = (engine.workspace / instance.instance_id).resolve()
        await check(facts)
        handle.stop("enough")
    facts["attempts"] = await engine.storage.get_attempts(instance.instance_id)
    facts["logs"] = "".join(c.text for c in await engine.storage.get_logs(instance.instance_id))
    return facts


LONG = {
    "one long statement": {"query": LONG_QUERY},
    "many statements": {"query": "SET threads TO 1;\n" + "SELECT count(*) FROM range(100000000) WHERE range % 7 = 3;\n" * 400},
    "a huge result": {"query": "SELECT range FROM range(1000000000000)"},
    "writing result_path": {"query": LONG_QUERY, "result_path": "out/r.parquet"},
}


@pytest.fixture(params=["forked", "own process"])
def start(request, monkeypatch):
    """How the step's DuckDB process starts: forked by the run's fork server, or (where there is
    none) as a Python of its own."""
    if request.param == "own process":
        monkeypatch.setattr(sql_plugin.Sql, "fork_server", False)
    return request.param


@pytest.mark.parametrize("what", list(LONG))
async def test_cancelling_a_long_query_interrupts_it(tmp_path, what, start):
    async def wait(facts):
        await trio.lowlevel.checkpoint()

    facts = await _start_long(tmp_path, wait, **LONG[what])
    # DuckDB ran in a process of its own, in the instance's working directory
    assert facts["cwd"] == facts["workdir"]
    if start == "own process":  # carrying the attempt's ids, like a bash step's
        assert b"LEGATO_STEP_ID=q" in facts["environ"]
        assert any(e.startswith(b"LEGATO_IDEMPOTENCY_KEY=") and len(e) > 23 for e in facts["environ"])
    # the queries run for hours: STOPPED, with DuckDB's process gone, means they were stopped
    assert [a.status.value for a in facts["attempts"]] == ["STOPPED"]
    assert "sql> SELECT " in facts["logs"]
    assert _gone(*facts["child"]), f"DuckDB's process {facts['child'][0]} is still running"
    busy = _busy_threads() - facts["before"]
    assert not busy, f"threads still working after cancellation: {busy}"


async def test_the_event_loop_stays_live_during_a_long_query(tmp_path):
    async def watch(facts):
        # time spent waiting for a CPU (a busy machine) does not count as the step blocking the loop
        gaps, last, waited = [], time.monotonic(), _runqueue_wait()
        with trio.move_on_after(1.0):
            while True:
                await trio.sleep(0.01)
                now, now_waited = time.monotonic(), _runqueue_wait()
                gaps.append(now - last - (now_waited - waited))
                last, waited = now, now_waited
        facts["worst"] = max(gaps)

    facts = await _start_long(tmp_path, watch)
    assert facts["worst"] < 0.25, f"the loop was blocked for {facts['worst']:.2f}s"


async def test_a_timeout_interrupts_the_query(tmp_path, start):
    engine = make_engine(tmp_path)
    definition = engine.load(workflow({"step": {**step(query=LONG_QUERY)["step"], "timeout": "2s"}}))
    instance, _ = await engine.start(definition)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run, definition, instance)
        child = await _child(engine, instance.instance_id)
    assert time.monotonic() - started < 30, "the 2 s timeout did not interrupt the query"  # a hang guard
    attempts = await engine.storage.get_attempts(instance.instance_id)
    assert [a.status.value for a in attempts] == ["TIMED_OUT"]
    assert _gone(*child), f"DuckDB's process {child[0]} is still running"


async def test_a_killed_duckdb_process_is_a_platform_failure(tmp_path, monkeypatch, start):
    """DuckDB's process dying without a result (the OOM killer, say) is the platform's failure;
    it inherits from the worker's environment only what the operator's ``inherit_env`` allows."""
    monkeypatch.setenv("SQLTEST_ALLOWED", "yes")
    monkeypatch.setenv("SQLTEST_WORKER_SECRET", "no")
    engine = Engine(open_storage("memory://"), workspace=tmp_path / "runs",
                    step_settings={"sql": {"inherit_env": ["SQLTEST_ALLOWED"]}})
    definition = engine.load(workflow(step(query=LONG_QUERY)))
    instance, _ = await engine.start(definition)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run, definition, instance)
        pid, started = await _child(engine, instance.instance_id, logged="sql> SELECT ")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        os.kill(pid, 9)
    assert b"SQLTEST_ALLOWED=yes" in environ
    assert not [e for e in environ if e.startswith(b"SQLTEST_WORKER_SECRET")]
    attempts = await engine.storage.get_attempts(instance.instance_id)
    assert attempts[0].status.value == "FATALLY_FAILED" and "(PLATFORM_FAILED, no " in attempts[0].message
    # a forked process's exit status goes to the fork server, its parent
    assert ("DuckDB's process ended without a result" if start == "forked"
            else "DuckDB's process was killed by signal SIGKILL") in attempts[0].message
    assert _gone(pid, started)


async def test_reap_kills_only_the_process_its_handle_names(tmp_path, start):
    """After a crash the resumed kernel reaps what the attempt left running: the process its
    handle names, known by its start time (forked) or by the attempt's idempotency key in its
    environment (its own process); a handle that names another process (a reused pid) kills nothing."""
    engine = make_engine(tmp_path)
    definition = engine.load(workflow(step(query=LONG_QUERY)))
    instance, _ = await engine.start(definition)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run, definition, instance)
        pid, started = await _child(engine, instance.instance_id, logged="sql> SELECT ")
        attempt = (await engine.storage.get_attempts(instance.instance_id))[0]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        keys = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"LEGATO_IDEMPOTENCY_KEY=")]
        ctx = types.SimpleNamespace(idempotency_key=keys[0] if keys else "unused: forked")
        other = {**attempt.handle, "started": (started or 0) + 1} if start == "forked" else attempt.handle
        other_ctx = ctx if start == "forked" else types.SimpleNamespace(idempotency_key="someone-else")
        sql_plugin.Sql().reap(other_ctx, other)
        assert not _gone(pid, started), "reap killed a process its handle does not name"
        sql_plugin.Sql().reap(ctx, attempt.handle)
    attempts = await engine.storage.get_attempts(instance.instance_id)
    assert "(PLATFORM_FAILED, no " in attempts[0].message, attempts[0].message
    assert _gone(pid, started)


async def test_concurrent_steps_of_different_instances_each_write_in_their_own_directory(tmp_path, monkeypatch):
    """Steps of several instances running at once, all forked by one server, each in its own
    instance's working directory."""
    monkeypatch.chdir(tmp_path)
    engine = make_engine(tmp_path)
    definition = engine.load(workflow(step(query="COPY (SELECT $n AS n) TO 'n.csv' (HEADER); SELECT * FROM 'n.csv'")))
    done: dict[int, object] = {}

    async def one(n: int) -> None:
        done[n] = await engine.execute(definition, {"n": n})

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(one, n)
    for n, instance in done.items():
        assert instance.status.value == "SUCCEEDED", instance
        workdir = engine.workspace / instance.instance_id
        assert (workdir / "n.csv").read_text().splitlines() == ["n", str(n)]
    assert not (tmp_path / "n.csv").exists()


async def test_at_most_max_processes_run_at_once(tmp_path, monkeypatch):
    """A step beyond ``MAX_PROCESSES`` waits for a DuckDB process to end before it starts one."""
    monkeypatch.setattr(sql_plugin, "MAX_PROCESSES", 1)
    engine = make_engine(tmp_path)
    parallel = {"properties": {"run_strategy": "parallel"}}  # two instances of one workflow at once
    long = engine.load({**workflow(step(query=LONG_QUERY)), **parallel})
    short = engine.load({**workflow(step(query="SELECT 1 AS one")), **parallel})
    first, _ = await engine.start(long)
    second, _ = await engine.start(short)
    async with trio.open_nursery() as nursery:
        run = await nursery.start(lambda task_status: engine.run(long, first, task_status=task_status))
        await _child(engine, first.instance_id)
        nursery.start_soon(engine.run, short, second)
        with trio.fail_after(60):  # a hang guard
            while sql_plugin._limiter().statistics().tasks_waiting < 1:
                await trio.sleep(0.01)
        assert not (await engine.storage.get_attempts(second.instance_id))[0].handle, "it started a process"
        run.stop("enough")
    attempts = await engine.storage.get_attempts(second.instance_id)
    assert attempts[0].status.value == "SUCCEEDED" and attempts[0].outputs["rows"] == [[1]]


async def test_a_dead_fork_server_is_replaced_and_its_steps_live_on(tmp_path):
    """The fork server killed while a step it forked runs: that step's process is its own (it
    runs on and is stopped as usual); the next step gets a new server."""
    engine = make_engine(tmp_path)
    definition = engine.load(workflow(step(query=LONG_QUERY)))
    instance, _ = await engine.start(definition)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(lambda task_status: engine.run(definition, instance, task_status=task_status))
        pid, started = await _child(engine, instance.instance_id, logged="sql> SELECT ")
        [server] = sql_plugin._SERVERS.get().values()
        os.kill(server.proc.pid, 9)
        with trio.fail_after(60):  # a hang guard
            while not server.dead:
                await trio.sleep(0.01)
        assert not _gone(pid, started), "the step's process died with the server"
        handle.stop("enough")
    assert [a.status.value for a in await engine.storage.get_attempts(instance.instance_id)] == ["STOPPED"]
    assert _gone(pid, started)
    after = await run(tmp_path, workflow(step(query="SELECT 1 AS one")), engine=engine)
    assert after.outputs()["rows"] == [[1]]
    [replacement] = [s for s in sql_plugin._SERVERS.get().values() if not s.dead]
    assert replacement is not server and "started" in after.by_step["q"].handle


# -- conformance -----------------------------------------------------------------------------------

class TestSqlConformance(StepTypeSuite):
    profile = "sql"  # as published in plugins/profiles.py
