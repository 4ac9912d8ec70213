"""foreach and while steps run by the engine (DESIGN §3; issue 11's "Done when").

Followed: Maestro's ForeachStepRuntime (iterations over the cartesian product, the first loop
array varying fastest — createForeachRunParams —, at most ``concurrency`` at once, every iteration
run to its end before the step's status aggregates them) and WhileStepRuntime (the condition
checked before every iteration, a body step's param named like a loop variable feeding the next
iteration — updateWhileParams).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from . import scripted
from .conftest import legato_cli


def foreach(sid, loop, steps, concurrency=None, **extra):
    body = {"id": sid, "params": {"loop_params": {"type": "MAP", "value": loop}}, "steps": steps, **extra}
    if concurrency is not None:
        body["concurrency"] = concurrency
    return {"foreach": body}


def arr(kind, values):
    return {"type": kind, "value": values}


def step(sid, *, to=(), **params):
    body = {"id": sid, "type": "scripted", "params": params}
    if to:
        body["transition"] = {"successors": list(to)}
    return {"step": body}


def wf(*steps, **props):
    return {"properties": props, "workflow": {"id": "loops", "steps": list(steps)}} if props else \
        {"workflow": {"id": "loops", "steps": list(steps)}}


def iterations(done, loop="fe"):
    """Iteration number -> (status, loop variables), from the stored rows."""
    out = {}
    for a in done.attempts:
        head, _, number = a.step_id.rpartition("/")
        if head == loop and number.isdigit():
            out[int(number)] = (a.status.value, a.params)
    return out


async def test_cartesian_foreach_never_runs_more_than_its_concurrency(run_doc):
    """3×2 iterations, concurrency 2: at most 2 running at any moment, and 2 reached; Maestro's
    order (the first array fastest)."""
    running, peak = set(), [0]

    def observe(event):
        head, _, number = (event.step_id or "").rpartition("/")
        if head == "fe" and number.isdigit():
            if event.status == "RUNNING":
                running.add(number)
            else:
                running.discard(number)
            peak[0] = max(peak[0], len(running))

    done = await run_doc(wf(foreach("fe", {"i": arr("LONG_ARRAY", [1, 2, 3]), "j": arr("STRING_ARRAY", ["x", "y"])},
                                    [step("work", results=[{"sleep": 0.01}])], concurrency=2)), observer=observe)
    assert done.status == "SUCCEEDED"
    assert peak[0] == 2
    got = iterations(done)
    assert {n: v for n, (_, v) in got.items()} == {
        1: {"i": 1, "j": "x"}, 2: {"i": 2, "j": "x"}, 3: {"i": 3, "j": "x"},
        4: {"i": 1, "j": "y"}, 5: {"i": 2, "j": "y"}, 6: {"i": 3, "j": "y"}}
    assert all(s == "SUCCEEDED" for s, _ in got.values())
    assert done.last["fe"].outputs == {"iterations": 6, "counts": {"SUCCEEDED": 6}}
    assert sum(1 for sid, *_ in scripted.calls if sid.endswith("/work")) == 6


async def test_a_failing_iteration_lets_its_siblings_run_then_fails_the_step(run_doc):
    results = {"type": "STRING_ARRAY", "expression": "i == 2 ? ['FATAL_ERROR'] : ['DONE']"}
    done = await run_doc(wf(
        foreach("fe", {"i": arr("LONG_ARRAY", [1, 2, 3, 4])}, [step("work", results=results, to=["after"]),
                                                                step("after")], concurrency=1, transition={
            "successors": ["downstream"]}),
        step("downstream")))
    assert done.status == "FAILED"
    got = iterations(done)
    assert [got[n][0] for n in (1, 2, 3, 4)] == ["SUCCEEDED", "FATALLY_FAILED", "SUCCEEDED", "SUCCEEDED"]
    assert done.last["fe"].status.value == "FATALLY_FAILED"
    assert done.last["fe"].message == "1 of 4 iterations failed (2)"
    assert "downstream" not in done.last  # a failed step leaves its descendants NOT_CREATED
    assert "fe/2/after" not in done.last and done.last["fe/3/after"].status.value == "SUCCEEDED"


async def test_ignore_failure_on_a_foreach_continues_the_dag(run_doc):
    done = await run_doc(wf(
        foreach("fe", {"i": arr("LONG_ARRAY", [1, 2])},
                [step("work", results={"type": "STRING_ARRAY", "expression": "i == 1 ? ['FATAL_ERROR'] : ['DONE']"})],
                failure_mode="IGNORE_FAILURE", transition={"successors": ["downstream"]}),
        step("downstream")))
    assert done.status == "SUCCEEDED"
    assert done.last["fe"].status.value == "COMPLETED_WITH_ERROR"
    assert done.last["downstream"].status.value == "SUCCEEDED"


async def test_nested_foreach_sees_both_loops_variables(run_doc):
    inner = foreach("inner", {"x": {"type": "LONG_ARRAY", "expression": "intsBetween(0, i, 1)"}},
                    [step("leaf", outputs={"type": "MAP", "value": {
                        "v": {"type": "STRING", "expression": "string(i) + ':' + string(x)"}}})])
    done = await run_doc(wf(foreach("outer", {"i": arr("LONG_ARRAY", [1, 2, 3])}, [inner], concurrency=3)))
    assert done.status == "SUCCEEDED"
    seen = sorted(a.outputs["v"] for a in done.attempts if a.step_id.endswith("/leaf"))
    assert seen == ["1:0", "2:0", "2:1", "3:0", "3:1", "3:2"]
    assert iterations(done, "outer/3/inner") == {1: ("SUCCEEDED", {"x": 0}), 2: ("SUCCEEDED", {"x": 1}),
                                                 3: ("SUCCEEDED", {"x": 2})}


async def test_loop_index_and_the_loop_steps_own_params_reach_the_body(run_doc):
    done = await run_doc(wf({"foreach": {
        "id": "fe", "params": {"prefix": "day-", "loop_params": {"type": "MAP", "value": {"d": arr("LONG_ARRAY", [7, 8])}}},
        "steps": [step("work", outputs={"type": "MAP", "value": {"tag": {
            "type": "STRING", "expression": "prefix + string(d) + '#' + string(loop.index)"}}})]}}))
    assert done.status == "SUCCEEDED"
    assert sorted(a.outputs["tag"] for a in done.attempts if a.step_id.endswith("/work")) == ["day-7#0", "day-8#1"]


async def test_while_counts_to_n_through_its_body(run_doc):
    """The condition is checked before every iteration (the first included); the body's param
    named like the loop variable is its next value."""
    done = await run_doc(wf({"while": {
        "id": "count", "condition": "n < 4",
        "params": {"loop_params": {"type": "MAP", "value": {"n": {"type": "LONG", "value": 0}}}},
        "steps": [step("inc", n={"type": "LONG", "expression": "n + 1"})],
        "transition": {"successors": ["after"]}}},
        step("after", outputs={"type": "MAP", "value": {
            "total": {"type": "LONG", "expression": "steps.count.outputs.loop_params.n"}}})))
    assert done.status == "SUCCEEDED"
    assert [v["n"] for _, (_, v) in sorted(iterations(done, "count").items())] == [0, 1, 2, 3]
    assert done.last["after"].outputs["total"] == 4

    never = await run_doc(wf({"while": {
        "id": "count", "condition": "n < 0",
        "params": {"loop_params": {"type": "MAP", "value": {"n": {"type": "LONG", "value": 0}}}},
        "steps": [step("inc")]}}))
    assert never.status == "SUCCEEDED" and iterations(never, "count") == {}
    assert never.last["count"].outputs["iterations"] == 0


async def test_while_stops_at_its_iteration_limit_with_a_clear_end(run_doc):
    done = await run_doc(wf({"while": {
        "id": "count", "condition": "true", "max_iterations": 3,
        "params": {"loop_params": {"type": "MAP", "value": {"n": {"type": "LONG", "value": 0}}}},
        "steps": [step("inc")]}}))
    assert done.status == "FAILED"
    assert done.last["count"].status.value == "FATALLY_FAILED"
    assert "reached its limit of 3 iterations" in done.last["count"].message
    assert len(iterations(done, "count")) == 3


async def test_fail_immediately_in_a_body_ends_only_its_iteration(run_doc):
    """FAIL_IMMEDIATELY inside a body stops that iteration's other steps; the other iterations
    run to their end (every iteration runs to its end), then the loop step fails."""
    bad = {"type": "STRING_ARRAY", "expression": "i == 1 ? ['FATAL_ERROR'] : ['DONE']"}
    slow = {"type": "DOUBLE", "expression": "i == 1 ? 60.0 : 0.0"}
    done = await run_doc(wf(foreach("fe", {"i": arr("LONG_ARRAY", [1, 2])}, [
        {"step": {"id": "bad", "type": "scripted", "failure_mode": "FAIL_IMMEDIATELY", "params": {"results": bad}}},
        {"step": {"id": "slow", "type": "sleep", "params": {"seconds": slow}}},
    ], concurrency=2)))
    assert done.status == "FAILED"
    got = iterations(done)
    assert got[1][0] == "FATALLY_FAILED" and got[2][0] == "SUCCEEDED"
    assert done.last["fe/1/slow"].status.value == "STOPPED"
    assert done.last["fe/2/slow"].status.value == "SUCCEEDED"


async def test_stopping_an_instance_stops_its_iterations(engine):
    doc = wf(foreach("fe", {"i": arr("LONG_ARRAY", list(range(10)))}, [step("slow", results=[{"sleep": 60}])],
                     concurrency=3))
    definition = engine.load(doc)
    instance, _ = await engine.start(definition)
    async with trio.open_nursery() as nursery:
        run = await nursery.start(engine.run, definition, instance)
        while sum(1 for sid, *_ in scripted.calls if sid.endswith("/slow")) < 3:
            await trio.sleep(0.01)
        run.stop("enough")
    final = await engine.storage.get_instance(instance.instance_id)
    attempts = {a.step_id: a for a in await engine.storage.get_attempts(instance.instance_id)}
    assert final.status.value == "STOPPED"
    assert attempts["fe"].status.value == "STOPPED"
    rows = [a for sid, a in attempts.items() if sid.startswith("fe/") and sid.count("/") == 1]
    assert len(rows) == 3 and all(a.status.value == "STOPPED" for a in rows)


def test_foreach_in_the_cli_status_and_restart_of_only_failed_iterations(tmp_path):
    """`legato status` shows the loop as one row with its counts, STEP --iteration N one
    iteration; `legato restart` runs only the iterations that did not succeed."""
    flag, ledger = tmp_path / "flag", tmp_path / "ledger"
    doc = {"workflow": {"id": "days", "steps": [{"foreach": {
        "id": "days", "concurrency": 2,
        "params": {"loop_params": {"type": "MAP", "value": {
            "day": {"type": "LONG_ARRAY", "expression": "dateIntsBetween(20240101, 20240105, 1)"}}}},
        "steps": [{"step": {"id": "load", "type": "bash", "retry_policy": {"error_retry_limit": 0},
                            "params": {"script": f'echo "$day" >> "{ledger}"; '
                                                 f'[ "$day" != 20240103 ] || [ -f "{flag}" ]'}}}]}}]}}
    path = tmp_path / "days.json"
    path.write_text(json.dumps(doc))
    store = f"sqlite:///{tmp_path / 'legato.db'}"
    proc = legato_cli("run", str(path), "--store", store, "--workspace", str(tmp_path / "runs"), "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    iid = report["instance_id"]
    loop = report["steps"]["days"]
    assert loop["status"] == "FATALLY_FAILED"
    assert {n: it["status"] for n, it in loop["iterations"].items()} == {
        "1": "SUCCEEDED", "2": "SUCCEEDED", "3": "FATALLY_FAILED", "4": "SUCCEEDED"}
    assert loop["iterations"]["3"]["steps"]["load"]["status"] == "FATALLY_FAILED"

    proc = legato_cli("status", iid, "--store", store)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("  days "))
    assert "foreach 4/4 · 1 failed" in row and "FATALLY_FAILED" in row, proc.stdout
    proc = legato_cli("status", iid, "days", "--iteration", "3", "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert "iteration 3 of days: FATALLY_FAILED" in proc.stdout and '{"day": 20240103}' in proc.stdout
    assert any(line.split()[:2] == ["load", "FATALLY_FAILED"] for line in proc.stdout.splitlines()), proc.stdout
    proc = legato_cli("status", iid, "days", "--iteration", "9", "--store", store)
    assert proc.returncode == 2 and "no iteration 9 of step 'days'" in proc.stderr

    flag.touch()
    proc = legato_cli("restart", iid, "--store", store, "--workspace", str(tmp_path / "runs"), "--json")
    assert proc.returncode == 0, proc.stderr
    loop = json.loads(proc.stdout)["steps"]["days"]
    assert loop["status"] == "SUCCEEDED" and loop["attempt"] == 2
    assert loop["iterations"]["3"]["status"] == "SUCCEEDED"
    assert sorted(ledger.read_text().split()) == ["20240101", "20240102", "20240103", "20240103", "20240104"]


@pytest.mark.parametrize("crash_at", ["iteration_done:2", "committed:3", "step_done:3"])
def test_a_foreach_killed_midway_resumes_without_running_a_finished_iteration_again(tmp_path, crash_at):
    ledger = tmp_path / "ledger"
    doc = {"workflow": {"id": "crashy", "steps": [{"foreach": {
        "id": "fe", "concurrency": 2,
        "params": {"loop_params": {"type": "MAP", "value": {"i": arr("LONG_ARRAY", [1, 2, 3, 4, 5])}}},
        "steps": [{"step": {"id": "b", "type": "bash",
                            "params": {"script": f'echo "$LEGATO_IDEMPOTENCY_KEY" >> "{ledger}"'}}}]}}]}}
    path = tmp_path / "crashy.json"
    path.write_text(json.dumps(doc))
    store = f"sqlite:///{tmp_path / 'legato.db'}"
    args = ("run", str(path), "--store", store, "--workspace", str(tmp_path / "runs"), "--request-id", "once")
    proc = legato_cli(*args, env_extra={"LEGATO_CRASH_AT": crash_at})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    before = ledger.read_text().split() if ledger.exists() else []
    proc = legato_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "SUCCEEDED"
    assert len(report["steps"]["fe"]["iterations"]) == 5
    after = ledger.read_text().split()
    assert after[:len(before)] == before
    assert len(after) == len(set(after)), f"an attempt ran twice: {after}"
    ran = {key.split(":")[1] for key in after}
    assert ran == {f"fe/{n}/b" for n in range(1, 6)}


LOOP_EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "loops").glob("*.json"))


def test_maestros_loop_samples_run_as_written_in_cel(tmp_path):
    """examples/loops/: Maestro's foreach, nested foreach, 2-D foreach (~2,200 iterations,
    concurrency 100), while and subworkflow samples, converted to CEL; each runs to success once
    the workflows they start are pushed."""
    store = f"sqlite:///{tmp_path / 'legato.db'}"
    assert len(LOOP_EXAMPLES) >= 6
    for path in LOOP_EXAMPLES:
        proc = legato_cli("push", str(path), "--store", store)
        assert proc.returncode == 0, proc.stderr
    for path in LOOP_EXAMPLES:
        proc = legato_cli("run", str(path), "--store", store, "--workspace", str(tmp_path / "runs"), "--json",
                          timeout=300)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
        report = json.loads(proc.stdout)
        assert report["status"] == "SUCCEEDED", path.name
        loops = [s for s in report["steps"].values() if "iterations" in s]
        subs = [s for s in report["steps"].values() if "subworkflow_instance_id" in (s.get("outputs") or {})]
        assert loops or subs or path.name == "child.json", f"{path.name} ran no loop and no subworkflow"


async def test_body_outputs_are_read_downstream_per_iteration(run_doc):
    """Maestro's getFromForeach (MaestroParamExtension): a body step's output (or else param) of
    each iteration, in iteration order, null where an iteration has none."""
    outputs = {"type": "MAP", "value": {"square": {"type": "LONG", "expression": "i * i"}}}
    done = await run_doc(wf(
        foreach("fe", {"i": arr("LONG_ARRAY", [1, 2, 3, 4])}, [step("work", outputs=outputs, tag="t")], concurrency=2,
                transition={"successors": ["sum"]}),
        step("sum", outputs={"type": "MAP", "value": {
            "squares": {"type": "LONG_ARRAY", "expression": "getFromForeach('fe', 'work', 'square')"},
            "tags": {"type": "STRING_ARRAY", "expression": "getFromForeach('fe', 'work', 'tag')"}}})))
    assert done.status == "SUCCEEDED", done.last
    assert done.last["sum"].outputs["squares"] == [1, 4, 9, 16]
    assert done.last["sum"].outputs["tags"] == ["t", "t", "t", "t"]

    wrong = await run_doc(wf(step("sum", outputs={"type": "MAP", "value": {
        "x": {"type": "LONG_ARRAY", "expression": "getFromForeach('nope', 'work', 'square')"}}})))
    assert wrong.status == "FAILED"
    assert wrong.last["sum"].status.value == "INTERNALLY_FAILED"
    assert "'nope' is not a foreach step that ended upstream of this step" in wrong.last["sum"].message


async def test_a_loop_steps_own_timeout_stops_its_iterations(run_doc):
    """The foreach step's timeout counts from its STARTING: running iterations are stopped
    TIMED_OUT, none starts after, and the step and the instance end TIMED_OUT."""
    done = await run_doc(wf(foreach("fe", {"i": arr("LONG_ARRAY", [1, 2, 3, 4])},
                                    [step("slow", results=[{"sleep": 60}])], concurrency=2, timeout="1s")))
    assert done.status == "TIMED_OUT"
    assert done.last["fe"].status.value == "TIMED_OUT" and done.last["fe"].message == "timed out after 1s"
    got = iterations(done)
    assert sorted(got) == [1, 2] and all(s == "TIMED_OUT" for s, _ in got.values())
    assert done.last["fe/1/slow"].status.value == "TIMED_OUT"
