"""The conformance suites: the contract every step type and storage backend passes (DESIGN §7).

Use them from a plugin's own tests::

    from legato.conformance import StepTypeSuite

    class TestMyStepConformance(StepTypeSuite):
        profile = "mystep"          # a published profile's name, or a StepTypeProfile

or run them for installed plugins with ``legato conformance`` (the same classes, generated).
The tests are plain synchronous pytest tests that drive trio themselves, so a plugin's test
setup needs nothing but pytest. Each test says what broke in words a plugin author can act on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio

from .profiles import PublishedProfile, StepTypeProfile, StorageProfile, TriggerProfile, load_profiles

__all__ = ["StepTypeSuite", "StorageSuite", "TriggerSuite", "requires"]

# A hang guard, not a speed limit: a step that honours cancellation ends in well under a second
# even on a loaded machine; one that ignores it runs on to the end of its long-running sample,
# which must last longer than this.
CANCEL_BOUND = 10.0  # seconds a cancelled step may take to end
# The longest the event loop may be held by the step. Time the loop's thread spent waiting for a
# CPU (the machine was busy, /proc/thread-self/schedstat on Linux) does not count against it.
LOOP_GAP_BOUND = 0.25
MODULE_BUDGET = 100  # modules of other packages an entry point may import beyond what the engine imports


def requires(capability: str):
    """Mark a suite test as needing ``capability``; it skips, saying so, when the profile lacks it."""

    def mark(fn):
        fn.legato_requires = capability
        return fn

    return mark


_published: dict[str, PublishedProfile] | None = None


def _resolve(profile: Any, expected: type) -> Any:
    global _published
    if isinstance(profile, str):
        if _published is None:
            _published = load_profiles()
        found = _published.get(profile)
        if found is None:
            pytest.fail(f"no conformance profile named {profile!r} is published in the `legato.conformance` "
                        f"entry points (known: {', '.join(sorted(_published)) or 'none'})")
        if found.errors:
            pytest.fail(f"the profile {profile!r} failed to load: {'; '.join(found.errors)}")
        profile = found.profile
    if not isinstance(profile, expected):
        pytest.fail(f"{profile!r} is not a {expected.__name__}")
    return profile


class _Suite:
    profile: ClassVar[Any] = None
    _kind: ClassVar[type] = object

    @pytest.fixture(autouse=True)
    def _capability_gate(self, request):
        if self.profile is None:
            pytest.skip("the suite base class itself: subclass it and set `profile`")
        self.p = _resolve(self.profile, self._kind)
        needed = getattr(request.function, "legato_requires", None)
        if needed and needed not in self.p.capabilities:
            pytest.skip(f"{self.p.name} does not declare the {needed!r} capability")

    def _plugins(self):
        from legato.plugin_manager import Plugins, get_plugins

        return Plugins(extra=[self.p.plugin]) if self.p.plugin is not None else get_plugins()

    def test_entry_point_loads_alone_and_cheaply(self):
        """The plugin's entry point loads without the others and without its heavy library: beyond
        what the engine itself imports, it may add at most MODULE_BUDGET modules of other packages.
        Counted, not timed, so the check means the same on a busy CI machine as on a laptop."""
        if self.p.entry_point is None:
            pytest.skip(f"{self.p.name} is registered in process, not through an entry point")
        script = (
            "import importlib.metadata, json, sys\n"
            f"name = {self.p.entry_point!r}\n"
            "eps = [e for e in importlib.metadata.entry_points(group='legato') if e.name == name]\n"
            "import legato.engine, legato.plugin_manager\n"
            "before = set(sys.modules); eps[0].load() if eps else None\n"
            "own = {'legato', eps[0].module.split('.')[0]} if eps else {'legato'}\n"
            "new = sorted(set(sys.modules) - before)\n"
            "other = [m for m in new if m.split('.')[0] not in own]\n"
            "from legato.plugin_manager import Plugins\n"
            "p = Plugins()\n"
            "print(json.dumps({'found': bool(eps), 'new': new, 'other': other,"
            " 'steps': sorted(p.step_types.types), 'storage': sorted(p.storage.factories),"
            " 'triggers': sorted(p.triggers.types)}))\n"
        )
        env = {**os.environ, "LEGATO_PLUGINS": self.p.entry_point}
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, f"loading the entry point {self.p.entry_point!r} alone failed:\n{proc.stderr}"
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["found"], f"no `legato` entry point named {self.p.entry_point!r} is installed"
        heavy = [m for m in self.p.heavy_modules if m in report["new"]]
        assert not heavy, (f"loading the entry point imported {heavy}: import heavy libraries inside the "
                           "step type's methods, so `legato --help` and other plugins do not pay for them")
        other = report["other"]
        packages = sorted({m.split(".")[0] for m in other})
        assert len(other) <= MODULE_BUDGET, (
            f"loading the entry point imported {len(other)} modules of other packages beyond what the engine "
            f"imports (the budget is {MODULE_BUDGET}): {', '.join(packages)}; import libraries inside the "
            "step type's methods")
        self._check_registered(report)


class StepTypeSuite(_Suite):
    """The step-type contract. Subclass with ``profile`` set (a name or a StepTypeProfile)."""

    _kind = StepTypeProfile

    def _check_registered(self, report: dict) -> None:
        assert self.p.step_type in report["steps"], (
            f"the entry point {self.p.entry_point!r} loaded alone does not register step type {self.p.step_type!r}")

    # -- running ----------------------------------------------------------------------------

    def _doc(self, params: dict[str, Any], successors: list[dict] | None = None, **fields: Any) -> dict:
        step = {"id": "s", "type": self.p.step_type, "params": params,
                "retry_policy": {"error_retry_limit": 0, "platform_retry_limit": 0}, **fields}
        steps = [{"step": step}]
        if successors:
            step["transition"] = {"successors": [s["step"]["id"] for s in successors]}
            steps.extend(successors)
        return {"workflow": {"id": f"conformance-{self.p.step_type}", "steps": steps}}

    def _engine(self, tmp: Path):
        from legato.engine import Engine
        from legato.storage import open_storage

        plugins = self._plugins()
        settings = {self.p.step_type: self.p.settings} if self.p.settings else None
        return Engine(open_storage("memory://", plugins), plugins=plugins, workspace=tmp, step_settings=settings)

    def _run(self, tmp: Path, doc: dict) -> dict[str, Any]:
        engine = self._engine(tmp)

        async def main():
            await self._push_workflows(engine)
            instance = await engine.execute(engine.load(doc))
            storage = engine.storage
            attempts = await storage.get_attempts(instance.instance_id)
            return {
                "instance": instance,
                "attempts": {a.step_id: a for a in attempts},  # each step's latest
                "tries": [a for a in attempts if a.step_id == "s"],  # every attempt of the step under test
                "logs": await storage.get_logs(instance.instance_id),
            }

        return trio.run(main)

    async def _push_workflows(self, engine) -> None:
        """Store the profile's ``workflows`` (what the step under test may start)."""
        for document in self.p.workflows:
            await engine.storage.push_definition(document["workflow"]["id"], document)

    def _ended(self, result: dict, expected: str, attempt=None) -> None:
        attempt = attempt or result["attempts"]["s"]
        status = attempt.status.value
        logs = "".join(c.text for c in result["logs"])[-2000:]
        assert status != "INTERNALLY_FAILED", (
            f"the step type broke its contract (raised or returned something else than a StepResult): "
            f"{attempt.message}")
        assert status == expected, (f"expected the attempt to end {expected}, it ended {status}: "
                                    f"{attempt.message!r}\nlog tail:\n{logs}")

    # -- the contract ---------------------------------------------------------------------------

    def test_success_succeeds(self, tmp_path):
        """The `success` params end SUCCEEDED, with the expected outputs if any are declared."""
        result = self._run(tmp_path, self._doc(self.p.success))
        self._ended(result, "SUCCEEDED")
        assert result["instance"].status.value == "SUCCEEDED"

    @requires("outputs")
    def test_outputs_round_trip(self, tmp_path):
        """Outputs are JSON, persisted, and read downstream as `steps.s.outputs` in params and conditions."""
        expected = self.p.expected_outputs
        reader = {"step": {"id": "reader", "type": "noop", "params": {
            "got": {"type": "MAP", "expression": "steps.s.outputs"}}}}
        doc = self._doc(self.p.success, [reader])
        doc["workflow"]["steps"][0]["step"]["transition"] = {
            "successors": {"reader": "size(steps.s.outputs) >= " + str(len(expected))}}
        result = self._run(tmp_path, doc)
        self._ended(result, "SUCCEEDED")
        outputs = result["attempts"]["s"].outputs
        assert json.loads(json.dumps(outputs)) == outputs, "outputs must be plain JSON values"
        missing = {k: v for k, v in expected.items() if outputs.get(k) != v}
        assert not missing, f"outputs {outputs!r} lack the expected {missing!r}"
        reader_attempt = result["attempts"].get("reader")
        assert reader_attempt is not None and reader_attempt.status.value == "SUCCEEDED", (
            "a downstream step could not read the outputs")
        assert {k: reader_attempt.params["got"].get(k) for k in expected} == expected

    @requires("user_failure")
    def test_user_failure_is_user_failed(self, tmp_path):
        """The `user_failure` params end the attempt USER_FAILED (the step's own work failed), with a
        message; it is retried under error_retry_limit, and the attempt with no retry left ends
        FATALLY_FAILED (Maestro's StepRuntimeManager.getUserErrorStatus)."""
        doc = self._doc(self.p.user_failure)
        doc["workflow"]["steps"][0]["step"]["retry_policy"] = {
            "error_retry_limit": 1, "platform_retry_limit": 0, "backoff": {"type": "fixed", "base": 0}}
        result = self._run(tmp_path, doc)
        first = result["tries"][0]
        self._ended(result, "USER_FAILED", first)
        assert first.message.strip(), "a failure needs a message that says what failed"
        assert [a.status.value for a in result["tries"]] == ["USER_FAILED", "FATALLY_FAILED"], (
            "a user failure must be retried once under error_retry_limit 1, then end FATALLY_FAILED: "
            f"{[(a.status.value, a.message) for a in result['tries']]}")

    @requires("fatal_failure")
    def test_fatal_failure_is_fatally_failed(self, tmp_path):
        """The `fatal_failure` params end FATALLY_FAILED and are never retried."""
        doc = self._doc(self.p.fatal_failure)
        doc["workflow"]["steps"][0]["step"]["retry_policy"] = {"error_retry_limit": 3, "platform_retry_limit": 3}
        result = self._run(tmp_path, doc)
        self._ended(result, "FATALLY_FAILED")
        assert result["attempts"]["s"].attempt == 1, "a fatal failure was retried"

    @requires("invalid_params")
    def test_invalid_params_are_refused_before_running(self, tmp_path):
        """Params the step type's schema refuses are reported when the definition loads, located."""
        from legato.definition import DefinitionError

        engine = self._engine(tmp_path)
        with pytest.raises(DefinitionError) as info:
            engine.load(self._doc(self.p.invalid))
        pointers = [p.pointer for p in info.value.problems]
        want = f"/workflow/steps/0/step/params{self.p.invalid_pointer}"
        assert want in pointers, f"expected a problem at {want}, got {[str(p) for p in info.value.problems]}"

    # -- a long-running step --------------------------------------------------------------------

    def _while_running(self, tmp_path: Path, check) -> dict[str, Any]:
        """Start `long_running`, call ``await check(run, engine, facts)`` once it is RUNNING, then
        stop the instance and measure how long it takes to end."""
        engine = self._engine(tmp_path)
        facts: dict[str, Any] = {}

        async def main():
            await self._push_workflows(engine)
            definition = engine.load(self._doc(self.p.long_running))
            instance, _ = await engine.start(definition)
            running = trio.Event()

            def observer(event):
                if event.step_id == "s" and event.status == "RUNNING":
                    running.set()

            async with trio.open_nursery() as nursery:
                run = await nursery.start(lambda task_status: engine.run(
                    definition, instance, observer=observer, task_status=task_status))
                with trio.move_on_after(30):
                    await running.wait()
                assert running.is_set(), "the long-running step never reached RUNNING"
                facts["before"] = _descendants(), _busy_threads()
                await check(run, engine, facts)
                facts["stop_called"] = time.monotonic()
                run.stop("stopped by the conformance suite")
            facts["ended"] = time.monotonic()
            facts["instance"] = await engine.storage.get_instance(instance.instance_id)
            facts["attempts"] = {a.step_id: a for a in await engine.storage.get_attempts(instance.instance_id)}

        trio.run(main)
        return facts

    @requires("cancellation")
    def test_cancellation_ends_the_step_and_leaves_nothing(self, tmp_path):
        """Stopping a running step ends it (within CANCEL_BOUND, a hang guard); no process or thread it
        started survives."""
        async def started(run, engine, facts):
            await trio.sleep(0.5)
            facts["during"] = _descendants()

        facts = self._while_running(tmp_path, started)
        took = facts["ended"] - facts["stop_called"]
        assert took <= CANCEL_BOUND, (f"the step took {took:.1f}s to end after it was cancelled; the bound is "
                                      f"{CANCEL_BOUND}s: honour trio cancellation (kill what you started)")
        assert facts["attempts"]["s"].status.value == "STOPPED"
        # Reaping may trail the step's end a little; a hang guard, so that a busy machine does not fail it.
        deadline = time.monotonic() + CANCEL_BOUND
        left = _descendants() - facts["before"][0]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = _descendants() - facts["before"][0]
        assert not left, f"processes left running {CANCEL_BOUND:g} s after cancellation: {sorted(left)}"
        busy = _busy_threads() - facts["before"][1]
        while busy and time.monotonic() < deadline:
            time.sleep(0.05)
            busy = _busy_threads() - facts["before"][1]
        assert not busy, f"threads still working {CANCEL_BOUND:g} s after cancellation: {sorted(busy)}"

    @requires("long_running")
    def test_event_loop_stays_live_while_the_step_runs(self, tmp_path):
        """A running step never blocks the event loop: blocking work belongs in a thread or a process."""
        async def watch(run, engine, facts):
            gaps = []
            last, waited = time.monotonic(), _runqueue_wait()
            with trio.move_on_after(1.5):
                while True:
                    await trio.sleep(0.01)
                    now, now_waited = time.monotonic(), _runqueue_wait()
                    gaps.append(now - last - (now_waited - waited))
                    last, waited = now, now_waited
            facts["worst_gap"] = max(gaps + [time.monotonic() - last - (_runqueue_wait() - waited)])

        facts = self._while_running(tmp_path, watch)
        assert facts["worst_gap"] <= LOOP_GAP_BOUND, (
            f"the event loop was blocked for {facts['worst_gap']:.2f}s while the step ran: run blocking "
            "calls with trio.to_thread.run_sync or in a subprocess")

    @requires("logs")
    def test_logs_stream_while_the_step_runs(self, tmp_path):
        """What the step logs reaches storage while it runs, not only when it ends."""
        async def poll(run, engine, facts):
            with trio.move_on_after(3):
                while not await engine.storage.get_logs(run.iid):
                    await trio.sleep(0.05)
            facts["logs"] = await engine.storage.get_logs(run.iid)

        facts = self._while_running(tmp_path, poll)
        assert facts["logs"], "nothing reached the step's log within 3 s of RUNNING while the step ran"


async def _wait_expired(store, instance_id: str) -> None:
    """Wait until the store itself reports the instance's lease expired (its clock, not ours)."""
    with trio.move_on_after(30):
        while (lease := await store.get_lease(instance_id)) is not None and lease.live:
            await trio.sleep(0.02)
        return
    pytest.fail(f"the lease of {instance_id} with a 0.05 s TTL still reads as live 30 s later")


class StorageSuite(_Suite):
    """The storage contract. Subclass with ``profile`` set (a name or a StorageProfile)."""

    _kind = StorageProfile

    def _check_registered(self, report: dict) -> None:
        assert self.p.scheme in report["storage"], (
            f"the entry point {self.p.entry_point!r} loaded alone does not register storage {self.p.scheme!r}")

    def _open(self, directory: Path):
        from legato.storage import open_storage

        return open_storage(self.p.make_url(str(directory)), self._plugins())

    def _records(self, iid: str):
        from legato.model import AttemptRecord, Batch, Event, InstanceRecord, LogChunk
        from legato.states import InstanceStatus, StepStatus

        now = 1_700_000_000.25  # fixed, so records built twice compare equal
        instance = InstanceRecord(iid, "wf", 1, params={"n": 1, "s": "x"}, request_id=f"req-{iid}", created_at=now)
        attempt = AttemptRecord(iid, "a", 1, StepStatus.SUCCEEDED, params={"p": [1, 2]}, outputs={"o": {"k": "v"}},
                                message="done", created_at=now, started_at=now, ended_at=now, handle={"pid": 1})
        done = InstanceRecord(iid, "wf", 1, InstanceStatus.SUCCEEDED, params={"n": 1, "s": "x"},
                              request_id=f"req-{iid}", created_at=now, started_at=now, ended_at=now)
        batch = Batch(iid, 1, instance=done, attempts={("a", 1): attempt},
                      events=[Event(now, iid, "a", 1, "RUNNING"), Event(now, iid, "a", 1, "SUCCEEDED", "done"),
                              Event(now, iid, None, 0, "SUCCEEDED")],
                      logs=[LogChunk(iid, "a", 1, "stdout", "hello\n", now)])
        return instance, batch

    def _run(self, fn):
        return trio.run(fn)

    def test_round_trip(self, tmp_path):
        """What is committed reads back equal: definitions, instances, attempts, timeline, logs."""
        async def main():
            async with self._open(tmp_path) as store:
                v1 = await store.push_definition("wf", {"workflow": {"id": "wf"}})
                assert (await store.get_definition("wf")).document == {"workflow": {"id": "wf"}}
                instance, batch = self._records("i-rt")
                _, created = await store.create_instance(instance, "me", 30)
                assert created
                await store.commit(batch)
                got = await store.get_instance("i-rt")
                assert got == batch.instance, f"instance read back as {got!r}"
                assert await store.get_attempts("i-rt") == list(batch.attempts.values())
                assert await store.get_timeline("i-rt") == batch.events
                assert await store.get_logs("i-rt") == batch.logs
                assert await store.get_logs("i-rt", "a", 2) == []
                again, created = await store.create_instance(self._records("i-other")[0].__class__(
                    "i-other", "wf", v1.version, request_id="req-i-rt"))
                assert not created and again.instance_id == "i-rt", "a known request id started a second instance"

        self._run(main)

    def test_versions_are_immutable_numbered_and_one_is_active(self, tmp_path):
        """``push_definition`` numbers versions from 1; an identical document stores nothing (its
        version comes back, ``new`` False, made active); ``activate=False`` stores without
        activating; ``get_definition`` reads None/"active", "latest" and a number; ``activate``
        switches; ``list_versions`` lists oldest first; all of it survives reopening."""
        from legato.storage import VersionNotFound

        doc1, doc2, doc3 = ({"workflow": {"id": "wf", "n": n}} for n in (1, 2, 3))

        async def main():
            async with self._open(tmp_path) as store:
                assert await store.list_versions("wf") == []
                assert await store.get_definition("wf") is None
                assert await store.get_definition("wf", "latest") is None
                v1 = await store.push_definition("wf", doc1)
                assert (v1.version, v1.active, v1.new) == (1, True, True)
                same = await store.push_definition("wf", doc1)
                assert (same.version, same.new) == (1, False), "an identical push stored a new version"
                v2 = await store.push_definition("wf", doc2, activate=False)
                assert (v2.version, v2.active, v2.new) == (2, False, True)
                assert (await store.get_definition("wf")).version == 1
                assert (await store.get_definition("wf", "active")).version == 1
                assert (await store.get_definition("wf", "latest")).document == doc2
                assert (await store.get_definition("wf", 2)).document == doc2
                assert await store.get_definition("wf", 3) is None
                v3 = await store.push_definition("wf", doc3)
                assert (v3.version, v3.active) == (3, True)
                back = await store.push_definition("wf", doc1)  # a rollback: the old version, active again
                assert (back.version, back.new, back.active) == (1, False, True)
                assert (await store.activate("wf", 2)).version == 2
                try:
                    await store.activate("wf", 7)
                except VersionNotFound as exc:
                    assert "versions 1–3" in str(exc) and "7" in str(exc), str(exc)
                else:
                    raise AssertionError("activating a version that does not exist did not raise")
                await check(store)
            if "persistent" in self.p.capabilities:
                async with self._open(tmp_path) as store:
                    await check(store)

        async def check(store):
            listed = await store.list_versions("wf")
            assert [(v.version, v.active, v.document) for v in listed] == [
                (1, False, doc1), (2, True, doc2), (3, False, doc3)]
            assert (await store.get_definition("wf")).version == 2
            assert await store.list_versions("other") == []

        self._run(main)

    def test_an_instance_keeps_its_ancestors(self, tmp_path):
        """A subworkflow's instance record keeps its chain of parents (root first), across
        reopening for a persistent store."""
        from legato.model import InstanceRecord

        chain = [{"workflow_id": "root", "instance_id": "i-root", "run_id": 1, "step_id": "s", "attempt": 1},
                 {"workflow_id": "mid", "instance_id": "i-mid", "run_id": 2, "step_id": "t", "attempt": 3}]

        async def main():
            async with self._open(tmp_path) as store:
                await store.create_instance(InstanceRecord("i-child", "wf", 1, initiator="subworkflow",
                                                           ancestors=chain, created_at=1.0))
                await store.create_instance(InstanceRecord("i-plain", "wf", 1, created_at=2.0))
                await check(store)
            if "persistent" in self.p.capabilities:
                async with self._open(tmp_path) as store:
                    await check(store)

        async def check(store):
            child = await store.get_instance("i-child")
            assert child.ancestors == chain and child.parent == chain[-1]
            assert child.initiator == "subworkflow"
            assert (await store.get_instance("i-plain")).ancestors == []
            assert [r.ancestors for r in await store.list_instances("wf")] == [[], chain]

        self._run(main)

    def test_logs_since_an_offset_are_those_committed_after_it(self, tmp_path):
        """``get_logs_since(iid, n, …)`` is ``get_logs(iid, …)[n:]`` for every filter, as commits
        add chunks: what a follower (``legato logs -f``) reads on each poll."""
        from legato.model import Batch, LogChunk

        async def main():
            async with self._open(tmp_path) as store:
                instance, _ = self._records("i-ls")
                await store.create_instance(instance, "me", 30)
                seen: dict = {}
                for tick in range(3):
                    logs = [LogChunk("i-ls", step, attempt, "stdout", f"{step}{attempt} tick {tick}\n", 1.0 + tick)
                            for step in ("a", "b") for attempt in (1, 2)]
                    await store.commit(Batch("i-ls", 1, logs=logs))
                    for key in ((None, None), ("a", None), ("b", 2), (None, 1)):
                        offset = len(seen.get(key, []))
                        new = await store.get_logs_since("i-ls", offset, *key)
                        seen[key] = seen.get(key, []) + new
                        assert seen[key] == await store.get_logs("i-ls", *key), (key, offset)
                        assert new, f"tick {tick} committed chunks that {key} should read"
                assert await store.get_logs_since("i-ls", 100) == []
                assert await store.get_logs_since("i-none", 0) == []

        self._run(main)

    def test_the_timeline_is_followed_from_an_offset_and_its_tail_counted(self, tmp_path):
        """``get_timeline_since(iid, n)`` is ``get_timeline(iid)[n:]`` as commits add events (the web
        UI's event stream), and ``get_timeline_tail(iid, k)`` is (its length, its last k events),
        with a step's several transitions of one commit among them; ``list_workflows`` names every
        workflow pushed."""
        from legato.model import Batch, Event

        async def main():
            async with self._open(tmp_path) as store:
                instance, _ = self._records("i-tl")
                await store.create_instance(instance, "me", 30)
                seen: list = []
                for tick in range(3):
                    events = [Event(10.0 + tick, "i-tl", step, 1, status) for step in ("a", "b")
                              for status in ("CREATED", "INITIALIZED", "STARTING")]
                    events.append(Event(10.5 + tick, "i-tl", None, 0, "IN_PROGRESS", f"tick {tick}"))
                    await store.commit(Batch("i-tl", 1, events=events))
                    new = await store.get_timeline_since("i-tl", len(seen))
                    assert new, f"tick {tick} committed events the follower should read"
                    seen += new
                    everything = await store.get_timeline("i-tl")
                    assert seen == everything
                    for k in (0, 1, 5, 1000):
                        total, tail = await store.get_timeline_tail("i-tl", k)
                        assert (total, tail) == (len(everything), everything[len(everything) - k:] if k else []), k
                    # a follower starting at the tail's count reads only what comes next
                    assert await store.get_timeline_since("i-tl", total) == []
                assert await store.get_timeline_since("i-tl", 1000) == []
                assert await store.get_timeline_tail("i-none", 10) == (0, [])
                from legato.storage import StorageError

                try:
                    before = await store.list_workflows()
                except StorageError:
                    return  # a store that cannot list them says so
                await store.push_definition("wf-listed", {"workflow": {"id": "wf-listed", "steps": []}})
                listed = await store.list_workflows()
                assert "wf-listed" in listed and listed == sorted(listed) and set(before) <= set(listed)

        self._run(main)

    @requires("persistent")
    def test_data_survives_reopening(self, tmp_path):
        """Close the store, open it again: everything committed is there."""
        async def write():
            async with self._open(tmp_path) as store:
                instance, batch = self._records("i-p")
                await store.create_instance(instance, "me", 30)
                await store.commit(batch)

        async def read():
            async with self._open(tmp_path) as store:
                instance, batch = self._records("i-p")
                got = await store.get_instance("i-p")
                assert got is not None, "the instance is gone after reopening"
                assert got.status == batch.instance.status
                assert await store.get_attempts("i-p") == list(batch.attempts.values())
                assert len(await store.get_timeline("i-p")) == len(batch.events)

        self._run(write)
        self._run(read)

    def test_instances_found_by_id_prefix_and_listed_by_state(self, tmp_path):
        """``find_instances`` matches an id prefix exactly (case-sensitive, ``_`` and ``%`` are
        plain characters), ordered by id, up to ``limit``; ``list_instances`` filters by workflow
        and by state together, newest first."""
        from legato.model import InstanceRecord
        from legato.states import InstanceStatus

        rows = [("3fa2c1", "w1", InstanceStatus.FAILED, 1.0), ("3fa2d7", "w1", InstanceStatus.SUCCEEDED, 2.0),
                ("3fb000", "w2", InstanceStatus.FAILED, 3.0), ("a_b", "w1", InstanceStatus.FAILED, 4.0),
                ("axb", "w1", InstanceStatus.CREATED, 5.0)]

        async def main():
            async with self._open(tmp_path) as store:
                for iid, wf, status, at in rows:
                    await store.create_instance(InstanceRecord(iid, wf, 1, status, created_at=at))

                async def ids(prefix, limit=10):
                    return [r.instance_id for r in await store.find_instances(prefix, limit)]

                assert await ids("3fa2") == ["3fa2c1", "3fa2d7"]
                assert await ids("3f") == ["3fa2c1", "3fa2d7", "3fb000"]
                assert await ids("3f", limit=2) == ["3fa2c1", "3fa2d7"]
                assert await ids("3fa2d7") == ["3fa2d7"], "an exact id is its own prefix"
                assert await ids("3FA2") == [], "prefixes are compared case-sensitively"
                assert await ids("a_") == ["a_b"], "_ is a plain character, not a wildcard"
                assert await ids("%") == [] and await ids("zz") == []

                async def listed(**filters):
                    return [r.instance_id for r in await store.list_instances(**filters)]

                assert await listed(status=InstanceStatus.FAILED) == ["a_b", "3fb000", "3fa2c1"]
                assert await listed(workflow_id="w1", status=InstanceStatus.FAILED) == ["a_b", "3fa2c1"]
                assert await listed(workflow_id="w2", status=InstanceStatus.SUCCEEDED) == []
                assert await listed(workflow_id="w1", limit=2) == ["axb", "a_b"]

        self._run(main)

    @requires("leases")
    def test_leases_expire_and_fence(self, tmp_path):
        """A live lease is refused to others; once expired another owner gets a newer generation and the
        old owner's writes are rejected with StaleWrite."""
        from legato.model import Batch, Event
        from legato.storage import StaleWrite

        async def main():
            async with self._open(tmp_path) as store:
                instance, _ = self._records("i-l")
                await store.create_instance(instance)
                old = await store.acquire_lease("i-l", "a", 30)
                assert old is not None
                assert await store.acquire_lease("i-l", "b", 30) is None, "a live lease was handed to another owner"
                assert await store.acquire_lease("i-l", "a", 0.05, generation=old) == old, "a heartbeat was refused"
                await _wait_expired(store, "i-l")
                new = await store.acquire_lease("i-l", "b", 30)
                assert new is not None and new > old, f"an expired lease was not taken over ({old} -> {new})"
                with pytest.raises(StaleWrite):
                    await store.commit(Batch("i-l", old, events=[Event(time.time(), "i-l", None, 0, "LATE")]))
                assert await store.get_timeline("i-l") == [], "a stale write reached the timeline"

        self._run(main)

    def test_permits_are_counted_taken_and_given_back(self, tmp_path):
        """``acquire_permits`` answers each request in order: all its keys are taken while every
        limited key has fewer live holders than its limit, else none, naming the full key with
        its count; an attempt asking again is not counted against itself; a tag's limit set in
        the store wins over the one given. A commit's ``permits_released`` and ``release_permits``
        (but what it keeps) give them back; a holder whose lease was released holds nothing."""
        from legato.model import Batch, InstanceRecord

        async def main():
            async with self._open(tmp_path) as store:
                for iid in ("i-p1", "i-p2"):
                    await store.create_instance(InstanceRecord(iid, "wf", 1, created_at=1.0), "me", 30)
                two, tag = ("workflow:wf", 2), ("tag:gpu", None)
                answers = await store.acquire_permits([
                    (("i-p1", "a", 1), [two]), (("i-p1", "b", 1), [two, tag]), (("i-p2", "c", 1), [two, tag])])
                assert answers == [None, None, ("workflow:wf", 2, 2)], answers
                assert await store.acquire_permits([(("i-p1", "a", 1), [two])]) == [None], \
                    "an attempt asking again for what it holds was counted against itself"
                await store.set_tag_permit("gpu", 1, by="tester")
                [row] = await store.get_tag_permits()
                assert (row["tag"], row["limit"], row["held"], row["set_by"]) == ("gpu", 1, 1, "tester"), row
                assert isinstance(row["set_at"], float)
                await store.commit(Batch("i-p1", 1, permits_released=[("a", 1)]))
                assert await store.acquire_permits([(("i-p2", "c", 1), [two, tag])]) == [("tag:gpu", 1, 1)], \
                    "the tag's limit set in the store did not win over the step's"
                await store.release_permits("i-p1", keep=[("b", 1)])
                assert (await store.get_tag_permits())[0]["held"] == 1, "release_permits dropped what it keeps"
                await store.release_permits("i-p1")
                assert await store.acquire_permits([(("i-p2", "c", 1), [two, tag])]) == [None]
                await store.release_lease("i-p2", "me")  # the instance ended: its holders hold nothing
                assert await store.acquire_permits([(("i-p1", "d", 1), [("tag:gpu", 5)])]) == [None]
                assert (await store.get_tag_permits())[0]["held"] == 1
                assert await store.delete_tag_permit("gpu") is True
                assert await store.delete_tag_permit("gpu") is False
                assert await store.get_tag_permits() == []
                await store.set_tag_permit("db", 3, by="a")
                await store.set_tag_permit("db", 4, by="b")
            if "persistent" in self.p.capabilities:
                async with self._open(tmp_path) as store:
                    assert [(r["tag"], r["limit"], r["set_by"]) for r in await store.get_tag_permits()] == [
                        ("db", 4, "b")]

        self._run(main)

    @requires("leases")
    def test_a_late_renewal_keeps_a_lease_nobody_took(self, tmp_path):
        """An owner that renews after its lease expired (it was paused) keeps its generation if no
        other owner took the lease meanwhile; a heartbeat of a replaced owner takes nothing back,
        and the lease says who holds it."""
        async def main():
            async with self._open(tmp_path) as store:
                instance, _ = self._records("i-r")
                await store.create_instance(instance)
                gen = await store.acquire_lease("i-r", "a", 0.05)
                await _wait_expired(store, "i-r")
                assert await store.acquire_lease("i-r", "a", 0.05, generation=gen) == gen, "a late renewal was refused"
                await _wait_expired(store, "i-r")
                assert await store.acquire_lease("i-r", "b", 30) == gen + 1
                assert await store.acquire_lease("i-r", "a", 30, generation=gen) is None, "a replaced owner took it back"
                lease = await store.get_lease("i-r")
                assert (lease.owner, lease.generation) == ("b", gen + 1) and lease.live, lease
                assert [r.instance_id for r, _ in await store.list_leased()] == ["i-r"]

        self._run(main)

    def test_run_strategy_queue_and_claims(self, tmp_path):
        """Under a run strategy (legato.strategy) ``create_instance`` with an owner queues a start
        that must wait, ``strategy_queue`` counts the workflow's started and queued instances,
        ``acquire_lease`` refuses a queued one out of its turn and ``list_resumable`` lists only
        those whose turn it is; FIRST_ONLY stops a start at once with a timeline event."""
        from legato.model import InstanceRecord

        def rec(iid, at, rule="sequential", wf="wq"):
            return InstanceRecord(iid, wf, 1, created_at=at, run_strategy=rule, workflow_concurrency=1)

        async def main():
            async with self._open(tmp_path) as store:
                first, _ = await store.create_instance(rec("s1", 1.0), "me", 30)
                second, _ = await store.create_instance(rec("s2", 2.0), "me", 30)
                third, _ = await store.create_instance(rec("s3", 3.0))
                assert (first.queued, second.queued, third.queued) == (False, True, True)
                assert (await store.get_instance("s2")).queued
                q = await store.strategy_queue("s3")
                assert (q.running, q.running_id, q.ahead, q.ahead_id) == (1, "s1", 1, "s2"), q
                assert await store.acquire_lease("s2", "w", 30) is None, "taken while s1 runs"
                assert [r.instance_id for r in await store.list_resumable()] == []
                await store.release_lease("s1", "me")
                assert [r.instance_id for r in await store.list_resumable()] == ["s1"], "started: resumable"
                dropped, created = await store.create_instance(rec("f2", 5.0, "first_only", "wf1"), "me", 30)
                assert created and dropped.status.value == "CREATED" and not dropped.queued
                dropped, created = await store.create_instance(rec("f3", 6.0, "first_only", "wf1"), "me", 30)
                assert created and dropped.status.value == "STOPPED" and "[f2]" in dropped.message
                assert [e.status for e in await store.get_timeline("f3")] == ["STOPPED"]

        self._run(main)

    def test_end_queued_ends_only_an_instance_nobody_took(self, tmp_path):
        """``end_queued`` ends a queued instance at once (with a timeline event), and refuses one
        anyone has taken (its owner ends it)."""
        from legato.model import InstanceRecord
        from legato.states import InstanceStatus

        async def main():
            async with self._open(tmp_path) as store:
                await store.create_instance(InstanceRecord("e1", "we", 1, created_at=1.0, run_strategy="sequential"),
                                            "me", 30)
                await store.create_instance(InstanceRecord("e2", "we", 1, created_at=2.0, run_strategy="sequential"))
                assert await store.end_queued("e1", InstanceStatus.STOPPED, "stopped by ann") is None
                ended = await store.end_queued("e2", InstanceStatus.STOPPED, "stopped by ann")
                assert (ended.status, ended.queued, ended.message) == (InstanceStatus.STOPPED, False, "stopped by ann")
                assert [(e.status, e.message) for e in await store.get_timeline("e2")] == [("STOPPED", "stopped by ann")]
                assert await store.end_queued("e2", InstanceStatus.FAILED, "again") is None
                assert (await store.strategy_queue("e1")).ahead == 0

        self._run(main)

    def test_unblock_workflow_marks_failed_instances_once(self, tmp_path):
        """``unblock_workflow`` marks each FAILED instance once, with an UNBLOCKED event naming who."""
        from legato.model import InstanceRecord
        from legato.states import InstanceStatus

        async def main():
            async with self._open(tmp_path) as store:
                for iid, status, at in (("u1", InstanceStatus.FAILED, 1.0), ("u2", InstanceStatus.SUCCEEDED, 2.0),
                                        ("u3", InstanceStatus.FAILED, 3.0)):
                    await store.create_instance(InstanceRecord(iid, "wu", 1, status, created_at=at))
                waiting, _ = await store.create_instance(InstanceRecord(
                    "u4", "wu", 1, created_at=4.0, run_strategy="strict_sequential"))
                assert (await store.strategy_queue("u4")).blocked_by == "u1"
                assert await store.unblock_workflow("wu", "ann", 10.0) == ["u1", "u3"]
                assert (await store.strategy_queue("u4")).blocked_by is None
                assert await store.unblock_workflow("wu", "ann", 11.0) == []
                events = await store.get_timeline("u1")
                assert [(e.status, e.ts) for e in events] == [("UNBLOCKED", 10.0)] and "ann" in events[0].message
                assert [r.instance_id for r in await store.list_resumable()] == ["u4"]

        self._run(main)

    @requires("leases")
    def test_claim_resumable_takes_each_instance_once_in_its_turn(self, tmp_path):
        """``claim_resumable`` takes the leases of what ``list_resumable`` lists, oldest first, up
        to its limit and but what it skips, each with its generation and record: a queued
        instance only in its run strategy's turn; two claimers at once never take one instance."""
        from legato.model import InstanceRecord

        def rec(iid, at, rule="", n=1, wf="wc"):
            return InstanceRecord(iid, wf, 1, created_at=at, run_strategy=rule, workflow_concurrency=n)

        async def main():
            async with self._open(tmp_path) as store:
                for i in range(6):  # queued under PARALLEL 3: three may start
                    await store.create_instance(rec(f"c{i}", 1.0 + i, "parallel", 3))
                await store.create_instance(rec("free", 0.5, wf="wfree"))  # created, never leased, no strategy
                taken = await store.claim_resumable("a", 30, limit=2, skip={"free"})
                assert [(r.instance_id, g) for r, g in taken] == [("c0", 1), ("c1", 1)], taken
                assert taken[0][0].queued and taken[0][0].workflow_id == "wc"

                async def claim(owner, out):
                    out.extend(r.instance_id for r, _ in await store.claim_resumable(owner, 30, limit=10))

                a, b = [], []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(claim, "b", a)
                    nursery.start_soon(claim, "c", b)
                assert not set(a) & set(b), f"two claimers took one instance: {a} and {b}"
                assert sorted(a + b) == ["c2", "free"], (a, b)
                assert await store.claim_resumable("d", 30) == [], "claimed beyond the strategy's limit or twice"
                await store.release_lease("c0", "a")  # still unfinished: resumable again by anyone
                assert [(r.instance_id, g) for r, g in await store.claim_resumable("d", 30)] == [("c0", 2)]

        self._run(main)

    @requires("concurrent_writers")
    def test_a_stale_write_fails_alone_among_concurrent_ones(self, tmp_path):
        """Commits made at the same moment (a store may write them in one transaction) are answered
        each on its own: the one with a stale lease generation raises StaleWrite and leaves
        nothing, the others are all durable."""
        from legato.model import Batch, Event
        from legato.storage import StaleWrite

        async def main():
            async with self._open(tmp_path) as store:
                for w in range(5):
                    await store.create_instance(self._records(f"i-s{w}")[0], "me", 30)
                results: dict[int, str] = {}

                async def writer(w: int) -> None:
                    generation = 0 if w == 2 else 1  # i-s2's lease is at generation 1: 0 is stale
                    try:
                        await store.commit(Batch(f"i-s{w}", generation, events=[Event(1.0, f"i-s{w}", None, 0, "E")]))
                        results[w] = "ok"
                    except StaleWrite:
                        results[w] = "stale"

                async with trio.open_nursery() as nursery:
                    for w in range(5):
                        nursery.start_soon(writer, w)
                assert results == {0: "ok", 1: "ok", 2: "stale", 3: "ok", 4: "ok"}, results
                for w in range(5):
                    got = [e.status for e in await store.get_timeline(f"i-s{w}")]
                    assert got == ([] if w == 2 else ["E"]), f"i-s{w}: {got}"

        self._run(main)

    @requires("concurrent_writers")
    def test_concurrent_writers_lose_nothing(self, tmp_path):
        """Twenty tasks commit fifty batches each at once: every event is there, in each writer's order."""
        from legato.model import Batch, Event

        async def main():
            async with self._open(tmp_path) as store:
                for w in range(20):
                    await store.create_instance(self._records(f"i-c{w}")[0])

                async def writer(w: int) -> None:
                    for n in range(50):
                        await store.commit(Batch(f"i-c{w}", 0, events=[Event(time.time(), f"i-c{w}", "s", n, f"E{n}")]))

                async with trio.open_nursery() as nursery:
                    for w in range(20):
                        nursery.start_soon(writer, w)
                for w in range(20):
                    got = [e.status for e in await store.get_timeline(f"i-c{w}")]
                    assert got == [f"E{n}" for n in range(50)], f"writer {w} lost or reordered events: {got[:5]}…"

        self._run(main)

    @requires("multiprocess")
    def test_two_processes_write_at_once(self, tmp_path):
        """Two processes commit to one store at the same time; neither loses a write."""
        url = self.p.make_url(str(tmp_path))
        script = (
            "import sys, time, trio\n"
            "from legato.storage import open_storage\n"
            "from legato.model import Batch, Event, InstanceRecord\n"
            "url, iid = sys.argv[1], sys.argv[2]\n"
            "async def main():\n"
            "    async with open_storage(url) as store:\n"
            "        await store.create_instance(InstanceRecord(iid, 'wf', 1, created_at=time.time()))\n"
            "        for n in range(100):\n"
            "            await store.commit(Batch(iid, 0, events=[Event(time.time(), iid, 's', n, f'E{n}')]))\n"
            "trio.run(main)\n"
        )
        procs = [subprocess.Popen([sys.executable, "-c", script, url, f"i-mp{k}"], stderr=subprocess.PIPE, text=True)
                 for k in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"a writer process failed: {err}"

        async def check():
            async with self._open(tmp_path) as store:
                for k in range(2):
                    assert len(await store.get_timeline(f"i-mp{k}")) == 100, f"process {k} lost writes"

        self._run(check)

    def test_a_queued_instance_wakes_listening_workers(self, tmp_path):
        """An instance created without an owner (queued) wakes what listens on ``wakeups()`` (a
        worker waiting for work), also through a second opening of the store when several
        processes may share it. A backend whose ``wakeups().notifies`` is False tells nobody
        (its workers poll) and skips this."""
        from legato.model import InstanceRecord

        async def main():
            async with self._open(tmp_path) as store:
                wakeups = store.wakeups()
                if not wakeups.notifies:
                    pytest.skip(f"{self.p.scheme}: wakeups() tells nobody; its workers poll")
                assert store.wakeups() is wakeups, "wakeups() must return the same object every time"
                version = await store.push_definition("wf", {"workflow": {"id": "wf"}})
                with wakeups.listen() as listener:
                    assert not await listener.wait(0), "a listener woke with nothing queued"
                    await store.create_instance(InstanceRecord("i-wake", "wf", version.version, created_at=1.0))
                    with trio.fail_after(60):  # bounds a hang only
                        assert await listener.wait(60), "queuing an instance woke nobody"
                    assert not await listener.wait(0), "one queued instance woke a listener twice"
                if "multiprocess" in self.p.capabilities:
                    async with self._open(tmp_path) as other:
                        with wakeups.listen() as listener:
                            await other.create_instance(InstanceRecord("i-wake2", "wf", version.version,
                                                                       created_at=2.0))
                            with trio.fail_after(60):
                                assert await listener.wait(60), "an instance queued through another opening " \
                                                                "of the store woke nobody"

        self._run(main)

    def test_signals_are_numbered_per_name_and_deduplicated_by_request_id(self, tmp_path):
        """``send_signal`` numbers each name's signals from 1; the same request id for the same
        name again answers with the stored signal and stores nothing (another name may reuse it);
        ``get_signal`` reads the latest or a given one, ``list_signals`` those after a number,
        oldest first; ``match_signal`` the latest that meets every condition (Maestro's
        SignalInstance / MaestroSignalInstanceDao: seq per name, unique request id); all of it
        survives reopening."""
        async def main():
            async with self._open(tmp_path) as store:
                assert await store.get_signal("t") is None and await store.list_signals("t") == []
                a, new_a = await store.send_signal("t", {"date": 20260101, "region": "eu"}, "r1")
                b, new_b = await store.send_signal("t", {"date": 20260102, "region": "us"})
                other, _ = await store.send_signal("u", {}, "r1")
                assert (a.seq, b.seq, other.seq, new_a, new_b) == (1, 2, 1, True, True)
                again, new = await store.send_signal("t", {"date": 1}, "r1")
                assert not new and again.seq == 1 and again.params == {"date": 20260101, "region": "eu"}, \
                    "a replayed request id stored a second signal"
                assert (await store.get_signal("t")).seq == 2
                got = await store.get_signal("t", 1)
                assert (got.name, got.params, got.request_id) == ("t", a.params, "r1")
                assert isinstance(got.created_at, float) and got.created_at > 0
                assert await store.get_signal("t", 3) is None
                assert [s.seq for s in await store.list_signals("t", 1)] == [2]
                assert [s.seq for s in await store.list_signals("t", 0, 1)] == [1]
                assert (await store.match_signal("t", [("date", ">=", 20260101)])).seq == 2
                assert (await store.match_signal("t", [("region", "=", "eu")])).seq == 1
                assert await store.match_signal("t", [("date", "=", "20260101")]) is None, \
                    "a number matched a string"
            if "persistent" in self.p.capabilities:
                async with self._open(tmp_path) as store:
                    c, _ = await store.send_signal("t", {}, None)
                    assert c.seq == 3 and (await store.get_signal("t", 1)).params["region"] == "eu"

        self._run(main)

    def test_signals_of_a_commit_are_stored_with_it_once(self, tmp_path):
        """``Batch.signals`` (a step's signal_outputs) are stored in the commit's transaction and
        wake listeners; committed again with the same request ids (a resumed run) they are not
        stored twice; a stale commit stores none."""
        from legato.model import Batch, InstanceRecord
        from legato.storage import StaleWrite

        async def main():
            async with self._open(tmp_path) as store:
                await store.create_instance(InstanceRecord("i-s", "wf", 1, created_at=1.0), "me", 30)
                out = [("done", {"n": 1}, "i-s/1/a/1/0"), ("done", {"n": 2}, "i-s/1/a/1/1")]
                wakeups = store.wakeups()
                with wakeups.listen() as listener:
                    await store.commit(Batch("i-s", 1, signals=out))
                    if wakeups.notifies:
                        with trio.fail_after(60):
                            assert await listener.wait(60), "a commit's signals woke nobody"
                await store.commit(Batch("i-s", 1, signals=out))
                assert [(s.seq, s.params) for s in await store.list_signals("done")] == [(1, {"n": 1}), (2, {"n": 2})]
                if "leases" in self.p.capabilities:
                    assert await store.acquire_lease("i-s", "other", 30) is None
                    await store.release_lease("i-s", "me")
                    assert await store.acquire_lease("i-s", "other", 30) == 2
                    with pytest.raises(StaleWrite):
                        await store.commit(Batch("i-s", 1, signals=[("done", {"n": 3}, "x")]))
                    assert len(await store.list_signals("done")) == 2, "a stale commit stored its signals"

        self._run(main)

    def test_request_action_records_a_pending_action(self, tmp_path):
        """``request_action`` stores an action (instance or step, its params, who, when) with a
        growing id; ``list_actions`` reads the instance's actions back, oldest first."""
        async def main():
            async with self._open(tmp_path) as store:
                first = await store.request_action("i-ac", "stop", requested_by="alice via cli")
                second = await store.request_action("i-ac", "skip", step_id="b", params={"k": [1]},
                                                    requested_by="bob via api")
                await store.request_action("i-other", "kill", requested_by="carol via cli")
                assert second.id > first.id, "action ids must grow"
                got = await store.list_actions("i-ac")
                assert [(a.id, a.verb, a.step_id, a.params, a.requested_by) for a in got] == [
                    (first.id, "stop", None, {}, "alice via cli"), (second.id, "skip", "b", {"k": [1]}, "bob via api")]
                assert all(a.applied_at is None and a.outcome == "" and a.requested_at > 0 for a in got)
                assert await store.list_actions("i-none") == []

        self._run(main)

    def test_pending_actions_are_those_not_applied_of_the_instances_asked(self, tmp_path):
        """``pending_actions(ids)``: the not-yet-applied actions of those instances only, oldest first."""
        async def main():
            async with self._open(tmp_path) as store:
                a = await store.request_action("i-p1", "stop", requested_by="x")
                b = await store.request_action("i-p2", "kill", requested_by="x")
                await store.request_action("i-p3", "kill", requested_by="x")
                c = await store.request_action("i-p1", "skip", step_id="s", requested_by="x")
                assert [x.id for x in await store.pending_actions(["i-p1", "i-p2"])] == [a.id, b.id, c.id]
                assert await store.mark_action_applied(a.id, "applied: done")
                assert [x.id for x in await store.pending_actions(["i-p1", "i-p2"])] == [b.id, c.id]
                assert await store.pending_actions([]) == []
                assert await store.pending_actions(["i-nothing"]) == []

        self._run(main)

    def test_an_action_is_marked_applied_once(self, tmp_path):
        """``mark_action_applied`` sets when and the outcome, once: a second mark changes nothing
        and says so (False). A batch's ``actions`` are marked in its commit, fenced like the rest."""
        from legato.model import Batch

        async def main():
            async with self._open(tmp_path) as store:
                action = await store.request_action("i-m", "stop", requested_by="x")
                assert await store.mark_action_applied(action.id, "applied: first")
                assert not await store.mark_action_applied(action.id, "refused: second"), "marked twice"
                (got,) = await store.list_actions("i-m")
                assert got.outcome == "applied: first" and got.applied_at is not None
                assert not await store.mark_action_applied(10_000_000, "x"), "marked an action that does not exist"
                instance, batch = self._records("i-mb")
                await store.create_instance(instance, "me", 30)
                pending = await store.request_action("i-mb", "kill", requested_by="x")
                batch.actions.append((pending.id, "applied: in the commit"))
                await store.commit(batch)
                (got,) = await store.list_actions("i-mb")
                assert (got.outcome, got.applied_at is not None) == ("applied: in the commit", True)

        self._run(main)

    def test_trigger_checkpoints_pauses_and_active_versions(self, tmp_path):
        """What the trigger host keeps (legato.triggers): a checkpoint per (workflow, trigger key)
        replaced in place, its last firing kept when a save does not give one; pauses per workflow;
        the active version of each workflow; and an instance's run_ts."""
        async def main():
            async with self._open(tmp_path) as store:
                await store.push_definition("a", {"workflow": {"id": "a", "v": 1}})
                await store.push_definition("a", {"workflow": {"id": "a", "v": 2}})
                await store.push_definition("b", {"workflow": {"id": "b"}})
                assert await store.list_active_versions() == {"a": 2, "b": 1}
                await store.activate("a", 1)
                assert (await store.list_active_versions())["a"] == 1
                assert await store.get_trigger_checkpoint("a", "k") is None
                await store.save_trigger_checkpoint("a", "k", {"last": 1.5}, fired_at=10.0)
                await store.save_trigger_checkpoint("a", "k", {"last": 2.5})
                await store.save_trigger_checkpoint("b", "k", [1, "x"], fired_at=11.0)
                got = await store.get_trigger_checkpoint("a", "k")
                assert (got["value"], got["fired_at"]) == ({"last": 2.5}, 10.0), got
                assert [(c["workflow_id"], c["key"]) for c in await store.list_trigger_checkpoints()] == [
                    ("a", "k"), ("b", "k")]
                assert [c["value"] for c in await store.list_trigger_checkpoints("b")] == [[1, "x"]]
                assert await store.set_triggers_paused("a", True, by="me")
                assert not await store.set_triggers_paused("a", True, by="me")
                assert (await store.get_triggers_paused("a"))["by"] == "me"
                assert [p["workflow_id"] for p in await store.list_paused_triggers()] == ["a"]
                assert await store.set_triggers_paused("a", False, by="me")
                assert await store.get_triggers_paused("a") is None
                from legato.model import InstanceRecord

                record = InstanceRecord("i-ts", "a", 1, request_id="trigger:k:t", created_at=5.0, run_ts=3.0)
                await store.create_instance(record)
                assert (await store.get_instance("i-ts")).run_ts == 3.0
                again, created = await store.create_instance(InstanceRecord("i-ts2", "a", 1, request_id="trigger:k:t"))
                assert not created and again.instance_id == "i-ts"

        self._run(main)

    def test_the_engine_runs_on_it(self, tmp_path):
        """A workflow runs to the end on this store and its whole timeline is kept."""
        from legato.engine import Engine

        doc = {"workflow": {"id": "chain", "steps": [
            {"step": {"id": f"s{i}", "type": "noop", "params": {"outputs": {"i": i}},
                      **({"transition": {"successors": [f"s{i + 1}"]}} if i < 19 else {})}} for i in range(20)]}}

        async def main():
            async with self._open(tmp_path) as store:
                engine = Engine(store, plugins=self._plugins(), workspace=tmp_path / "runs")
                instance = await engine.execute(engine.load(doc))
                assert instance.status.value == "SUCCEEDED"
                attempts = await store.get_attempts(instance.instance_id)
                assert sorted(a.outputs["i"] for a in attempts) == list(range(20))
                assert len(await store.get_timeline(instance.instance_id)) == 2 + 20 * 9

        self._run(main)


FIRE_BOUND = 10.0  # seconds a trigger that fires every second may take to start its first instance


class _Recording:
    """A ``memory://`` store that remembers every trigger checkpoint saved (the suite rewinds them)."""

    @staticmethod
    def make():
        from legato.plugins.memory import MemoryStorage

        class RecordingStorage(MemoryStorage):
            def __init__(self) -> None:
                super().__init__("memory://conformance")
                self.saved: list[tuple[str, str, Any]] = []

            async def save_trigger_checkpoint(self, workflow_id, key, value, *, fired_at=None):
                await super().save_trigger_checkpoint(workflow_id, key, value, fired_at=fired_at)
                self.saved.append((workflow_id, key, json.loads(json.dumps(value))))

        return RecordingStorage()


class TriggerSuite(_Suite):
    """The trigger-type contract (:mod:`legato.triggers`). Subclass with ``profile`` set (a name
    or a TriggerProfile). Each test runs a real :class:`legato.trigger_host.TriggerHost` on a
    ``memory://`` store, on the wall clock (the sample fires every second)."""

    _kind = TriggerProfile

    def _check_registered(self, report: dict) -> None:
        assert self.p.trigger_type in report["triggers"], (
            f"the entry point {self.p.entry_point!r} loaded alone does not register trigger type {self.p.trigger_type!r}")

    def _engine(self, storage, tmp_path):
        from legato.engine import Engine

        return Engine(storage, plugins=self._plugins(), workspace=tmp_path / "runs")

    async def _setup(self, storage, engine) -> str:
        for doc in self.p.workflows:
            await storage.push_definition(doc["workflow"]["id"], doc)
        definition = engine.load(self.p.workflow)
        assert definition.triggers.get(self.p.trigger_type), (
            f"the sample workflow has no {self.p.trigger_type!r} triggers once loaded: its trigger type's "
            "`parse` must return a TriggerDef per item")
        await storage.push_definition(definition.workflow_id, self.p.workflow)
        return definition.workflow_id

    async def _instances(self, storage, wid: str) -> list:
        return [i for i in await storage.list_instances(wid, limit=10_000)
                if i.initiator.startswith(f"{self.p.trigger_type}:") or (i.request_id or "").startswith("trigger:")]

    async def _fired(self, host, storage, wid: str, count: int, fired: list[int]) -> list:
        """Wait (FIRE_BOUND per firing) until ``count`` instances are there, calling ``fire`` as needed."""
        with trio.move_on_after(FIRE_BOUND * count):
            while True:
                found = await self._instances(storage, wid)
                if len(found) >= count:
                    return found
                if self.p.fire is not None and fired[0] < count:
                    await self.p.fire(storage, fired[0])
                    fired[0] += 1
                with trio.move_on_after(0.5):
                    await host.wait_progress()
        pytest.fail(f"{self.p.name}: {len(await self._instances(storage, wid))} instance(s) started within "
                    f"{FIRE_BOUND * count:g} s, {count} expected (is the sample due every second?)")

    def _host(self, engine, **kw):
        from legato.trigger_host import TriggerHost

        return TriggerHost(engine, poll=0.2, retry=0.5, **kw)

    def test_the_sample_workflow_loads_with_its_triggers(self, tmp_path):
        """The trigger type reads the sample's triggers (``parse``): one TriggerDef each, with a key."""
        engine = self._engine(_Recording.make(), tmp_path)
        triggers = engine.load(self.p.workflow).triggers.get(self.p.trigger_type) or []
        assert triggers, f"parse returned no TriggerDef for the sample's {self.p.trigger_type} triggers"
        import re

        for t in triggers:
            assert re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", t.key), f"trigger key {t.key!r} is not letters, digits, -_. (64 at most)"

    @requires("fires")
    def test_fires_through_the_idempotent_start(self, tmp_path):
        """Watched by a host, the sample starts an instance, with a `trigger:` request id and the
        trigger type in its initiator, queued for a worker."""
        async def main():
            storage = _Recording.make()
            engine = self._engine(storage, tmp_path)
            wid = await self._setup(storage, engine)
            host = self._host(engine)
            async with trio.open_nursery() as nursery:
                await nursery.start(host.run)
                found = await self._fired(host, storage, wid, 1, [0])
                nursery.cancel_scope.cancel()
            instance = found[0]
            assert (instance.request_id or "").startswith("trigger:"), (
                f"the instance's request id is {instance.request_id!r}: start through ctx.start(request_id=…)")
            assert instance.initiator.startswith(f"{self.p.trigger_type}:"), f"initiator {instance.initiator!r}"
            assert instance.queued, "a trigger's instance is queued for a worker"
            assert host.statistics()["failed"] == 0, "the trigger's run raised (see the host's log)"

        trio.run(main)

    @requires("exactly_once")
    def test_exactly_once_across_a_restart_of_its_host(self, tmp_path):
        """A host fires twice and stops; its checkpoints are rewound to what they were before the
        first firing (a crash before they were saved); a new host fires the same firings again
        with the same request ids, which start nothing new, and then new ones."""
        async def main():
            storage = _Recording.make()
            engine = self._engine(storage, tmp_path)
            wid = await self._setup(storage, engine)
            fired = [0]
            first = self._host(engine)
            async with trio.open_nursery() as nursery:
                await nursery.start(first.run)
                before = await self._fired(first, storage, wid, 2, fired)
                nursery.cancel_scope.cancel()
            assert storage.saved, "the trigger saved no checkpoint: ctx.save(value) after each start"
            rewound = {}
            for w, key, value in storage.saved:
                rewound.setdefault((w, key), value)
            for (w, key), value in rewound.items():
                await storage.save_trigger_checkpoint(w, key, value)
            ids = {i.request_id for i in before}
            second = self._host(engine)
            async with trio.open_nursery() as nursery:
                await nursery.start(second.run)
                after = await self._fired(second, storage, wid, len(before) + 1, fired)
                nursery.cancel_scope.cancel()
            assert second.statistics()["repeated"] >= 1, (
                "the restarted host did not fire again what the rewound checkpoint had not recorded: a "
                "trigger must resume from its checkpoint (ctx.load())")
            new = [i for i in after if i.request_id not in ids]
            assert len(after) == len({i.request_id for i in after})
            runs = [i.run_ts for i in before]
            assert not [i for i in new if i.run_ts in runs], "an instance started twice for one firing (same run_ts)"

        trio.run(main)

    @requires("cancellation")
    def test_stops_cleanly_on_cancellation(self, tmp_path):
        """Cancelled, a host's triggers end promptly (a hang guard of CANCEL_BOUND) and leave no thread working."""
        async def main():
            storage = _Recording.make()
            engine = self._engine(storage, tmp_path)
            await self._setup(storage, engine)
            threads = _busy_threads()
            host = self._host(engine)
            async with trio.open_nursery() as nursery:
                await nursery.start(host.run)
                with trio.move_on_after(FIRE_BOUND):
                    while host.statistics()["watching"] < 1:
                        await host.wait_progress()
                assert host.statistics()["watching"] >= 1, f"no trigger reported task_status.started() within {FIRE_BOUND:g} s"
                started = time.monotonic()
                nursery.cancel_scope.cancel()
            took = time.monotonic() - started
            assert took < CANCEL_BOUND, f"the host's triggers took {took:.1f}s to end once cancelled"
            assert host.statistics()["watching"] == 0
            deadline = time.monotonic() + CANCEL_BOUND
            busy = _busy_threads() - threads
            while busy and time.monotonic() < deadline:
                await trio.sleep(0.05)
                busy = _busy_threads() - threads
            assert not busy, f"threads still working after cancellation: {sorted(busy)}"

        trio.run(main)

    @requires("event_loop")
    def test_never_blocks_the_event_loop(self, tmp_path):
        """While the trigger watches and fires, the event loop is never held for more than
        LOOP_GAP_BOUND (measured from its first firing on: what Legato imports on first use is not
        the trigger's doing)."""
        async def main():
            storage = _Recording.make()
            engine = self._engine(storage, tmp_path)
            wid = await self._setup(storage, engine)
            host = self._host(engine)
            gaps: list[float] = []

            async def watch():
                last, waited = time.monotonic(), _runqueue_wait()
                while True:
                    await trio.sleep(0.01)
                    now, now_waited = time.monotonic(), _runqueue_wait()
                    gaps.append(now - last - (now_waited - waited))
                    last, waited = now, now_waited

            async with trio.open_nursery() as nursery:
                await nursery.start(host.run)
                fired = [0]
                await self._fired(host, storage, wid, 1, fired)
                nursery.start_soon(watch)
                await self._fired(host, storage, wid, 3, fired)
                nursery.cancel_scope.cancel()
            worst = max(gaps)
            assert worst <= LOOP_GAP_BOUND, (f"the event loop was blocked for {worst:.2f}s while the trigger ran: "
                                             "run blocking calls with trio.to_thread.run_sync")

        trio.run(main)


def _descendants() -> set[int]:
    """Processes descending from this one (Linux /proc), zombies excluded."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.add(child)
            todo.append(child)
    return out


def _runqueue_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat; 0 elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _busy_threads() -> set[str]:
    """Threads doing work: trio's idle worker threads (waiting for a job) do not count."""
    frames = sys._current_frames()
    busy = set()
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.ident is None:
            continue
        frame = frames.get(thread.ident)
        idle = frame is not None and frame.f_code.co_filename.endswith("_thread_cache.py") and \
            frame.f_code.co_name == "_work"
        if not idle:
            busy.add(f"{thread.name} ({thread.ident})")
    return busy
