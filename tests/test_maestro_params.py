"""Params as Maestro merges and evaluates them (issue 9, "Params: Maestro's merge rules", and the
`${param}` timeouts, retry limits and default timeouts of "Format").

Each test is a small workflow: definition -> start params -> evaluated params, or the error with
its JSON pointer. Each names the Maestro class (github.com/Netflix/maestro) it follows.
"""

from __future__ import annotations

import pytest

from legato.definition import DefinitionError
from legato.engine import StartError
from legato.limits import DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS


def wf(params=None, *steps, **workflow):
    steps = list(steps) or [{"step": {"id": "a", "type": "noop"}}]
    return {"workflow": {"id": "t", "params": params or {}, "steps": steps, **workflow}}


def step(sid="a", type="noop", to=(), **fields):
    body = {"id": sid, "type": type, **fields}
    if to:
        body["transition"] = {"successors": list(to)}
    return {"step": body}


def problems(engine, doc) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        engine.load(doc)
    return [(p.pointer, p.message) for p in info.value.problems]


async def started(engine, doc, params=None, raw=None) -> dict:
    instance, _ = await engine.start(engine.load(doc), params, raw_params=raw)
    return instance.params


async def refused(engine, doc, params=None, raw=None) -> tuple[str, str]:
    with pytest.raises(StartError) as info:
        await engine.start(engine.load(doc), params, raw_params=raw)
    return info.value.pointer, info.value.message


def p(type, value=None, **fields):
    out = {"type": type, **fields}
    if value is not None:
        out["value"] = value
    return out


# -- modes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["IMMUTABLE", "CONSTANT", "immutable"])
async def test_immutable_and_constant_params_cannot_be_set_at_start(engine, mode):
    """ParamsMergeHelper.ALLOWED_UPDATE_MODES: a LAUNCH may change MUTABLE, MUTABLE_ON_START and
    MUTABLE_ON_START_RESTART params only; validateParamModesIfMergeable refuses the rest."""
    pointer, message = await refused(engine, wf({"x": p("LONG", 1, mode=mode)}), {"x": 2})
    assert pointer == "/workflow/params/x/mode"
    assert f"it is {mode.upper()} and cannot be set when starting" in message


@pytest.mark.parametrize("mode", ["MUTABLE", "MUTABLE_ON_START", "MUTABLE_ON_START_RESTART"])
async def test_mutable_modes_are_set_at_start(engine, mode):
    """ParamsMergeHelper.DEFAULT_UPDATE_MODES, the modes a LAUNCH may change."""
    assert await started(engine, wf({"x": p("LONG", 1, mode=mode)}), raw={"x": "2"}) == {"x": 2}


async def test_an_immutable_param_given_its_own_value_is_no_change(engine):
    """ParamsMergeHelper.isChangedParamDef: the mode check applies only to a param the merge changes."""
    assert await started(engine, wf({"x": p("LONG", 1, mode="IMMUTABLE")}), {"x": 1}) == {"x": 1}


async def test_a_start_may_not_make_a_mode_less_strict(engine):
    """ParamsMergeHelper.validateParamModesIfMergeable: "Cannot modify param mode to be less
    strict" (PARAM_MODE_STRICTNESS: MUTABLE < MUTABLE_ON_START_RESTART < MUTABLE_ON_START <
    IMMUTABLE < CONSTANT). Run params are param definitions, with a mode of their own."""
    doc = wf({"x": p("LONG", 1, mode="MUTABLE_ON_START")})
    pointer, message = await refused(engine, doc, {"x": p("LONG", 2, mode="MUTABLE")})
    assert pointer == "/workflow/params/x/mode"
    assert "cannot make the mode less strict, from MUTABLE_ON_START to MUTABLE" in message
    assert await started(engine, doc, {"x": p("LONG", 2, mode="mutable_on_start")}) == {"x": 2}


async def test_a_start_may_not_raise_a_mode_past_what_it_may_set(engine):
    """ParamsMergeHelper.validateParamModesIfMergeable checks the merged mode against the LAUNCH's
    allowed modes: a start may make a param MUTABLE_ON_START, not CONSTANT."""
    doc = wf({"x": p("LONG", 1)})
    assert await started(engine, doc, {"x": p("LONG", 2, mode="MUTABLE_ON_START")}) == {"x": 2}
    pointer, message = await refused(engine, doc, {"x": p("LONG", 2, mode="CONSTANT")})
    assert pointer == "/workflow/params/x/mode" and "it is CONSTANT" in message


async def test_a_full_form_start_param_of_another_type_is_cast_or_refused(engine):
    """ParamsMergeHelper.generateMergedValueOrThrow: the given value is cast to the declared
    type, else "ParameterDefinition type mismatch"."""
    doc = wf({"x": p("DOUBLE", 1.5)})
    assert await started(engine, doc, {"x": p("LONG", 2)}) == {"x": 2.0}
    pointer, message = await refused(engine, doc, {"x": p("STRING", "2")})
    assert pointer == "/workflow/params/x/type" and "it is a DOUBLE, given a STRING" in message


async def test_a_start_param_may_be_an_expression(engine):
    """Maestro's run params are ParamDefinitions, so an expression too (evaluated at start)."""
    assert await started(engine, wf({"n": 2, "x": 1}), {"x": p("LONG", expression="n * 10")}) == {"n": 2, "x": 20}


# -- MAP and STRING_MAP ------------------------------------------------------------------------


async def test_map_values_are_nested_param_definitions(engine):
    """MapParamDefinition: the value of a MAP is Map<String, ParamDefinition>, each entry a
    param of its own (literal or expression); ParamEvaluator evaluates entry by entry."""
    doc = wf({"n": 3, "m": p("MAP", {
        "image": p("STRING", "busybox"),
        "count": p("LONG", expression="n + 1"),
        "inner": p("MAP", {"tag": p("STRING", "v${n}")}),
        "plain": {"a": [1, 2]},
    })})
    assert (await started(engine, doc))["m"] == {"image": "busybox", "count": 4, "inner": {"tag": "v3"},
                                                 "plain": {"a": [1, 2]}}


def test_a_literal_map_of_definitions_is_known_at_load(engine):
    """MapParamDefinition with literal entries only: its value is plain data once loaded, so a
    step type's schema checks it before anything runs."""
    spec = engine.load(wf({"m": p("MAP", {"image": p("STRING", "busybox"), "n": p("long", 2)})})).params["m"]
    assert spec.is_literal and spec.value == {"image": "busybox", "n": 2}


@pytest.mark.parametrize("entry, pointer, message", [
    (p("LONG", "x"), "/workflow/params/m/value/k/value", "expected a LONG"),
    (p("LONG", expression="1 +"), "/workflow/params/m/value/k/expression", "CEL"),
    (p("INT", 1), "/workflow/params/m/value/k/type", "unknown param type 'INT'"),
    (p("STRING"), "/workflow/params/m/value/k", "needs a `value` or an `expression`"),
    ({"type": "STRING", "value": "x", "secret": True}, "/workflow/params/m/value/k/secret", "cannot be secret"),
])
def test_a_bad_nested_definition_is_located(engine, entry, pointer, message):
    """MapParamDefinition builds each entry as a ParamDefinition (validate()); a bad one is
    refused at its own pointer."""
    found = problems(engine, wf({"m": p("MAP", {"k": entry})}))
    assert any(at == pointer and message in text for at, text in found), found


async def test_a_map_entry_takes_its_maps_stricter_mode(engine):
    """ParamsMergeHelper.MergeContext.copyWithParentMode: a nested param takes the stricter of its
    own mode and its MAP's; a CONSTANT entry cannot be set while its siblings can."""
    doc = wf({"m": p("MAP", {"a": p("STRING", "x"), "c": p("STRING", "y", mode="CONSTANT")})})
    assert (await started(engine, doc, {"m": {"a": "z"}}))["m"] == {"a": "z", "c": "y"}
    pointer, message = await refused(engine, doc, {"m": {"c": "z"}})
    assert pointer == "/workflow/params/m/value/c/mode" and "CONSTANT" in message
    strict = wf({"m": p("MAP", {"a": p("STRING", "x", mode="MUTABLE")}, mode="IMMUTABLE")})
    assert engine.load(strict).params["m"].entries[0][1].mode.value == "IMMUTABLE"
    pointer, _ = await refused(engine, strict, {"m": {"a": "z"}})
    assert pointer == "/workflow/params/m/value/a/mode"


async def test_map_overrides_deep_merge(engine):
    """ParamsMergeHelper.mergeParams: a literal MAP given at start merges into the declared one
    entry by entry (a nested MAP recursively, entries keep their types and expressions) instead
    of replacing it; a new key is added."""
    doc = wf({"m": p("MAP", {
        "image": p("STRING", "busybox"), "n": p("LONG", expression="1 + 1"),
        "inner": p("MAP", {"x": p("LONG", 1), "y": p("LONG", 2)}),
    })})
    merged = (await started(engine, doc, raw={"m": '{"image": "alpine", "inner": {"y": 5}, "new": true}'}))["m"]
    assert merged == {"image": "alpine", "n": 2, "inner": {"x": 1, "y": 5}, "new": True}
    pointer, message = await refused(engine, doc, {"m": {"inner": {"x": "one"}}})
    assert pointer == "/workflow/params/m/value/inner/value/x" and "expected a LONG" in message


async def test_a_shorthand_map_deep_merges_too(engine):
    """Legato's shorthand MAP (plain JSON) merges the same way, nested maps key by key."""
    doc = wf({"m": {"a": {"b": 1, "c": 2}, "d": 3}})
    assert (await started(engine, doc, {"m": {"a": {"c": 9}}}))["m"] == {"a": {"b": 1, "c": 9}, "d": 3}


async def test_string_map_overrides_merge_key_by_key(engine):
    """ParamsMergeHelper.mergeParams: STRING_MAP is baseMap.putAll(toMergeMap)."""
    doc = wf({"s": p("STRING_MAP", {"a": "1", "b": "2"})})
    assert (await started(engine, doc, {"s": {"b": "3", "c": "4"}}))["s"] == {"a": "1", "b": "3", "c": "4"}


async def test_a_start_value_merged_into_a_template_stays_data(engine):
    """Start values are data: merged beside `${}` templates, a `${…}` in them is not interpolated."""
    doc = wf({"n": 1, "s": p("STRING_MAP", {"a": "${n}"})})
    assert (await started(engine, doc, {"s": {"b": "${n}"}}))["s"] == {"a": "1", "b": "${n}"}


async def test_a_map_computed_by_an_expression_takes_no_map_at_start(engine):
    """ParamsMergeHelper.mapValueOrEmpty: "MAP param definition exp=… is not a literal"."""
    pointer, message = await refused(engine, wf({"m": p("MAP", expression="{'a': 1}")}), {"m": {"a": 2}})
    assert pointer == "/workflow/params/m" and "computed by an expression" in message


# -- params the start request adds ------------------------------------------------------------


async def test_a_start_may_add_params_typed_from_their_value(engine):
    """ParamsManager.generateMergedWorkflowParams merges every run param, declared or not;
    Legato types an added one from its value (ParamHelper.deriveTypedParameter)."""
    params = await started(engine, wf({"threshold": 1}), {"tags": ["a", "b"]},
                           raw={"n": "5", "ratio": "0.5", "on": "true", "word": "hello", "code": "007",
                                "obj": '{"k": "v"}'})
    assert params == {"threshold": 1, "tags": ["a", "b"], "n": 5, "ratio": 0.5, "on": True, "word": "hello",
                      "code": "007", "obj": {"k": "v"}}


async def test_an_added_param_is_seen_by_steps(run_doc):
    """An added param is a workflow param like the others: steps see it by name."""
    doc = wf({}, step("a", params={"got": p("LONG", expression="extra * 2")}))
    result = await run_doc(doc, {"extra": 21})
    assert result.status == "SUCCEEDED" and result.last["a"].params == {"got": 42}


@pytest.mark.parametrize("given, near", [
    ("threshhold", "threshold"), ("treshold", "threshold"), ("thresohld", "threshold"), ("THRESHOLD", "threshold"),
    ("threshol", "threshold"),
])
async def test_a_near_miss_of_a_declared_name_gets_a_did_you_mean(engine, given, near):
    """Maestro accepts any run param; Legato refuses one a single edit (or only case) from a
    declared name, a typo that would otherwise leave the declared param at its default."""
    pointer, message = await refused(engine, wf({"threshold": 1}), raw={given: "2"})
    assert pointer == f"/workflow/params/{given}"
    assert f"did you mean '{near}'?" in message


async def test_an_added_param_follows_the_naming_rules(engine):
    """Maestro's MaestroReferenceIdConstraint on param names; Legato's names that would change what
    a process runs (PATH, LD_PRELOAD …) are refused as in the definition."""
    pointer, message = await refused(engine, wf(), raw={"LD_PRELOAD": "/tmp/x.so"})
    assert pointer == "/workflow/params/LD_PRELOAD" and "is refused" in message
    pointer, message = await refused(engine, wf(), {"x": {"type": "STRING", "value": "env:X", "secret": True}})
    assert pointer == "/workflow/params/x" and "secret" in message


# -- tags and other keys in a definition --------------------------------------------------------


def test_tags_in_a_param_definition_are_part_of_it(engine):
    """AbstractParamDefinition has `tags` (a TagList): a definition with tags is still a
    definition, never a MAP literal whose keys are type/value/tags."""
    spec = engine.load(wf({"x": p("LONG", 5, tags=["SYSTEM", {"name": "runtime"}])})).params["x"]
    assert (spec.type.value, spec.value, spec.tags) == ("LONG", 5, ("SYSTEM", "runtime"))


@pytest.mark.parametrize("raw, pointer, message", [
    (p("LONG", 5, tagz=["a"]), "/workflow/params/x/tagz", "did you mean `tags`"),
    (p("LONG", 5, tags="a"), "/workflow/params/x/tags", "`tags` must be an array"),
    ({"type": "fruit", "value": 5}, "/workflow/params/x/type", "{\"type\": \"MAP\", \"value\": {…}}"),
])
def test_a_definition_with_a_wrong_key_is_an_error_not_a_map(engine, raw, pointer, message):
    """A mistyped field of a definition is located, with a did-you-mean; it does not quietly turn
    the whole definition into a MAP value."""
    found = problems(engine, wf({"x": raw}))
    assert any(at == pointer and message in text for at, text in found), found


# -- cross-step references ---------------------------------------------------------------------


async def test_step_params_are_referenced_from_other_steps_as_maestro_does(run_doc):
    """ParamEvaluator.getReferenceParam: `<step id>__<param>` (Constants.DEFAULT_STEP_PARAM_SEPARATOR)
    reads an upstream step's evaluated param, in `${}` (LiteralEvaluator) and in expressions."""
    doc = wf({}, step("job1", "sleep", to=["job2"], params={"sleep_seconds": 0}),
             step("job2", params={"said": "slept ${job1__sleep_seconds}s",
                                  "next": p("LONG", expression="job1__sleep_seconds + 1"),
                                  "m": p("MAP", {"k": p("LONG", expression="job1__sleep_seconds + 2")})}))
    result = await run_doc(doc)
    assert result.status == "SUCCEEDED"
    assert result.last["job2"].params == {"said": "slept 0s", "next": 1, "m": {"k": 2}}


def test_a_cross_step_reference_must_name_a_declared_param(engine):
    """ParamEvaluator.getReferenceParam: "Cannot find the referenced param name … in step"; a
    step's own param is referenced by its name."""
    doc = wf({}, step("job1", to=["job2"], params={"x": 1}),
             step("job2", params={"s": "${job1__y}", "t": p("LONG", expression="job2__s2 + 1"), "s2": 1}))
    found = dict(problems(engine, doc))
    assert "step 'job1' declares no param 'y' (it declares x)" in found["/workflow/steps/1/step/params/s"]
    assert "is this step's own param: write `s2`" in found["/workflow/steps/1/step/params/t"]


def test_a_reference_to_a_step_that_is_not_upstream_is_refused_at_load(engine):
    """ParamEvaluator.getReferenceParam: "a step can only reference its upstream step's param"; a
    step that is not upstream may or may not have finished, so the reference is refused at load,
    at its pointer, in `${}` and in expressions alike, naming the steps it can read."""
    doc = wf({}, step("job1", params={"x": 1}, to=["job3"]), step("job2", params={"y": p("LONG", expression="job1__x"),
                                                                   "s": "${job3__z}"}),
             step("job3", params={"z": 2}, to=["job2b"]), step("job2b", params={"w": "${job1__x}"}))
    assert problems(engine, doc) == [
        ("/workflow/steps/1/step/params/y/expression",
         "`job1__x` reads step `job1`, which is not upstream of `job2`, so it may or may not have run when `job2`'s "
         "params are evaluated; nothing is upstream of `job2` (or add `job2` to the successors of `job1`)"),
        ("/workflow/steps/1/step/params/s",
         "`job3__z` reads step `job3`, which is not upstream of `job2`, so it may or may not have run when `job2`'s "
         "params are evaluated; nothing is upstream of `job2` (or add `job2` to the successors of `job3`)")]
    doc = wf({}, step("job1", params={"x": 1, "y": "${job2__z}"}, to=["job2"]), step("job2", params={"z": 2}))
    assert problems(engine, doc) == [
        ("/workflow/steps/0/step/params/y",
         "`job2__z` reads step `job2`, which runs after `job1`, so it has not run yet when `job1`'s params are "
         "evaluated; nothing is upstream of `job1`")]


def test_workflow_params_cannot_reference_a_step_param(engine):
    """Workflow params are evaluated when the instance starts (ParamEvaluator.evaluateWorkflowParameters),
    before any step: `job1__x` there is refused at load like `steps.job1`."""
    doc = wf({"a": p("LONG", expression="job1__x + 1"), "b": "${job1__x}", "c": "${job1__x}!"},
             step("job1", params={"x": 1}))
    assert problems(engine, doc) == [
        ("/workflow/params/a/expression", "`job1__x`: workflow params are evaluated when the instance starts, "
                                          "before any step has run; read it in the params of a step downstream of job1"),
        ("/workflow/params/b", "`job1__x`: workflow params are evaluated when the instance starts, "
                               "before any step has run; read it in the params of a step downstream of job1"),
        ("/workflow/params/c", "`job1__x`: workflow params are evaluated when the instance starts, "
                               "before any step has run; read it in the params of a step downstream of job1")]
    # a workflow param whose name merely has the shape is its own param, not a reference
    d = engine.load(wf({"job1__x": 3, "b": "${job1__x}"}, step("job1", params={"x": 1})))
    assert d.params["b"].value == "${job1__x}"


def test_references_in_nested_map_definitions_are_checked_at_load(engine):
    """MapParamDefinition: each entry is a param definition, evaluated like a top-level one
    (ParamEvaluator.parseStepParameter recurses into it); its `${}` names, `steps.x` and
    `job__param` references are checked at load like a top-level param's, each at the entry."""
    doc = wf({"s": p("STRING", "env:HOME", secret=True)},
             step("job1", params={"x": 1}, to=["job2"]), step("other", params={"o": 1}),
             step("job2", params={"m": p("MAP", {
                 "k": p("STRING", "${nope}"),
                 "e": p("LONG", expression="steps.ghost.x"),
                 "d": p("MAP", {"deep": p("STRING", "${job1__y}")}),
                 "sec": p("STRING", "x${s}"),
                 "own": p("LONG", expression="job2__n"),
                 "far": p("LONG", expression="other__o", validator="value > 0"),
                 "up": p("LONG", expression="job1__x + 1"),
                 "st": p("STRING", "${steps.other.status}")}), "n": 1}))
    at = "/workflow/steps/2/step/params/m/value"
    assert problems(engine, doc) == [
        (f"{at}/k", "${nope} names no param; declare `nope` or write $${…} for a literal"),
        (f"{at}/e", "`steps.ghost` names no step"),
        (f"{at}/sec", "${s} names the secret param `s`: a secret is never pasted into another param (the result "
                      "would be stored); use it where it arrives in the step (bash: \"$s\")"),
        (f"{at}/d/value/deep", "`job1__y`: step 'job1' declares no param 'y' (it declares x)"),
        (f"{at}/own", "`job2__n` is this step's own param: write `n`"),
        (f"{at}/far/expression", "`other__o` reads step `other`, which is not upstream of `job2`, so it may or may "
                                 "not have run when `job2`'s params are evaluated; `job2` can read `job1` (or add "
                                 "`job2` to the successors of `other`)"),
        (f"{at}/st", "`steps.other` is not upstream of `job2`, so it may or may not have run when `job2`'s params "
                     "are evaluated; `job2` can read `job1` (or add `job2` to the successors of `other`)")]


async def test_a_nested_map_entry_reads_an_upstream_step_param_in_interpolation(run_doc):
    """MapParamDefinition entries evaluated with LiteralEvaluator: `${job1__sleep_seconds}` inside
    an entry reads the upstream step's param, as at the top level."""
    doc = wf({}, step("job1", "sleep", to=["job3"], params={"sleep_seconds": 0}),
             step("job3", params={"m": p("MAP", {"d": p("MAP", {"s": p("STRING", "slept ${job1__sleep_seconds}s")})})}))
    result = await run_doc(doc)
    assert result.status == "SUCCEEDED"
    assert result.last["job3"].params == {"m": {"d": {"s": "slept 0s"}}}


def test_a_param_named_with_a_double_underscore_is_still_a_param(engine):
    """A name with `__` whose prefix is no step id is an ordinary param."""
    d = engine.load(wf({"a__b": 1}, step("s", params={"c": "${a__b}"})))
    assert d.by_id["s"].params["c"].step_refs == ()


# -- timeouts and retry limits -----------------------------------------------------------------


def test_default_timeouts_are_maestros_ten_days(engine):
    """Defaults.DEFAULT_TIME_OUT_LIMIT_IN_MILLIS (10 days) for a step (MaestroTask) and a workflow
    (WorkflowTranslator) without `timeout`."""
    d = engine.load(wf())
    assert d.timeout == DEFAULT_TIMEOUT_SECONDS == 10 * 86400 and d.by_id["a"].timeout == DEFAULT_TIMEOUT_SECONDS


@pytest.mark.parametrize("timeout, ok", [("120 days", True), (MAX_TIMEOUT_SECONDS, True), ("121 days", False),
                                         (MAX_TIMEOUT_SECONDS + 1, False)])
def test_timeouts_are_at_most_120_days(engine, timeout, ok):
    """Constants.MAX_TIME_OUT_LIMIT_IN_MILLIS (120 days), checked by DurationParser."""
    if ok:
        assert engine.load(wf(timeout=timeout)).timeout == 120 * 86400
    else:
        [(pointer, message)] = problems(engine, wf(timeout=timeout))
        assert pointer == "/workflow/timeout" and "at most 10368000 seconds (120 days, MAX_TIMEOUT_SECONDS)" in message


async def test_timeouts_and_retry_limits_take_workflow_params(engine):
    """DurationParser.getTimeoutWithParamInMillis and RetryPolicyParser.getParsedRetryPolicy:
    a ParsableLong string is interpolated with the workflow's params when the instance and the
    step start, then read as seconds or a duration."""
    from legato.definition import resolve_attributes

    doc = wf({"hours": 2, "n": "3"}, step("a", timeout="${hours} hours", retry_policy={
        "error_retry_limit": "${n}", "backoff": {"type": "FIXED_BACKOFF", "error_retry_backoff_in_secs": "${hours}"}}),
        timeout="${hours}")
    definition = engine.load(doc)
    instance, _ = await engine.start(definition, {"hours": 5})
    timeout, steps = resolve_attributes(definition, instance.params)
    assert timeout == 5 and steps["a"].timeout == 5 * 3600
    assert steps["a"].retry.error_retry_limit == 3 and steps["a"].retry.backoff_for("error").delay(1) == 5


async def test_a_param_timeout_runs_out(engine):
    """MaestroTask.initializeTimeout: the interpolated step timeout is the one that applies."""
    doc = wf({"t": 1.5}, step("a", "sleep", params={"seconds": 30}, timeout="${t}"))
    definition = engine.load(doc)
    instance = await engine.execute(definition, {"t": 0.05})
    attempts = await engine.storage.get_attempts(instance.instance_id)
    assert instance.status.value in ("FAILED", "TIMED_OUT")
    assert "timed out after 0.05s" in attempts[-1].message


@pytest.mark.parametrize("given, pointer, message", [
    ({"t": 0}, "/workflow/steps/0/step/timeout", "a duration must be positive (\"${t}\" with this instance's params is \"0\")"),
    ({"t": 99999999}, "/workflow/steps/0/step/timeout", "at most 10368000 seconds"),
    ({"n": 100}, "/workflow/steps/0/step/retry_policy/error_retry_limit", "from 0 to 99 (MAX_RETRY_LIMIT), got '100'"),
])
async def test_a_param_that_reads_wrong_is_a_located_start_error(engine, given, pointer, message):
    """RetryPolicyParser.parseParsableLong / DurationParser: a value out of range after
    interpolation is refused, here when the instance starts, at the field's pointer."""
    doc = wf({"t": 5, "n": 1}, step("a", timeout="${t}", retry_policy={"error_retry_limit": "${n}"}))
    found = await refused(engine, doc, given)
    assert found[0] == pointer and message in found[1], found


@pytest.mark.parametrize("field, value, message", [
    ("timeout", "${nope}", "${nope} names no workflow param"),
    ("timeout", "${t} fortnights", "not a duration; write seconds"),
    ("retry_policy", {"error_retry_limit": "${t}00"}, "(read with 1 in place of each ${…})"),
])
def test_a_param_timeout_is_checked_at_load(engine, field, value, message):
    """TimeoutConstraint validates a templated timeout with a dummy value; only workflow params
    may be named (MaestroTask: "only support workflow level params in timeout")."""
    found = problems(engine, wf({"t": 1}, step("a", params={"local": 1}, **{field: value})))
    assert any(at.startswith(f"/workflow/steps/0/step/{field}") and message in text for at, text in found), found


def test_a_step_param_is_not_a_timeout_param(engine):
    """MaestroTask.initializeTimeout reads the workflow's params only, not the step's."""
    found = problems(engine, wf({}, step("a", params={"local": 1}, timeout="${local}")))
    assert found == [("/workflow/steps/0/step/timeout", found[0][1])] and "names no workflow param" in found[0][1]
