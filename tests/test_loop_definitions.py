"""The definition side of foreach, while and subworkflow steps (DESIGN §2–3, issue 11): what the
loader builds for the engine (StepDef.loop, LoopDef, Definition.all_by_id / parent_of) and what it
refuses, each at its JSON pointer.

Maestro classes followed: ForeachStep, WhileStep, SubworkflowStep (fields; no retry policy),
Constants (FOREACH_CONCURRENCY_MAX_LIMIT, ITERATION_LIMIT, WORKFLOW_DEPTH_LIMIT), Defaults
(DEFAULT_STEP_CONCURRENCY, DEFAULT_SUBWORKFLOW_SYNC_FLAG, DEFAULT_SUBWORKFLOW_EXPLICIT_FLAG),
WorkflowConstraint (ids unique across nested steps, duplicate loop param names),
ForeachStepRuntime (loop arrays, the cartesian product, getConcurrency), WhileStepRuntime (scalar
loop params, the condition, updateWhileParams: body params named like a loop variable feed it),
Constants.WorkflowVersion (active, latest, a number).
"""

from __future__ import annotations

import copy
import json

import pytest

from legato.cel import to_cel
from legato.definition import DefinitionError, resolve_attributes
from legato.limits import (
    DEFAULT_FOREACH_CONCURRENCY,
    DEFAULT_WHILE_ITERATIONS,
    MAX_LOOP_ITERATIONS,
    MAX_WORKFLOW_DEPTH,
)

from .conftest import ROOT, legato_cli

LOOPS = ROOT / "examples" / "loops"
EXAMPLES = sorted(LOOPS.glob("*.json"))


def wf(*steps, **workflow) -> dict:
    properties = workflow.pop("properties", None)
    doc = {"workflow": {"id": "wf", "steps": list(steps), **workflow}}
    if properties is not None:
        doc["properties"] = properties
    return doc


def leaf(sid: str, **fields) -> dict:
    return {"step": {"id": sid, "type": "noop", **fields}}


def foreach(sid: str, steps: list, loop_params=None, **fields) -> dict:
    params = {**fields.pop("params", {}), "loop_params": loop_params if loop_params is not None else {"day": [1, 2]}}
    return {"foreach": {"id": sid, "params": params, "steps": steps, **fields}}


def while_(sid: str, steps: list, condition="n < 3", loop_params=None, **fields) -> dict:
    params = {**fields.pop("params", {}), "loop_params": loop_params if loop_params is not None else {"n": 0}}
    return {"while": {"id": sid, "condition": condition, "params": params, "steps": steps, **fields}}


def sub(sid: str, **params) -> dict:
    fields = {k: params.pop(k) for k in ("sync", "explicit_params", "transition") if k in params}
    return {"subworkflow": {"id": sid, "params": {"subworkflow_id": "other", **params}, **fields}}


def problems(engine, document) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        engine.load(document)
    return [(p.pointer, p.message) for p in info.value.problems]


def assert_refused(engine, document, pointer: str, substring: str) -> None:
    found = problems(engine, document)
    assert any(p == pointer and substring in m for p, m in found), found


# -- valid loads: what the engine reads ------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_loop_examples_validate_cleanly(path):
    """$ legato validate examples/loops/… : exit 0, no warning."""
    proc = legato_cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "valid" in proc.stdout


def test_foreach_over_dates_is_one_top_level_step_with_its_body(engine):
    """sample-foreach-wf: the body DAG is the loop's, with predecessors computed within it."""
    d = engine.load(LOOPS / "foreach-dates.json")
    assert [s.id for s in d.steps] == ["foreach-job"] and list(d.by_id) == ["foreach-job"]
    step = d.by_id["foreach-job"]
    assert step.type == "foreach" and step.params == {}
    loop = step.loop
    assert loop.kind == "foreach" and list(loop.loop_params) == ["i"]
    spec = loop.loop_params["i"]
    assert spec.type.value == "LONG_ARRAY" and spec.expression == "dateIntsBetween(20200101, 20200110, 1)"
    assert [s.id for s in loop.steps] == ["job.1", "job.2", "job.3", "job.4", "job.5", "job.6"]
    assert set(loop.by_id) == {s.id for s in loop.steps}
    assert sorted(loop.by_id["job.3"].predecessors) == ["job.2", "job.5"]
    assert sorted(t for t, _ in loop.by_id["job.1"].successors) == ["job.2", "job.5"]
    assert loop.concurrency == DEFAULT_FOREACH_CONCURRENCY and loop.condition is None
    assert loop.max_iterations == MAX_LOOP_ITERATIONS
    assert loop.params_pointer == "/workflow/steps/0/foreach/params/loop_params/value"
    assert list(d.all_by_id) == ["foreach-job", "job.1", "job.2", "job.3", "job.4", "job.5", "job.6"]
    assert d.parent_of == {f"job.{n}": "foreach-job" for n in range(1, 7)}
    assert loop.by_id["job.1"].pointer == "/workflow/steps/0/foreach/steps/0/step"


def test_nested_foreach_keeps_each_level_its_params_and_concurrency(engine):
    """sample-nested-foreach-wf: params other than loop_params stay the loop step's params."""
    d = engine.load(LOOPS / "nested-foreach.json")
    outer = d.by_id["foreach-job"]
    assert list(outer.params) == ["param1"] and list(outer.loop.loop_params) == ["i", "j"]
    assert outer.loop.concurrency == 2
    inner = outer.loop.by_id["job1"]
    assert inner.type == "foreach" and inner.loop.concurrency == 3 and list(inner.params) == ["param2"]
    assert [t for t, _ in inner.successors] == ["job.2"] and outer.loop.by_id["job.2"].predecessors == ["job1"]
    assert d.parent_of == {"job1": "foreach-job", "job.2": "foreach-job", "job.1": "job1"}
    assert d.all_by_id["job.1"] is inner.loop.by_id["job.1"]


def test_a_2d_foreach_with_its_literal_product_checked_and_its_concurrency(engine):
    d = engine.load(LOOPS / "large-foreach.json")
    loop = d.by_id["job1"].loop
    assert loop.concurrency == 100 and list(loop.loop_params) == ["i", "j"]
    doc = wf(foreach("each", [leaf("a")], {"x": list(range(1000)), "y": list(range(1000))}))
    assert engine.load(doc).by_id["each"].loop.concurrency == DEFAULT_FOREACH_CONCURRENCY  # 10^6: at the limit
    doc = wf(foreach("each", [leaf("a")], {"x": list(range(1000)), "y": list(range(1001))}))
    assert_refused(engine, doc, "/workflow/steps/0/foreach/params/loop_params", "1,001,000 iterations")


def test_foreach_concurrency_follows_the_workflows_step_concurrency(engine):
    """ForeachStepRuntime.getConcurrency: the smaller of the step's and the workflow's."""
    body = [leaf("a")]
    capped = engine.load(wf(foreach("each", body, concurrency=50), properties={"step_concurrency": 8}))
    assert capped.by_id["each"].loop.concurrency == 8
    default = engine.load(wf(foreach("each", body), instance_step_concurrency=7))
    assert default.by_id["each"].loop.concurrency == 7
    given = engine.load(wf(foreach("each", body, concurrency="300")))
    assert given.by_id["each"].loop.concurrency == 300


def test_while_compiles_its_condition_and_takes_its_iteration_limit(engine):
    """sample-while-wf: the condition sees the loop variables; a body param named like one feeds it."""
    d = engine.load(LOOPS / "while-counter.json")
    step = d.by_id["while-job"]
    assert step.type == "while" and step.loop.kind == "while" and step.loop.concurrency is None
    assert step.loop.max_iterations == DEFAULT_WHILE_ITERATIONS
    assert step.loop.loop_params["i"].value == 20200101
    cond = step.loop.condition
    assert cond.source == "i <= 20200105" and cond.constant is None
    assert cond.program.evaluate({"i": to_cel(20200105)}) is True
    assert cond.program.evaluate({"i": to_cel(20200106)}) is False
    assert step.loop.by_id["job.1"].params["i"].expression == "i + 1"
    limited = engine.load(wf(while_("w", [leaf("a", params={"n": {"type": "LONG", "expression": "n + 1"}})],
                                    max_iterations=5)))
    assert limited.by_id["w"].loop.max_iterations == 5
    forever = engine.load(wf(while_("w", [leaf("a")], condition="true", loop_params={})))
    assert forever.by_id["w"].loop.condition.constant is True and forever.by_id["w"].loop.loop_params == {}


def test_a_while_variable_fed_a_long_may_be_a_double(engine):
    doc = wf(while_("w", [leaf("a", params={"x": {"type": "LONG", "expression": "1"}})], "x < 2.5", {"x": 0.5}))
    engine.load(doc)


def test_subworkflow_is_a_leaf_with_sync_and_explicit_params_as_params(engine):
    """SubworkflowStep: `sync` (default true) and `explicit_params` (default false) move into the params."""
    d = engine.load(LOOPS / "subworkflow.json")
    assert [s.type for s in d.steps] == ["subworkflow"] * 6 and all(s.loop is None for s in d.steps)
    values = {s.id: {k: spec.value for k, spec in s.params.items()} for s in d.steps}
    assert values["job1"] == {"subworkflow_id": "loops-child", "subworkflow_version": "latest",
                              "param1": {"foo": "bar"}, "sync": True, "explicit_params": False}
    assert values["job3"]["sync"] is False and values["job5"]["explicit_params"] is True
    assert all(spec.type.value == "BOOLEAN" for s in d.steps for k, spec in s.params.items()
               if k in ("sync", "explicit_params"))
    given = engine.load(wf(sub("s", subworkflow_version="LATEST"), sub("t", subworkflow_version=3),
                           sub("u", subworkflow_version="12"), sub("v", subworkflow_version="Active")))
    assert [given.by_id[k].params["subworkflow_version"].value for k in "stuv"] == ["latest", 3, "12", "active"]


def test_subworkflow_inside_a_foreach_reads_the_loop_variables(engine):
    d = engine.load(LOOPS / "foreach-subworkflow.json")
    inner = d.by_id["foreach-step1"].loop.by_id["sub-step2"]
    assert inner.type == "subworkflow" and d.parent_of["sub-step2"] == "foreach-step1"
    assert inner.params["param1"].interpolated


def test_body_params_read_loop_variables_loop_index_and_the_loop_steps_params(engine):
    """Inside a body: the workflow's params, the loop step's params, the loop variables (bare,
    `params.x` and `${x}`), `loop.index`, and the steps upstream in the body or of the loop."""
    body = [leaf("first", params={"label": "${day}-${params.day}-${loop.index}-${loop.day}-${base}-${region}"},
                 transition={"successors": ["second"]}),
            leaf("second", params={"up": "${steps.first.outputs.x}", "before": "${steps.pre.outputs.y}",
                                   "n": {"type": "LONG", "expression": "steps.pre.outputs.n + day + first__label.size()"},
                                   "m": "${pre__seed}"})]
    doc = wf(leaf("pre", params={"seed": 1}, transition={"successors": ["each"]}),
             foreach("each", body, {"day": {"type": "LONG_ARRAY", "expression": "intsBetween(base, base + 3, 1)"}},
                     params={"region": "eu"},
                     transition={"successors": {"after": "steps.pre.outputs.ok == true"}}),
             leaf("after"), params={"base": 1})
    d = engine.load(doc)
    second = d.all_by_id["second"]
    assert {ref[0] for spec in second.params.values() for ref in spec.step_refs} == {"first__label", "pre__seed"}


def test_bodies_read_steps_far_upstream_of_their_loops_at_any_depth(engine):
    """A nested body reads a step upstream of the outer loop, two edges away; its own loop's
    upstream body step; and the outer body's step upstream of its loop."""
    inner = foreach("inner", [leaf("deep", params={"a": "${steps.root.status}", "b": "${steps.mid.status}",
                                                   "c": "${steps.sib.status}"})], {"k": [1]})
    outer = foreach("outer", [leaf("sib", transition={"successors": ["inner"]}), inner])
    doc = wf(leaf("root", transition={"successors": ["mid"]}), leaf("mid", transition={"successors": ["outer"]}),
             outer)
    d = engine.load(doc)
    assert d.parent_of["deep"] == "inner" and d.parent_of["inner"] == "outer"


def test_loop_variables_may_read_steps_upstream_of_the_loop(engine):
    doc = wf(leaf("pre", transition={"successors": ["each"]}),
             foreach("each", [leaf("a")], {"xs": {"type": "LONG_ARRAY", "expression": "steps.pre.outputs.days"}}))
    engine.load(doc)


def test_timeouts_with_params_in_bodies_are_resolved_per_instance(engine):
    doc = wf(foreach("each", [leaf("a", timeout="${hours} hours")], timeout="${hours} hours"), params={"hours": 2})
    d = engine.load(doc)
    assert sorted(d.templated) == ["a", "each"]
    timeout, steps = resolve_attributes(d, {"hours": 3})
    assert steps["a"].timeout == 3 * 3600 and steps["each"].timeout == 3 * 3600
    assert steps["each"].loop is d.by_id["each"].loop


def test_loops_nest_up_to_maestros_depth_limit(engine):
    def nest(level: int, n: int) -> dict:
        if level == n:
            return leaf("leaf")
        return foreach(f"l{level}", [nest(level + 1, n)], {f"v{level}": [1]})

    deepest = engine.load(wf(nest(0, MAX_WORKFLOW_DEPTH - 1)))  # the workflow and 9 bodies: 10 levels
    assert deepest.parent_of["leaf"] == f"l{MAX_WORKFLOW_DEPTH - 2}"
    found = problems(engine, wf(nest(0, MAX_WORKFLOW_DEPTH)))
    assert len(found) == 1 and "(MAX_WORKFLOW_DEPTH" in found[0][1]
    assert found[0][0] == "/workflow/steps/0" + "/foreach/steps/0" * (MAX_WORKFLOW_DEPTH - 1) + "/foreach/steps"


# -- refusals --------------------------------------------------------------------------------------

F = "/workflow/steps/0/foreach"
W = "/workflow/steps/0/while"
S = "/workflow/steps/0/subworkflow"

REFUSED = {
    "a foreach with a type": (wf(foreach("e", [leaf("a")], type="foreach")), F + "/type", "a foreach step has no `type`"),
    "a while field misspelt": (wf({"while": {"id": "w", "conditon": "true", "steps": [leaf("a")]}}),
                               W + "/conditon", "unknown while step field (did you mean `condition`?)"),
    "a subworkflow with steps": (wf({"subworkflow": {"id": "s", "params": {"subworkflow_id": "x"}, "steps": []}}),
                                 S + "/steps", "unknown subworkflow step field"),
    "a subworkflow retried": (wf({"subworkflow": {"id": "s", "params": {"subworkflow_id": "x"}, "retry_policy": {}}}),
                              S + "/retry_policy", "in the child workflow"),
    "a while without steps": (wf({"while": {"id": "w", "condition": "true"}}), W + "/steps", "non-empty array"),
    "a foreach body not a list": (wf({"foreach": {"id": "e", "params": {"loop_params": {"d": [1]}}, "steps": {}}}),
                                  F + "/steps", "non-empty array"),
    "loop_params not a MAP": (wf(foreach("e", [leaf("a")], {"type": "STRING_MAP", "value": {"d": "x"}})),
                              F + "/params/loop_params/type", "loop_params is a MAP"),
    "loop_params an expression": (wf(foreach("e", [leaf("a")], {"type": "MAP", "expression": "{}"})),
                                  F + "/params/loop_params/expression", "give each loop variable its own"),
    "loop_params a list": (wf(foreach("e", [leaf("a")], [1, 2])), F + "/params/loop_params", "loop_params is a MAP"),
    "a foreach without variables": (wf(foreach("e", [leaf("a")], {})), F + "/params/loop_params",
                                    "at least one loop variable"),
    "a foreach variable that is a map": (wf(foreach("e", [leaf("a")], {"d": {"k": 1}})),
                                         F + "/params/loop_params/d", "not a MAP"),
    "a loop variable with a bad name": (wf(foreach("e", [leaf("a")], {"loop": [1]})),
                                        F + "/params/loop_params/loop", "reserved"),
    "a secret loop variable": (wf(foreach("e", [leaf("a")], {"t": {"type": "STRING", "secret": True, "value": "env:T"}})),
                               F + "/params/loop_params/t/secret", "cannot be secret"),
    "a loop variable named like a param": (wf(foreach("e", [leaf("a")], {"d": [1]}, params={"d": 1})),
                                           F + "/params/loop_params/d", "both a loop variable and a param of `e`"),
    "a loop variable CEL error": (wf(foreach("e", [leaf("a")], {"d": {"type": "LONG_ARRAY", "expression": "[1,"}})),
                                  F + "/params/loop_params/d/expression", "CEL"),
    "a concurrency of 0": (wf(foreach("e", [leaf("a")], concurrency=0)), F + "/concurrency", "from 1 to 500"),
    "strict_ordering a string": (wf(foreach("e", [leaf("a")], strict_ordering="yes")), F + "/strict_ordering",
                                 "true or false"),
    "a while condition in SEL": (wf(while_("w", [leaf("a")], condition="return n < 3;")), W + "/condition",
                                 "looks like Maestro's SEL"),
    "a while condition not a string": (wf(while_("w", [leaf("a")], condition=3)), W + "/condition",
                                       "expected a CEL expression string"),
    "max_iterations over the limit": (wf(while_("w", [leaf("a")], max_iterations=MAX_LOOP_ITERATIONS + 1)),
                                      W + "/max_iterations", "(MAX_LOOP_ITERATIONS)"),
    "subworkflow_id a number": (wf({"subworkflow": {"id": "s", "params": {"subworkflow_id": 5}}}),
                                S + "/params/subworkflow_id", "a STRING, not a LONG"),
    "subworkflow_id not an id": (wf({"subworkflow": {"id": "s", "params": {"subworkflow_id": "my flow"}}}),
                                 S + "/params/subworkflow_id", "is not a workflow id"),
    "sync as a param": (wf({"subworkflow": {"id": "s", "params": {"subworkflow_id": "x", "sync": True}}}),
                        S + "/params/sync", "is a field of the subworkflow step, not a param"),
    "version zero": (wf(sub("s", subworkflow_version=0)), S + "/params/subworkflow_version", "a version number"),
    "version default": (wf(sub("s", subworkflow_version="default")), S + "/params/subworkflow_version",
                        "\"active\" (the default), \"latest\""),
    "a top-level successor into a body": (wf(foreach("e", [leaf("a")]), leaf("b", transition={"successors": ["a"]})),
                                          "/workflow/steps/1/step/transition/successors/a",
                                          "it is in the body of `e`"),
    "a successor into another body": (wf(foreach("e", [leaf("a", transition={"successors": {"b": "true"}})]),
                                         foreach("f", [leaf("b")], {"x": [1]})),
                                      F + "/steps/0/step/transition/successors/b",
                                      "it is in the body of `f`"),
    "the same id in two bodies": (wf(foreach("e", [leaf("a")]), foreach("f", [leaf("a")], {"x": [1]})),
                                  "/workflow/steps/1/foreach/steps/0/step/id",
                                  "duplicate step id 'a' (first defined at /workflow/steps/0/foreach/steps/0/step)"),
    "a body id equal to its loop's": (wf(foreach("e", [leaf("e")])), F + "/steps/0/step/id", "duplicate step id 'e'"),
    "loop.index outside a body": (wf(leaf("a", params={"i": "${loop.index}"})), "/workflow/steps/0/step/params/i",
                                  "${loop.index} names no param"),
    "loop.<name> that is neither index nor a variable": (wf(foreach("e", [leaf("a", params={"i": "${loop.idx}"})])),
                                                        F + "/steps/0/step/params/i", "`loop` holds `index`"),
    "a loop variable outside its body": (wf(foreach("e", [leaf("a")], transition={"successors": ["b"]}),
                                            leaf("b", params={"d": "${day}"})),
                                         "/workflow/steps/1/step/params/d", "${day} names no param"),
    "a body reading its loop step": (wf(foreach("e", [leaf("a", params={"s": "${steps.e.status}"})])),
                                     F + "/steps/0/step/params/s", "`steps.e` is the loop whose body holds `a`"),
    "a body reading a later body step": (wf(foreach("e", [leaf("a", params={"s": "${steps.b.outputs.x}"},
                                                                 transition={"successors": ["b"]}), leaf("b")])),
                                         F + "/steps/0/step/params/s", "`steps.b` runs after `a`"),
    "a body condition reading a step downstream of the loop": (
        wf(foreach("e", [leaf("a", transition={"successors": {"b": "steps.after.status == 'SUCCEEDED'"}}), leaf("b")],
                   transition={"successors": ["after"]}), leaf("after")),
        F + "/steps/0/step/transition/successors/b", "`steps.after` is outside the body of `e`"),
    "a body reading a parallel branch": (
        wf(leaf("root", transition={"successors": ["side", "e"]}), leaf("side"),
           foreach("e", [leaf("a", params={"s": "${steps.side.status}"})])),
        F.replace("/0/", "/2/") + "/steps/0/step/params/s", "`steps.side` is outside the body of `e` and not upstream"),
    "a nested body reading a step downstream of the outer loop": (
        wf(foreach("o", [foreach("i", [leaf("a", params={"s": "${steps.after.status}"})], {"k": [1]})],
                   transition={"successors": ["after"]}), leaf("after")),
        F + "/steps/0/foreach/steps/0/step/params/s", "`steps.after` is outside the body of `i`"),
    "a body reading a step of a sibling loop": (
        wf(foreach("e", [leaf("a")], transition={"successors": ["f"]}),
           foreach("f", [leaf("b", params={"n": {"type": "LONG", "expression": "steps.a.outputs.n"}})], {"x": [1]})),
        "/workflow/steps/1/foreach/steps/0/step/params/n/expression", "`steps.a` is a step of the body of `e`"),
    "a cross-step reference into a body": (
        wf(foreach("e", [leaf("a", params={"k": 1})], transition={"successors": ["b"]}),
           leaf("b", params={"n": {"type": "LONG", "expression": "a__k + 1"}})),
        "/workflow/steps/1/step/params/n/expression", "`a__k` reads step `a`, which is a step of the body of `e`"),
    "loop variables reading a step downstream": (
        wf(foreach("e", [leaf("a")], {"xs": {"type": "LONG_ARRAY", "expression": "steps.b.outputs.xs"}},
                   transition={"successors": ["b"]}), leaf("b")),
        F + "/params/loop_params/xs/expression", "`steps.b` runs after `e`"),
    "loop variables reading the body": (
        wf(foreach("e", [leaf("a")], {"xs": {"type": "LONG_ARRAY", "expression": "steps.a.outputs.xs"}})),
        F + "/params/loop_params/xs/expression", "`steps.a` is a step of `e`'s own body"),
    "a workflow param reading a body step": (wf(foreach("e", [leaf("a")]),
                                                params={"n": {"type": "LONG", "expression": "steps.a.outputs.n"}}),
                                             "/workflow/params/n/expression", "workflow params are evaluated when"),
    "a reference to no step from a body": (wf(foreach("e", [leaf("a", params={"s": "${steps.nosuch.status}"})])),
                                           F + "/steps/0/step/params/s", "`steps.nosuch` names no step"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_with_its_pointer(name, engine):
    document, pointer, substring = REFUSED[name]
    assert_refused(engine, copy.deepcopy(document), pointer, substring)


def test_every_problem_of_nested_bodies_is_reported_together(engine):
    doc = wf(foreach("e", [leaf("a", type="nosuch"), while_("w", [leaf("b", timeout="5 parsecs")], condition=None)],
                     {"d": 1}))
    found = problems(engine, doc)
    pointers = {p for p, _ in found}
    assert {F + "/params/loop_params/d", F + "/steps/0/step/type", F + "/steps/1/while/condition",
            F + "/steps/1/while/steps/0/step/timeout"} <= pointers, found


def test_a_body_step_may_be_named_like_a_loop_variable_in_a_foreach(engine):
    doc = wf(foreach("e", [leaf("a", params={"day": {"type": "LONG", "expression": "day + 1"}})]))
    engine.load(doc)


def test_strict_ordering_is_accepted_with_a_warning(engine):
    d = engine.load(wf(foreach("e", [leaf("a")], strict_ordering=True)))
    assert d.by_id["e"].loop.strict_ordering is True
    assert [w.pointer for w in d.warnings] == [F + "/strict_ordering"]


def test_validate_json_lists_the_nested_steps(tmp_path):
    """$ legato validate --json examples/loops/nested-foreach.json"""
    proc = legato_cli("validate", "--json", str(LOOPS / "nested-foreach.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["valid"] is True
