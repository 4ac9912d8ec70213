"""Triggers (legato.triggers, legato.trigger_host): the host under `legato serve` and `legato
worker`, pausing, `legato triggers`, two hosts on one store, and the TriggerSuite for the cron trigger."""

from __future__ import annotations

from legato.conformance import TriggerSuite


class TestCronTriggerConformance(TriggerSuite):
    profile = "cron"


import datetime as dt
import json
import signal
import time

import pytest
import trio

from legato.engine import Engine
from legato.plugins.memory import MemoryStorage
from legato.storage import open_storage
from legato.trigger_host import TriggerHost
from legato.triggers import TriggerClock


UTC = dt.timezone.utc
EPOCH = dt.datetime(2024, 3, 30, tzinfo=UTC).timestamp()  # Europe/Dublin moves its clocks the next night
HANG = 60.0  # seconds: bounds a hang, never a speed


def workflow(wid: str, *triggers: dict, steps=None) -> dict:
    step = {"step": {"id": "a", "type": "noop",
                     "params": {"when": {"expression": "string(workflow.run_ts)", "type": "STRING"}}}}
    return {"workflow": {"id": wid, "time_triggers": list(triggers),
                         "params": {"scheduled": {"expression": "workflow.run_ts", "type": "STRING"},
                                    "by": {"expression": "workflow.initiator", "type": "STRING"}},
                         "steps": steps or [step]}}


HOURLY = {"type": "CRON", "cron": "0 * * * *", "timezone": "Europe/Dublin"}
DAILY = {"type": "PREDEFINED", "expression": "@daily", "timezone": "Asia/Kathmandu"}
EVERY_SECOND = {"type": "CRON", "cron": "* * * * * ?"}


async def by_run_ts(storage, wid: str) -> list:
    return sorted(await storage.list_instances(wid, limit=10_000), key=lambda i: i.run_ts)


async def test_the_host_follows_the_active_version_and_runs_see_their_tick(autojump_clock):
    """In virtual time, on a memory store: v1's hourly trigger fires (queued instances of v1, the
    scheduled time as workflow.run_ts and the trigger as workflow.initiator); once v2 (a daily
    trigger in Kathmandu) is activated the hourly one stops and v2's fires; a version without
    triggers stops them all."""
    storage = MemoryStorage()
    engine = Engine(storage)
    await storage.push_definition("wf", workflow("wf", HOURLY))
    host = TriggerHost(engine, poll=60, clock=TriggerClock(epoch=EPOCH))
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        await trio.sleep(3 * 3600 + 1)
        await storage.push_definition("wf", workflow("wf", DAILY))
        await trio.sleep(2 * 86400)
        await storage.push_definition("wf", {"workflow": {"id": "wf", "steps": [{"step": {"id": "a", "type": "noop"}}]}})
        await trio.sleep(86400)
        assert host.statistics()["triggers"] == 0
        nursery.cancel_scope.cancel()
    instances = await by_run_ts(storage, "wf")
    hourly = [i for i in instances if i.version == 1]
    daily = [i for i in instances if i.version == 2]
    assert [i.run_ts for i in hourly] == [EPOCH + 3600 * h for h in (1, 2, 3)]
    kathmandu = dt.timedelta(hours=5, minutes=45)
    assert [dt.datetime.fromtimestamp(i.run_ts, UTC) + kathmandu for i in daily] == [
        dt.datetime(2024, 3, 31, tzinfo=UTC), dt.datetime(2024, 4, 1, tzinfo=UTC)]
    assert len(instances) == 5 and all(i.queued and i.status.value == "CREATED" for i in instances)
    first = hourly[0]
    assert first.params["scheduled"] == "2024-03-30T01:00:00Z"
    assert first.params["by"] == first.initiator and first.initiator.startswith("cron:time-")
    assert first.request_id == f"trigger:{first.initiator[5:]}:2024-03-30T01:00:00.000Z"
    ran = await engine.resume(first.instance_id)  # a worker runs it: its steps read the tick too
    assert ran.status.value == "SUCCEEDED"
    assert (await storage.get_attempts(first.instance_id))[0].params["when"] == "2024-03-30T01:00:00Z"


async def test_time_trigger_disabled_keeps_a_versions_time_triggers_from_running(autojump_clock):
    """Maestro's properties.time_trigger_disabled: the version's time triggers are not run (and
    `legato triggers` says so); the next version without it runs them."""
    storage = MemoryStorage()
    engine = Engine(storage)
    await storage.push_definition("wf", {**workflow("wf", HOURLY), "properties": {"time_trigger_disabled": True}})
    host = TriggerHost(engine, poll=60, clock=TriggerClock(epoch=EPOCH))
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        await trio.sleep(3 * 3600 + 1)
        assert host.statistics()["triggers"] == 0
        await storage.push_definition("wf", workflow("wf", HOURLY))
        await trio.sleep(2 * 3600)
        nursery.cancel_scope.cancel()
    assert [i.version for i in await by_run_ts(storage, "wf")] == [2, 2]


async def test_paused_triggers_drop_their_ticks_and_resume_from_now(autojump_clock):
    """`legato triggers pause` (the store's pause): the ticks that fall due meanwhile start nothing
    and are not caught up on resume; the ones after fire as before."""
    storage = MemoryStorage()
    engine = Engine(storage)
    await storage.push_definition("wf", workflow("wf", HOURLY))
    host = TriggerHost(engine, poll=60, clock=TriggerClock(epoch=EPOCH))
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        await trio.sleep(2 * 3600 + 600)
        assert await storage.set_triggers_paused("wf", True, by="test")
        await trio.sleep(3 * 3600)
        assert await storage.set_triggers_paused("wf", False, by="test")
        await trio.sleep(2 * 3600)
        nursery.cancel_scope.cancel()
    hours = [round((i.run_ts - EPOCH) / 3600) for i in await by_run_ts(storage, "wf")]
    assert hours == [1, 2, 6, 7]


async def test_two_hosts_on_one_sqlite_store_start_each_tick_once(tmp_path):
    """Two hosts (two engines, two connections to one SQLite file) fire an every-second trigger on
    the wall clock: each tick has one instance; the host that came second for a tick found the
    instance there (request-id dedup) rather than starting another."""
    url = f"sqlite:///{tmp_path / 'legato.db'}"
    stores = [open_storage(url), open_storage(url)]
    for store in stores:
        await store.open()
    try:
        engines = [Engine(store, workspace=tmp_path / "runs") for store in stores]
        await stores[0].push_definition("wf", workflow("wf", EVERY_SECOND))
        hosts = [TriggerHost(engine, poll=0.2) for engine in engines]
        async with trio.open_nursery() as nursery:
            for host in hosts:
                await nursery.start(host.run)
            with trio.fail_after(HANG):
                while sum(h.statistics()["repeated"] for h in hosts) < 3:
                    await hosts[0].wait_progress()
            nursery.cancel_scope.cancel()
        instances = await by_run_ts(stores[0], "wf")
        ticks = [i.run_ts for i in instances]
        assert ticks == [ticks[0] + n for n in range(len(ticks))], ticks  # every second, each once
        assert len({i.request_id for i in instances}) == len(instances)
        assert sum(h.statistics()["started"] for h in hosts) == len(instances)
    finally:
        for store in stores:
            await store.aclose()


def wait_lines(server, text: str, count: int) -> None:
    """Wait until ``count`` lines of the server's output hold ``text``."""
    assert server.reader.count(text, count, HANG), (
        f"the server {'exited' if server.reader.ended else 'said'} {text!r} fewer than {count} times:\n"
        + server.reader.text())


def test_a_real_legato_serve_fires_an_every_second_trigger_on_time(tmp_path):
    """`legato serve` (a subprocess on a SQLite store) notices a pushed workflow with a 6-field
    (Quartz, every second) cron, fires it on time and runs the instances its trigger queued; on
    SIGTERM it stops its triggers and exits 0."""
    from .test_serve import Server

    server = Server(tmp_path, "--poll", "0.2")
    try:
        server.push(workflow("ticking", EVERY_SECOND))
        first = server.expect("started instance ")
        iid = first.split("started instance ")[1].split()[0]
        done = server.wait_status("ticking", iid, {"SUCCEEDED"})
        wait_lines(server, "started instance ", 2)
        listed = server.http.get("/api/v3/triggers")  # what the web UI's pages show
        assert listed.status_code == 200, listed.text
        (row,) = [r for r in listed.json() if r["workflow_id"] == "ticking"]
        assert (row["type"], row["version"], row["paused"], row["disabled"]) == ("cron", 1, False, False), row
        assert row["next_due"] and row["last_fired"] and row["next_due"] > row["last_fired"], row
        assert server.terminate() == 0, "".join(server.lines)
    finally:
        server.kill()
    assert done["status"] == "SUCCEEDED"

    async def read():
        async with open_storage(server.store) as store:
            return await by_run_ts(store, "ticking")

    instances = trio.run(read)
    assert len(instances) >= 2
    assert [i.run_ts - instances[0].run_ts for i in instances[:2]] == [0, 1]
    for instance in instances:
        assert instance.run_ts == int(instance.run_ts)  # a whole second: the tick itself
        assert 0 <= instance.created_at - instance.run_ts < 3.0, "fired late"  # a busy-machine guard: benchmarks measure the lag
    assert any("triggers: ticking v1: 1 trigger(s) watching" in line for line in server.lines)


def test_legato_triggers_lists_pauses_and_resumes(tmp_path):
    """`legato triggers [--json]` lists each active trigger with its next due time; `pause` and
    `resume` say what they did and show in the listing; an unknown workflow is exit 2. (In
    process, through click's runner: the CLI's subprocess behaviour is test_cli's.)"""
    from click.testing import CliRunner

    from legato.cli import main

    def cli(*args):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    store = f"sqlite:///{tmp_path / 'legato.db'}"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow("nightly", {"type": "CRON", "cron": "30 2 * * *", "timezone": "Europe/Dublin"},
                                        DAILY)))
    assert cli("push", "--store", store, str(path)).exit_code == 0
    listed = json.loads(cli("triggers", "--store", store, "--json").stdout)
    assert [(r["workflow_id"], r["type"], r["schedule"], r["paused"], r["last_fired"]) for r in listed] == [
        ("nightly", "cron", "CRON 30 2 * * * Europe/Dublin", False, None),
        ("nightly", "cron", "PREDEFINED @daily Asia/Kathmandu", False, None)]
    from zoneinfo import ZoneInfo

    due = dt.datetime.fromisoformat(listed[0]["next_due"]).astimezone(ZoneInfo("Europe/Dublin"))
    assert (due.hour, due.minute) in ((2, 30), (3, 0)) and due.timestamp() > time.time()  # 03:00 if DST skips 02:30
    paused = cli("triggers", "pause", "nightly", "--store", store)
    assert paused.exit_code == 0 and "nightly: triggers paused" in paused.stdout
    assert "PAUSED" in cli("triggers", "--store", store).stdout
    assert "resumed" in cli("triggers", "--store", store, "resume", "nightly").stdout  # the group's --store
    assert "PAUSED" not in cli("triggers", "--store", store).stdout
    unknown = cli("triggers", "pause", "nosuch", "--store", store)
    assert unknown.exit_code == 2 and "no workflow 'nosuch'" in unknown.stderr


def test_legato_worker_hosts_the_triggers_and_stops_them_on_sigterm(tmp_path):
    """`legato worker` runs the triggers beside the instances they queue: an every-second trigger's
    instances are started and run to SUCCEEDED by the same process; SIGTERM stops both, exit 0;
    `--no-triggers` leaves them out."""
    import os
    import select
    import subprocess

    from .conftest import LEGATO

    store = f"sqlite:///{tmp_path / 'legato.db'}"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow("ticking", EVERY_SECOND)))
    env = {**os.environ, "LEGATO_STORE": store}
    assert subprocess.run([LEGATO, "push", str(path)], env=env, cwd=tmp_path, capture_output=True).returncode == 0

    def run_worker(*args, until: str | None):
        proc = subprocess.Popen([LEGATO, "worker", "--poll", "0.2", "--workspace", str(tmp_path / "runs"), *args],
                                env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, deadline = b"", time.monotonic() + HANG
        try:
            while until is not None and until.encode() not in out:
                left = deadline - time.monotonic()
                assert left > 0, out.decode()
                if select.select([proc.stdout], [], [], left)[0]:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    assert chunk, out.decode()
                    out += chunk
            if until is None:  # nothing to wait for: its first look at the store is done once it says so
                while b"runs up to" not in out:
                    out += os.read(proc.stdout.fileno(), 65536)
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=HANG)
        finally:
            if proc.poll() is None:
                proc.kill()
        return proc.returncode, (out + rest).decode()

    code, out = run_worker(until="(ticking v1): SUCCEEDED")
    assert code == 0 and "triggers: ticking v1: 1 trigger(s) watching" in out and "started instance" in out, out
    assert "stopped: " in out

    # the host says what it watches before the worker says it runs: without one, nothing is said
    code, out = run_worker("--no-triggers", until=None)
    assert code == 0 and "trigger" not in out, out


class TestSignalTriggerConformance(TriggerSuite):
    """The signal trigger type (legato.plugins.signal_trigger) passes the trigger contract."""

    profile = "signal"
