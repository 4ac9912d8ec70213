"""Maestro's definition format, accepted as written (issue 9, "Format").

Each test names the Maestro class or file (github.com/Netflix/maestro) whose behaviour it pins.
The workflows in tests/maestro/ are Maestro's own samples (maestro-server/src/test/resources/samples,
maestro-common/src/testFixtures/resources/fixtures) or written from them; each validates and runs
as written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from legato.definition import Backoff, DefinitionError, parse_duration

from . import scripted
from .conftest import legato_cli

MAESTRO = Path(__file__).parent / "maestro"


def wf(*steps, properties=None, **workflow):
    doc = {"workflow": {"id": "t", "steps": list(steps) or [{"step": {"id": "a", "type": "noop"}}], **workflow}}
    if properties is not None:
        doc["properties"] = properties
    return doc


def step(sid="a", type="noop", **fields):
    return {"step": {"id": sid, "type": type, **fields}}


def problems(engine, doc) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        engine.load(doc)
    return [(p.pointer, p.message) for p in info.value.problems]


# -- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    (12345, 12345), ("123456", 123456), ("300 seconds", 300), ("1 hour", 3600), ("2 min", 120),
    ("1h30m", 5400), ("10 minutes 5 seconds 1 day", 87005), ("1 Day, 2 Hours", 93600), ("90s", 90),
    ("5m", 300), ("2d", 172800), ("500ms", 0.5), ("3 secs", 3), ("1 minute", 60),
])
def test_durations_as_maestro_writes_them(text, seconds):
    """DurationParser (maestro-common utils) and ParsableLong: a number or numeric string is
    seconds; a string of number+unit pairs in any order (sample-timeouts.json) is summed."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 mon", "bar", "1+4", "1h 30", "h", ""])
def test_a_duration_with_leftovers_is_an_error_not_zero(text):
    """DurationParser skips what it cannot read ("bar" is 0 ms there, refused by TimeoutConstraint
    only because 0 is not positive); Legato refuses any leftover, so "5 mon" never means 5 s."""
    with pytest.raises(ValueError, match="not a duration|a duration is"):
        parse_duration(text)


def test_step_and_workflow_timeouts_take_maestro_durations(engine):
    """AbstractStep.timeout and Workflow.timeout are ParsableLong durations."""
    d = engine.load(wf(step(timeout="2 min"), timeout="1 hour"))
    assert d.timeout == 3600 and d.by_id["a"].timeout == 120


def test_a_bad_timeout_is_located(engine):
    """TimeoutConstraint: a timeout that is not a duration is refused, at its pointer."""
    found = problems(engine, wf(step(timeout="10 fortnights")))
    assert found == [("/workflow/steps/0/step/timeout", found[0][1])] and "not a duration" in found[0][1]


# -- enums and step types ----------------------------------------------------------------------


def test_enums_are_case_insensitive(engine):
    """ParamType / ParamMode / FailureMode / RunStrategy.Rule / BackoffPolicyType each read their
    JSON value with toUpperCase (their @JsonCreator create methods)."""
    d = engine.load(wf(
        step(type="noop", failure_mode="ignore_failure",
             params={"n": {"value": 3, "type": "long", "mode": "mutable_on_start"}},
             retry_policy={"backoff": {"type": "fixed_backoff"}}),
        properties={"run_strategy": "First_Only"}))
    a = d.by_id["a"]
    assert a.failure_mode.value == "IGNORE_FAILURE"
    assert a.params["n"].type.value == "LONG" and a.params["n"].mode.value == "MUTABLE_ON_START"
    assert a.retry.backoff.type == "fixed"
    assert d.run_strategy.value == "first_only"


def test_maestro_step_types_map_onto_registered_plugins(engine):
    """StepType enum: NOOP("NoOp"), SLEEP("Sleep"); Legato's step types are plugins, matched by
    name case-insensitively, and the definition keeps the registered name."""
    d = engine.load(wf(step("a", "NoOp"), step("b", "Sleep", params={"sleep_seconds": 0}), step("c", "SLEEP")))
    assert [s.type for s in d.steps] == ["noop", "sleep", "sleep"]


def test_an_unknown_step_type_gets_a_did_you_mean(engine):
    """StepType has a fixed list; Legato's is whatever is installed, so a typo names the nearest."""
    [(pointer, message)] = problems(engine, wf(step(type="Slep")))
    assert pointer == "/workflow/steps/0/step/type"
    assert "unknown step type 'Slep' (did you mean 'sleep'?)" in message and "installed:" in message


async def test_sleep_takes_maestro_sleep_seconds(run_doc):
    """Maestro's Sleep step reads `sleep_seconds` (samples/sample-dag-test-3.json)."""
    started = time.monotonic()
    result = await run_doc(wf(step(type="Sleep", params={"sleep_seconds": {"value": 0.2, "type": "DOUBLE"}})))
    assert result.status == "SUCCEEDED"
    assert time.monotonic() - started >= 0.2
    assert "sleeping 0.2s" in result.log("a")


# -- retry policy --------------------------------------------------------------------------------


def test_maestro_fixed_backoff_per_class_with_defaults(engine):
    """RetryPolicy.FixedBackoff.mergeWithDefault: a class left out waits Defaults' 60 s."""
    d = engine.load(wf(step(retry_policy={"error_retry_limit": 99, "platform_retry_limit": "3", "backoff": {
        "type": "FIXED_BACKOFF", "error_retry_backoff_in_secs": 1, "platform_retry_backoff_in_secs": "5"}})))
    r = d.by_id["a"].retry
    assert (r.error_retry_limit, r.platform_retry_limit, r.timeout_retry_limit) == (99, 3, 0)
    assert [r.backoff_for(c).delay(n) for c in ("error", "platform", "timeout") for n in (1, 3)] == [1, 1, 5, 5, 60, 60]


def test_maestro_exponential_backoff_per_class_with_defaults(engine):
    """RetryPolicy.ExponentialBackoff: base × exponent^k capped by *_retry_limit_in_secs; missing
    fields from Defaults.DEFAULT_EXPONENTIAL_BACK_OFF (60 s × 2^k, cap 600 s user / 3600 s others)."""
    d = engine.load(wf(step(retry_policy={"backoff": {
        "type": "EXPONENTIAL_BACKOFF", "error_retry_backoff_in_secs": 10, "error_retry_exponent": 3,
        "error_retry_limit_in_secs": "100 seconds", "timeout_retry_backoff_in_secs": "1 min"}})))
    r = d.by_id["a"].retry
    assert [r.backoff_for("error").delay(n) for n in (1, 2, 3)] == [10, 30, 90]
    assert r.backoff_for("error").delay(4) == 100
    assert r.backoff_for("platform") == Backoff("exponential", 60, 2, 3600)
    assert r.backoff_for("timeout").cap == 3600 and r.backoff_for("timeout").base == 60


def test_legato_short_retry_form_stays(engine):
    """Legato's own form (one backoff for every class) is unchanged beside Maestro's."""
    r = engine.load(wf(step(retry_policy={"backoff": {"type": "fixed", "base": 2}}))).by_id["a"].retry
    assert {r.backoff_for(c).delay(1) for c in ("error", "platform", "timeout")} == {2}


@pytest.mark.parametrize("policy, pointer, text", [
    ({"error_retry_limit": 100}, "/error_retry_limit", "from 0 to 99 (MAX_RETRY_LIMIT), got 100"),
    ({"platform_retry_limit": "many"}, "/platform_retry_limit", "got 'many'"),
    ({"backoff": {"type": "LINEAR_BACKOFF", "error_retry_backoff_in_secs": 1}}, "/backoff/type",
     "FIXED_BACKOFF or EXPONENTIAL_BACKOFF"),
    ({"backoff": {"type": "FIXED_BACKOFF", "error_retry_exponent": 2}}, "/backoff/error_retry_exponent",
     "unknown FIXED_BACKOFF field"),
    ({"backoff": {"type": "EXPONENTIAL_BACKOFF", "error_retry_backoff_in_secs": "soon"}},
     "/backoff/error_retry_backoff_in_secs", "not a duration"),
])
def test_bad_maestro_retry_policy_is_located(engine, policy, pointer, text):
    """Constants.MAX_RETRY_LIMIT (99) and RetryPolicy's backoff subtypes, refused at their pointer."""
    found = problems(engine, wf(step(retry_policy=policy)))
    assert any(p == "/workflow/steps/0/step/retry_policy" + pointer and text in m for p, m in found), found


def test_each_failure_class_waits_its_own_backoff(plugins, tmp_path):
    """StepInstance.getNextRetryDelay: a USER_FAILED attempt waits the error backoff, a
    PLATFORM_FAILED one the platform backoff (virtual time)."""
    from legato.engine import Engine
    from legato.plugins.memory import MemoryStorage

    scripted.calls.clear()
    policy = {"error_retry_limit": 5, "platform_retry_limit": 5, "backoff": {
        "type": "FIXED_BACKOFF", "error_retry_backoff_in_secs": 5, "platform_retry_backoff_in_secs": 100}}

    async def main():
        engine = Engine(MemoryStorage(), plugins=plugins, workspace=tmp_path)
        doc = wf(step("s", "scripted", retry_policy=policy,
                      params={"results": ["USER_ERROR", "PLATFORM_ERROR", "USER_ERROR", "DONE"]}))
        start = trio.current_time()
        instance = await engine.execute(engine.load(doc))
        return instance, [round(t - start, 3) for _, _, t in scripted.calls]

    instance, times = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert instance.status.value == "SUCCEEDED"
    assert times == [0, 5, 105, 110]


# -- envelopes, tags, run strategy, ids --------------------------------------------------------------


def test_create_request_envelope(engine):
    """WorkflowCreateRequest: properties, workflow, is_active, git_info, extra_info; kept in the
    document, not acted on."""
    doc = {**wf(), "properties": {"owner": {"name": "tester"}}, "is_active": False,
           "git_info": {"branch": "main"}, "extra_info": {"k": "v"}}
    d = engine.load(doc)
    assert d.workflow_id == "t" and d.document["git_info"] == {"branch": "main"}


def test_stored_definition_envelope(engine):
    """WorkflowDefinition: properties_snapshot (PropertiesSnapshot adds workflow_id, create_time,
    author), metadata, activation fields."""
    doc = {**wf(), "properties_snapshot": {"owner": "demo", "workflow_id": "t", "create_time": 1, "author": "x",
                                           "step_concurrency": 3},
           "metadata": {"workflow_id": "t", "create_time": 1}, "is_active": True, "is_latest": True,
           "is_default": True, "modify_time": 1, "activate_time": 1, "activated_by": "demo"}
    assert engine.load(doc).step_concurrency == 3


def test_properties_and_snapshot_together_are_refused(engine):
    """A document is a create request or a stored definition, not both."""
    assert ("/properties_snapshot", "give `properties` or Maestro's `properties_snapshot`, not both") in problems(
        engine, {**wf(), "properties": {}, "properties_snapshot": {}})


def test_tag_objects_and_strings(engine):
    """Tag (name, namespace, permit, attributes) and TagList, which also takes plain strings."""
    d = engine.load(wf(step(tags=[{"name": "Sleep", "namespace": "system", "attributes": {"a": 1}}, "job1"]),
                       tags=[{"name": "demo", "namespace": "SYSTEM"}, "test"]))
    assert d.by_id["a"].tags == ["Sleep", "job1"]


def test_bad_tag_objects_are_located(engine):
    """Tag.Namespace is an enum; a tag needs a name."""
    found = problems(engine, wf(tags=[{"namespace": "system"}, {"name": "x", "namespace": "galaxy"}]))
    assert ("/workflow/tags/0/name", "a tag object needs a `name` string") in found
    assert any(p == "/workflow/tags/1/namespace" and "unknown tag namespace 'galaxy'" in m for p, m in found)


@pytest.mark.parametrize("raw, rule", [
    ("parallel", "parallel"), ("STRICT_SEQUENTIAL", "strict_sequential"),
    ({"rule": "parallel", "workflow_concurrency": 20}, "parallel"), (5, "parallel"),
])
def test_run_strategy_shapes(engine, raw, rule):
    """RunStrategy: @JsonCreator from a rule name, from {rule, workflow_concurrency}, from a number
    (PARALLEL with that concurrency)."""
    assert engine.load(wf(properties={"run_strategy": raw})).run_strategy.value == rule


def test_only_parallel_allows_concurrency_above_one(engine):
    """RunStrategy's constructor: "Only PARALLEL run strategy allows a workflow_concurrency greater than 1"."""
    found = problems(engine, wf(properties={"run_strategy": {"rule": "sequential", "workflow_concurrency": 3}}))
    assert any(p == "/properties/run_strategy/rule" and "only the parallel run strategy" in m for p, m in found)


def test_dotted_step_ids_name_and_description(engine):
    """Maestro's samples use ids like job.1 (sample-dag-test-4.json); AbstractStep has name and description."""
    d = engine.load(wf(step("job.1", name="first", description="the first", transition={"successors": {"job.2": "true"}}),
                       step("job.2")))
    assert d.by_id["job.2"].predecessors == ["job.1"] and d.by_id["job.1"].name == "first"


def test_instance_step_concurrency_is_the_per_instance_cap(engine):
    """Workflow.instanceStepConcurrency caps one instance's running leaf steps: what Legato enforces."""
    assert engine.load(wf(instance_step_concurrency=4)).step_concurrency == 4
    assert engine.load(wf(instance_step_concurrency=4, properties={"step_concurrency": 2})).step_concurrency == 2


# -- honest contracts: warnings ------------------------------------------------------------------


def test_fields_not_enforced_yet_are_warned_about(engine):
    """time_triggers (the cron trigger, tests/test_cron_trigger.py), run_strategy and
    workflow_concurrency (legato.strategy), step_concurrency across instances and a step's tag
    permits (tests/test_permits.py) are enforced, so not warned about; a permit on a workflow's tag
    limits nothing and says so."""
    d = engine.load(wf(step(tags=[{"name": "gpu", "permit": 2}]), tags=[{"name": "team", "permit": 1}],
                       properties={"run_strategy": {"rule": "parallel", "workflow_concurrency": 3},
                                   "step_concurrency": 5},
                       time_triggers=[{"type": "cron", "cron": "0 6 * * *"}]))
    warned = {w.pointer: w.message for w in d.warnings}
    assert set(warned) == {"/workflow/tags/0/permit"}
    assert "limits nothing" in warned["/workflow/tags/0/permit"]
    assert d.steps[0].permits == {"gpu": 2} and d.shared_step_concurrency == 5


def test_a_plain_definition_has_no_warnings(engine):
    """Nothing to warn about: no warning (an empty time_triggers list, as Maestro writes it, included)."""
    assert engine.load(wf(time_triggers=[], signal_triggers=[])).warnings == []


def test_validate_and_run_print_the_warnings(tmp_path):
    """`validate` prints warnings on stderr and in --json; `run` prints them on stderr."""
    path = tmp_path / "w.json"
    path.write_text(json.dumps(wf(tags=[{"name": "team", "permit": 1}])))
    plain = legato_cli("validate", str(path))
    assert plain.returncode == 0 and "warning: /workflow/tags/0/permit: " in plain.stderr
    machine = legato_cli("validate", "--json", str(path))
    assert json.loads(machine.stdout)["warnings"][0]["pointer"] == "/workflow/tags/0/permit"
    ran = legato_cli("run", "--store", "memory://", str(path), cwd=tmp_path)
    assert ran.returncode == 0 and "limits nothing" in ran.stderr


# -- SEL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", [
    "return params.get('x');", "new DateTime(1569018000000).withZone(DateTimeZone.forID('UTC'))", "1 + 1;",
])
def test_sel_gets_an_error_that_says_so(engine, expression):
    """Maestro's SEL (netflix-sel) is a Java subset; Legato needs CEL and says so, pointing at the docs."""
    [(pointer, message)] = problems(engine, wf(params={"x": {"type": "LONG", "expression": expression}}))
    assert pointer == "/workflow/params/x/expression"
    assert message.startswith("CEL ") and "looks like Maestro's SEL" in message and "docs/maestro.md" in message


def test_a_plain_cel_mistake_gets_no_sel_hint(engine):
    """The SEL hint is only for what looks like SEL."""
    [(_, message)] = problems(engine, wf(params={"x": {"type": "LONG", "expression": "1 +"}}))
    assert "SEL" not in message


# -- Maestro's own samples -----------------------------------------------------------------------


SAMPLES = sorted(p.name for p in MAESTRO.glob("*.json"))


@pytest.mark.parametrize("name", SAMPLES)
async def test_maestro_samples_run_as_written(run_doc, name):
    """samples/sample-dag-test-4, -7 (types written `Long`, `lonG`), -9 (git_info, run_strategy
    object), fixtures/.../sample-minimal-wf-run-strategy-parallel (a stored WorkflowDefinition), and
    one written from sample-dag-test-3 / sample-conditional-wf without SEL."""
    doc = json.loads((MAESTRO / name).read_text())
    result = await run_doc(doc)
    expected = {"sleep-retry-conditional-wf.json": {"job1": "COMPLETED_WITH_ERROR", "job.4": "UNSATISFIED"}}.get(name, {})
    assert result.status == "SUCCEEDED"
    steps = [s["step"]["id"] for s in doc["workflow"]["steps"]]
    assert result.statuses() == {sid: expected.get(sid, "SUCCEEDED") for sid in steps}
    if name == "sleep-retry-conditional-wf.json":
        assert result.tries("job1") == ["USER_FAILED", "USER_FAILED", "COMPLETED_WITH_ERROR"]
