"""The fault battery of issue 14: several `legato worker` processes on one PostgreSQL database,
killed and paused while they share the queue (DESIGN §5 ownership, §8).

For 1, 2 and 4 workers in turn, on a database of their own: INSTANCES small instances are queued
(a bash step that records its idempotency key in a ledger table, then a noop), and while they run
a random worker is SIGKILLed every KILL_EVERY seconds and a new one started in its place; once,
one worker is SIGSTOPped past its lease (PAUSE) and resumed. What must hold: no instance lost (every
one queued is in the store and ends SUCCEEDED), no step attempt run twice (each attempt appends
its idempotency key to a file; loaded into a ledger table, its UNIQUE key refuses a repeat), and the succeeded attempt of each instance's bash step is
in the ledger. With two workers or more, the paused worker finds its leases taken when it wakes
and writes nothing for them (fencing: "lost the lease").

Maestro's counterpart: maestro-flow's ``FlowExecutor`` (heartbeats, and a maintainer claiming the
flow groups whose heartbeat expired). Legato claims per instance by its lease (a killed worker's
lease is free at once: its process is known dead on this machine; a paused one's when it expires).

``LEGATO_BATTERY_SCALE`` (default 1) multiplies the number of instances; the whole battery takes
about a minute here at scale 1. ``LEGATO_CRASH_SEED`` picks the kills. Run with ``-s`` for figures.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from .conftest import LEGATO

INSTANCES = 500
KILL_EVERY = (2.0, 4.0)  # seconds between kills, uniformly
LEASE_TTL = 3.0  # seconds
PAUSE = 8.0  # seconds the paused worker sleeps: past its lease and past PG_IDLE_IN_TRANSACTION (5 s)
HANG = 240.0  # seconds a phase may take before the battery calls it hung
LEDGER = "CREATE TABLE ledger (key text PRIMARY KEY)"
# Each attempt appends its idempotency key to a file (one short O_APPEND write: lines never
# interleave); the battery then loads the lines into the ledger table, whose UNIQUE key refuses an
# attempt that ran twice. (A psql per step would cost a server process per step.)
RECORD = 'echo "$LEGATO_IDEMPOTENCY_KEY" >> "$LEDGER"'
RETRIES = {"error_retry_limit": 5, "platform_retry_limit": 99, "backoff": {"type": "fixed", "base": 0.1}}


def _definition(ledger: Path) -> dict:
    return {"properties": {"run_strategy": "parallel"}, "workflow": {
        "id": "small", "params": {"LEDGER": str(ledger)}, "steps": [
            {"step": {"id": "record", "type": "bash", "params": {"script": RECORD}, "retry_policy": RETRIES,
                      "transition": {"successors": ["done"]}}},
            {"step": {"id": "done", "type": "noop"}},
        ]}}


class Workers:
    """The phase's worker processes, each writing to a log file of its own."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.all: list[tuple[subprocess.Popen, Path]] = []

    def start(self) -> subprocess.Popen:
        log = self.tmp / f"worker-{len(self.all)}.log"
        env = {**os.environ, "LEGATO_STORE": self.url, "LEGATO_LEASE_TTL": str(LEASE_TTL)}
        with open(log, "w") as out:
            proc = subprocess.Popen([LEGATO, "worker", "--max-instances", "40", "--poll", "0.5", "--workspace",
                                     str(self.tmp / "runs")], cwd=self.tmp, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        self.all.append((proc, log))
        return proc

    def up(self) -> list[int]:
        """The indexes of the workers that have started working (said so in their log): a kill
        during start-up (imports) would test nothing."""
        return [i for i, (_, log) in enumerate(self.procs) if log.stat().st_size]

    def kill(self, index: int) -> None:
        proc, _ = self.procs.pop(index)
        proc.kill()
        proc.wait()

    def close(self) -> None:
        for proc, _ in self.all:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()


def _queue(url: str, document: dict, n: int) -> list[str]:
    from legato.engine import Engine
    from legato.storage import open_storage

    async def main():
        async with open_storage(url) as store:
            engine = Engine(store)
            version = await store.push_definition("small", document)
            definition = engine.load(version.document)
            definition.version = version.version
            return [(await engine.start(definition, queued=True))[0].instance_id for _ in range(n)]

    return trio.run(main)


def _read(url: str, ids: list[str] | None = None):
    from legato.storage import open_storage

    async def main():
        async with open_storage(url) as store:
            instances = {r.instance_id: r for r in await store.list_instances(limit=100_000)}
            attempts = {iid: await store.get_attempts(iid) for iid in (ids or [])}
        return instances, attempts

    return trio.run(main)


def _unfinished(cluster, database: str) -> int:
    with cluster.connect(database) as conn:
        return conn.execute("SELECT count(*) FROM legato_instances WHERE status NOT IN "
                            "('SUCCEEDED', 'FAILED', 'STOPPED', 'TIMED_OUT')").fetchone()[0]


def _ledger(cluster, keys: list[str]) -> set[str]:
    """The keys, loaded into a table whose primary key refuses one twice (in a database of its
    own: a store holds Legato's tables only)."""
    import psycopg

    url = cluster.database("ledger")
    with cluster.connect(_name(url)) as conn:
        conn.execute(LEDGER)
        try:
            with conn.cursor() as cur, cur.copy("COPY ledger (key) FROM STDIN") as copy:
                for key in keys:
                    copy.write_row((key,))
        except psycopg.errors.UniqueViolation as exc:
            twice = sorted(k for k in set(keys) if keys.count(k) > 1)
            raise AssertionError(f"step attempts that ran more than once: {twice[:10]} ({exc.diag.message_detail})")
        assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == len(keys)
    return set(keys)


def _name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _held(cluster, database: str, pid: int) -> dict[str, int]:
    """The unfinished instances the worker ``pid`` holds, with their lease generations."""
    with cluster.connect(database) as conn:
        return dict(conn.execute(
            "SELECT instance_id, generation FROM legato_instances WHERE owner_pid = %s AND status IN "
            "('CREATED', 'IN_PROGRESS', 'PAUSED') AND lease_expires IS NOT NULL", (pid,)).fetchall())


def _generations(cluster, database: str, ids) -> dict[str, int]:
    with cluster.connect(database) as conn:
        return dict(conn.execute("SELECT instance_id, generation FROM legato_instances WHERE instance_id = ANY(%s)",
                                 (list(ids),)).fetchall())


@pytest.mark.parametrize("n_workers", [1, 2, 4])
def test_workers_killed_and_paused_lose_nothing_and_run_nothing_twice(n_workers, postgres, tmp_path):
    scale = float(os.environ.get("LEGATO_BATTERY_SCALE", "1"))
    rng = random.Random(int(os.environ.get("LEGATO_CRASH_SEED", "20261202")) + n_workers)
    n = max(10, round(INSTANCES * scale))
    url = postgres.database(f"battery{n_workers}")
    database = _name(url)
    ledger_file = tmp_path / "ledger"
    ledger_file.touch()
    workers = Workers(tmp_path, url)
    kills = 0
    paused = None  # (process, its log, when it was resumed)
    held: dict[str, int] = {}  # the unfinished instances the paused worker held (their generations)
    started = time.monotonic()
    try:
        for _ in range(n_workers):
            workers.start()
        ids = _queue(url, _definition(ledger_file), n)
        deadline = started + HANG
        next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
        pause_at = time.monotonic() + rng.uniform(0.5, KILL_EVERY[0])  # early: while the queue is long
        while _unfinished(postgres, database) or paused is None or paused[2] is None:
            assert time.monotonic() < deadline, (f"{_unfinished(postgres, database)} of {n} instances never ended "
                                                 f"(a worker paused: {paused is not None})")
            now = time.monotonic()
            if paused is None and not _unfinished(postgres, database):
                # The workers drained the queue before one could be paused holding something: more
                # work, so that the pause (what fencing is tested on) finds instances held.
                ids += _queue(url, _definition(ledger_file), max(10, n // 5))
                pause_at = min(pause_at, now)
            candidate = rng.choice(workers.up()) if paused is None and now >= pause_at and workers.up() else None
            if candidate is not None:
                proc, log = workers.procs[candidate]
                proc.send_signal(signal.SIGSTOP)
                held = _held(postgres, database, proc.pid)  # what it holds now stays held: it cannot commit
                if not held:  # nothing for the others to take over: not a test of fencing, try again
                    proc.send_signal(signal.SIGCONT)
                    pause_at = now + 0.2
                    continue
                workers.procs.pop(candidate)
                if not workers.procs:
                    workers.start()  # the paused one was the only one: the queue goes on meanwhile
                paused = (proc, log, None)
                resume_at = now + PAUSE
            elif paused is not None and paused[2] is None and now >= resume_at:
                paused[0].send_signal(signal.SIGCONT)
                paused = (paused[0], paused[1], now)  # not killed from now on: its log shows what it found
            elif now >= next_kill and workers.up():
                workers.kill(rng.choice(workers.up()))
                kills += 1
                workers.start()
                next_kill = now + rng.uniform(*KILL_EVERY)
            time.sleep(0.05)  # the test's own pace of looking (not a synchronisation)
        elapsed = time.monotonic() - started
        paused[0].send_signal(signal.SIGTERM)  # its log complete: what it did after it woke
        paused[0].wait(timeout=HANG)
    finally:
        workers.close()

    instances, attempts = _read(url, ids)
    assert set(ids) <= set(instances), f"instances lost: {sorted(set(ids) - set(instances))[:5]}"
    statuses = {iid: instances[iid].status.value for iid in ids}
    assert set(statuses.values()) == {"SUCCEEDED"}, {s: sum(v == s for v in statuses.values())
                                                     for s in set(statuses.values())}
    ledger = _ledger(postgres, ledger_file.read_text().split())
    retried = 0
    for iid in ids:
        tries = [a for a in attempts[iid] if a.step_id == "record"]
        succeeded = [a for a in tries if a.status.value == "SUCCEEDED"]
        assert len(succeeded) == 1, f"{iid}: {[(a.attempt, a.status.value) for a in tries]}"
        assert f"{iid}:record:{succeeded[0].attempt}" in ledger, f"{iid}: its succeeded attempt left no ledger entry"
        retried += len(tries) > 1
    assert paused is not None and paused[2] is not None, "the battery ended before a worker was paused and resumed"
    paused_log = paused[1].read_text()
    # The instances it held that another worker took over while it slept (their lease expired; a
    # transaction it was frozen in was ended by the server: PG_IDLE_IN_TRANSACTION) have a newer
    # generation: on waking its writes for them were refused (fencing) and it said so (it may claim
    # one again later, as any worker may). One nobody reached in time it carries on: its late
    # renewal keeps a lease nobody took.
    now = _generations(postgres, database, held)
    taken = {iid for iid, generation in held.items() if now[iid] > generation}
    fenced = {iid for iid in taken if f"instance {iid} left to the next worker" in paused_log}
    if n_workers > 1:
        assert taken, f"nobody took over the {len(held)} instance(s) the paused worker held while it slept"
        assert fenced, (f"the paused worker never found its writes refused for the {len(taken)} instance(s) taken "
                        f"from it:\n{paused_log[-3000:]}")
    print(f"\n{n_workers} worker(s): {n} instances SUCCEEDED in {elapsed:.1f}s, {kills} SIGKILLs, "
          f"1 SIGSTOP of {PAUSE:g}s (it held {len(held)}, {len(taken)} taken over, {len(fenced)} refused when it wrote), {retried} instance(s) retried a step, {len(ledger)} ledger keys, "
          f"each run once")


def test_crash_battery_loops_on_postgresql(postgres, tmp_path):
    """tests/test_crash_battery.py's loop battery (kernels SIGKILLed at random moments across
    foreach, nested foreach and while steps, each instance run again with ``--request-id`` until
    it ends) on PostgreSQL: the same invariants, read from the server. A quarter of its kills at
    scale 1 (``LEGATO_BATTERY_SCALE``): the battery on SQLite covers the moments."""
    from .test_crash_battery import loops_battery

    url = postgres.database("loops")
    loops_battery(tmp_path, url, url, kills_scale=0.25)


def test_crash_battery_kill_9_storm_on_postgresql(postgres, tmp_path):
    """tests/test_crash_battery.py's kill -9 storm (kernels SIGKILLed at random moments across
    bash, noop, sleep and docker steps, each instance run again with ``--request-id`` until it
    ends) on PostgreSQL: every attempt's work ran once, each docker step's container once, nothing
    left running, read from the server. A quarter of its kills at scale 1
    (``LEGATO_BATTERY_SCALE``): the battery on SQLite covers the moments."""
    from .test_crash_battery import storm_battery

    url = postgres.database("storm")
    storm_battery(tmp_path, url, url, kills_scale=0.25)
