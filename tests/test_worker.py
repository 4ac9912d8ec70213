"""`legato worker`: real worker processes on a temporary SQLite store (DESIGN §5 ownership, §8).

Instances are queued from other processes (`legato start --no-wait`, or an engine in this test
process); the store is read back to see what happened. Bash steps append their attempt's
idempotency key to a ledger file, so a step that ran twice shows. Deadlines only bound a hang.

Maestro's counterpart: maestro-flow's ``FlowExecutor`` (a maintainer that periodically claims
flow groups whose heartbeat expired) and ``ExecutionContext.heartbeatGroup`` / ``releaseGroup``.
Legato claims per instance rather than per group of flows, by the instance's lease, and is woken
when work is queued instead of only polling.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing

from .conftest import LEGATO, alive, legato_cli
from .lines import Lines

HANG = 120.0  # seconds: bounds a hang, never a speed


def _doc(site: "Site", wid: str, block: bool = False) -> dict:
    """Two bash steps a -> b, each writing its idempotency key to the ledger; with ``block``, a
    signals it started (a file named after its instance and attempt) and waits for ``release``.
    PARALLEL: these tests run several instances of one workflow at once."""
    first = 'echo "$LEGATO_IDEMPOTENCY_KEY" >> "$LEDGER"'
    if block:
        first += ('; touch "$STARTED/$LEGATO_INSTANCE_ID.$LEGATO_ATTEMPT"'
                  '; while [ ! -e "$RELEASE" ]; do sleep 0.02; done')
    return {"properties": {"run_strategy": "parallel"}, "workflow": {"id": wid, "params": site.params, "steps": [
        {"step": {"id": "a", "type": "bash", "params": {"script": first}, "transition": {"successors": {"b": "true"}}}},
        {"step": {"id": "b", "type": "bash", "params": {"script": 'echo "$LEGATO_IDEMPOTENCY_KEY" >> "$LEDGER"'}}},
    ]}}


class Site:
    """A temporary store, workspace and ledger, and the environment every process here gets."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "legato.db"
        self.url = f"sqlite:///{self.db}"
        self.ledger = tmp_path / "ledger"
        self.started = tmp_path / "started"
        self.started.mkdir()
        self.release = tmp_path / "release"
        self.env = {"LEGATO_STORE": self.url}
        # What the steps read: params reach a bash step as environment variables.
        self.params = {"LEDGER": str(self.ledger), "STARTED": str(self.started), "RELEASE": str(self.release)}

    def cli(self, *args, **kwargs):
        return legato_cli(*args, cwd=self.dir, env_extra=self.env, **kwargs)

    def push(self, doc: dict) -> None:
        path = self.dir / f"{doc['workflow']['id']}.json"
        path.write_text(json.dumps(doc))
        proc = self.cli("push", str(path))
        assert proc.returncode == 0, proc.stderr

    def worker(self, *args) -> "Worker":
        return Worker(self, args)

    def queue(self, workflow: str, n: int) -> list[str]:
        """Queue ``n`` instances from this (test) process, as an API or a trigger would."""
        from legato.engine import Engine
        from legato.storage import open_storage

        async def main():
            ids = []
            async with open_storage(self.url) as store:
                engine = Engine(store, workspace=self.dir / "runs")
                version = await store.get_definition(workflow)
                definition = engine.load(version.document)
                definition.version = version.version
                for _ in range(n):
                    instance, _ = await engine.start(definition, queued=True)
                    ids.append(instance.instance_id)
            return ids

        return trio.run(main)

    def read(self):
        """(instances by id, attempts by instance id, leases by instance id) as the store has them."""
        from legato.storage import open_storage

        async def main():
            async with open_storage(self.url) as store:
                instances = {r.instance_id: r for r in await store.list_instances(limit=10_000)}
                attempts = {iid: await store.get_attempts(iid) for iid in instances}
                leases = {iid: await store.get_lease(iid) for iid in instances}
            return instances, attempts, leases

        return trio.run(main)

    def timeline(self, iid: str):
        from legato.storage import open_storage

        async def main():
            async with open_storage(self.url) as store:
                return await store.get_timeline(iid)

        return trio.run(main)

    def wait_statuses(self, ids, statuses: set[str]) -> dict:
        deadline = time.monotonic() + HANG
        while True:
            instances, _, _ = self.read()
            now = {iid: instances[iid].status.value for iid in ids if iid in instances}
            if len(now) == len(ids) and set(now.values()) <= statuses:
                return now
            ended = {iid: s for iid, s in now.items() if s not in statuses and instances[iid].status.terminal}
            assert not ended, f"instances ended otherwise: {ended}"
            assert time.monotonic() < deadline, f"instances never reached {statuses}: {now}"
            time.sleep(0.05)

    def wait_started(self, n: int) -> None:
        deadline = time.monotonic() + HANG
        while len(os.listdir(self.started)) < n:
            assert time.monotonic() < deadline, f"only {os.listdir(self.started)} of {n} steps started"
            time.sleep(0.02)

    def keys(self) -> Counter:
        return Counter(self.ledger.read_text().split()) if self.ledger.exists() else Counter()


class Worker:
    """A `legato worker` subprocess whose output lines the test reads as events."""

    def __init__(self, site: Site, args) -> None:
        env = {**os.environ, **site.env}
        self.proc = subprocess.Popen([LEGATO, "worker", "--workspace", str(site.dir / "runs"), *args], cwd=site.dir,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = Lines(self.proc.stdout, self.lines)
        self.expect("runs up to")  # listening: work queued from now on wakes it

    def expect(self, text: str) -> str:
        line = self.reader.wait_for(text, HANG)
        assert line is not None, (f"the worker {'exited' if self.reader.ended else 'never said'} {text!r}:\n"
                                  + self.reader.text())
        return line

    def finish(self) -> int:
        self.proc.wait(timeout=HANG)
        self.reader.join(HANG)  # every line it wrote is in self.lines
        return self.proc.returncode

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path)
    yield site
    # A step a killed worker left running (killed before its pgid was durable, nobody can reap
    # it) would wait forever: let it end.
    site.release.touch()


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        w.kill()


def test_a_worker_runs_what_start_no_wait_queues(site, workers):
    """`legato start --no-wait` in another shell queues; a running worker picks each up at once.
    It polls only every hour here, so only the store's wake-up can have told it."""
    site.push(_doc(site, "queued"))
    w = site.worker("--poll", "3600")
    workers.append(w)
    ids = []
    for _ in range(3):
        proc = site.cli("start", "queued", "--no-wait")
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.split()[0])
    site.wait_statuses(ids, {"SUCCEEDED"})
    assert w.terminate() == 0, "".join(w.lines)
    keys = site.keys()
    assert sorted(keys) == sorted(f"{iid}:{step}:1" for iid in ids for step in "ab")
    assert set(keys.values()) == {1}
    assert sum("SUCCEEDED" in line for line in w.lines) == 3


def test_once_drains_the_queue_and_exits(site):
    site.push(_doc(site, "drain"))
    ids = site.queue("drain", 5)
    proc = site.cli("worker", "--once", "--workspace", str(site.dir / "runs"), timeout=HANG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    instances, _, leases = site.read()
    assert {instances[i].status.value for i in ids} == {"SUCCEEDED"}
    assert all(leases[i].expires_in is None for i in ids), "a finished instance kept its lease"
    assert "5 instance(s) run to their end" in proc.stdout


def test_two_workers_never_run_one_instance_twice(site, workers):
    """Two workers on one store race for 30 queued instances: each step of each runs exactly once."""
    site.push(_doc(site, "race"))
    workers.extend([site.worker("--max-instances", "8"), site.worker("--max-instances", "8")])
    ids = site.queue("race", 30)
    site.wait_statuses(ids, {"SUCCEEDED"})
    for w in workers:
        assert w.terminate() == 0, "".join(w.lines)
    keys = site.keys()
    assert [k for k, n in keys.items() if n > 1] == [], "a step ran twice"
    assert set(keys) == {f"{iid}:{step}:1" for iid in ids for step in "ab"}
    _, attempts, _ = site.read()
    assert all(len(attempts[i]) == 2 for i in ids), "a step got a second attempt"
    ran = Counter(line.split()[3] for w in workers for line in w.lines if line.rstrip().endswith(": SUCCEEDED"))
    assert sorted(ran) == sorted(ids) and set(ran.values()) == {1}, "an instance was run to its end twice"


def test_sigterm_lets_running_steps_finish_and_hands_the_rest_back(site, workers):
    """SIGTERM while steps run: they finish (within the grace), nothing new starts, the worker
    exits 0 leaving the instances unfinished and unowned, and wakes the other workers: an idle
    one (polling only hourly) finishes them at once, and no attempt ran twice."""
    site.push(_doc(site, "graceful", block=True))
    w = site.worker("--grace", "600")
    workers.append(w)
    ids = site.queue("graceful", 3)
    site.wait_started(3)
    idle = site.worker("--poll", "3600")  # the first worker holds all three: nothing for it yet
    workers.append(idle)
    w.proc.send_signal(signal.SIGTERM)
    w.expect("SIGTERM: stopping")
    site.release.touch()  # the running steps may finish now
    assert w.finish() == 0, "".join(w.lines)
    assert sum(line.rstrip().endswith("): handed back unfinished") for line in w.lines) == 3, "".join(w.lines)
    for iid in ids:  # what the first worker left, as its lines say (the idle one may have moved on)
        assert f"legato worker: instance {iid} (graceful v1): handed back unfinished\n" in w.lines
    site.wait_statuses(ids, {"SUCCEEDED"})
    _, attempts, _ = site.read()
    for iid in ids:
        tries = [(a.step_id, a.attempt, a.status.value) for a in attempts[iid]]
        assert tries == [("a", 1, "SUCCEEDED"), ("b", 1, "SUCCEEDED")], f"a running step was cut short: {tries}"
        timeline = site.timeline(iid)
        resumed = next(e.ts for e in timeline if e.message.startswith("resumed by"))
        starting = next(e.ts for e in timeline if e.step_id == "b" and e.status == "STARTING")
        assert starting >= resumed, "step b started before the instance was handed over"
    idle.expect("(graceful v1): SUCCEEDED")  # it was the idle worker that finished them
    keys = site.keys()
    assert set(keys.values()) == {1} and set(keys) == {f"{iid}:{step}:1" for iid in ids for step in "ab"}


def test_after_the_grace_running_steps_are_cancelled_and_resumed_elsewhere(site, workers):
    """Steps that outlast the grace are cancelled; the worker still exits 0 and releases the
    leases; another worker retries the interrupted attempts (a platform error), once each."""
    site.push(_doc(site, "cut", block=True))
    w = site.worker("--grace", "0.2")
    workers.append(w)
    ids = site.queue("cut", 2)
    site.wait_started(2)
    assert w.terminate() == 0, "".join(w.lines)
    assert sum("cancelled after the grace" in line for line in w.lines) == 2, "".join(w.lines)
    instances, _, leases = site.read()
    assert {instances[i].status.value for i in ids} == {"IN_PROGRESS"}
    assert all(leases[i].expires_in is None for i in ids)
    site.release.touch()
    workers.append(site.worker())
    site.wait_statuses(ids, {"SUCCEEDED"})
    _, attempts, _ = site.read()
    for iid in ids:
        tries = [(a.attempt, a.status.value) for a in attempts[iid] if a.step_id == "a"]
        assert tries == [(1, "PLATFORM_FAILED"), (2, "SUCCEEDED")], tries
    keys = site.keys()
    assert set(keys.values()) == {1}
    assert set(keys) == {f"{iid}:{k}" for iid in ids for k in ("a:1", "a:2", "b:1")}


def test_a_killed_workers_instances_are_resumed_by_another(site, workers):
    """kill -9 of a worker: its process is gone, so its leases are free at once; a second worker
    resumes its instances (the interrupted attempts retried once) to SUCCEEDED."""
    site.push(_doc(site, "orphan", block=True))
    first = site.worker()
    workers.append(first)
    ids = site.queue("orphan", 2)
    site.wait_started(2)
    first.kill()
    assert not alive(first.proc.pid)
    site.release.touch()
    second = site.worker("--once")
    workers.append(second)
    assert second.finish() == 0, "".join(second.lines)
    instances, attempts, _ = site.read()
    assert {instances[i].status.value for i in ids} == {"SUCCEEDED"}
    for iid in ids:
        tries = [(a.attempt, a.status.value) for a in attempts[iid] if a.step_id == "a"]
        assert tries == [(1, "PLATFORM_FAILED"), (2, "SUCCEEDED")], tries
    keys = site.keys()
    assert set(keys.values()) == {1}, "an attempt ran twice"


# -- in one process, on the memory store -----------------------------------------------------

def _sleepy(steps: dict[str, tuple[float, str | None]]) -> dict:
    """``scripted`` steps: id -> (seconds it sleeps, its successor)."""
    return {"workflow": {"id": "sleepy", "steps": [
        {"step": {"id": sid, "type": "scripted", "params": {"results": [{"sleep": secs}]},
                  **({"transition": {"successors": {nxt: "true"}}} if nxt else {})}}
        for sid, (secs, nxt) in steps.items()]}}


def test_hand_back_lets_running_steps_finish_and_starts_nothing(engine):
    """InstanceRun.hand_back (the kernel's hook for a worker shutting down): both running steps
    finish, their successors wait for a permit, the run returns unfinished with its lease
    released, and another engine resumes it: every step ran exactly once."""
    from legato.engine import Engine

    from . import scripted

    definition = engine.load(_sleepy({"a": (10, "b"), "x": (1, "y"), "b": (0, None), "y": (0, None)}))

    async def main():
        instance, _ = await engine.start(definition)
        async with trio.open_nursery() as nursery:
            run = await nursery.start(engine.run, definition, instance)
            run.hand_back()
        assert run.instance.status.value == "IN_PROGRESS"
        steps = {a.step_id: a.status.value for a in await engine.storage.get_attempts(instance.instance_id)}
        assert steps == {"a": "SUCCEEDED", "x": "SUCCEEDED", "b": "WAITING_FOR_PERMITS", "y": "WAITING_FOR_PERMITS"}
        assert (await engine.storage.get_lease(instance.instance_id)).expires_in is None
        assert "STOPPED" not in [e.status for e in await engine.storage.get_timeline(instance.instance_id)]
        other = Engine(engine.storage, plugins=engine.plugins, workspace=engine.workspace, owner="next")
        final = await other.resume(instance.instance_id)
        assert final.status.value == "SUCCEEDED"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted((step, attempt) for step, attempt, _ in scripted.calls) == [
        ("a", 1), ("b", 1), ("x", 1), ("y", 1)]


def test_a_worker_in_this_process_is_woken_by_the_memory_store(engine):
    """The memory store wakes a worker of the same process when an instance is queued (it polls
    hourly here), and stop() returns once the runs have ended or been handed back."""
    from legato.worker import Worker

    definition = engine.load(_sleepy({"a": (0, "b"), "b": (0, None)}))
    lines: list[str] = []

    async def main():
        with trio.fail_after(HANG):
            async with trio.open_nursery() as nursery:
                w = await nursery.start(Worker(engine, poll=3600, log=lines.append).run)
                queued = [(await engine.start(definition, queued=True))[0].instance_id for _ in range(3)]
                while w.statistics()["ended"] < 3:
                    await trio.sleep(0.01)
                w.stop()
        for iid in queued:
            assert (await engine.storage.get_instance(iid)).status.value == "SUCCEEDED"
        assert w.statistics() == {"claimed": 3, "ended": 3, "handed_back": 0, "failed": 0, "running": 0}

    trio.run(main)


def test_a_worker_runs_the_children_an_async_subworkflow_step_queues(site):
    """An async subworkflow step only queues its child; the worker that runs the parent (or any
    other) runs the child too. A sync child runs inside its parent's worker."""
    for doc in ({"workflow": {"id": "child", "steps": [{"step": {"id": "c", "type": "noop"}}]}},
                {"workflow": {"id": "parent", "steps": [
                    {"step": {"id": "sync", "type": "subworkflow", "params": {"subworkflow_id": "child"},
                              "transition": {"successors": {"async": "true"}}}},
                    {"step": {"id": "async", "type": "subworkflow",
                              "params": {"subworkflow_id": "child", "sync": False}}}]}}):
        site.push(doc)
    [parent] = site.queue("parent", 1)
    proc = site.cli("worker", "--once", "--workspace", str(site.dir / "runs"), timeout=HANG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    instances, _, _ = site.read()
    assert sorted(r.workflow_id for r in instances.values()) == ["child", "child", "parent"]
    assert {r.status.value for r in instances.values()} == {"SUCCEEDED"}, instances
    children = [r for r in instances.values() if r.workflow_id == "child"]
    assert all(r.ancestors[0]["instance_id"] == parent for r in children)


def test_a_dead_workers_pipe_is_removed_by_the_next_notifier(tmp_path):
    """A worker that died without closing its named pipe leaves it unread: the next notification
    removes it (and still wakes the live worker) instead of writing into it forever."""
    from legato.wakeup import FifoWakeups

    wakeups = FifoWakeups(tmp_path / "legato.db.workers")
    live, dead = wakeups.listen(), wakeups.listen()
    os.close(dead.rfd)  # what the kernel does when the process dies: the pipe file stays
    os.close(dead.wfd)
    dead.rfd = dead.wfd = -1
    assert dead.path.exists()
    wakeups.notify()
    assert not dead.path.exists()
    assert trio.run(live.wait, 0), "the live worker was not woken"
    live.close()
    assert os.listdir(tmp_path / "legato.db.workers") == []


def test_hand_back_inside_a_foreach_runs_every_iteration_once(engine):
    """Handed back while a foreach's iterations run (two at a time, of four): the running ones
    finish, no other starts; the engine that resumes it runs the other two, each once."""
    from legato.engine import Engine

    from . import scripted

    doc = {"workflow": {"id": "loop", "steps": [{"foreach": {
        "id": "fe", "concurrency": 2,
        "params": {"loop_params": {"type": "MAP", "value": {"d": {"type": "LONG_ARRAY", "value": [1, 2, 3, 4]}}}},
        "steps": [{"step": {"id": "work", "type": "scripted", "params": {"results": [{"sleep": 5}]}}}]}}]}}
    definition = engine.load(doc)

    async def main():
        instance, _ = await engine.start(definition)
        async with trio.open_nursery() as nursery:
            run = await nursery.start(engine.run, definition, instance)
            while len(scripted.calls) < 2:  # both first iterations running
                await trio.sleep(0.1)
            run.hand_back()
        assert run.instance.status.value == "IN_PROGRESS"
        assert len(scripted.calls) == 2
        other = Engine(engine.storage, plugins=engine.plugins, workspace=engine.workspace, owner="next")
        assert (await other.resume(instance.instance_id)).status.value == "SUCCEEDED"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(step for step, _, _ in scripted.calls) == [f"fe/{i}/work" for i in range(1, 5)]


def test_run_file_no_wait_queues_and_a_repeated_request_id_reports_the_ended_instance(site):
    """`legato run FILE --no-wait` queues (a worker runs it); the same --request-id again answers
    with that instance, as JSON with its steps under --json, and runs nothing."""
    path = site.dir / "queued.json"
    path.write_text(json.dumps(_doc(site, "queued")))
    proc = site.cli("run", str(path), "--no-wait", "--request-id", "nightly-1")
    assert proc.returncode == 0, proc.stderr
    iid = proc.stdout.splitlines()[0]
    assert "(queued): a `legato worker` on this store runs it" in proc.stdout
    instances, _, _ = site.read()
    assert instances[iid].status.value == "CREATED"
    proc = site.cli("worker", "--once", "--workspace", str(site.dir / "runs"), timeout=HANG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = site.cli("run", str(path), "--request-id", "nightly-1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["instance_id"] == iid and report["status"] == "SUCCEEDED"
    assert {k: v["status"] for k, v in report["steps"].items()} == {"a": "SUCCEEDED", "b": "SUCCEEDED"}
    assert sorted(site.keys()) == [f"{iid}:a:1", f"{iid}:b:1"]  # ran once, by the worker
