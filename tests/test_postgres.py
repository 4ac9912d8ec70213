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
