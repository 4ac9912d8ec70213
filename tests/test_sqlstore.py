"""The SQL store on SQLite: schema, durability across reopening, fencing, leases, and clear errors
for the files users will feed it (DESIGN §6 Storage, §10)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time

import pytest
import trio

from legato.conformance import StorageSuite
from legato.model import Batch, Event, InstanceRecord
from legato.plugins.sqlstore.store import event_statuses
from legato.storage import StaleWrite, StorageError, open_storage

from .conftest import LEGATO, ROOT, legato_cli

CHAIN = {"workflow": {"id": "chain", "steps": [
    {"step": {"id": "a", "type": "bash", "params": {"script": "echo hello from a; echo n=1 >> $LEGATO_OUTPUT"},
              "transition": {"successors": ["b"]}}},
    {"step": {"id": "b", "type": "noop", "params": {"outputs": {"k": [1, 2]}}}},
]}}


def sqlite_url(tmp_path, name="legato.db") -> str:
    return f"sqlite:///{tmp_path / name}"


async def test_migrations_build_exactly_the_declared_schema(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from legato.plugins.sqlstore.schema import metadata

    store = open_storage(sqlite_url(tmp_path))
    async with store:
        with store._engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"version_table": "legato_alembic_version"}),
                                    metadata)
    assert diff == []


async def test_everything_survives_reopening(plugins, tmp_path):
    from legato.engine import Engine

    url = sqlite_url(tmp_path)
    async with open_storage(url) as store:
        engine = Engine(store, plugins=plugins, workspace=tmp_path / "runs")
        final = await engine.execute(engine.load(CHAIN), request_id="r1")
        before = (await store.get_attempts(final.instance_id), await store.get_timeline(final.instance_id),
                  await store.get_logs(final.instance_id))
    async with open_storage(url) as store:
        again = await store.get_instance(final.instance_id)
        after = (await store.get_attempts(final.instance_id), await store.get_timeline(final.instance_id),
                 await store.get_logs(final.instance_id))
        version = await store.get_definition("chain")
        same, created = await store.create_instance(InstanceRecord("other", "chain", 1, request_id="r1"))
    assert again == final and again.status.value == "SUCCEEDED"
    assert after == before
    assert {a.step_id: a.outputs for a in after[0]} == {"a": {"n": "1"}, "b": {"k": [1, 2]}}
    assert "".join(c.text for c in after[2]) == "hello from a\n"
    assert len(after[1]) == 2 + 2 * 9
    assert version.document == CHAIN
    assert not created and same.instance_id == final.instance_id


async def test_definition_versions_are_immutable(tmp_path):
    async with open_storage(sqlite_url(tmp_path)) as store:
        v1 = await store.push_definition("w", {"a": 1})
        assert (await store.push_definition("w", {"a": 1})).version == 1
        v2 = await store.push_definition("w", {"a": 2})
        assert (v1.version, v2.version) == (1, 2)
        assert (await store.get_definition("w")).document == {"a": 2}
        assert (await store.get_definition("w", 1)).document == {"a": 1}


async def test_leases_expire_and_fence_stale_writers(tmp_path):
    async with open_storage(sqlite_url(tmp_path)) as store:
        await store.create_instance(InstanceRecord("i1", "w", 1, created_at=time.time()))
        gen_a = await store.acquire_lease("i1", "worker-a", ttl=30)
        assert gen_a == 1
        assert await store.acquire_lease("i1", "worker-b", ttl=30) is None  # live: refused
        assert await store.acquire_lease("i1", "worker-a", ttl=0.05) == 1  # renewal keeps the generation
        with trio.fail_after(30):  # a hang guard: wait for the store's own clock to expire the lease
            while (await store.get_lease("i1")).live:
                await trio.sleep(0.02)
        assert [r.instance_id for r in await store.list_resumable()] == ["i1"]
        gen_b = await store.acquire_lease("i1", "worker-b", ttl=30)
        assert gen_b == 2
        assert await store.list_resumable() == []
        with pytest.raises(StaleWrite, match="owned by worker-b"):
            await store.commit(Batch("i1", gen_a, events=[Event(time.time(), "i1", None, 0, "LATE")]))
        await store.commit(Batch("i1", gen_b, events=[Event(time.time(), "i1", None, 0, "OK")]))
        assert [e.status for e in await store.get_timeline("i1")] == ["OK"]
        assert await store.acquire_lease("i1", "worker-a", ttl=1) is None


def test_concurrent_writers_lose_nothing(tmp_path):
    """Two processes run 100-step chains into one SQLite file at the same time."""
    import json

    doc = {"workflow": {"id": "c", "steps": [
        {"step": {"id": f"s{i}", "type": "noop", **({"transition": {"successors": [f"s{i + 1}"]}} if i < 99 else {})}}
        for i in range(100)]}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    env = {**os.environ, "LEGATO_STORE": sqlite_url(tmp_path)}
    procs = [subprocess.Popen([LEGATO, "run", str(path), "--json", "--workspace", str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    db = sqlite3.connect(tmp_path / "legato.db")
    for report in reports:
        assert report["status"] == "SUCCEEDED"
        rows = db.execute("SELECT status FROM legato_events WHERE instance_id = ?", (report["instance_id"],))
        assert sum(len(event_statuses(status)) for (status,) in rows) == 2 + 100 * 9


def test_corrupt_file_is_refused_and_left_alone(tmp_path):
    db = tmp_path / "legato.db"
    garbage = b"this is not a database, it is someone's notes\n" * 100
    db.write_bytes(garbage)
    proc = legato_cli("run", "examples/etl.json", "--store", sqlite_url(tmp_path), "--workspace", str(tmp_path))
    assert proc.returncode == 1
    assert "is not a Legato database or is corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert db.read_bytes() == garbage


def test_foreign_database_is_refused(tmp_path):
    db = tmp_path / "legato.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users VALUES (1, 'ada')")
    conn.commit()
    conn.close()
    proc = legato_cli("list", "--store", sqlite_url(tmp_path))
    assert proc.returncode == 1
    assert "holds tables that are not Legato's (users)" in proc.stderr
    assert sqlite3.connect(db).execute("SELECT name FROM users").fetchall() == [("ada",)]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write to, even root: a read-only tmpfs (or chmod when not root)."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot make a read-only directory here as root (mount: {proc.stderr.strip()})")
    yield target
    subprocess.run(["umount", str(target)], check=False)


def test_read_only_directory_gives_a_clear_error(read_only_dir):
    proc = legato_cli("run", "examples/etl.json", "--store", f"sqlite:///{read_only_dir}/sub/legato.db")
    assert proc.returncode == 1
    assert f"cannot create the directory {read_only_dir}/sub" in proc.stderr
    proc = legato_cli("run", "examples/etl.json", "--store", f"sqlite:///{read_only_dir}/legato.db")
    assert proc.returncode == 1
    assert "cannot write to" in proc.stderr or "read-only" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_full_disk_is_a_clear_error_and_loses_nothing_committed(plugins, tmp_path):
    """SQLite's max_page_count makes the database 'full' exactly like a full disk does."""
    import sqlalchemy as sa

    from legato.engine import Engine

    url = sqlite_url(tmp_path)
    async with open_storage(url) as store:
        engine = Engine(store, plugins=plugins, workspace=tmp_path / "runs")
        first = await engine.execute(engine.load(CHAIN))
        big = {"workflow": {"id": "big", "steps": [
            {"step": {"id": f"s{i}", "type": "noop", "params": {"outputs": {"blob": "x" * 4000}}}} for i in range(200)]}}
        definition = engine.load(big)
        instance, _ = await engine.start(definition)
        pages = store._writer.execute("PRAGMA page_count").fetchone()[0]

        @sa.event.listens_for(store._engine, "connect")
        def _cap(dbapi_conn, _record):
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

        store._engine.dispose()
        store._writer.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StorageError, match="the disk is full") as info:
            await engine.run(definition, instance)
        assert "nothing committed before is lost" in str(info.value)
    async with open_storage(url) as store:
        kept = await store.get_instance(first.instance_id)
        assert kept.status.value == "SUCCEEDED"
        assert len(await store.get_attempts(first.instance_id)) == 2
        stuck = await store.get_instance(instance.instance_id)
        assert stuck.status.value in ("CREATED", "IN_PROGRESS")  # resumable once there is room


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    async with open_storage(sqlite_url(tmp_path)) as store:
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_the_default_store_is_sqlite_in_dot_legato(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LEGATO_STORE"}
    proc = subprocess.run([LEGATO, "run", str(ROOT / "examples" / "params.yaml")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".legato" / "legato.db").exists()
    listed = subprocess.run([LEGATO, "list"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "params-demo" in listed.stdout and "SUCCEEDED" in listed.stdout
    instance = listed.stdout.split()[0]
    logs = subprocess.run([LEGATO, "logs", instance, "plan"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "report 20260227..20260302 ($ in USD)" in logs.stdout
    status = subprocess.run([LEGATO, "status", instance, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert '"status": "SUCCEEDED"' in status.stdout


async def test_a_lease_whose_holder_died_or_whose_pid_was_reused_is_free_at_once(tmp_path):
    """The lease records its holder's process; on the same machine a holder that is gone, or a pid
    now used by another process (another start time), frees the lease before it expires."""
    import sqlite3
    import subprocess

    async with open_storage(sqlite_url(tmp_path)) as store:
        for iid in ("i1", "i2"):
            await store.create_instance(InstanceRecord(iid, "w", 1, created_at=time.time()), "worker-a", 30)
        assert await store.acquire_lease("i1", "worker-b", 30) is None  # this very process holds it: alive
        assert [r.instance_id for r, _ in await store.list_leased()] == ["i1", "i2"]
        dead = subprocess.Popen(["true"])
        dead.wait()
        conn = sqlite3.connect(tmp_path / "legato.db")
        with conn:
            conn.execute("UPDATE legato_instances SET owner_pid = ? WHERE instance_id = 'i1'", (dead.pid,))
            conn.execute("UPDATE legato_instances SET owner_started = owner_started + 1 WHERE instance_id = 'i2'")
        conn.close()
        assert [r.instance_id for r in await store.list_resumable()] == ["i1", "i2"]
        assert await store.list_leased() == []
        assert await store.acquire_lease("i1", "worker-b", 30) == 2
        assert await store.acquire_lease("i2", "worker-b", 30) == 2
        lease = await store.get_lease("i2")
        assert lease.owner == "worker-b" and lease.pid == os.getpid() and lease.live


_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE legato_instances SET message = message")
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
conn.execute("ROLLBACK")
"""


def test_readers_never_wait_behind_a_writer(tmp_path):
    """`status`, `list` and `logs` answer at once while another process holds a write
    transaction open (reads take no write lock; in WAL mode they see the last commit)."""
    import json
    import sys

    doc = tmp_path / "chain.json"
    doc.write_text(json.dumps(CHAIN))
    url = sqlite_url(tmp_path)
    ran = legato_cli("run", str(doc), "--json", "--store", url, "--workspace", str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    iid = json.loads(ran.stdout)["instance_id"]
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_WRITE_LOCK, str(tmp_path / "legato.db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        probe = sqlite3.connect(tmp_path / "legato.db", timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("BEGIN IMMEDIATE")  # the lock really is held
        probe.close()
        # The default busy timeout is 30 s: a reader that queued for the lock would hit the guard.
        status = legato_cli("status", iid, "--store", url, timeout=20)
        listed = legato_cli("list", "--store", url, timeout=20)
        logs = legato_cli("logs", iid, "--store", url, timeout=20)
    finally:
        holder.stdin.close()
        holder.wait(timeout=20)
    assert status.returncode == 0, status.stderr
    assert f"[{iid}] SUCCEEDED" in status.stdout
    assert listed.returncode == 0 and iid in listed.stdout, listed.stderr
    assert logs.returncode == 0 and "hello from a" in logs.stdout, logs.stderr


def test_a_database_deleted_during_a_run_is_a_loud_loss(tmp_path):
    """A step deletes the SQLite file mid-run: SQLite would go on committing into the unlinked
    file, exit 0 and leave nothing behind. The run must exit 1 saying what was lost and what to do."""
    import json

    db = tmp_path / "legato.db"
    doc = {"workflow": {"id": "vanishing", "steps": [
        {"step": {"id": "rm", "type": "bash", "params": {"db": str(db), "script": 'rm -f "$db"'},
                  "transition": {"successors": ["after"]}}},
        {"step": {"id": "after", "type": "noop"}},
    ]}}
    path = tmp_path / "vanishing.json"
    path.write_text(json.dumps(doc))
    proc = legato_cli("run", str(path), "--store", sqlite_url(tmp_path), "--workspace", str(tmp_path))
    assert not db.exists()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert f"the database {db} was deleted or replaced while Legato was writing to it" in proc.stderr
    assert "Restore the file from a backup" in proc.stderr
    assert re.search(r"instances [0-9a-f]{16}", proc.stderr), proc.stderr


def test_a_database_deleted_after_the_last_commit_is_a_loud_loss(tmp_path, plugins):
    """Deleted between the last commit and closing the store: closing says so."""
    from legato.engine import Engine

    async def main():
        store = open_storage(sqlite_url(tmp_path))
        await store.open()
        engine = Engine(store, plugins=plugins, workspace=tmp_path / "runs")
        final = await engine.execute(engine.load(CHAIN))
        assert final.status.value == "SUCCEEDED"
        (tmp_path / "legato.db").unlink()
        with pytest.raises(StorageError, match=f"deleted or replaced.*{final.instance_id}"):
            await store.aclose()

    trio.run(main)


def _corrupt_instances_index(db, instance_id: str) -> None:
    """Change the key of ``instance_id`` inside the primary-key index of legato_instances only,
    as a bad sector would: the table still has the row, the index no longer finds it."""
    conn = sqlite3.connect(db)
    (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_legato_instances_1'"
                           ).fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    at = data.find(instance_id.encode(), (page - 1) * size, page * size)
    assert at > 0
    data[at] = ord("z")
    db.write_bytes(bytes(data))


def test_a_corrupt_index_is_reported_as_corruption_not_as_a_missing_instance(tmp_path):
    import json

    doc = tmp_path / "chain.json"
    doc.write_text(json.dumps(CHAIN))
    url = sqlite_url(tmp_path)
    ran = legato_cli("run", str(doc), "--json", "--store", url, "--workspace", str(tmp_path))
    iid = json.loads(ran.stdout)["instance_id"]
    _corrupt_instances_index(tmp_path / "legato.db", iid)
    listed = legato_cli("list", "--store", url)
    assert listed.returncode == 0 and iid in listed.stdout  # a table scan still sees it
    for command in (["status", iid], ["logs", iid]):
        proc = legato_cli(*command, "--store", url)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"the database {tmp_path / 'legato.db'} is corrupt" in proc.stderr, proc.stderr
        assert ".recover" in proc.stderr and "no instance" not in proc.stderr


class TestSqliteConformance(StorageSuite):
    """The storage contract under plain pytest too (``legato conformance`` runs it as well)."""

    profile = "sqlite"  # as published in plugins/profiles.py


def test_a_new_sqlite_store_gets_exactly_the_schema_the_migrations_build(tmp_path):
    """A new SQLite store is created from SQLITE_SCHEMA instead of running Alembic: the tables,
    columns, keys and indexes are those of the migrations at HEAD, and a later migration finds
    the store at HEAD."""
    from legato.plugins.sqlstore.store import HEAD, SqlStorage

    def shape(path) -> list:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
            version = conn.execute("SELECT version_num FROM legato_alembic_version").fetchall()
        finally:
            conn.close()
        norm = [(t, n, tbl, re.sub(r"\s*,\s*", ", ", re.sub(r"\s+", " ", sql)) if sql else None)
                for t, n, tbl, sql in rows]
        return [norm, version]

    fast = tmp_path / "fast.db"
    trio.run(_open_and_close, sqlite_url(tmp_path, "fast.db"))
    migrated = SqlStorage(sqlite_url(tmp_path, "migrated.db"))
    migrated._prepare_sqlite_file()
    migrated._upgrade()  # what the migrations build on an empty file
    migrated._engine.dispose()
    assert shape(fast) == shape(tmp_path / "migrated.db")
    assert shape(fast)[1] == [(HEAD,)]


async def _open_and_close(url: str) -> None:
    async with open_storage(url):
        pass


def test_the_store_knows_the_tables_and_columns_schema_py_declares():
    from legato.plugins.sqlstore.schema import metadata
    from legato.plugins.sqlstore.store import ATTEMPT_COLUMNS, TABLES

    assert TABLES == set(metadata.tables)
    assert set(ATTEMPT_COLUMNS) == {c.name for c in metadata.tables["legato_attempts"].columns}


_IMPORTS_OF_A_RUN = """
import sys
from legato.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert exc.code == 0, exc.code
heavy = sorted(m for m in ("sqlalchemy", "sqlmodel", "alembic", "celpy", "lark") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_a_run_on_an_up_to_date_store_imports_no_sqlalchemy_and_no_cel_without_expressions(tmp_path):
    """The fixed cost of a small `legato run`: on a SQLite store already at the newest revision
    (one query tells), SQLAlchemy and Alembic are not imported; a workflow without expressions
    never imports cel-python. A new store is created without them too (issue 16: the first run in
    a directory paid ~0.4 s of Alembic)."""
    import json
    import sys

    doc = tmp_path / "one.json"
    doc.write_text(json.dumps({"workflow": {"id": "one", "steps": [{"step": {"id": "a", "type": "noop"}}]}}))
    args = ["run", str(doc), "--store", sqlite_url(tmp_path), "--workspace", str(tmp_path / "ws")]

    def imported() -> str:
        proc = subprocess.run([sys.executable, "-c", _IMPORTS_OF_A_RUN, *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1]

    assert imported() == "none"  # the new store
    assert imported() == "none"  # the store at the newest revision


async def test_a_start_is_one_transaction(plugins, tmp_path):
    """push_definition + create_instance (+ the lease) of a start commit together, and the run
    that follows does not take the lease again."""
    from legato.engine import Engine

    async with open_storage(sqlite_url(tmp_path)) as store:
        engine = Engine(store, plugins=plugins, workspace=tmp_path / "runs")
        definition = engine.load(CHAIN)
        statements: list[str] = []
        store._writer.set_trace_callback(statements.append)
        instance, created = await engine.start(definition)
        assert created and definition.version == 1
        assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert (await store.get_definition("chain")).version == 1
        lease = await store.get_lease(instance.instance_id)
        assert lease.owner == engine.owner and lease.generation == 1
        statements.clear()
        final = await engine.run(definition, instance)
        store._writer.set_trace_callback(None)
        assert final.status.value == "SUCCEEDED"
        assert not [s for s in statements if "SET owner" in s]  # the lease was not taken again


# -- the commit path: inline when the lock is free, checkpoints in a thread, one row per step and commit --


async def test_a_commit_waiting_for_another_writer_leaves_the_event_loop_live(tmp_path):
    """A small commit is written on the event loop's thread only when it can take the write lock
    at once; while another process's connection holds it, the commit waits in a worker thread
    (the loop runs other tasks meanwhile) and lands once the lock is free."""
    from trio.testing import wait_all_tasks_blocked

    url = sqlite_url(tmp_path)
    async with open_storage(url) as store:
        await store.create_instance(InstanceRecord("i1", "w", 1, created_at=time.time()), "me", 60)
        other = sqlite3.connect(tmp_path / "legato.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        done = trio.Event()

        async def commit():
            await store.commit(Batch("i1", 1, events=[Event(time.time(), "i1", None, 0, "WAITED")]))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit)
            await wait_all_tasks_blocked()  # reached only if the commit did not hold the loop
            assert not done.is_set(), "the commit went through while another writer held the lock"
            other.execute("COMMIT")
            other.close()
        assert [e.status for e in await store.get_timeline("i1")] == ["WAITED"]


async def test_the_write_ahead_log_is_checkpointed_while_commits_go_on(tmp_path):
    """The writer connection never checkpoints inside a commit (that would fsync on the event
    loop); its commits' WAL is checkpointed in a worker thread as it grows, so the file stays
    bounded however long the run. Without checkpoints these commits make it ~32 MB."""
    async with open_storage(sqlite_url(tmp_path)) as store:
        await store.create_instance(InstanceRecord("i1", "w", 1, created_at=time.time()), "me", 60)
        for n in range(4000):
            await store.commit(Batch("i1", 1, events=[Event(time.time(), "i1", "s", n, "RUNNING")]))
        wal = (tmp_path / "legato.db-wal").stat().st_size
        assert len(await store.get_timeline("i1")) == 4000
    assert wal < 8 * 2**20, f"the WAL grew to {wal} bytes"


async def test_a_steps_transitions_in_one_commit_share_a_row_and_read_back_as_committed(plugins, tmp_path):
    """The events a step makes in one commit (CREATED … STARTING, RUNNING … SUCCEEDED) are one row
    of legato_events; the timeline reads back exactly the events the observers saw, timestamps and
    messages included, and rows of older stores (one status each) read as they are."""
    from legato.engine import Engine

    doc = {"workflow": {"id": "chain", "steps": [
        {"step": {"id": f"s{i}", "type": "noop", **({"transition": {"successors": [f"s{i + 1}"]}} if i < 9 else {})}}
        for i in range(10)]}}
    async with open_storage(sqlite_url(tmp_path)) as store:
        engine = Engine(store, plugins=plugins, workspace=tmp_path / "runs")
        seen: list[Event] = []
        final = await engine.execute(engine.load(doc), observer=seen.append)
        timeline = await store.get_timeline(final.instance_id)
        assert [(e.ts, e.step_id, e.attempt, e.status, e.message) for e in timeline] == \
               [(e.ts, e.step_id, e.attempt, e.status, e.message) for e in seen]
        assert len(timeline) == 2 + 10 * 9
        rows = store._writer.execute("SELECT status FROM legato_events WHERE instance_id = ?",
                                     (final.instance_id,)).fetchall()
        assert len(rows) <= 2 + 10 * 3, [r.status for r in rows]
        # a store written before rows held several events, and statuses that only look like lists
        old = [Event(1.5, "i-old", "a", 1, "CREATED"), Event(2.5, "i-old", "a", 1, "SUCCEEDED", "done"),
               Event(3.5, "i-old", "a", 1, "NOT,A,LIST")]
        await store.create_instance(InstanceRecord("i-old", "w", 1, created_at=1.0), "me", 60)
        store._writer.executemany(
            "INSERT INTO legato_events (instance_id, step_id, attempt, status, message, ts) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.instance_id, e.step_id, e.attempt, e.status, e.message, e.ts) for e in old])
        assert await store.get_timeline("i-old") == old
