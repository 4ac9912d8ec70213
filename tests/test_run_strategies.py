"""Run strategies across a workflow's instances, as Maestro's RunStrategy (its rules, defaults and
limits) and MaestroRunStrategyDao (startWithRunStrategy, dequeueWithRunStrategy) define them.

The rules are checked three ways: the decision functions of legato.strategy on their own; the two
stores applying them (memory and SQLite, in this process); and real processes — two `legato worker`
processes on one SQLite store and starts from other processes — where a ledger written by the
steps (`start <id>` / `end <id>` lines, appended under flock) proves order and overlap. Each step
holds until the test opens its gate (a file named after its instance), so the test decides when
an instance ends and synchronises on the ledger, the store and the processes' output, never on
sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from legato import strategy as S
from legato.engine import Engine
from legato.storage import open_storage

from .conftest import LEGATO, legato_cli
from .lines import Lines, first_line
from .test_worker import HANG, Worker

# -- the decision functions ----------------------------------------------------------------------

Q = S.Queue


def test_every_rule_of_a_new_start():
    """startWithRunStrategy: the queueing rules start a new instance only with nothing queued
    before it and a free slot; FIRST_ONLY drops a start while another runs or waits (STOPPED,
    with Maestro's timeline message); LAST_ONLY stops the queued ones and the running one and
    runs after it; SERIAL_LATEST_ONLY stops the queued ones but never the running one."""
    idle, busy, waiting = Q(), Q(running=1, running_id="r"), Q(ahead=1, ahead_id="q")
    for rule in ("sequential", "strict_sequential", "serial_latest_only"):
        assert S.on_arrival(rule, 1, idle, "n").start
        assert not S.on_arrival(rule, 1, busy, "n").start
    assert not S.on_arrival("sequential", 1, waiting, "n").start, "FIFO: a queued one goes first"
    assert S.on_arrival("parallel", 2, busy, "n").start
    assert not S.on_arrival("parallel", 2, Q(running=2, running_id="r"), "n").start
    assert not S.on_arrival("parallel", 2, Q(running=1, running_id="r", ahead=1, ahead_id="q"), "n").start
    assert S.on_arrival("parallel", 5, Q(running=1, running_id="r", ahead=1, ahead_id="q"), "n").start, \
        "a free slot for each: the queued one only waits for a worker"
    assert not S.on_arrival("strict_sequential", 1, Q(blocked_by="f"), "n").start
    assert S.on_arrival("sequential", 1, Q(blocked_by="f"), "n").start, "only STRICT_SEQUENTIAL blocks"

    assert S.on_arrival("first_only", 1, idle, "n") == S.Arrival(True)
    for queue, other in ((busy, "r"), (waiting, "q")):
        dropped = S.on_arrival("first_only", 1, queue, "n")
        assert not dropped.start
        assert dropped.stopped == f"With FIRST_ONLY run strategy, this run is stopped due to a running one [{other}]."

    last = S.on_arrival("last_only", 1, Q(running=1, running_id="r", ahead=1, ahead_id="q"), "n")
    assert (last.start, last.stop_running, bool(last.stop_queued)) == (False, True, True)
    assert S.on_arrival("last_only", 1, idle, "n") == S.Arrival(True)
    serial = S.on_arrival("serial_latest_only", 1, Q(running=1, running_id="r", ahead=2, ahead_id="q"), "n")
    assert (serial.start, serial.stop_running) == (False, False)
    assert "new instance n arrived" in serial.stop_queued
    assert S.on_arrival("", 1, Q(running=50, running_id="r", ahead=9, ahead_id="q"), "n").start, "no strategy"


def test_every_rule_of_a_queued_start():
    """dequeueWithRunStrategy: a queued instance starts when fewer than (concurrency - running)
    are queued before it; STRICT_SEQUENTIAL holds the queue while a failed run blocks it."""
    assert S.slots("sequential", 1, Q()) == 1 and S.slots("sequential", 1, Q(running=1)) == 0
    assert S.slots("parallel", 3, Q(running=1)) == 2
    assert S.slots("parallel", 3, Q(running=4)) == 0
    assert S.slots("strict_sequential", 1, Q(blocked_by="f")) == 0
    assert S.slots("serial_latest_only", 1, Q()) == 1
    assert S.may_start("parallel", 3, Q(running=1, ahead=1)) and not S.may_start("parallel", 3, Q(running=1, ahead=2))
    assert S.may_start("first_only", 1, Q()) and not S.may_start("last_only", 1, Q(running=1))
    assert S.may_start("", 1, Q(running=100, ahead=100))


def test_why_a_queued_instance_waits_is_said():
    assert S.waits_because("sequential", 1, Q()) == ""
    assert S.waits_because("sequential", 1, Q(running=1, running_id="a", ahead=1, ahead_id="b")) == \
        "instance a runs; queued behind instance b under SEQUENTIAL"
    assert S.waits_because("parallel", 2, Q(running=2, running_id="a")) == \
        "2 instances run (the oldest a) under PARALLEL (2 at once)"
    blocked = S.waits_because("strict_sequential", 1, Q(blocked_by="f"))
    assert blocked.startswith("blocked by failed instance f under STRICT_SEQUENTIAL") and "legato unblock" in blocked
    assert "waiting for instance a to stop" in S.waits_because("last_only", 1, Q(running=1, running_id="a"))


def test_maestros_defaults_and_limits(engine):
    """RunStrategy: SEQUENTIAL by default (Defaults.DEFAULT_RUN_STRATEGY), PARALLEL runs 20 at once
    without workflow_concurrency (Defaults.DEFAULT_PARALLELISM), a number is PARALLEL with it,
    every other rule runs one; SERIAL_LATEST_ONLY is a rule; none of it is warned about any more."""
    def load(**props):
        return engine.load({"properties": props, "workflow": {"id": "w", "steps": [{"step": {"id": "a", "type": "noop"}}]}})

    d = load()
    assert (d.run_strategy.value, d.workflow_concurrency, d.warnings) == ("sequential", 1, [])
    assert (load(run_strategy="parallel").workflow_concurrency, load(run_strategy=7).workflow_concurrency) == (20, 7)
    assert load(workflow_concurrency=3).run_strategy.value == "parallel"
    assert load(run_strategy="Serial_Latest_Only").run_strategy.value == "serial_latest_only"
    assert load(run_strategy={"rule": "parallel", "workflow_concurrency": 4}).warnings == []


# -- the stores, in this process --------------------------------------------------------------------


def _noop(wid: str, rule: str | int | None = None) -> dict:
    props = {} if rule is None else {"properties": {"run_strategy": rule}}
    return {**props, "workflow": {"id": wid, "steps": [{"step": {"id": "a", "type": "noop"}}]}}


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request, tmp_path):
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'legato.db'}"


def _with_engine(url: str, tmp_path: Path, fn):
    async def main():
        async with open_storage(url) as store:
            return await fn(Engine(store, workspace=tmp_path / "runs"), store)

    return trio.run(main)


def test_sequential_starts_one_and_queues_the_rest_in_order(store_url, tmp_path):
    """SEQUENTIAL (the default): the first start is leased to its starter; later ones come back
    queued, are not handed out while it runs, then one at a time, oldest first."""
    async def body(engine, store):
        d = engine.load(_noop("seq"))
        first, _ = await engine.start(d)
        later = [(await engine.start(d))[0] for _ in range(3)]
        assert not first.queued and all(r.queued for r in later)
        assert [r.instance_id for r in await store.list_resumable()] == []
        assert await store.acquire_lease(later[1].instance_id, "w", 30) is None, "FIFO: one queued before it"
        why = await S.why_waiting(store, later[1])
        assert why == f"instance {first.instance_id} runs; queued behind instance {later[0].instance_id} under SEQUENTIAL"
        await engine.run(d, first)
        order = []
        for _ in later:
            startable = await store.list_resumable()
            assert len(startable) == 1
            order.append(startable[0].instance_id)
            await engine.run(d, startable[0])
        assert order == [r.instance_id for r in later]

    _with_engine(store_url, tmp_path, body)


def test_parallel_hands_out_at_most_its_concurrency(store_url, tmp_path):
    async def body(engine, store):
        d = engine.load(_noop("par", {"rule": "parallel", "workflow_concurrency": 2}))
        ids = [(await engine.start(d, queued=True))[0].instance_id for _ in range(5)]
        startable = await store.list_resumable()
        assert [r.instance_id for r in startable] == ids[:2]
        assert await store.acquire_lease(ids[2], "w", 30) is None
        assert await store.acquire_lease(ids[0], "w", 30) == 1 and await store.acquire_lease(ids[1], "w", 30) == 1
        assert await store.list_resumable() == []

    _with_engine(store_url, tmp_path, body)


def test_first_only_drops_a_start_while_one_runs(store_url, tmp_path):
    async def body(engine, store):
        d = engine.load(_noop("first", "first_only"))
        running, _ = await engine.start(d)
        dropped, created = await engine.start(d)
        assert created and dropped.status.value == "STOPPED" and not dropped.queued
        assert running.instance_id in dropped.message
        timeline = await store.get_timeline(dropped.instance_id)
        assert [(e.status, e.message) for e in timeline] == [("STOPPED", dropped.message)]
        await engine.run(d, running)
        again, _ = await engine.start(d)
        assert not again.queued and again.status.value == "CREATED", "nothing runs: a new start runs"

    _with_engine(store_url, tmp_path, body)


def test_last_only_and_serial_latest_only_stop_the_queued(store_url, tmp_path):
    async def body(engine, store):
        for rule in ("last_only", "serial_latest_only"):
            d = engine.load(_noop(rule, rule))
            running, _ = await engine.start(d)
            older, _ = await engine.start(d, queued=True)
            newest, _ = await engine.start(d, queued=True)
            assert (await store.get_instance(older.instance_id)).status.value == "STOPPED"
            assert newest.queued and await store.list_resumable() == [], "it waits for the running one"
            await engine.run(d, running)  # never stopped by serial_latest_only; ends on its own here
            assert [r.instance_id for r in await store.list_resumable()] == [newest.instance_id]
            await engine.run(d, (await store.list_resumable())[0])

    _with_engine(store_url, tmp_path, body)


def test_last_only_stops_the_running_instance_of_this_engine(store_url, tmp_path):
    """LAST_ONLY's TerminateThenRun: a new start stops the running one (here, run by this engine)
    and runs once it has ended."""
    async def body(engine, store):
        doc = {"properties": {"run_strategy": "last_only"}, "workflow": {"id": "last", "steps": [
            {"step": {"id": "a", "type": "sleep", "params": {"seconds": 3600}}}]}}
        d = engine.load(doc)
        old, _ = await engine.start(d)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run, d, old)
            new, _ = await engine.start(d)
            assert new.queued
        stopped = await store.get_instance(old.instance_id)
        assert stopped.status.value == "STOPPED" and new.instance_id in stopped.message
        assert [r.instance_id for r in await store.list_resumable()] == [new.instance_id]

    _with_engine(store_url, tmp_path, body)


def test_strict_sequential_blocks_until_unblocked_or_restarted(store_url, tmp_path):
    """A FAILED run blocks the STRICT_SEQUENTIAL queue; `unblock` records who and lets it go on
    (a later failure blocks again); a restart of the failed instance unblocks it too."""
    async def body(engine, store):
        doc = {"properties": {"run_strategy": "strict_sequential"}, "workflow": {"id": "strict", "steps": [
            {"step": {"id": "a", "type": "bash", "params": {"script": "exit 1"},
                      "retry_policy": {"error_retry_limit": 0}}}]}}
        d = engine.load(doc)
        failed, _ = await engine.start(d)
        assert (await engine.run(d, failed)).status.value == "FAILED"
        waiting, _ = await engine.start(d, queued=True)
        assert await store.list_resumable() == []
        assert (await S.why_waiting(store, waiting)).startswith(f"blocked by failed instance {failed.instance_id}")
        assert await S.unblock(store, "strict", by="ann via test") == [failed.instance_id]
        event = (await store.get_timeline(failed.instance_id))[-1]
        assert (event.status, event.message.split(":")[0]) == ("UNBLOCKED", "unblocked by ann via test")
        assert [r.instance_id for r in await store.list_resumable()] == [waiting.instance_id]
        assert (await engine.run(d, (await store.list_resumable())[0])).status.value == "FAILED"
        blocked, _ = await engine.start(d, queued=True)
        assert await store.list_resumable() == [], "the newer failure blocks again"
        assert await S.unblock(store, "strict", by="x") == [waiting.instance_id], "each failed run once"
        assert [r.instance_id for r in await store.list_resumable()] == [blocked.instance_id]
        assert (await engine.run(d, (await store.list_resumable())[0])).status.value == "FAILED"
        late, _ = await engine.start(d, queued=True)
        assert await store.list_resumable() == []
        assert (await engine.restart(blocked.instance_id)).status.value == "FAILED"  # IN_PROGRESS while it ran
        assert await store.list_resumable() == [], "its restart failed again: blocked again"
        assert await S.unblock(store, "strict", by="x") == [blocked.instance_id]
        assert [r.instance_id for r in await store.list_resumable()] == [late.instance_id]

    _with_engine(store_url, tmp_path, body)


def test_an_instance_recorded_without_a_strategy_starts_whenever_asked(store_url, tmp_path):
    """Instances from before strategies (no run_strategy recorded) are never held, nor hold others."""
    from legato.model import InstanceRecord

    async def body(engine, store):
        for i in range(3):
            await store.create_instance(InstanceRecord(f"old-{i}", "legacy", 1, created_at=float(i)), "me", 30)
        await store.create_instance(InstanceRecord("old-q", "legacy", 1, created_at=5.0))
        assert [r.instance_id for r in await store.list_resumable()] == ["old-q"]

    _with_engine(store_url, tmp_path, body)


# -- real processes on one SQLite store ---------------------------------------------------------------

HOLD = ('exec 9>>"$LEDGER.lock"; flock 9; echo "start $LEGATO_INSTANCE_ID" >> "$LEDGER"; flock -u 9; '
        'while [ ! -e "$GATE/$LEGATO_INSTANCE_ID" ]; do sleep 0.02; done; '
        'flock 9; echo "end $LEGATO_INSTANCE_ID" >> "$LEDGER"; flock -u 9; '
        '[ ! -e "$GATE/$LEGATO_INSTANCE_ID.fail" ]')


class Site:
    """A SQLite store, a ledger and a gate directory shared by the processes of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.url = f"sqlite:///{tmp_path / 'legato.db'}"
        self.ledger = tmp_path / "ledger"
        self.gate = tmp_path / "gate"
        self.gate.mkdir()
        self.env = {"LEGATO_STORE": self.url}
        self.dir_runs = tmp_path / "runs"

    def push(self, wid: str, rule) -> None:
        doc = {"properties": {"run_strategy": rule}, "workflow": {
            "id": wid, "params": {"LEDGER": str(self.ledger), "GATE": str(self.gate)}, "steps": [
                {"step": {"id": "hold", "type": "bash", "params": {"script": HOLD},
                          "retry_policy": {"error_retry_limit": 0}}}]}}
        path = self.dir / f"{wid}.json"
        path.write_text(json.dumps(doc))
        proc = self.cli("push", str(path))
        assert proc.returncode == 0, proc.stderr

    def cli(self, *args, env=None, **kwargs):
        return legato_cli(*args, cwd=self.dir, env_extra={**self.env, **(env or {})}, **kwargs)

    def queue(self, wid: str) -> str:
        """`legato start --no-wait` from another process; the new instance's id."""
        proc = self.cli("start", wid, "--no-wait")
        assert proc.returncode in (0, 1), proc.stderr
        return proc.stdout.split()[0] if proc.returncode == 0 else proc.stdout.split()[1]

    def worker(self, *args) -> Worker:
        return Worker(self, ("--poll", "3600", *args))  # only the store's wake-ups tell it of work

    def lines(self) -> list[str]:
        return self.ledger.read_text().splitlines() if self.ledger.exists() else []

    def wait_ledger(self, n: int) -> list[str]:
        """The ledger once it holds at least ``n`` lines."""
        return self.wait_line(lambda lines: len(lines) >= n, f"{n} lines")

    def wait_line(self, done, what: str, check=None) -> list[str]:
        """The ledger once ``done(lines)`` holds; ``check(lines)`` asserts on each look meanwhile."""
        deadline = time.monotonic() + HANG
        while not done(lines := self.lines()):
            if check is not None:
                check(lines)
            assert time.monotonic() < deadline, f"the ledger never had {what}: {lines}"
            time.sleep(0.02)
        return lines

    def open(self, iid: str, fail: bool = False) -> None:
        if fail:
            (self.gate / f"{iid}.fail").touch()
        (self.gate / iid).touch()

    def instances(self) -> dict:
        async def main():
            async with open_storage(self.url) as store:
                return {r.instance_id: r for r in await store.list_instances(limit=10_000)}

        return trio.run(main)

    def wait_status(self, iid: str, status: str):
        deadline = time.monotonic() + HANG
        while (record := self.instances()[iid]).status.value != status:
            assert not record.status.terminal, f"{iid} ended {record.status.value}, not {status}"
            assert time.monotonic() < deadline, f"{iid} stayed {record.status.value}"
            time.sleep(0.02)
        return record


class Proc:
    """A `legato` command running in the background; its stderr read line by line."""

    def __init__(self, site: Site, *args) -> None:
        self.proc = subprocess.Popen([LEGATO, *args], cwd=site.dir, env={**os.environ, **site.env},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self.reader = Lines(self.proc.stderr, self.err)

    def said(self, text: str) -> str | None:
        return next((line for line in list(self.err) if text in line), None)

    def finish(self) -> tuple[int, str]:
        out = self.proc.stdout.read()
        self.proc.wait(timeout=HANG)
        self.reader.join(HANG)  # every line it wrote is in self.err
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def first_to_say(procs: list[Proc], text: str) -> tuple[Proc, str]:
    """The first of ``procs`` to write a line holding ``text`` on stderr, and that line."""
    found = first_line([p.reader for p in procs], text, HANG)
    assert found is not None, f"none said {text!r}: {[p.err for p in procs]}"
    return procs[found[0]], found[1]


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


@pytest.fixture
def procs():
    started: list = []
    yield started
    for p in started:
        p.kill()


def _overlap(lines: list[str]) -> int:
    """The most instances running at once, from the ledger."""
    running = peak = 0
    for line in lines:
        running += 1 if line.startswith("start ") else -1
        peak = max(peak, running)
    return peak


def test_sequential_runs_one_at_a_time_in_order_across_two_workers(site, procs):
    """Four starts from other processes, two workers: the ledger is start/end pairs, FIFO, never
    overlapping; while one runs the others wait, queued, and `status` says behind which."""
    site.push("seq", "sequential")
    procs.extend([site.worker(), site.worker()])
    ids = [site.queue("seq") for _ in range(4)]
    for k, iid in enumerate(ids):
        assert site.wait_ledger(2 * k + 1)[-1] == f"start {iid}"
        if k + 1 < len(ids):
            shown = site.cli("status", ids[k + 1])
            assert f"queued: instance {iid} runs under SEQUENTIAL" in shown.stdout, shown.stdout
        site.open(iid)
    site.wait_ledger(8)
    for iid in ids:
        site.wait_status(iid, "SUCCEEDED")
    assert site.lines() == [f"{what} {iid}" for iid in ids for what in ("start", "end")]
    listed = site.cli("list", "--workflow", "seq")
    assert "queued" not in listed.stdout


def test_parallel_never_runs_more_than_its_concurrency_and_does_run_that_many(site, procs):
    site.push("par", {"rule": "parallel", "workflow_concurrency": 2})
    procs.extend([site.worker(), site.worker()])
    ids = [site.queue("par") for _ in range(5)]
    first = site.wait_ledger(2)
    assert sorted(first) == sorted(f"start {i}" for i in ids[:2])
    queued = site.instances()
    assert [queued[i].queued for i in ids] == [False, False, True, True, True]
    for k, iid in enumerate(ids):  # end them one at a time; the oldest queued one takes each freed slot
        site.open(iid)
        site.wait_status(iid, "SUCCEEDED")
        if k + 2 < len(ids):
            def fifo(lines, k=k):
                started = [line for line in lines if line.startswith("start")]
                assert len(started) <= k + 3, f"not first in, first out: {started}"

            site.wait_line(lambda lines, k=k: f"start {ids[k + 2]}" in lines, f"start {ids[k + 2]}", fifo)
    lines = site.wait_ledger(10)
    assert _overlap(lines) == 2, lines
    assert [line.split()[1] for line in lines if line.startswith("start")] == ids, "FIFO"


def test_two_foreground_starts_at_once_run_one_after_the_other(site, procs):
    """Two `legato start` in the foreground at the same moment: exactly one runs; the other says
    it waits behind it and runs, in its own process, when the first has ended."""
    site.push("fg", "sequential")
    both = [Proc(site, "start", "fg"), Proc(site, "start", "fg")]
    procs.extend(both)
    first = site.wait_ledger(1)[0].split()[1]
    _, line = first_to_say(both, "waits:")
    assert f"waits: instance {first} runs under SEQUENTIAL" in line
    assert len(site.lines()) == 1
    site.open(first)
    second = site.wait_ledger(3)[2].split()[1]
    site.open(second)
    assert [p.finish()[0] for p in both] == [0, 0]
    assert site.lines() == [f"start {first}", f"end {first}", f"start {second}", f"end {second}"]


def test_first_only_stops_a_start_while_one_runs(site, procs):
    site.push("first", "first_only")
    procs.append(site.worker())
    running = site.queue("first")
    site.wait_ledger(1)
    dropped = site.cli("start", "first", "--no-wait")
    assert dropped.returncode == 1
    iid = dropped.stdout.split()[1]
    assert f"STOPPED: With FIRST_ONLY run strategy, this run is stopped due to a running one [{running}]" \
        in dropped.stdout
    site.open(running)
    site.wait_status(running, "SUCCEEDED")
    after = site.queue("first")
    site.wait_ledger(3)
    site.open(after)
    site.wait_status(after, "SUCCEEDED")
    assert iid not in site.ledger.read_text(), "the dropped start never ran"


def test_last_only_keeps_only_the_newest(site, procs):
    """Two LAST_ONLY starts while one runs: the older of them ends STOPPED (stopped queued, or,
    where the running instance is stopped at once, stopped running), the newest runs last, and
    never beside another."""
    site.push("last", "last_only")
    procs.append(site.worker())
    running = site.queue("last")
    site.wait_ledger(1)
    older = site.queue("last")
    newest = site.queue("last")
    assert "With LAST_ONLY run strategy" in site.wait_status(older, "STOPPED").message or \
        site.instances()[older].message.startswith("stopped by legato:run_strategy")
    site.open(running)  # it ends on its own here if nothing stopped it meanwhile
    site.open(older)
    site.wait_line(lambda lines: f"start {newest}" in lines, f"start {newest}")
    site.open(newest)
    last = site.wait_status(newest, "SUCCEEDED")
    before = [site.instances()[i] for i in (running, older)]
    assert all(r.status.terminal and (r.ended_at or 0) <= last.started_at for r in before), \
        "the newest ran beside an older one"
    assert site.lines()[-2:] == [f"start {newest}", f"end {newest}"], site.lines()


def test_last_only_stops_the_running_instance_of_another_worker(site, procs):
    """The running instance is asked to stop through legato.actions (its owner applies it): the
    new start runs once it has ended STOPPED, without waiting for its step to finish."""
    pytest.importorskip("legato.actions", reason="the actions that stop another process's instance")
    site.push("lastrun", "last_only")
    procs.append(site.worker())
    running = site.queue("lastrun")
    site.wait_ledger(1)
    newest = site.queue("lastrun")
    stopped = site.wait_status(running, "STOPPED")
    assert "run_strategy" in stopped.message, stopped.message
    assert site.wait_ledger(2)[-1] == f"start {newest}"
    site.open(newest)
    site.wait_status(newest, "SUCCEEDED")
    assert site.lines() == [f"start {running}", f"start {newest}", f"end {newest}"]


def test_serial_latest_only_never_stops_the_running_one(site, procs):
    site.push("serial", "serial_latest_only")
    procs.append(site.worker())
    running = site.queue("serial")
    site.wait_ledger(1)
    older = site.queue("serial")
    newest = site.queue("serial")
    assert site.instances()[older].status.value == "STOPPED"
    site.open(running)
    site.wait_status(running, "SUCCEEDED")
    assert site.wait_ledger(3)[-1] == f"start {newest}"
    site.open(newest)
    site.wait_status(newest, "SUCCEEDED")
    assert site.lines() == [f"start {running}", f"end {running}", f"start {newest}", f"end {newest}"]


def test_strict_sequential_waits_for_unblock_from_another_shell(site, procs):
    site.push("strict", "strict_sequential")
    procs.extend([site.worker(), site.worker()])
    failing = site.queue("strict")
    site.wait_ledger(1)
    site.open(failing, fail=True)
    site.wait_status(failing, "FAILED")
    blocked = site.queue("strict")
    shown = site.cli("status", blocked)
    assert f"queued: blocked by failed instance {failing} under STRICT_SEQUENTIAL" in shown.stdout, shown.stdout
    listed = site.cli("list", "--json")
    assert "blocked by failed instance" in next(i for i in json.loads(listed.stdout) if i["instance_id"] == blocked)[
        "waiting"]
    assert len(site.lines()) == 2
    done = site.cli("unblock", "strict", env={"LEGATO_USER": "ann"})
    assert done.returncode == 0 and f"unblocked 1 failed instance(s) ({failing})" in done.stdout, done.stdout
    assert site.wait_ledger(3)[-1] == f"start {blocked}"
    site.open(blocked)
    site.wait_status(blocked, "SUCCEEDED")
    async def timeline():
        async with open_storage(site.url) as store:
            return await store.get_timeline(failing)

    unblocked = [e for e in trio.run(timeline) if e.status == "UNBLOCKED"]
    assert len(unblocked) == 1 and unblocked[0].message.startswith("unblocked by ann via cli"), unblocked
    again = site.cli("unblock", "strict")
    assert "nothing to unblock" in again.stdout
    unknown = site.cli("unblock", "nope")
    assert unknown.returncode == 2 and "no workflow 'nope'" in unknown.stderr


def test_strict_sequential_is_unblocked_by_restarting_the_failed_instance(site, procs):
    site.push("strictr", "strict_sequential")
    procs.append(site.worker())
    failing = site.queue("strictr")
    site.wait_ledger(1)
    site.open(failing, fail=True)
    site.wait_status(failing, "FAILED")
    blocked = site.queue("strictr")
    (site.gate / f"{failing}.fail").unlink()  # its restart succeeds
    restarted = site.cli("restart", failing, timeout=HANG)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert site.wait_ledger(5)[-1] == f"start {blocked}"
    site.open(blocked)
    site.wait_status(blocked, "SUCCEEDED")
