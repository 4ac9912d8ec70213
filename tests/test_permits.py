"""Permits shared across instances (legato.permits): ``step_concurrency`` across a workflow's
instances, ``instance_step_concurrency`` across an instance tree, tag permits across workflows.

Modelled on Maestro's ``WorkflowSummary.deriveRuntimeTagPermits`` (a permit keyed by the workflow
id for step_concurrency, by the root instance for instance_step_concurrency, leaf steps only),
``MaestroTagPermitManager`` / ``MaestroTagPermitTask`` (held permits in the store, a tag's limit
set through ``TagPermitController`` winning over the step's own) and ``MaestroTagPermitDao``.

The process tests run real `legato worker` / `legato run` processes on a SQLite store. Their bash
steps keep a ledger under flock: each counts itself in, writes the count it saw, waits until the
count once reached the number that should run at once (so a cap that lets fewer through hangs
and fails at the deadline), stays a moment, and counts itself out. The counts written prove the
cap was never exceeded. Deadlines only bound a hang.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
import trio
import trio.testing

from legato.states import StepStatus

from . import scripted
from .test_worker import HANG, Site

# Counted in under the lock; wait for the peak; a moment running together; counted out.
LEDGER_SCRIPT = (
    'exec 9>>"$LOCK"\n'
    'flock 9; n=$(( $(cat "$COUNT" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$COUNT"; echo "$n" >> "$SEEN"\n'
    'if [ "$n" -ge "$TARGET" ]; then touch "$REACHED"; fi; flock -u 9\n'
    'while [ ! -e "$REACHED" ]; do sleep 0.02; done\n'
    'sleep 0.2\n'
    'flock 9; n=$(( $(cat "$COUNT") - 1 )); echo "$n" > "$COUNT"; flock -u 9\n'
)


class Ledger:
    """The files the ledger steps share, as workflow params (bash steps see them as variables)."""

    def __init__(self, site: Site, target: int) -> None:
        d = site.dir
        self.seen = d / "seen"
        self.params = {"LOCK": str(d / "lock"), "COUNT": str(d / "count"), "SEEN": str(self.seen),
                       "REACHED": str(d / "reached"), "TARGET": str(target)}

    def step(self, sid: str, **fields) -> dict:
        return {"step": {"id": sid, "type": "bash", "params": {"script": LEDGER_SCRIPT}, **fields}}

    def counts(self) -> list[int]:
        """The number of steps running together that each step saw as it came in."""
        return [int(n) for n in self.seen.read_text().split()] if self.seen.exists() else []


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


@pytest.fixture
def workers():
    started = []
    yield started
    for w in started:
        w.kill()


def _overlapped(records) -> bool:
    """Whether the instances ran at the same time (each started before any other ended)."""
    return max(r.started_at for r in records) < min(r.ended_at for r in records)


def _permit_rows(site: Site) -> list[tuple]:
    conn = sqlite3.connect(site.db)
    try:
        return conn.execute("SELECT permit_key, instance_id, step_id, attempt FROM legato_permits").fetchall()
    finally:
        conn.close()


def test_step_concurrency_caps_steps_across_instances_run_by_two_workers(site, workers):
    """Two instances of a workflow with step_concurrency 2, three parallel steps each, run by two
    worker processes at the same time: never more than 2 steps at once, and 2 at once."""
    ledger = Ledger(site, target=2)
    site.push({"properties": {"step_concurrency": 2, "run_strategy": "parallel"}, "workflow": {
        "id": "capped", "params": ledger.params, "steps": [ledger.step(f"s{i}") for i in range(3)]}})
    workers.extend([site.worker(), site.worker()])
    ids = site.queue("capped", 2)
    site.wait_statuses(ids, {"SUCCEEDED"})
    counts = ledger.counts()
    assert len(counts) == 6 and max(counts) == 2, counts
    instances, _, _ = site.read()
    assert _overlapped([instances[i] for i in ids]), "the instances did not run at the same time"
    assert _permit_rows(site) == [], "permits were left held"


def test_a_tag_permit_set_in_the_store_is_shared_by_two_workflows(site, workers):
    """`legato permits set db 1`: the steps tagged db of two workflows run one at a time, the
    limit set winning over the permit a step's tag declares (5); `permits list` shows it."""
    ledger = Ledger(site, target=1)
    proc = site.cli("permits", "set", "db", "1")
    assert proc.returncode == 0, proc.stderr
    site.push({"workflow": {"id": "wa", "params": ledger.params, "steps": [
        ledger.step(f"a{i}", tags=[{"name": "db", "permit": 5}]) for i in range(2)]}})
    site.push({"workflow": {"id": "wb", "params": ledger.params, "steps": [
        ledger.step(f"b{i}", tags=["db", "other"]) for i in range(2)]}})
    workers.append(site.worker())
    ids = site.queue("wa", 1) + site.queue("wb", 1)
    site.wait_statuses(ids, {"SUCCEEDED"})
    counts = ledger.counts()
    assert len(counts) == 4 and max(counts) == 1, counts
    instances, _, _ = site.read()
    assert _overlapped([instances[i] for i in ids]), "the instances did not run at the same time"
    listed = site.cli("permits", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["tag"], row["limit"], row["held"]) == ("db", 1, 0), row


def test_instance_step_concurrency_caps_a_subworkflow_tree(site):
    """instance_step_concurrency 2 on a root whose subworkflow runs two steps in parallel beside
    the root's own step: the three leaf steps of the tree run at most 2 at once (the child's count
    toward its root's permits), and 2 at once; the subworkflow step itself takes none."""
    ledger = Ledger(site, target=2)
    site.push({"workflow": {"id": "leaf", "params": ledger.params, "steps": [ledger.step("c1"), ledger.step("c2")]}})
    root = site.dir / "root.json"
    root.write_text(json.dumps({"workflow": {
        "id": "root", "instance_step_concurrency": 2, "params": ledger.params, "steps": [
            ledger.step("p1"), {"subworkflow": {"id": "sub", "params": {"subworkflow_id": "leaf"}}}]}}))
    proc = site.cli("run", str(root), timeout=HANG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = ledger.counts()
    assert len(counts) == 3 and max(counts) == 2, counts
    assert _permit_rows(site) == []


def _status(site: Site, iid: str) -> dict:
    proc = site.cli("status", iid, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_waiting_step_shows_why_and_starts_once_the_limit_is_raised(site, workers):
    """A step whose tag's limit is 0 waits WAITING_FOR_PERMITS, `legato status --json` saying
    why; raising the limit from another process wakes it (the worker polls hourly for work)."""
    proc = site.cli("permits", "set", "gpu", "0")
    assert proc.returncode == 0, proc.stderr
    site.push({"workflow": {"id": "held", "steps": [
        {"step": {"id": "train", "type": "noop", "tags": ["gpu"]}}]}})
    workers.append(site.worker("--poll", "3600"))
    [iid] = site.queue("held", 1)
    deadline = time.monotonic() + HANG
    while True:
        train = _status(site, iid)["steps"]["train"]
        if train["status"] == "WAITING_FOR_PERMITS" and train["message"]:
            break
        assert time.monotonic() < deadline, f"the step never said it waits: {train}"
        time.sleep(0.05)
    assert train["message"] == "waiting for a permit of tag gpu: 0/0 held", train
    assert site.cli("permits", "set", "gpu", "1").returncode == 0
    site.wait_statuses([iid], {"SUCCEEDED"})
    train = _status(site, iid)["steps"]["train"]
    assert (train["status"], train["message"]) == ("SUCCEEDED", ""), train


def test_a_killed_workers_permits_are_freed_when_its_instance_is_resumed(site, workers):
    """kill -9 of a worker whose step holds the workflow's only permit (step_concurrency 1):
    another worker resumes the instance and frees what the dead one held, so the retried attempt
    gets the permit (left held, the instance's own live lease would keep it counted for good)."""
    started = site.started
    site.push({"properties": {"step_concurrency": 1}, "workflow": {"id": "crash", "params": site.params, "steps": [
        {"step": {"id": "a", "type": "bash", "retry_policy": {"backoff": {"type": "fixed", "base": 0}},
                  "params": {"script": 'touch "$STARTED/$LEGATO_INSTANCE_ID.$LEGATO_ATTEMPT"; '
                                       'while [ ! -e "$RELEASE" ]; do sleep 0.02; done'}}}]}})
    first = site.worker()
    workers.append(first)
    [iid] = site.queue("crash", 1)
    site.wait_started(1)
    assert _permit_rows(site) == [("workflow:crash", iid, "a", 1)]
    first.kill()
    site.release.touch()
    workers.append(site.worker())
    site.wait_statuses([iid], {"SUCCEEDED"})
    _, attempts, _ = site.read()
    assert [(a.attempt, a.status.value) for a in attempts[iid]] == [(1, "PLATFORM_FAILED"), (2, "SUCCEEDED")]
    assert (started / f"{iid}.2").exists()
    assert _permit_rows(site) == []


# -- in one process, on the memory store --------------------------------------------------------


def _scripted_wf(wid: str, n: int, seconds: float, properties=None, **workflow) -> dict:
    doc = {"workflow": {"id": wid, "steps": [
        {"step": {"id": f"s{i}", "type": "scripted", "params": {"results": [{"sleep": seconds}]}}}
        for i in range(n)], **workflow}}
    if properties:
        doc["properties"] = properties
    return doc


async def test_instances_in_one_engine_share_step_concurrency(engine):
    """Three instances of a workflow (step_concurrency 2, four steps each) run by one engine at
    once: 2 steps at a time across them, each step's wait for a shared permit said in its message."""
    definition = engine.load(_scripted_wf("shared", 4, 0.05, {"step_concurrency": 2, "run_strategy": "parallel"}))
    messages = []

    async def run_one():
        instance, _ = await engine.start(definition)
        async with trio.open_nursery() as nursery:
            run = await nursery.start(lambda task_status: engine.run(definition, instance, task_status=task_status))
            while run.root.live:
                messages.extend(st.record.message for st in run.steps.values() if st.record)
                await trio.sleep(0.01)

    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(run_one)
    assert scripted.active["peak"] == 2
    assert len(scripted.calls) == 12
    assert "waiting for a permit: step_concurrency 2 of workflow shared: 2 held" in messages


async def test_stopping_an_instance_ends_its_waiting_steps_and_frees_its_permits(engine):
    """Steps waiting for a tag's permit end STOPPED when their instance is stopped; the one that
    ran gives its permit back: a later instance gets it."""
    await engine.storage.set_tag_permit("one", 1, by="test")
    doc = {"workflow": {"id": "stoppable", "steps": [
        {"step": {"id": f"s{i}", "type": "sleep", "tags": ["one"], "params": {"seconds": 60}}} for i in range(3)]}}
    definition = engine.load(doc)
    instance, _ = await engine.start(definition)
    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(lambda task_status: engine.run(definition, instance, task_status=task_status))
            while not any(st.record and st.record.status is StepStatus.RUNNING for st in run.steps.values()):
                await trio.sleep(0.01)
            run.stop("stopped by test")
    attempts = await engine.storage.get_attempts(instance.instance_id)
    assert sorted(a.status.value for a in attempts) == ["STOPPED"] * 3
    assert (await engine.storage.get_tag_permits())[0]["held"] == 0
    await engine.storage.set_tag_permit("one", 1, by="test")
    quick = engine.load({"workflow": {"id": "after", "steps": [{"step": {"id": "q", "type": "noop", "tags": ["one"]}}]}})
    with trio.fail_after(HANG):
        done = await engine.execute(quick)
    assert done.status.value == "SUCCEEDED"


async def test_a_workflow_without_shared_permits_never_asks_the_store(engine, monkeypatch):
    """The hot path: no step_concurrency, no tags (instance_step_concurrency without subworkflows
    is counted in memory): no permit call reaches the store."""
    async def refuse(*args, **kwargs):
        raise AssertionError("the store was asked for permits")

    monkeypatch.setattr(engine.storage, "acquire_permits", refuse)
    monkeypatch.setattr(engine.storage, "release_permits", refuse)
    definition = engine.load(_scripted_wf("plain", 5, 0.01, instance_step_concurrency=2))
    with trio.fail_after(HANG):
        done = await engine.execute(definition)
    assert done.status.value == "SUCCEEDED"
    assert scripted.active["peak"] == 2


def test_a_step_queued_behind_another_key_asks_at_once(plugins, tmp_path):
    """In virtual time: a step waits for tag `full` (limit 0); a later step tagged `free` is
    granted at once, not after the fallback poll of the one waiting (FIFO per key, not one line
    for every key); the waiting one starts once its limit is raised, without a wake-up it would
    wait for the poll."""
    from legato.engine import Engine
    from legato.permits import POLL
    from legato.plugins.memory import MemoryStorage

    clock = trio.testing.MockClock(autojump_threshold=0)
    scripted.calls.clear()

    async def main():
        engine = Engine(MemoryStorage(), plugins=plugins, workspace=tmp_path)
        await engine.storage.set_tag_permit("full", 0, by="test")
        doc = {"workflow": {"id": "keys", "steps": [
            {"step": {"id": "blocked", "type": "scripted", "tags": ["full"]}},
            {"step": {"id": "first", "type": "scripted", "params": {"results": [{"sleep": POLL / 10}]},
                      "transition": {"successors": {"later": "true"}}}},
            {"step": {"id": "later", "type": "scripted", "tags": ["free"],
                      "params": {"results": [{"sleep": 2 * POLL + POLL / 4 - POLL / 10}]}}}]}}
        start = trio.current_time()
        later_done = trio.Event()

        def observe(event) -> None:
            if event.step_id == "later" and event.status == "SUCCEEDED":
                later_done.set()

        async def raise_limit():
            # Once `later` ends, at 2.25 polls: between two polls of the blocked step.
            await later_done.wait()
            await engine.storage.set_tag_permit("full", 1, by="test")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(raise_limit)
            instance = await engine.execute(engine.load(doc), observer=observe)
        return instance, {sid: round(t - start, 3) for sid, _, t in scripted.calls}

    instance, started = trio.run(main, clock=clock)
    assert instance.status.value == "SUCCEEDED"
    assert started["later"] < POLL, started
    assert started["blocked"] == pytest.approx(2 * POLL + POLL / 4), started


def test_a_dead_workers_permits_are_not_counted_while_its_lease_runs(site, workers):
    """kill -9 of a worker holding the workflow's only permit, its lease good for ten minutes and
    nobody resuming its instance: `legato run` of another instance of the workflow still gets
    the permit (its holder's process is gone, as a lease taken from it would be)."""
    doc = {"properties": {"run_strategy": "parallel", "step_concurrency": 1}, "workflow": {"id": "dead", "params": site.params, "steps": [
        {"step": {"id": "a", "type": "bash",
                  "params": {"script": 'touch "$STARTED/$LEGATO_INSTANCE_ID.$LEGATO_ATTEMPT"; '
                                       'while [ ! -e "$RELEASE" ]; do sleep 0.02; done'}}}]}}
    site.push(doc)
    site.env["LEGATO_LEASE_TTL"] = "600"
    first = site.worker()
    workers.append(first)
    del site.env["LEGATO_LEASE_TTL"]
    [iid] = site.queue("dead", 1)
    site.wait_started(1)
    first.kill()
    site.release.touch()
    proc = site.cli("run", str(site.dir / "dead.json"), timeout=HANG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    instances, _, _ = site.read()
    assert instances[iid].status.value == "IN_PROGRESS"  # nobody resumed it
    assert [r[1] for r in _permit_rows(site)] == [], "the dead holder's permit is still counted"


def test_a_worker_hands_back_an_instance_whose_step_waits_for_a_permit(site, workers):
    """SIGTERM while a step waits for a tag permit: the worker hands the instance back at once
    (a waiting step is not a running one), the step still WAITING_FOR_PERMITS; another worker
    runs it once the limit allows."""
    assert site.cli("permits", "set", "gpu", "0").returncode == 0
    site.push({"workflow": {"id": "handed", "steps": [{"step": {"id": "train", "type": "noop", "tags": ["gpu"]}}]}})
    w = site.worker("--grace", "600")
    workers.append(w)
    [iid] = site.queue("handed", 1)
    deadline = time.monotonic() + HANG
    while _status(site, iid)["steps"]["train"]["message"] != "waiting for a permit of tag gpu: 0/0 held":
        assert time.monotonic() < deadline, "the step never waited for its permit"
        time.sleep(0.05)
    assert w.terminate() == 0, "".join(w.lines)
    assert any(line.rstrip().endswith("handed back unfinished") for line in w.lines), "".join(w.lines)
    assert _status(site, iid)["steps"]["train"]["status"] == "WAITING_FOR_PERMITS"
    assert site.cli("permits", "set", "gpu", "1").returncode == 0
    workers.append(site.worker())
    site.wait_statuses([iid], {"SUCCEEDED"})
    assert _permit_rows(site) == []
