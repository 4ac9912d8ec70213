"""The SQL store on PostgreSQL (issue 14): a throwaway cluster per session (tests/pgserver.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import trio
import trio.testing

from legato.conformance import StorageSuite
from legato.conformance.profiles import StorageProfile

_cluster = None
_databases: dict[str, str] = {}


def _database_for(directory: str) -> str:
    """One database per test directory: the suite reopens a store by asking for its URL again."""
    if directory not in _databases:
        _databases[directory] = _cluster.database("suite")
    return _databases[directory]


POSTGRESQL = StorageProfile(
    scheme="postgresql",
    entry_point="sqlstore",
    make_url=_database_for,
    capabilities={"persistent", "leases", "concurrent_writers", "multiprocess"},
    heavy_modules=("sqlmodel",),
    name="postgresql",
)


class TestPostgresConformance(StorageSuite):
    """The storage contract on a real PostgreSQL server."""

    profile = POSTGRESQL

    @pytest.fixture(autouse=True)
    def _server(self, postgres):
        global _cluster
        _cluster = postgres


def test_a_missing_driver_says_how_to_install_it(tmp_path):
    """Without psycopg, a postgresql:// store is an invalid option with the install hint, never "a bug in Legato"."""
    import subprocess
    import sys

    script = ("import sys; sys.modules['psycopg'] = None\n"
              "from legato.cli import main\n"
              "sys.argv = ['legato', 'list', '--store', 'postgresql://nobody@/nowhere']\n"
              "main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'legato[postgres]'" in proc.stderr
    assert "bug" not in proc.stderr and "Traceback" not in proc.stderr


# -- `legato worker` on PostgreSQL: tests/test_worker.py's, on a database of their own ----------------

from . import test_worker  # noqa: E402
from .test_worker import (  # noqa: E402,F401 - collected here again, with `site` on PostgreSQL
    test_a_killed_workers_instances_are_resumed_by_another,
    test_a_worker_runs_what_start_no_wait_queues,
    test_sigterm_lets_running_steps_finish_and_hands_the_rest_back,
    test_two_workers_never_run_one_instance_twice,
    workers,
)


class PgSite(test_worker.Site):
    """test_worker's Site with its store on PostgreSQL (the ledger and workspace stay in tmp_path).
    Its worker test polls every hour: only LISTEN/NOTIFY can wake it."""

    def __init__(self, tmp_path, url: str) -> None:
        super().__init__(tmp_path)
        self.url = url
        self.env = {"LEGATO_STORE": url}


@pytest.fixture
def site(tmp_path, pg_url):
    return PgSite(tmp_path, pg_url)


# -- connection loss -------------------------------------------------------------------------------

def _leased(iid: str):
    from legato.model import InstanceRecord

    return InstanceRecord(iid, "wf", 1, created_at=1.0)


def _events(iid: str, gen: int, n: int):
    from legato.model import Batch, Event

    return Batch(iid, gen, events=[Event(float(n), iid, "s", n, "RUNNING")])


def test_cut_connections_are_opened_again_and_nothing_committed_is_lost(postgres, pg_url):
    """Every connection of a working store cut at once (a failover, a network cut): its next calls
    open new ones (the pool's pre-ping; a call in flight is run again), the listening worker is
    woken once (it may have missed something) and hears what comes after."""
    from legato.storage import open_storage

    database = urlsplit(pg_url).path.lstrip("/")

    async def main():
        async with open_storage(pg_url) as store, open_storage(pg_url) as other:
            await store.create_instance(_leased("i-cut"), "me", 30)
            await store.commit(_events("i-cut", 1, 1))
            with store.wakeups().listen() as listener:
                assert await trio.to_thread.run_sync(postgres.terminate_backends, database) >= 2
                await store.commit(_events("i-cut", 1, 2))
                with trio.fail_after(60):
                    assert await listener.wait(60), "the listener was not woken when it listened again"
                await other.create_instance(_leased("i-after"))  # queued: wakes the listeners
                with trio.fail_after(60):
                    assert await listener.wait(60), "a listener listening again did not hear a queued instance"
            assert [e.attempt for e in await other.get_timeline("i-cut")] == [1, 2]

    trio.run(main)


def test_a_server_restart_is_waited_out(postgres, pg_url):
    """The server stops and comes back: a commit made while it is away waits (backoff) and lands
    once it is back; what was committed before is there."""
    from legato.storage import open_storage

    async def main():
        async with open_storage(pg_url) as store:
            await store.create_instance(_leased("i-restart"), "me", 30)
            await store.commit(_events("i-restart", 1, 1))
            await trio.to_thread.run_sync(postgres.pg_ctl, "stop", "-m", "fast")
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(store.commit, _events("i-restart", 1, 2))
                    # the commit's first try is under way (in its thread) before the server is back
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.to_thread.run_sync(postgres.pg_ctl, "start")
            finally:
                try:
                    postgres.pg_ctl("status")
                except RuntimeError:
                    postgres.pg_ctl("start")  # for the tests after this one
            assert [e.attempt for e in await store.get_timeline("i-restart")] == [1, 2]

    trio.run(main)


# -- `legato store copy` ------------------------------------------------------------------------------

ECHO = {"workflow": {"id": "echo", "steps": [
    {"step": {"id": "a", "type": "bash", "params": {"script": "echo one; echo two >&2"},
              "transition": {"successors": ["b"]}}},
    {"step": {"id": "b", "type": "bash", "params": {"script": "echo three; exit 3"},
              "retry_policy": {"error_retry_limit": 0}}}]}}


def _cli_ok(*args, **kwargs):
    from .conftest import legato_cli

    proc = legato_cli(*args, **kwargs)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_store_copy_moves_a_sqlite_store_to_postgresql_and_back(tmp_path, postgres):
    """Runs (a failed one restarted), a tag limit and an action on SQLite; `legato store copy` to
    PostgreSQL: status, logs and versions read the same there, a new run on the copy works (the
    ids go on after the copied ones), a non-empty target is refused unless --force, and a copy
    back to SQLite verifies too."""
    import json

    from .conftest import legato_cli

    sqlite_url = f"sqlite:///{tmp_path / 'laptop.db'}"
    doc = tmp_path / "echo.json"
    doc.write_text(json.dumps(ECHO))
    first = _cli_ok("run", str(doc), "--json", "--store", sqlite_url, "--workspace", str(tmp_path / "runs"))
    iid = json.loads(first.stdout)["instance_id"]
    _cli_ok("restart", iid, "--store", sqlite_url, "--workspace", str(tmp_path / "runs"))  # a second run
    _cli_ok("permits", "set", "gpu", "2", "--store", sqlite_url)
    target = postgres.database("copy")

    copied = legato_cli("store", "copy", sqlite_url, target)
    assert copied.returncode == 0, copied.stderr
    assert "verified" in copied.stderr and "legato_logs" in copied.stdout
    assert "legato_events: " in copied.stderr  # progress, table by table
    for command in (["status", iid, "--json"], ["logs", iid], ["permits", "list"]):
        here, there = (legato_cli(*command, "--store", url) for url in (sqlite_url, target))
        assert (here.returncode, here.stdout) == (there.returncode, there.stdout), command

    again = legato_cli("run", str(doc), "--json", "--store", target, "--workspace", str(tmp_path / "runs"))
    assert again.returncode == 1, again.stderr  # b fails, as before: the copy takes new runs
    assert "three" in legato_cli("logs", json.loads(again.stdout)["instance_id"], "--store", target).stdout

    refused = legato_cli("store", "copy", sqlite_url, target)
    assert refused.returncode == 1 and "is not empty" in refused.stderr and "--force" in refused.stderr
    forced = legato_cli("store", "copy", sqlite_url, target, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--force: deleting" in forced.stderr
    assert forced.stdout == copied.stdout  # what the first copy held, the run made on the target gone

    back = f"sqlite:///{tmp_path / 'back.db'}"
    returned = legato_cli("store", "copy", target, back)
    assert returned.returncode == 0, returned.stderr
    assert returned.stdout == forced.stdout  # the same counts and checksums, table by table


def test_store_copy_refuses_what_cannot_work(tmp_path, pg_url):
    from .conftest import legato_cli

    missing = legato_cli("store", "copy", f"sqlite:///{tmp_path / 'none.db'}", pg_url)
    assert missing.returncode == 2 and "no Legato store" in missing.stderr
    memory = legato_cli("store", "copy", "memory://", pg_url)
    assert memory.returncode == 2 and "sqlite:///" in memory.stderr
    same = legato_cli("store", "copy", pg_url, pg_url)
    assert same.returncode == 2 and "same store" in same.stderr


def test_a_commit_whose_answer_was_lost_is_not_written_twice(postgres, pg_url, monkeypatch):
    """The connection drops after COMMIT reached the server and before its answer came back: the
    commit is run again (it cannot tell), finds its rows there (SqlStorage._pg_landed) and writes
    nothing more; a commit that did not land is written when run again."""
    import contextlib

    import psycopg

    from legato.plugins.sqlstore.store import SqlStorage
    from legato.storage import open_storage

    real = SqlStorage._pg_tx
    cut = {"after": 0, "before": 0}  # cuts left: after the transaction committed, or before it did

    @contextlib.contextmanager
    def flaky(self, write, pipeline=False):
        if pipeline and cut["before"]:
            cut["before"] -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly (before)")
        with real(self, write, pipeline) as sql:
            yield sql
        if pipeline and cut["after"]:
            cut["after"] -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly (after COMMIT)")

    monkeypatch.setattr(SqlStorage, "_pg_tx", flaky)

    async def main():
        async with open_storage(pg_url) as store:
            await store.create_instance(_leased("i-lost-answer"), "me", 30)
            cut["after"] = 1
            await store.commit(_events("i-lost-answer", 1, 1))
            cut["before"] = 1
            await store.commit(_events("i-lost-answer", 1, 2))
            assert cut == {"after": 0, "before": 0}, "the cuts never happened: nothing was tested"
            assert [e.attempt for e in await store.get_timeline("i-lost-answer")] == [1, 2]

    trio.run(main)
