"""Signals (DESIGN §3): `legato signal send/get`, POST/GET /api/v3/signals, a step's
``signal_dependencies`` (WAITING_FOR_SIGNALS, bypass) and ``signal_outputs``.

Modelled on Maestro: SignalCreateRequest / SignalController (send, read the latest or a given
instance), SignalInstance (a seq per name, a unique request id), SignalDependencies /
SignalMatchParam / SignalOperator / SignalParamValue (a step's dependencies, matched with
``= > >= < <=`` on LONG or STRING values of the same kind), SignalOutputs (announced when a step
succeeds) and Actions.StepInstanceAction.BYPASS_STEP_DEPENDENCIES (`legato step bypass`).

The process tests synchronise on lines on a pipe (the foreground run says when its step waits)
and on the store; deadlines only bound a hang.
"""

from __future__ import annotations

import json
import os
import select
import signal as signals
import subprocess
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from legato.definition import DefinitionError
from legato.engine import Engine
from legato.plugins.memory import MemoryStorage
from legato.signals import OPERATORS, satisfied
from legato.states import StepStatus
from legato.storage import open_storage

from .conftest import LEGATO, ROOT, legato_cli

HANG = 120.0  # seconds: bounds a hang only
MAESTRO = ROOT / "tests" / "maestro_signals"


def wf(*steps, **fields) -> dict:
    return {"workflow": {"id": "sig", "steps": list(steps), **fields}}


def step(sid: str, **fields) -> dict:
    return {"step": {"id": sid, "type": "noop", **fields}}


def waits_on(name: str, **match) -> dict:
    return {"signal_dependencies": [{"name": name, "match_params": match}]}


# -- matching (SignalMatchParam.isSatisfied) ------------------------------------------------------


@pytest.mark.parametrize("op, value, expect", [
    ("=", 5, True), ("=", 6, False), (">", 4, True), (">", 5, False), (">=", 5, True), (">=", 6, False),
    ("<", 6, True), ("<", 5, False), ("<=", 5, True), ("<=", 4, False)])
def test_operators_compare_the_signal_value_with_the_given_one(op, value, expect):
    """SignalOperator.apply(signal value, given value) on LONGs."""
    assert satisfied({"n": 5}, [("n", op, value)]) is expect
    assert set(OPERATORS) == {"=", ">", ">=", "<", "<="}


def test_strings_compare_lexicographically_and_never_match_numbers():
    """SignalOperator on strings is String.compareTo; a LONG never matches a STRING (isSatisfied
    checks isLong on both), and a missing param matches nothing."""
    assert satisfied({"d": "2026-01-02"}, [("d", ">", "2026-01-01"), ("d", "<=", "2026-01-02")])
    assert not satisfied({"d": "2026-01-02"}, [("d", "<", "2026-01-01")])
    assert not satisfied({"n": 5}, [("n", "=", "5")]) and not satisfied({"n": "5"}, [("n", "=", 5)])
    assert not satisfied({}, [("n", "=", 5)])
    assert satisfied({"a": 1, "b": "x"}, [])


# -- sending -------------------------------------------------------------------------------------


def test_cli_send_numbers_signals_and_a_replayed_request_id_creates_nothing(tmp_path):
    """`legato signal send` stores with the next number of its name; the same --request-id again
    answers with the stored signal (created false) and stores nothing; `legato signal get` reads
    the latest or --seq; a number is a LONG, anything else a STRING."""
    env = {"LEGATO_STORE": f"sqlite:///{tmp_path / 'legato.db'}"}

    def send(*args):
        proc = legato_cli("signal", "send", *args, "--json", cwd=tmp_path, env_extra=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = send("table_ready", "-p", "date=20260101", "-p", "region=eu", "--request-id", "load-1")
    assert (first["seq"], first["params"], first["created"]) == (1, {"date": 20260101, "region": "eu"}, True)
    again = send("table_ready", "-p", "date=1", "--request-id", "load-1")
    assert (again["seq"], again["params"], again["created"]) == (1, first["params"], False)
    second = send("table_ready", "-p", 'date="007"')
    assert (second["seq"], second["params"]) == (2, {"date": "007"})
    got = legato_cli("signal", "get", "table_ready", "--seq", "1", "--json", cwd=tmp_path, env_extra=env)
    assert json.loads(got.stdout)["request_id"] == "load-1"
    latest = legato_cli("signal", "get", "table_ready", cwd=tmp_path, env_extra=env)
    assert latest.returncode == 0 and latest.stdout.startswith("signal table_ready #2"), latest.stdout
    missing = legato_cli("signal", "get", "table_ready", "--seq", "9", cwd=tmp_path, env_extra=env)
    assert missing.returncode == 2 and "no #9; the latest is #2" in missing.stderr
    bad = legato_cli("signal", "send", "t", "-p", "oops", cwd=tmp_path, env_extra=env)
    assert bad.returncode == 2 and "-p expects name=value" in bad.stderr and "Traceback" not in bad.stderr


async def test_api_send_is_token_guarded_idempotent_and_reads_latest_or_given(tmp_path):
    """POST /api/v3/signals (201 new, 200 for a replayed request id), GET /api/v3/signals/{name}
    (the latest) and /{name}/{seq} (or `latest`); a send needs the token like every mutating call;
    bad input is 422 with a pointer."""
    httpx = pytest.importorskip("httpx")
    from legato.server.app import Service, build_app

    async with open_storage(f"sqlite:///{tmp_path / 'legato.db'}") as store:
        svc = Service(Engine(store, workspace=tmp_path / "runs"), token="s3cret")
        transport = httpx.ASGITransport(app=build_app(svc))
        auth = {"Authorization": "Bearer s3cret"}
        async with httpx.AsyncClient(transport=transport, base_url="http://legato") as http:
            body = {"name": "table_ready", "params": {"date": 20260101}, "request_id": "r1"}
            assert (await http.post("/api/v3/signals", json=body)).status_code == 401
            made = await http.post("/api/v3/signals", json=body, headers=auth)
            assert made.status_code == 201 and made.json()["seq"] == 1 and made.json()["created"] is True
            replay = await http.post("/api/v3/signals", json={**body, "params": {"date": 2}}, headers=auth)
            assert replay.status_code == 200 and replay.json()["seq"] == 1 and replay.json()["created"] is False
            assert replay.json()["params"] == {"date": 20260101}
            await http.post("/api/v3/signals", json={"name": "table_ready", "params": {"date": 5}}, headers=auth)
            assert (await http.get("/api/v3/signals/table_ready")).json()["seq"] == 2
            assert (await http.get("/api/v3/signals/table_ready/1")).json()["request_id"] == "r1"
            assert (await http.get("/api/v3/signals/table_ready/latest")).json()["params"] == {"date": 5}
            assert (await http.get("/api/v3/signals/table_ready/3")).status_code == 404
            assert (await http.get("/api/v3/signals/nothing")).status_code == 404
            bad = await http.post("/api/v3/signals", json={"name": "t", "params": {"x": [1]}}, headers=auth)
            assert bad.status_code == 422 and bad.json()["error"]["pointer"] == "/params/x"
            unknown = await http.post("/api/v3/signals", json={"name": "t", "payload": {}}, headers=auth)
            assert unknown.status_code == 422 and unknown.json()["error"]["pointer"] == "/payload"
        assert len(await store.list_signals("table_ready")) == 2


# -- definitions -------------------------------------------------------------------------------


def problems(engine, doc) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        engine.load(doc)
    return [(p.pointer, p.message) for p in info.value.problems]


def test_bad_signal_fields_are_reported_at_their_pointers(engine):
    found = problems(engine, wf(
        step("a", signal_dependencies=[{"name": "t", "match_params": {
            "x": {"param": {"value": 1.5, "type": "DOUBLE"}, "operator": "="},
            "y": {"value": 1, "operator": "=="},
            "z": {"param": {"expression": "1 +", "type": "LONG"}, "operator": ">"}}}, {"match_params": {}}],
             signal_outputs=[{"name": "done", "params": {"ok": True}}, {"name": "x", "payload": {}}]),
        signal_triggers=[{"definitions": {"s": {"join_keys": ["a"]}, "t": {"join_keys": []}}}]))
    at = dict(found)
    base = "/workflow/steps/0/step"
    assert "LONG or STRING, not DOUBLE" in at[f"{base}/signal_dependencies/0/match_params/x/param"]
    assert "unknown operator" in at[f"{base}/signal_dependencies/0/match_params/y/operator"]
    assert at[f"{base}/signal_dependencies/0/match_params/z/param/expression"].startswith("CEL ")
    assert "needs a `name`" in at[f"{base}/signal_dependencies/1/name"]
    assert "LONG or STRING, not BOOLEAN" in at[f"{base}/signal_outputs/0/params/ok"]
    assert "payload is not supported" in at[f"{base}/signal_outputs/1/payload"]
    assert "as many join_keys" in at["/workflow/signal_triggers/0/definitions"]


@pytest.mark.parametrize("name", sorted(p.name for p in MAESTRO.glob("*.json")))
def test_maestro_signal_samples_validate(engine, name):
    """Maestro's samples with signals, SEL written as CEL: sample-signal-trigger-wf (step signal
    dependencies with evaluated match params, signal outputs, a signal trigger joining two signals),
    sample-active-wf-with-step-signal-dependencies, -with-output-signals, -with-signal-triggers
    (maestro-common testFixtures)."""
    doc = json.loads((MAESTRO / name).read_text())
    definition = engine.load(doc)
    steps = definition.all_by_id
    assert any(s.signal_dependencies or s.signal_outputs for s in steps.values()) or definition.triggers["signal"]
    if name == "sample-signal-trigger-wf.json":
        [trigger] = [t.spec for t in definition.triggers["signal"]]
        assert [(e.name, e.join_keys) for e in trigger.entries] == [("signal_a", ("updated_by",)),
                                                                  ("signal_b", ("posted_by",))]
        assert trigger.entries[0].match == (("foo", "=", "bat"), ("watermark", ">=", 12345))
        job = steps["job.1"]
        assert [d.name.value for d in job.signal_dependencies] == ["db/test/table1", "db/test/table2"]
        assert [o.name.value for o in job.signal_outputs] == ["dummy/test/signal1", "dummy/test/signal2"]


# -- waiting -------------------------------------------------------------------------------------


class Watch:
    """An observer that wakes waiters when a step reaches a status."""

    def __init__(self) -> None:
        self.seen: list = []
        self.waiters: dict[tuple[str, str], trio.Event] = {}

    def __call__(self, event) -> None:
        self.seen.append(event)
        key = (event.step_id, event.status)
        if key in self.waiters:
            self.waiters[key].set()

    async def wait(self, step_id: str, status: str):
        if not any(e.step_id == step_id and e.status == status for e in self.seen):
            event = self.waiters.setdefault((step_id, status), trio.Event())
            with trio.fail_after(HANG):
                await event.wait()
        return next(e for e in self.seen if e.step_id == step_id and e.status == status)


async def _running(engine, doc, params=None):
    definition = engine.load(doc)
    instance, _ = await engine.start(definition, params)
    return definition, instance


async def test_a_waiting_step_says_what_it_waits_for_and_goes_on_with_the_matching_signal(engine):
    """The step waits in WAITING_FOR_SIGNALS, its message naming the signal and the evaluated
    match values (an expression over the workflow's params); a signal that does not match leaves
    it waiting; the latest matching one lets it go on, and its params reach the step as `signal`."""
    doc = wf(step("first", transition={"successors": ["wait"]}),
             step("wait", **waits_on("table_ready", date={"param": {"type": "LONG", "expression": "day + 1"},
                                                       "operator": ">="}, region="eu"),
                  params={"rows": {"type": "LONG", "expression": "signal.table_ready.rows"}}),
             params={"day": 20260100})
    store = engine.storage
    watch = Watch()
    definition, instance = await _running(engine, doc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: engine.run(definition, instance, observer=watch))
        waiting = await watch.wait("wait", "WAITING_FOR_SIGNALS")
        assert waiting.message == 'waiting for signals: table_ready(date >= 20260101, region = "eu")'
        await store.send_signal("table_ready", {"date": 20260101, "region": "us", "rows": 1})
        await store.send_signal("table_ready", {"date": 20260100, "region": "eu", "rows": 2})
        await store.send_signal("table_ready", {"date": 20260102, "region": "eu", "rows": 42})
        ready = await watch.wait("wait", "EVALUATING_PARAMS")
        assert ready.message == "signals matched: table_ready #3"
    [attempt] = [a for a in await store.get_attempts(instance.instance_id) if a.step_id == "wait"]
    assert attempt.status is StepStatus.SUCCEEDED and attempt.params == {"rows": 42}


async def test_a_signal_sent_before_the_step_waits_lets_it_go_on_at_once(engine):
    """Signals are kept: one sent earlier matches (the store is looked at before waiting)."""
    await engine.storage.send_signal("ready", {"n": 3})
    doc = wf(step("wait", **waits_on("ready", n={"value": 2, "operator": ">"})))
    definition, instance = await _running(engine, doc)
    with trio.fail_after(HANG):
        done = await engine.run(definition, instance)
    assert done.status.value == "SUCCEEDED"


async def test_bypass_lets_a_waiting_step_go_on_and_stop_ends_one(engine):
    """`legato step bypass` (BYPASS_STEP_DEPENDENCIES): the waiting step goes on without its
    signals (its `signal` is empty); another waiting step stopped by an action ends STOPPED; an
    action on a step that does not wait is refused saying why."""
    from legato.actions import request_action, wait_applied

    doc = wf(step("a", **waits_on("never")), step("b", **waits_on("never")), step("c"))
    store = engine.storage
    watch = Watch()
    definition, instance = await _running(engine, doc)
    iid = instance.instance_id
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: engine.run(definition, instance, observer=watch))
        await watch.wait("a", "WAITING_FOR_SIGNALS")
        await watch.wait("b", "WAITING_FOR_SIGNALS")
        await watch.wait("c", "SUCCEEDED")
        for sid, verb in (("c", "bypass"), ("a", "bypass"), ("b", "stop")):
            action = await request_action(store, iid, verb, step_id=sid, by="tester via test")
            engine.runs[iid].post(("action", action))  # what the process's ActionApplier does
            with trio.fail_after(HANG):
                applied = await wait_applied(store, action.id, iid)
            if sid == "c":
                assert applied.outcome.startswith("refused: step c is SUCCEEDED: bypass applies to a step "
                                                  "WAITING_FOR_SIGNALS"), applied.outcome
            else:
                assert applied.outcome.startswith("applied"), applied.outcome
    attempts = {a.step_id: a for a in await store.get_attempts(iid)}
    assert attempts["a"].status is StepStatus.SUCCEEDED
    assert attempts["b"].status is StepStatus.STOPPED
    bypassed = next(e for e in watch.seen if e.step_id == "a" and e.status == "EVALUATING_PARAMS")
    assert bypassed.message == "signal dependencies bypassed by tester via test"


async def test_outputs_are_announced_with_the_success_once_with_evaluated_params(engine):
    """signal_outputs (SignalOutputs): announced in the commit of the step's success, params
    from the step's params and outputs; a failed step announces nothing."""
    doc = wf(step("a", type="bash", params={"script": 'echo "rows=7" >> "$LEGATO_OUTPUT"', "day": 3},
                  signal_outputs=[{"name": "loaded_${day}", "params": {
                      "rows": {"type": "LONG", "expression": "int(rows) * 2"},
                      "day": {"type": "LONG", "expression": "step.params.day"}, "by": "a"}}],
                  transition={"successors": ["b"]}),
             step("b", type="bash", params={"script": "exit 3"}, retry_policy={"error_retry_limit": 0},
                  signal_outputs=[{"name": "never", "params": {}}]))
    definition, instance = await _running(engine, doc)
    with trio.fail_after(HANG):
        await engine.run(definition, instance)
    [sig] = await engine.storage.list_signals("loaded_3")
    assert sig.params == {"rows": 14, "day": 3, "by": "a"}
    assert sig.request_id == f"{instance.instance_id}/1/a/1/0"
    assert await engine.storage.get_signal("never") is None


# -- across processes ----------------------------------------------------------------------------


class Foreground:
    """`legato run FILE` in the background; ``expect`` reads its output (unbuffered, so select
    sees all of it) until a line holds a text; ``finish`` reads the rest to the end."""

    def __init__(self, cwd: Path, env: dict, *args: str) -> None:
        self.proc = subprocess.Popen([LEGATO, "run", *args], cwd=cwd, env={**os.environ, **env},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
        self.text = ""

    def _read(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        assert left > 0, "no output in time:\n" + self.text
        ready, _, _ = select.select([self.proc.stdout], [], [], left)
        if not ready:
            return True
        data = os.read(self.proc.stdout.fileno(), 65536)
        self.text += data.decode()
        return bool(data)

    def expect(self, text: str) -> str:
        deadline = time.monotonic() + HANG
        while True:
            for line in self.text.splitlines():
                if text in line:
                    return line
            assert self._read(deadline), f"exited ({self.proc.wait()}) without saying {text!r}:\n" + self.text

    def finish(self) -> int:
        deadline = time.monotonic() + HANG
        while self._read(deadline):
            pass
        return self.proc.wait(timeout=HANG)


def test_a_step_waits_for_a_signal_sent_by_another_process(tmp_path):
    """A foreground `legato run` waits (it says so); `legato signal send` from another process
    with a non-matching signal, then a matching one: the run goes on with the matching one,
    woken by the store (the send commits, then wakes the listeners on the machine)."""
    env = {"LEGATO_STORE": f"sqlite:///{tmp_path / 'legato.db'}"}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf(
        step("load", type="bash", **waits_on("table_ready", date={"value": 20260101, "operator": ">="}),
             params={"script": 'echo "rows: $rows"', "rows": {"type": "LONG", "expression": "signal.table_ready.rows"}}))))
    run = Foreground(tmp_path, env, str(path))
    try:
        line = run.expect("WAITING_FOR_SIGNALS")
        assert "waiting for signals: table_ready(date >= 20260101)" in line
        for params in (["-p", "date=20251231", "-p", "rows=1"], ["-p", "date=20260101", "-p", "rows=5"]):
            sent = legato_cli("signal", "send", "table_ready", *params, cwd=tmp_path, env_extra=env)
            assert sent.returncode == 0, sent.stderr
        run.expect("load #1 RUNNING")
        assert run.finish() == 0, run.text
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    assert "load | rows: 5" in run.text


def test_a_waiting_step_waits_again_after_a_crash_and_outputs_are_announced_once(tmp_path):
    """The run is killed (SIGKILL) while its step waits: `legato resume` waits again (the wait is
    durable), goes on once the signal is sent, and the step's signal output is announced once;
    a crash right after the commit of the step's success (LEGATO_CRASH_AT=committed) announces
    it once too, and the resumed run does not announce it again."""
    env = {"LEGATO_STORE": f"sqlite:///{tmp_path / 'legato.db'}"}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf(
        step("wait", **waits_on("go"), signal_outputs=[{"name": "went", "params": {"n": 1}}]))))
    run = Foreground(tmp_path, env, str(path))
    run.expect("WAITING_FOR_SIGNALS")
    run.proc.send_signal(signals.SIGKILL)
    run.proc.wait()
    resumed = subprocess.Popen([LEGATO, "resume"], cwd=tmp_path,
                               env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)

    async def instance_waits() -> str:
        async with open_storage(env["LEGATO_STORE"]) as store:
            with trio.fail_after(HANG):
                with store.wakeups().listen() as listener:
                    while True:
                        [instance] = await store.list_instances()
                        lease = await store.get_lease(instance.instance_id)
                        if lease is not None and lease.live and lease.pid == resumed.pid:
                            return instance.instance_id
                        await listener.wait(0.1)

    iid = trio.run(instance_waits)
    assert legato_cli("signal", "send", "go", cwd=tmp_path, env_extra=env).returncode == 0
    out, _ = resumed.communicate(timeout=HANG)
    assert resumed.returncode == 0, out

    async def read():
        async with open_storage(env["LEGATO_STORE"]) as store:
            return (await store.get_instance(iid)), await store.list_signals("went")

    instance, went = trio.run(read)
    assert instance.status.value == "SUCCEEDED" and len(went) == 1

    # Killed after the commit that made its step STARTING (its success not durable: the resumed
    # run tries it again, attempt 2 announces), then after the commit of its success (the resumed
    # run only ends the instance): each run announces once.
    for crash_at, attempt in (("committed:2", 2), ("committed:3", 1)):
        crashed = legato_cli("run", str(path), cwd=tmp_path, env_extra={**env, "LEGATO_CRASH_AT": crash_at})
        assert crashed.returncode == -signals.SIGKILL, crashed.stdout + crashed.stderr
        again = legato_cli("resume", cwd=tmp_path, env_extra=env, timeout=HANG)
        assert again.returncode == 0, again.stdout + again.stderr
        before = len(went)
        _, went = trio.run(read)
        assert len(went) == before + 1, f"announced {len(went) - before} times: {[s.request_id for s in went]}"
        assert went[-1].request_id.endswith(f"/1/wait/{attempt}/0"), (crash_at, went[-1].request_id)


async def test_steps_in_a_foreach_wait_each_for_their_own_signal(engine):
    """A body step's match values read its iteration's loop variable: each iteration waits for its
    own signal, and goes on when that one is sent."""
    doc = wf({"foreach": {"id": "loop", "params": {"loop_params": {"value": {"part": {"type": "LONG_ARRAY",
                                                                                      "value": [1, 2]}},
                                                                   "type": "MAP"}},
                          "steps": [step("load", **waits_on("part_ready", part={"param": {
                              "type": "LONG", "expression": "part"}, "operator": "="}))]}})
    watch = Watch()
    definition, instance = await _running(engine, doc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: engine.run(definition, instance, observer=watch))
        first = await watch.wait("loop/1/load", "WAITING_FOR_SIGNALS")
        second = await watch.wait("loop/2/load", "WAITING_FOR_SIGNALS")
        assert (first.message, second.message) == ("waiting for signals: part_ready(part = 1)",
                                                   "waiting for signals: part_ready(part = 2)")
        await engine.storage.send_signal("part_ready", {"part": 2})
        await watch.wait("loop/2/load", "SUCCEEDED")
        assert not any(e.step_id == "loop/1/load" and e.status == "EVALUATING_PARAMS" for e in watch.seen)
        await engine.storage.send_signal("part_ready", {"part": 1})
    statuses = {a.step_id: a.status.value for a in await engine.storage.get_attempts(instance.instance_id)}
    assert statuses == {"loop": "SUCCEEDED", "loop/1": "SUCCEEDED", "loop/2": "SUCCEEDED",
                        "loop/1/load": "SUCCEEDED", "loop/2/load": "SUCCEEDED"}


def test_a_dependency_naming_what_it_cannot_read_is_refused_at_load(engine):
    """A dependency is evaluated before its step's params: its `${}` may name workflow params
    (and loop variables), not the step's own params nor a secret."""
    found = dict(problems(engine, wf(step("a", params={"own": 1}, signal_dependencies=[
        {"name": "t_${own}", "match_params": {"d": {"param": {"type": "STRING", "value": "${nope}"}}}}]),
        params={"day": 1})))
    base = "/workflow/steps/0/step/signal_dependencies/0"
    assert "names no param" in found[f"{base}/name"] and "names no param" in found[f"{base}/match_params/d"]
    engine.load(wf(step("a", signal_dependencies=[{"name": "t_${day}"}]), params={"day": 1}))


async def test_a_step_waiting_for_two_signals_goes_on_once_both_are_there(engine):
    """Two dependencies: the first one's signal arrives, then several that match neither (the
    step looks after each: it reads only what was sent since, and keeps the first one's match),
    then the second's: the step goes on with both (the latest match of each)."""
    doc = wf(step("wait", signal_dependencies=[{"name": "a", "match_params": {"n": 1}},
                                               {"name": "b", "match_params": {"n": 2}}]))
    store = engine.storage
    watch = Watch()
    definition, instance = await _running(engine, doc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: engine.run(definition, instance, observer=watch))
        await watch.wait("wait", "WAITING_FOR_SIGNALS")
        await store.send_signal("a", {"n": 1})
        for n in range(5):
            await trio.testing.wait_all_tasks_blocked()  # the step looked (and waits again)
            await store.send_signal("b", {"n": 10 + n})
            await store.send_signal("a", {"n": 10 + n})
        await trio.testing.wait_all_tasks_blocked()
        await store.send_signal("b", {"n": 2})
        ready = await watch.wait("wait", "EVALUATING_PARAMS")
    assert ready.message == "signals matched: a #1, b #6"
