"""The ``subworkflow`` step type (issue 11): a stored workflow started as a real child instance,
linked to its parent, idempotent per attempt, stopped with its parent step (Maestro's
SubworkflowStepRuntime, SubworkflowStep, SubworkflowInitiator and StepHelper's depth limit)."""

from __future__ import annotations

from legato.conformance import StepTypeSuite


class TestSubworkflowConformance(StepTypeSuite):
    """The step-type contract, with the child workflows the profile stores first."""

    profile = "subworkflow"


# -- in process, on the memory store ------------------------------------------------------------

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
import trio  # noqa: E402

from legato.children import DEPTH_LIMIT  # noqa: E402

from .test_recovery import LEGATO, Driver, _read, _wait_for  # noqa: E402


def wf(workflow_id: str, *steps: dict, params: dict | None = None) -> dict:
    body: dict = {"id": workflow_id, "steps": list(steps)}
    if params is not None:
        body["params"] = params
    return {"workflow": body}


def sub(sid: str, child: str, **params) -> dict:
    return {"step": {"id": sid, "type": "subworkflow", "params": {"subworkflow_id": child, **params}}}


def leaf(sid: str, kind: str = "noop", **params) -> dict:
    return {"step": {"id": sid, "type": kind, "params": params}}


async def push(engine, *docs: dict) -> None:
    for doc in docs:
        await engine.storage.push_definition(doc["workflow"]["id"], doc)


async def children_of(engine, instance_id: str) -> list:
    return [r for r in await engine.storage.list_instances(limit=1000)
            if r.parent is not None and r.parent["instance_id"] == instance_id]


async def test_a_sync_subworkflow_runs_the_child_to_its_end_and_links_both_ways(engine, run_doc):
    """SubworkflowStepRuntime (sync): the child is a real instance of the stored workflow, pinned
    to the active version; the parent step's outputs name it, the child's ancestors name the
    parent (SubworkflowInitiator), and the step succeeds when the child does."""
    await push(engine, wf("child", leaf("c", outputs={"made": 1})))
    done = await run_doc(wf("parent", sub("s", "child")))
    assert done.status == "SUCCEEDED"
    step = done.last["s"]
    kids = await children_of(engine, done.instance.instance_id)
    assert len(kids) == 1
    child = kids[0]
    assert step.outputs == {"subworkflow_id": "child", "subworkflow_version": 1,
                            "subworkflow_instance_id": child.instance_id, "subworkflow_status": "SUCCEEDED"}
    assert child.status.value == "SUCCEEDED" and child.version == 1 and child.initiator == "subworkflow"
    assert child.parent == {"workflow_id": "parent", "instance_id": done.instance.instance_id, "run_id": 1,
                            "step_id": "s", "attempt": 1}
    assert [a.outputs for a in await engine.storage.get_attempts(child.instance_id)] == [{"made": 1}]


async def test_the_version_is_resolved_when_the_step_runs(engine, run_doc):
    """subworkflow_version: active (the default), latest, or a number (default-subworkflow-step-params)."""
    await push(engine, wf("child", leaf("c", outputs={"v": 1})))
    await engine.storage.push_definition("child", wf("child", leaf("c", outputs={"v": 2})), activate=False)
    for version, expected in (("active", 1), ("latest", 2), (1, 1), ("2", 2)):
        done = await run_doc(wf("parent", sub("s", "child", subworkflow_version=version)))
        assert done.status == "SUCCEEDED", done.last["s"].message
        assert done.last["s"].outputs["subworkflow_version"] == expected, version
    done = await run_doc(wf("parent", sub("s", "child", subworkflow_version=7)))
    assert done.last["s"].status.value == "FATALLY_FAILED"
    assert "workflow 'child' has versions 1–2; version 7 does not exist" in done.last["s"].message
    done = await run_doc(wf("parent", sub("s", "nosuch")))
    assert done.last["s"].status.value == "FATALLY_FAILED" and "no workflow 'nosuch'" in done.last["s"].message


async def test_a_failed_child_fails_the_parent_step_naming_the_child_and_is_not_retried(engine, run_doc):
    """trackSubworkflowInstance: a FAILED child is the step's FATAL_ERROR ("no retry for
    subworkflow"), whatever the step's retry policy says."""
    failing = leaf("c", "sleep", seconds=0, outcome="USER_ERROR")
    failing["step"]["retry_policy"] = {"error_retry_limit": 0}
    await push(engine, wf("child", failing))
    doc = wf("parent", sub("s", "child"))
    doc["workflow"]["steps"][0]["step"]["retry_policy"] = {"error_retry_limit": 3}
    done = await run_doc(doc)
    assert done.status == "FAILED"
    assert done.tries("s") == ["FATALLY_FAILED"]
    (child,) = await children_of(engine, done.instance.instance_id)
    assert child.status.value == "FAILED"
    message = done.last["s"].message
    assert f"subworkflow instance {child.instance_id} (child v1) ended FAILED" in message, message
    assert done.last["s"].outputs["subworkflow_instance_id"] == child.instance_id
    assert done.last["s"].outputs["subworkflow_status"] == "FAILED"


async def test_an_async_subworkflow_succeeds_once_the_child_is_created(engine, run_doc):
    """sync false: the step completes at launch; the child waits, queued with no lease, for
    `legato resume` (or a worker) and runs its pinned version then."""
    await push(engine, wf("child", leaf("c", outputs={"ran": True})))
    done = await run_doc(wf("parent", sub("s", "child", sync=False)))
    assert done.status == "SUCCEEDED"
    (child,) = await children_of(engine, done.instance.instance_id)
    assert child.status.value == "CREATED"
    assert done.last["s"].outputs == {"subworkflow_id": "child", "subworkflow_version": 1,
                                      "subworkflow_instance_id": child.instance_id}
    assert [r.instance_id for r in await engine.storage.list_resumable()] == [child.instance_id]
    await push(engine, wf("child", leaf("c", outputs={"ran": "a newer version"})))
    final = await engine.resume(child.instance_id)
    assert final.status.value == "SUCCEEDED" and final.version == 1
    assert [a.outputs for a in await engine.storage.get_attempts(child.instance_id)] == [{"ran": True}]


async def test_params_pass_down_as_maestro_passes_them(engine, run_doc):
    """SubworkflowStepRuntime.createSubworkflowRunParam: explicit_params false passes every
    workflow param of the parent, then the step's own params over them; true passes only the
    step's own params. subworkflow_id / subworkflow_version (and sync, explicit_params) stay."""
    await push(engine, wf("child", leaf("c"), params={"x": 0, "who": "nobody", "keep": "child's"}))
    parent_params = {"who": "parent", "only_parent": 7}
    done = await run_doc(wf("parent", sub("s", "child", x=5), params=parent_params))
    (child,) = await children_of(engine, done.instance.instance_id)
    assert child.params == {"x": 5, "who": "parent", "keep": "child's", "only_parent": 7}
    done = await run_doc(wf("parent", sub("s", "child", x=6, explicit_params=True), params=parent_params))
    (child,) = await children_of(engine, done.instance.instance_id)
    assert child.params == {"x": 6, "who": "nobody", "keep": "child's"}


async def test_a_param_the_child_refuses_fails_the_step_at_start(engine, run_doc):
    """A start the child refuses (a CONSTANT param overridden: ParamsMergeHelper) is the step's
    fatal error, naming the child's param; no child instance is created."""
    await push(engine, wf("child", leaf("c"), params={"x": {"type": "LONG", "value": 1, "mode": "CONSTANT"}}))
    done = await run_doc(wf("parent", sub("s", "child", x=2)))
    assert done.last["s"].status.value == "FATALLY_FAILED"
    assert "/workflow/params/x" in done.last["s"].message, done.last["s"].message
    assert await children_of(engine, done.instance.instance_id) == []


async def test_nesting_deeper_than_the_depth_limit_is_refused(engine, run_doc):
    """StepHelper.createInternalWorkflowRunRequest: an initiator's depth (its ancestors) must stay
    below Constants.WORKFLOW_DEPTH_LIMIT (10); the step that would go deeper fails FATALLY at start."""
    assert DEPTH_LIMIT == 10
    await push(engine, *(wf(f"w{i}", sub("s", f"w{i + 1}")) for i in range(1, 10)), wf("w10", leaf("c")))
    done = await run_doc(wf("w0", sub("s", "w1")))
    assert done.status == "FAILED"
    chain = [done.instance]
    while kids := await children_of(engine, chain[-1].instance_id):
        chain.extend(kids)
    assert [r.workflow_id for r in chain] == [f"w{i}" for i in range(10)]  # w10 is never created
    assert [len(r.ancestors) for r in chain] == list(range(10))
    deepest = {a.step_id: a for a in await engine.storage.get_attempts(chain[-1].instance_id)}["s"]
    assert deepest.status.value == "FATALLY_FAILED"
    assert "10 levels deep" in deepest.message and "depth limit" in deepest.message, deepest.message
    assert all(r.status.value == "FAILED" for r in chain)


async def test_a_workflow_already_among_the_ancestors_is_refused(engine, run_doc):
    """A workflow may not start itself, directly or through others: refused when the step runs
    (FATALLY_FAILED, naming the chain), before any instance is created."""
    await push(engine, wf("a", sub("s", "a")))
    done = await run_doc(wf("a", sub("s", "a")))
    assert done.last["s"].status.value == "FATALLY_FAILED"
    assert "'a' is already among this instance's ancestors (a -> a)" in done.last["s"].message
    assert await children_of(engine, done.instance.instance_id) == []
    await push(engine, wf("b", sub("t", "a")))
    done = await run_doc(wf("a", sub("s", "b")))
    assert done.status == "FAILED"
    (b,) = await children_of(engine, done.instance.instance_id)
    t = (await engine.storage.get_attempts(b.instance_id))[0]
    assert t.status.value == "FATALLY_FAILED" and "(a -> b -> a)" in t.message, t.message
    assert await children_of(engine, b.instance_id) == []


async def _wait_child_running(engine, parent_id: str):
    while True:
        kids = await children_of(engine, parent_id)
        if kids and any(a.status.value == "RUNNING" for a in await engine.storage.get_attempts(kids[0].instance_id)):
            return kids[0]
        await trio.sleep(0.01)


async def test_stopping_the_parent_stops_the_child(engine):
    """SubworkflowStepRuntime.terminate: stopping the parent while its sync subworkflow step runs
    stops the child too; the step ends STOPPED and the child STOPPED, saying why."""
    await push(engine, wf("child", leaf("c", "sleep", seconds=60)))
    definition = engine.load(wf("parent", sub("s", "child")))
    instance, _ = await engine.start(definition)
    async with trio.open_nursery() as nursery:
        run = await nursery.start(lambda task_status: engine.run(definition, instance, task_status=task_status))
        child = await _wait_child_running(engine, instance.instance_id)
        run.stop("stopped by the test")
    parent = await engine.storage.get_instance(instance.instance_id)
    child = await engine.storage.get_instance(child.instance_id)
    assert parent.status.value == "STOPPED" and child.status.value == "STOPPED"
    assert f"stopped with its parent step s of instance {instance.instance_id}" in child.message
    assert [a.status.value for a in await engine.storage.get_attempts(child.instance_id)] == ["STOPPED"]


async def test_a_timed_out_parent_step_stops_the_child(engine, run_doc):
    """The parent step's timeout cancels it: the child is stopped before the step ends TIMED_OUT."""
    await push(engine, wf("child", leaf("c", "sleep", seconds=60)))
    doc = wf("parent", sub("s", "child"))
    doc["workflow"]["steps"][0]["step"]["timeout"] = 0.3
    done = await run_doc(doc)
    assert done.last["s"].status.value == "TIMED_OUT"
    (child,) = await children_of(engine, done.instance.instance_id)
    assert child.status.value == "STOPPED"


# -- a crash of the parent process ----------------------------------------------------------------

def test_a_parent_killed_while_its_child_runs_resumes_the_same_child(tmp_path):
    """The parent's process is SIGKILLed while the child's step runs (as tests/test_recovery.py
    kills kernels). `legato resume PARENT` reattaches the RUNNING subworkflow step (its handle is
    the child's id) and resumes that child, whose worker died with it: one child, one parent
    attempt, and the child's interrupted step retried as a platform error."""
    ledger, gate = tmp_path / "ledger", tmp_path / "go"
    ledger.touch()
    child = wf("child", {"step": {
        "id": "c", "type": "bash", "retry_policy": {"platform_retry_limit": 3},
        "params": {"script": 'echo "$LEGATO_IDEMPOTENCY_KEY" >> "$ledger"; while [ ! -e "$gate" ]; do sleep 0.02; done'}}},
        params={"ledger": str(ledger), "gate": str(gate)})
    (tmp_path / "child.json").write_text(json.dumps(child))
    (tmp_path / "parent.json").write_text(json.dumps(wf("parent", sub("s", "child"))))
    driver = Driver(tmp_path, None)
    driver.env["LEGATO_LEASE_TTL"] = "30"  # a dead owner on this machine frees its lease at once anyway
    proc = subprocess.run([LEGATO, "push", "child.json"], env=driver.env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    owner = driver.launch(tmp_path / "parent.json", "req")
    _wait_for(lambda: ":c:1" in ledger.read_text(), what="the child's step to start")
    owner.kill()
    owner.wait()
    assert owner.returncode == -signal.SIGKILL
    (parent_id,), = _read(driver.db, "SELECT instance_id FROM legato_instances WHERE workflow_id = 'parent'")
    assert _read(driver.db, "SELECT status FROM legato_attempts WHERE instance_id = ?", parent_id) == [("RUNNING",)]
    gate.touch()
    proc = subprocess.run([LEGATO, "resume", parent_id, "--workspace", str(tmp_path / "runs")], env=driver.env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kids = _read(driver.db, "SELECT instance_id, status FROM legato_instances WHERE workflow_id = 'child'")
    assert len(kids) == 1 and kids[0][1] == "SUCCEEDED", kids
    assert _read(driver.db, "SELECT attempt, status FROM legato_attempts WHERE instance_id = ?", parent_id) == [
        (1, "SUCCEEDED")]
    assert _read(driver.db, "SELECT attempt, status FROM legato_attempts WHERE instance_id = ? ORDER BY attempt",
                 kids[0][0]) == [(1, "PLATFORM_FAILED"), (2, "SUCCEEDED")]
    assert [line.rsplit(":", 2)[1:] for line in ledger.read_text().split()] == [["c", "1"], ["c", "2"]]
    outputs = json.loads(_read(driver.db, "SELECT outputs FROM legato_attempts WHERE instance_id = ?", parent_id)[0][0])
    assert outputs["subworkflow_instance_id"] == kids[0][0]


def test_a_bad_version_or_missing_id_is_refused_when_the_definition_loads(engine):
    """`subworkflow_version` is read by the one version-spec reader (legato.storage.parse_version)
    when the definition loads, as `legato start --version` is: located, before anything runs."""
    from legato.definition import DefinitionError

    with pytest.raises(DefinitionError) as info:
        engine.load(wf("parent", sub("s", "child", subworkflow_version="newest"), {"step": {
            "id": "t", "type": "subworkflow", "params": {"sync": False}}}))
    problems = {p.pointer: p.message for p in info.value.problems}
    assert "a version must be active, latest or a number" in problems[
        "/workflow/steps/0/step/params/subworkflow_version"], problems
    assert "/workflow/steps/1/step/params/subworkflow_id" in problems, problems


async def test_a_timed_out_child_fails_the_parent_step_naming_it(engine, run_doc):
    """trackSubworkflowInstance: a child that ends TIMED_OUT (its workflow timeout) ends the sync
    step too; the step fails, not retried, saying how the child ended."""
    child = wf("child", leaf("c", "sleep", seconds=60))
    child["workflow"]["timeout"] = 0.2
    await push(engine, child)
    done = await run_doc(wf("parent", sub("s", "child")))
    (kid,) = await children_of(engine, done.instance.instance_id)
    assert kid.status.value == "TIMED_OUT"
    assert done.tries("s") == ["FATALLY_FAILED"]
    assert f"subworkflow instance {kid.instance_id} (child v1) ended TIMED_OUT" in done.last["s"].message


# -- named crash points (as tests/test_recovery.py kills plain workflows) ---------------------------

def check_parent(db, request_id: str, lines: list[str], steps: dict[str, bool], *, ledgered=("end",),
                 child_ledgered=None) -> dict:
    """The invariants of a parent instance after crashes, on the SQLite store: it ended
    SUCCEEDED (tests/test_recovery.check_instance, with the bash steps in ``ledgered``); each of
    its subworkflow ``steps`` (step key -> sync) has exactly one child, started by the step's
    succeeded attempt and named by its outputs; every child ended SUCCEEDED, and no attempt in
    it ran twice (its steps keep the ledger, or those in ``child_ledgered``). Figures: children,
    their attempts."""
    import sqlite3

    from .test_recovery import check_instance

    iid = check_instance(db, request_id, lines, ledgered=set(ledgered))["instance_id"]
    conn = sqlite3.connect(db)
    try:
        found: dict[str, list] = {}
        for kid_id, kid_request, status, ancestors in conn.execute(
                "SELECT instance_id, request_id, status, ancestors FROM legato_instances WHERE ancestors IS NOT NULL"):
            parent = json.loads(ancestors)[-1]
            if parent["instance_id"] == iid:
                found.setdefault(parent["step_id"], []).append((kid_id, kid_request, status, parent))
        assert sorted(found) == sorted(steps), f"{request_id}: children of {sorted(found)}, not {sorted(steps)}"
        attempts = 0
        for step_id, sync in steps.items():
            assert len(found[step_id]) == 1, f"{request_id}: step {step_id} started children {found[step_id]}"
            ((kid_id, kid_request, status, parent),) = found[step_id]
            (attempt, outputs), = conn.execute(
                "SELECT attempt, outputs FROM legato_attempts WHERE instance_id = ? AND step_id = ? "
                "AND status = 'SUCCEEDED'", (iid, step_id)).fetchall()
            assert (parent["attempt"], parent["run_id"]) == (attempt, 1), f"{request_id}: {step_id}: {parent}"
            outputs = json.loads(outputs)
            assert outputs["subworkflow_instance_id"] == kid_id, f"{request_id}: {step_id}: {outputs}"
            assert outputs.get("subworkflow_status") == ("SUCCEEDED" if sync else None), f"{step_id}: {outputs}"
            assert status == "SUCCEEDED", f"{request_id}: {step_id}'s child {kid_id} ended {status}"
            attempts += check_instance(db, kid_request, lines, ledgered=child_ledgered)["attempts"]
    finally:
        conn.close()
    return {"children": len(steps), "child_attempts": attempts}


def crash_workflows(ledger, iterations: int = 3, concurrency: int = 2, async_step: bool = True) -> tuple[dict, dict]:
    """A child of two bash steps, and its parent: a sync subworkflow step, a foreach whose body
    is a sync subworkflow written as Maestro writes one (``{"subworkflow": …}``, its default retry
    policy), (an async subworkflow step,) then a bash step. The parent's params (the ledger) pass
    down to each child. The other steps retry platform errors (a crash's) at once."""
    from .test_recovery import RETRIES, bash

    def subworkflow(sid: str, sync: bool, to=()) -> dict:
        step = sub(sid, "kid", sync=sync)
        step["step"]["retry_policy"] = RETRIES
        if to:
            step["step"]["transition"] = {"successors": list(to)}
        return step

    child = wf("kid", bash("k1", ["k2"]), bash("k2"), params={"ledger": "unset"})
    # Many parents' children run at once (and async ones wait, queued, for `legato resume`):
    # PARALLEL, or SEQUENTIAL, the default run strategy, would queue the next sync child behind them.
    child["properties"] = {"run_strategy": "parallel", "workflow_concurrency": 1000}
    tail = [subworkflow("as", False, ["end"])] if async_step else []
    loop = {"foreach": {"id": "fe", "concurrency": concurrency, "transition": {"successors": [
        "as" if async_step else "end"]}, "params": {"loop_params": {"type": "MAP", "value": {
            "i": {"type": "LONG_ARRAY", "value": list(range(1, iterations + 1))}}}},
        "steps": [{"subworkflow": {"id": "fs", "sync": True, "params": {"subworkflow_id": "kid"}}}]}}
    parent = wf("subs", subworkflow("s", True, ["fe"]), loop, *tail, bash("end"), params={"ledger": str(ledger)})
    return child, parent


#: Counted across the process: the children run in the parent's, so their commits, launches and
#: step ends count too. committed:1 and before_launch:1 come as the sync step's attempt is STARTING
#: (on resume a platform error, retried: the child belongs to the retry); committed:2 when it is
#: RUNNING with its handle, before the child exists; before_launch:2 and :5 launch a child's first
#: step; step_done:1 ends a child's step, :3 the sync step (its child has ended, its end not yet
#: the step's), :6 the first iteration's subworkflow step; iteration_done:1 ends that iteration.
SUB_CRASH_POINTS = ["committed:1", "committed:2", "committed:4", "committed:7", "committed:12", "before_launch:1",
                    "before_launch:2", "before_launch:5", "step_done:1", "step_done:3", "step_done:6",
                    "iteration_done:1", "iteration_done:2"]


@pytest.mark.parametrize("point", SUB_CRASH_POINTS)
def test_a_parent_killed_at_a_named_crash_point_never_starts_a_second_child(tmp_path, point):
    """The parent's kernel is SIGKILLed at a named crash point (LEGATO_CRASH_AT) while a sync
    subworkflow runs in its process (alone, and in a foreach's iterations), then `legato run
    --request-id` again to the end: one child per step, started once (its request id derives
    from the parent's attempt: Maestro's StepHelper.createInternalWorkflowRunRequest), every
    child SUCCEEDED, no attempt run twice."""
    ledger = tmp_path / "ledger"
    ledger.touch()
    child, parent = crash_workflows(ledger, iterations=2, concurrency=1, async_step=False)
    (tmp_path / "kid.json").write_text(json.dumps(child))
    path = tmp_path / "subs.json"
    path.write_text(json.dumps(parent))
    driver = Driver(tmp_path, None)
    proc = subprocess.run([LEGATO, "push", "kid.json"], env=driver.env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    driver.drive(path, "req", crash_at=point, kills=0)
    assert driver.cycles == 1, f"the kernel never reached {point}"
    check_parent(driver.db, "req", ledger.read_text().split(), {"s": True, "fe/1/fs": True, "fe/2/fs": True})



async def test_a_parent_that_loses_its_lease_leaves_its_child_running(tmp_path, plugins):
    """A parent run that loses its lease (another worker took it, or the store refused it)
    drops everything for whoever resumes it; its child is not its to stop (only a stop or a
    timeout of the parent step stops the child, as SubworkflowStepRuntime.terminate). The child
    runs on to its end, and the resumed parent follows that child to SUCCEEDED: one child, not a
    STOPPED one that fails the parent."""
    import trio.testing

    from legato.engine import Engine
    from legato.plugins.memory import MemoryStorage
    from legato.storage import StaleWrite

    class Losing(MemoryStorage):
        refuse: str | None = None  # the instance whose lease renewals are refused

        async def acquire_lease(self, instance_id, owner, ttl, generation=None):
            if generation is not None and instance_id == self.refuse:
                return None  # as if another worker had taken it
            return await super().acquire_lease(instance_id, owner, ttl, generation)

    gate = tmp_path / "gate"
    storage = Losing()
    engine = Engine(storage, plugins=plugins, workspace=tmp_path / "runs", lease_ttl=0.3)
    await push(engine, wf("child", leaf("c", "bash", script='while [ ! -e "$gate" ]; do sleep 0.02; done'),
                          params={"gate": str(gate)}))
    definition = engine.load(wf("parent", sub("s", "child")))
    instance, _ = await engine.start(definition)
    ended = []

    async def parent() -> None:
        with pytest.raises(StaleWrite, match="lost the lease"):
            await engine.run(definition, instance)
        ended.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(parent)
        child = await _wait_child_running(engine, instance.instance_id)
        storage.refuse = instance.instance_id
        while getattr(engine.runs.get(instance.instance_id), "lost", True) is None:  # till a heartbeat finds it gone
            await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()  # the parent's step task has taken its cancellation
        kid, run = await storage.get_instance(child.instance_id), engine.runs.get(child.instance_id)
        assert run is not None and run.ending is None, f"the child was stopped: {kid.status.value} {kid.message}"
        gate.touch()
    assert ended
    kid = await storage.get_instance(child.instance_id)
    assert kid.status.value == "SUCCEEDED", f"{kid.status.value}: {kid.message}"
    storage.refuse = None
    final = await engine.resume(instance.instance_id)
    assert final.status.value == "SUCCEEDED"
    assert [k.instance_id for k in await children_of(engine, instance.instance_id)] == [child.instance_id]
    (step,) = await storage.get_attempts(instance.instance_id)
    assert (step.attempt, step.outputs["subworkflow_instance_id"]) == (1, child.instance_id)


@pytest.mark.parametrize("where", ["creating the child", "reading the child", "the child's commit"])
async def test_a_store_error_is_retried_in_place_with_the_same_child(tmp_path, plugins, where, monkeypatch):
    """A store error while the sync step starts its child (the child written, the answer lost)
    or follows it (reading the child's record; the child's own commit, which drops the child's
    run) is retried in place with the same child, as SubworkflowStepRuntime turns a
    MaestroRetryableError into CONTINUE: a new attempt would start a second child beside the
    first, which `legato resume` would then run too."""
    from legato.engine import Engine
    from legato.plugins.memory import MemoryStorage
    from legato.storage import StorageError

    class Flaky(MemoryStorage):
        parent: str | None = None
        failures = 0

        def _fail(self, instance_id: str) -> None:
            if self.parent is not None and instance_id != self.parent and self.failures < 2:
                self.failures += 1
                raise StorageError("database is locked")

        async def get_instance(self, instance_id):
            record = await super().get_instance(instance_id)
            if where == "reading the child" and record is not None:
                self._fail(instance_id)
            return record

        async def create_instance(self, record, owner, ttl):
            answer = await super().create_instance(record, owner, ttl)
            if where == "creating the child":
                self._fail(record.instance_id)
            return answer

        async def commit(self, batch):
            if where == "the child's commit" and batch.attempts:
                self._fail(batch.instance_id)
            return await super().commit(batch)

    import legato.children

    monkeypatch.setattr(legato.children, "POLL_EVERY", 0.01)
    storage = Flaky()
    engine = Engine(storage, plugins=plugins, workspace=tmp_path / "runs")
    await push(engine, wf("child", leaf("c", "sleep", seconds=0.05, outputs={"made": 1})))
    definition = engine.load(wf("parent", sub("s", "child")))
    instance, _ = await engine.start(definition)
    storage.parent = instance.instance_id
    final = await engine.run(definition, instance)
    assert storage.failures == (1 if where == "creating the child" else 2)  # the retry finds the child created
    assert final.status.value == "SUCCEEDED", final.message
    (step,) = await storage.get_attempts(instance.instance_id)
    (kid,) = await children_of(engine, instance.instance_id)
    assert (step.attempt, step.status.value, step.outputs["subworkflow_instance_id"]) == (1, "SUCCEEDED", kid.instance_id)
    assert kid.status.value == "SUCCEEDED"
    logs = "".join(c.text for c in await storage.get_logs(instance.instance_id))
    assert "database is locked" in logs and "retrying" in logs, logs


@pytest.mark.parametrize("point", ["committed:4", "before_launch:3", "step_done:1", "step_done:3", "step_done:4"])
def test_a_parent_killed_with_a_grandchild_running_resumes_both_levels(tmp_path, point):
    """Two levels of sync subworkflows run in the parent's process (parent -> mid -> kid); the
    kernel is SIGKILLed at a named crash point inside them (step_done:1 ends the grandchild's
    first step, :3 the middle workflow's subworkflow step, :4 the parent's) and run again: each
    level follows the one child it started, which resumes its own; all SUCCEEDED, nothing twice."""
    from .test_recovery import RETRIES

    ledger = tmp_path / "ledger"
    ledger.touch()
    kid, _ = crash_workflows(ledger)
    mid = wf("mid", sub("m", "kid"))
    mid["workflow"]["steps"][0]["step"]["retry_policy"] = RETRIES
    parent = wf("top", sub("t", "mid"), params={"ledger": str(ledger)})
    parent["workflow"]["steps"][0]["step"]["retry_policy"] = RETRIES
    driver = Driver(tmp_path, None)
    for name, doc in (("kid", kid), ("mid", mid)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        proc = subprocess.run([LEGATO, "push", f"{name}.json"], env=driver.env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    path = tmp_path / "top.json"
    path.write_text(json.dumps(parent))
    driver.drive(path, "req", crash_at=point, kills=0)
    assert driver.cycles == 1, f"the kernel never reached {point}"
    lines = ledger.read_text().split()
    check_parent(driver.db, "req", lines, {"t": True}, ledgered=(), child_ledgered=set())
    (mid_request,), = _read(driver.db, "SELECT request_id FROM legato_instances WHERE workflow_id = 'mid'")
    check_parent(driver.db, mid_request, lines, {"m": True}, ledgered=())
    assert _read(driver.db, "SELECT workflow_id, count(*) FROM legato_instances GROUP BY workflow_id ORDER BY 1") == [
        ("kid", 1), ("mid", 1), ("top", 1)]


async def test_restarting_a_parent_restarts_its_failed_child_not_a_new_one(engine, tmp_path):
    """SubworkflowStepRuntime.runSubworkflowInstance (restartDirectly): a restart of the parent
    restarts the child of its earlier run from the child's incomplete steps; no second child,
    and the child's succeeded steps do not run again."""
    flag, ledger = tmp_path / "flag", tmp_path / "ledger"
    first = {"step": {"id": "ok", "type": "bash", "params": {"script": f'echo ok >> "{ledger}"'},
                      "transition": {"successors": ["flaky"]}}}
    flaky = {"step": {"id": "flaky", "type": "bash", "retry_policy": {"error_retry_limit": 0},
                      "params": {"script": f'echo flaky >> "{ledger}"; test -f "{flag}"'}}}
    await push(engine, wf("child", first, flaky))
    definition = engine.load(wf("parent", sub("s", "child")))
    done = await engine.execute(definition)
    assert done.status.value == "FAILED"
    (child,) = await children_of(engine, done.instance_id)
    assert child.status.value == "FAILED"

    flag.touch()
    again = await engine.restart(done.instance_id)
    assert again.status.value == "SUCCEEDED" and again.run_id == 2
    kids = await children_of(engine, done.instance_id)
    assert [k.instance_id for k in kids] == [child.instance_id], "a restart started another child"
    restarted = await engine.storage.get_instance(child.instance_id)
    assert restarted.status.value == "SUCCEEDED" and restarted.run_id == 2
    steps = {a.step_id: a for a in await engine.storage.get_attempts(done.instance_id)}
    assert steps["s"].attempt == 2 and steps["s"].outputs["subworkflow_instance_id"] == child.instance_id
    assert ledger.read_text().split() == ["ok", "flaky", "flaky"]  # `ok` ran once, in the first run
