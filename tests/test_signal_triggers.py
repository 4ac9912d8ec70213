"""The ``signal`` trigger type (legato.plugins.signal_trigger): Maestro's ``signal_triggers``.

Modelled on Maestro's SignalTrigger (definitions with match_params and join_keys, condition,
dedup_expr, params) and MaestroSignalBrokerDao.tryExecuteTrigger (a new signal joined with the
latest matching signal of every other name above the trigger's checkpoints; the checkpoints move
to the matched numbers; one execution per joined set).

The hosts run in this process on one store (:class:`legato.trigger_host.TriggerHost`, what
`legato serve` and `legato worker` run); the last test runs two real `legato worker` processes. Waits are on
the store's wake-ups and the hosts' progress; deadlines only bound a hang.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import trio

from legato.engine import Engine
from legato.plugins.memory import MemoryStorage
from legato.plugins.signal_trigger import SignalTrigger
from legato.storage import open_storage
from legato.trigger_host import TriggerHost

from .conftest import LEGATO, legato_cli

HANG = 120.0  # seconds: bounds a hang only

JOIN = {"workflow": {
    "id": "joined",
    "params": {"who": {"type": "STRING", "expression": "signal.table_a.owner"},
               "day": {"type": "LONG", "expression": "signal.table_b.day"}},
    "signal_triggers": [{"definitions": {
        "table_a": {"match_params": {"region": {"value": "eu", "operator": "="}}, "join_keys": ["day"]},
        "table_b": {"match_params": {"rows": {"value": 0, "operator": ">"}}, "join_keys": ["day"]}}}],
    "steps": [{"step": {"id": "go", "type": "noop"}}]}}


async def instances(store, workflow="joined") -> list:
    return sorted(await store.list_instances(workflow, limit=1000), key=lambda r: r.created_at)


async def wait_for(store, predicate, what: str):
    """Until ``predicate()`` (async) is true, looking again at each wake-up of the store."""
    with trio.fail_after(HANG):
        with store.wakeups().listen() as listener:
            while True:
                got = await predicate()
                if got:
                    return got
                await listener.wait(0.2)  # a fallback look: a checkpoint save wakes nobody


async def hosts(nursery, store, n: int, **kwargs) -> list[TriggerHost]:
    out = []
    for _ in range(n):
        host = TriggerHost(Engine(store), poll=0.2, **kwargs)
        await nursery.start(host.run)
        out.append(host)
    return out


async def checkpoint(store, workflow: str):
    rows = await store.list_trigger_checkpoints(workflow)
    return rows[0]["value"] if rows else None


async def test_a_two_signal_join_starts_once_per_matching_pair_on_two_hosts_and_after_a_restart(tmp_path):
    """Two hosts watch one store. a(day 1) alone starts nothing; b(day 1) completes the pair: one
    instance, whose params read the signals; a(day 2) and b(day 2): a second. A signal that does
    not match its entry (region us), one without the join key, and a replayed send (same request
    id, nothing stored) start nothing. A host started after both stopped carries on from the
    checkpoint: nothing starts again; a(day 3) + b(day 3) then start a third."""
    store = MemoryStorage()
    await store.push_definition("joined", JOIN)
    async with trio.open_nursery() as nursery:
        first = await hosts(nursery, store, 2)
        await wait_for(store, lambda: checkpoint(store, "joined"), "the triggers watch")
        await store.send_signal("table_a", {"region": "eu", "day": 1, "owner": "ann"}, "a-1")
        await store.send_signal("table_a", {"region": "us", "day": 1, "owner": "bob"})  # its entry does not match
        await store.send_signal("table_b", {"rows": 5}, None)  # no join key: cannot join
        await store.send_signal("table_b", {"rows": 5, "day": 1})
        [one] = await wait_for(store, lambda: instances(store), "the first pair starts")
        assert one.params == {"who": "ann", "day": 1} and one.initiator.startswith("signal:signal-")
        await store.send_signal("table_a", {"region": "eu", "day": 1, "owner": "zed"}, "a-1")  # a replay
        await store.send_signal("table_b", {"rows": 1, "day": 2})
        await store.send_signal("table_a", {"region": "eu", "day": 2, "owner": "cy"})
        await wait_for(store, lambda: _at_least(store, 2), "the second pair starts")
        await wait_for(store, lambda: _consumed(store, {"table_a": 3, "table_b": 3}), "both hosts are done")
        for host in first:
            host.stop()
    async with trio.open_nursery() as nursery:
        [host] = await hosts(nursery, store, 1)
        await store.send_signal("table_a", {"region": "eu", "day": 3, "owner": "di"})
        await store.send_signal("table_b", {"rows": 2, "day": 3})
        await wait_for(store, lambda: _at_least(store, 3), "the third pair starts")
        host.stop()
    got = await instances(store)
    assert [(r.params["who"], r.params["day"]) for r in got] == [("ann", 1), ("cy", 2), ("di", 3)]
    assert [r.request_id.rsplit(":", 1)[1] for r in got] == [
        "table_a#1+table_b#2", "table_a#3+table_b#3", "table_a#4+table_b#4"]


async def _at_least(store, n: int):
    got = await instances(store)
    assert len(got) <= n, f"started {len(got)} instances, expected {n}: {[r.request_id for r in got]}"
    return len(got) == n


async def _consumed(store, seqs: dict) -> bool:
    value = await checkpoint(store, "joined")
    return value == {"seqs": seqs}


class CrashAfterStart(MemoryStorage):
    """A store whose checkpoint write fails once after a start: a host dying between the two."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    async def save_trigger_checkpoint(self, workflow_id, key, value, *, fired_at=None):
        if not self.crashed and fired_at is not None:
            self.crashed = True
            raise RuntimeError("the host died here")
        await super().save_trigger_checkpoint(workflow_id, key, value, fired_at=fired_at)


async def test_a_crash_between_start_and_checkpoint_starts_nothing_twice():
    """The instance is created, then the checkpoint write fails (the trigger dies): run again from
    the old checkpoint, it fires the same request id, which starts nothing new."""
    store = CrashAfterStart()
    doc = {"workflow": {"id": "one", "signal_triggers": [{"definitions": {"ready": {}}}],
                        "steps": [{"step": {"id": "go", "type": "noop"}}]}}
    await store.push_definition("one", doc)
    async with trio.open_nursery() as nursery:
        [host] = await hosts(nursery, store, 1, retry=0.05)
        await wait_for(store, lambda: checkpoint(store, "one"), "the trigger watches")
        await store.send_signal("ready", {"n": 1})
        await wait_for(store, lambda: _repeated(host), "the trigger ran again and fired the same id")
        host.stop()
    assert store.crashed and host.statistics()["failed"] == 1
    assert len(await instances(store, "one")) == 1


async def _repeated(host) -> bool:
    return host.statistics()["repeated"] >= 1


async def test_condition_and_dedup_expr_decide_what_starts():
    """``condition`` (CEL over ``signal`` and ``params``) false: nothing starts, the signal is
    consumed; ``dedup_expr``: one start per value, whatever the signals' numbers."""
    store = MemoryStorage()
    doc = {"workflow": {"id": "dedup", "signal_triggers": [{
        "definitions": {"load": {}}, "condition": "signal.load.rows > params.least",
        "dedup_expr": "string(signal.load.day)", "params": {"least": 10}}],
        "params": {"least": 0}, "steps": [{"step": {"id": "go", "type": "noop"}}]}}
    await store.push_definition("dedup", doc)
    async with trio.open_nursery() as nursery:
        [host] = await hosts(nursery, store, 1)
        await wait_for(store, lambda: checkpoint(store, "dedup"), "the trigger watches")
        for rows, day in ((5, 1), (50, 1), (60, 1), (70, 2)):
            await store.send_signal("load", {"rows": rows, "day": day})
        await wait_for(store, lambda: _seq_consumed(store, "dedup", 4), "all consumed")
        host.stop()
    got = await instances(store, "dedup")
    assert [r.request_id.rsplit(":", 1)[1] for r in got] == ["1", "2"]
    assert all(r.params == {"least": 10} for r in got)


async def _seq_consumed(store, workflow: str, seq: int) -> bool:
    value = await checkpoint(store, workflow)
    return bool(value) and value["seqs"]["load"] == seq


def test_parse_reports_problems_at_their_pointers():
    defs, problems = SignalTrigger.parse([{"definitions": {"a": {"match_params": {"x": {"value": 1.5}}}}},
                                          {"definitions": {"a": {}}, "condition": "1 +"}], "/workflow/signal_triggers")
    at = dict(problems)
    assert "whole number or a string" in at["/workflow/signal_triggers/0/definitions/a/match_params/x/value"]
    assert at["/workflow/signal_triggers/1/condition"].startswith("CEL ")
    assert defs == []
    [ok], none = SignalTrigger.parse([{"definitions": {"a": {}}}], "/p")
    assert none == [] and ok.key.startswith("signal-") and ok.pointer == "/p/0"


def test_two_workers_start_and_run_a_joined_pair_once(tmp_path):
    """Two real `legato worker` processes on one SQLite store host the trigger: `legato signal
    send` from other processes (a pair joined on `day`, then the second one replayed with its
    request id) starts the workflow once, and a worker runs it with the signals' params."""
    env = {**os.environ, "LEGATO_STORE": f"sqlite:///{tmp_path / 'legato.db'}"}
    doc = {"workflow": {"id": "on-signal", "params": {"n": {"type": "LONG", "expression": "signal.ready.n"}},
                        "signal_triggers": [{"definitions": {"ready": {"join_keys": ["day"]},
                                                             "checked": {"join_keys": ["day"]}}}],
                        "steps": [{"step": {"id": "go", "type": "noop"}}]}}
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    assert legato_cli("push", "wf.json", cwd=tmp_path, env_extra=env).returncode == 0
    workers = [subprocess.Popen([LEGATO, "worker", "--workspace", str(tmp_path / f"runs{i}")], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        async def watching():
            async with open_storage(env["LEGATO_STORE"]) as store:
                await wait_for(store, lambda: checkpoint(store, "on-signal"), "the workers' triggers watch")

        trio.run(watching)
        for args in (["ready", "-p", "n=7", "-p", "day=1"], ["checked", "-p", "day=1", "--request-id", "c1"],
                     ["checked", "-p", "day=1", "--request-id", "c1"]):
            sent = legato_cli("signal", "send", *args, cwd=tmp_path, env_extra=env)
            assert sent.returncode == 0, sent.stderr

        async def succeeded():
            async with open_storage(env["LEGATO_STORE"]) as store:
                async def done():
                    got = await instances(store, "on-signal")
                    return got if got and got[0].status.value == "SUCCEEDED" else None

                found = await wait_for(store, done, "the instance ran")
                await wait_for(store, lambda: _pair_consumed(store), "the pair is consumed")
                return found

        [instance] = trio.run(succeeded)
        assert instance.params == {"n": 7}
    finally:
        for worker in workers:
            worker.terminate()
        outs = [worker.communicate(timeout=HANG)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outs

    async def count():
        async with open_storage(env["LEGATO_STORE"]) as store:
            return len(await instances(store, "on-signal"))

    assert trio.run(count) == 1


async def _pair_consumed(store) -> bool:
    return await checkpoint(store, "on-signal") == {"seqs": {"ready": 1, "checked": 1}}
