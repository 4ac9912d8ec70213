"""The published JSON Schema of the definition format (``legato schema``): it accepts every
definition Legato loads (the examples, the Maestro samples, every definition the test suite
loads, mutations of the examples that still load) and rejects shape errors, Maestro's shapes
included (envelopes, retry policy, run_strategy forms, tag objects, enums in any case)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import jsonschema
import pytest

from legato import definition as loader
from legato import loopdef
from legato.definition import DefinitionError, parse_document
from legato.params import _FULL_FORM_KEYS, ParamMode, ParamType
from legato.schema import SCHEMA_PATH, definition_schema

from .conftest import LEGATO, ROOT

SCHEMA = definition_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
DOCUMENTS = sorted([*(ROOT / "examples").glob("*.json"), *(ROOT / "examples").glob("*.yaml"),
                    *(ROOT / "examples" / "loops").glob("*.json"),
                    *(ROOT / "tests" / "maestro").glob("*.json"), *(ROOT / "tests" / "definitions").glob("valid/*")])


def errors(document) -> list[str]:
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in VALIDATOR.iter_errors(document)]


def test_the_schema_is_a_draft_2020_12_schema():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_shipped_file_is_what_the_builder_makes_from_the_loaders_tables():
    """After a change to the loader, `python -m legato.schema.build` rewrites the file."""
    from legato.schema.build import build

    assert build() == SCHEMA, "the schema is stale: run `python -m legato.schema.build`"


def test_legato_schema_prints_the_shipped_schema_and_where_it_is():
    """$ legato schema          the schema, as JSON
    $ legato schema --path   /…/site-packages/legato/schema/definition.schema.json"""
    printed = subprocess.run([LEGATO, "schema"], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and json.loads(printed.stdout) == SCHEMA
    where = subprocess.run([LEGATO, "schema", "--path"], capture_output=True, text=True, timeout=60)
    assert where.returncode == 0 and where.stdout == f"{SCHEMA_PATH}\n"
    assert json.loads(open(where.stdout.strip()).read()) == SCHEMA


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_and_sample_validates(path, engine):
    text = path.read_text(encoding="utf-8")
    engine.load(path)  # Legato loads it: the schema must accept it
    assert errors(parse_document(text, str(path))) == []


def test_every_definition_the_test_suite_loads_validates(tmp_path):
    """Each document the loader accepts while the definition and semantics tests run (recorded by
    tests/record_definitions.py) validates against the schema."""
    record = tmp_path / "loaded.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.record_definitions", "-p", "no:cacheprovider",
         "tests/test_maestro_format.py", "tests/test_semantics.py", "tests/test_docs.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "LEGATO_RECORD_DEFINITIONS": str(record)})
    assert proc.returncode == 0, proc.stdout[-3000:]
    documents = {line for line in record.read_text().splitlines()}
    assert len(documents) >= 50
    failures = {doc[:200]: errors(json.loads(doc)) for doc in sorted(documents) if errors(json.loads(doc))}
    assert failures == {}


def test_mutations_of_the_examples_that_still_load_validate(engine):
    """Examples with a key deleted, a value retyped or an element duplicated (the malformed-input
    generator's damage): whenever Legato still loads one, the schema must accept it."""
    from .test_malformed_inputs import EXAMPLES, _mutate

    loaded = 0
    for i in range(400):
        example = EXAMPLES[i % len(EXAMPLES)]
        kind = ("delete", "retype", "duplicate")[i % 3]
        text = _mutate(random.Random(f"schema:{i}"), example, kind).decode()
        suffix = ".json" if kind == "duplicate" else example.suffix
        try:
            document = parse_document(text, f"mutated{suffix}")
            engine.load(document)
        except DefinitionError:
            continue
        loaded += 1
        assert errors(document) == [], text[:500]
    assert loaded >= 40


def wf(*steps, **workflow) -> dict:
    properties = workflow.pop("properties", None)
    doc = {"workflow": {"id": "wf", "steps": list(steps) or [{"step": {"id": "a", "type": "noop"}}], **workflow}}
    if properties is not None:
        doc["properties"] = properties
    return doc


def step(**fields) -> dict:
    return {"step": {"id": "a", "type": "noop", **fields}}


SHAPE_ERRORS = {
    "no workflow": {"properties": {}},
    "workflow not an object": {"workflow": []},
    "no steps": {"workflow": {"id": "wf"}},
    "steps empty": {"workflow": {"id": "wf", "steps": []}},
    "steps not a list": {"workflow": {"id": "wf", "steps": {"a": {}}}},
    "unknown top-level key": wf() | {"workflwo": {}},
    "unknown workflow key": wf(stpes=[]),
    "workflow id with a space": {"workflow": {"id": "my flow", "steps": [step()]}},
    "a foreach step": wf({"foreach": {"id": "loop"}}),
    "two-key wrapper": wf({"step": {"id": "a", "type": "noop"}, "extra": {}}),
    "step without an id": wf({"step": {"type": "noop"}}),
    "step without a type": wf({"step": {"id": "a"}}),
    "step id starting with a digit": wf({"step": {"id": "1a", "type": "noop"}}),
    "a typo in a step field": wf(step(retry_polcy={})),
    "signal dependencies": wf(step(signal_dependencies=[])),
    "failure_mode misspelt": wf(step(failure_mode="ignore")),
    "retry limit over 99": wf(step(retry_policy={"error_retry_limit": 100})),
    "retry limit a word": wf(step(retry_policy={"error_retry_limit": "two"})),
    "backoff type unknown": wf(step(retry_policy={"backoff": {"type": "linear"}})),
    "fixed backoff with an exponent": wf(step(retry_policy={"backoff": {"type": "FIXED_BACKOFF",
                                                                        "error_retry_exponent": 2}})),
    "jitter over 1": wf(step(retry_policy={"backoff": {"jitter": 2}})),
    "timeout as a list": wf(step(timeout=[5])),
    "timeout in months": wf(step(timeout="5 mon")),
    "negative timeout": wf(step(timeout=-1)),
    "successors a string": wf(step(transition={"successors": "b"})),
    "a condition that is a number": wf(step(transition={"successors": {"b": 1}})),
    "a param type unknown": wf(params={"x": {"type": "LONGER", "value": 1}}),
    "a param mode unknown": wf(params={"x": {"type": "LONG", "value": 1, "mode": "sometimes"}}),
    "a full param without a value": wf(params={"x": {"type": "LONG"}}),
    "a value and an expression": wf(params={"x": {"type": "LONG", "value": 1, "expression": "1"}}),
    "a value without a type": wf(params={"x": {"value": 1}}),
    "a LONG that is a string": wf(params={"x": {"type": "long", "value": "abc"}}),
    "a STRING_ARRAY of numbers": wf(params={"x": {"type": "STRING_ARRAY", "value": [1, 2]}}),
    "a param name with a dash": wf(params={"my-param": 1}),
    "a reserved param name": wf(params={"steps": 1}),
    "a null param": wf(params={"x": None}),
    "run_strategy unknown": wf(properties={"run_strategy": "sometimes"}),
    "run_strategy object without a rule": wf(properties={"run_strategy": {"workflow_concurrency": 2}}),
    "sequential with concurrency 5": wf(properties={"run_strategy": {"rule": "sequential", "workflow_concurrency": 5}}),
    "step_concurrency 0": wf(properties={"step_concurrency": 0}),
    "unknown properties key": wf(properties={"ownr": "me"}),
    "properties and properties_snapshot": wf(properties={}) | {"properties_snapshot": {}},
    "a tag namespace unknown": wf(tags=[{"name": "x", "namespace": "galaxy"}]),
    "a tag without a name": wf(tags=[{"namespace": "system"}]),
    "a tag that is a number": wf(tags=[5]),
    "a negative tag permit": wf(step(tags=[{"name": "gpu", "permit": -1}])),
    "criticality unknown": wf(criticality="urgent"),
    "a trigger that is not cron": wf(time_triggers=[{"type": "hourly"}]),
    "a cron with 8 fields": wf(time_triggers=[{"type": "cron", "cron": "0 0 * * * * * *"}]),
    "a catch-up policy unknown": wf(time_triggers=[{"type": "cron", "cron": "0 0 * * *", "catch_up": "some"}]),
    "a predefined schedule unknown": wf(time_triggers=[{"type": "PREDEFINED", "expression": "@fortnightly"}]),
    "signal triggers": wf(signal_triggers=[{"definitions": {}}]),
    "is_active a string": wf() | {"is_active": "yes"},
}


@pytest.mark.parametrize("name", list(SHAPE_ERRORS))
def test_shape_errors_are_rejected_by_the_schema_as_by_legato(name, engine):
    document = SHAPE_ERRORS[name]
    with pytest.raises(DefinitionError):
        engine.load(document)
    assert errors(document), f"the schema accepts {name}: {json.dumps(document)}"


# What only `legato validate` can find: CEL, references, cycles, each step type's own params,
# installed step types, cron and time zone meaning, YAML keys that are not strings, NaN.
SEMANTIC = {
    "102-maestro-sel-expression.json", "25-step-id-duplicate.json", "27-step-type-unknown.json",
    "28-successor-unknown.json", "29-successor-self.json", "30-cycle-2.json", "31-cycle-3.json",
    "32-condition-cel-syntax-error.json", "33-condition-unknown-step.json", "35-param-expression-cel-syntax-error.json",
    "36-cel-nesting-too-deep.json", "37-cel-expression-too-long.json", "38-validator-cel-syntax-error.json",
    "39-step-param-expression-unknown-step.json", "43-param-bare-array-with-null.json",
    "51-interpolation-undeclared.json", "52-interpolation-malformed.json", "53-bash-neither-script-nor-argv.json",
    "54-bash-both-script-and-argv.json", "55-sleep-negative-seconds.json", "67-cron-invalid-hour.json",
    "69-timezone-unknown.json", "80-timezone-is-a-region-directory.json", "81-yaml-non-string-param-name.yaml",
    "82-yaml-non-string-successor.yaml", "90-interpolation-undeclared-via-params.json", "92-cron-never-fires.json",
    "97-double-not-finite.json", "110-maestro-map-nested-params.json", "112-maestro-cross-step-reference.json",
    "113-maestro-param-timeouts.json", "120-maestro-cross-step-not-upstream.json",
    "121-maestro-map-entry-references.json", "131-foreach-body-successor-outside.json",
    "132-foreach-duplicate-id-in-body.json", "133-foreach-body-cycle.json", "135-loops-nested-too-deep.json",
    "136-foreach-product-too-large.json", "138-nested-loop-duplicate-variable.json",
    "139-body-reads-step-not-upstream.json", "140-outside-reads-body-step.json",
    "141-loop-interpolation-undeclared.json", "142-while-feed-wrong-type.json", "143-subworkflow-recursion.json",
    "148-while-condition-reads-body.json",
}
INVALID = sorted((ROOT / "tests" / "definitions" / "invalid").iterdir())


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_the_invalid_corpus_is_rejected_unless_only_validate_can_tell(path):
    try:
        document = parse_document(path.read_text(encoding="utf-8"), path.name)
    except (DefinitionError, UnicodeDecodeError):
        return  # not a document at all: no schema applies
    found = errors(document)
    if path.name in SEMANTIC:
        assert not found, f"{path.name} is now caught by the schema: take it out of SEMANTIC"
    else:
        assert found, f"the schema accepts {path.name}, which Legato refuses"


def _ci_variants(value: str) -> list[str]:
    return [value.upper(), value.lower(), value.title(), value[0].lower() + value[1:].upper()]


ENUMS = {  # where the enum sits in a document -> the loader's values
    "failure_mode": ([m.value for m in loader.FailureMode], lambda v: wf(step(failure_mode=v))),
    "run_strategy": ([r.value for r in loader.RunStrategy], lambda v: wf(properties={"run_strategy": v})),
    "run_strategy rule": ([r.value for r in loader.RunStrategy],
                          lambda v: wf(properties={"run_strategy": {"rule": v}})),
    "param type": ([t.value for t in ParamType],
                   lambda v: wf(params={"x": {"type": v, "expression": "null"}})),
    "param mode": ([m.value for m in ParamMode], lambda v: wf(params={"x": {"type": "LONG", "value": 1, "mode": v}})),
    "criticality": (sorted(loader._CRITICALITIES), lambda v: wf(criticality=v)),
    "tag namespace": (sorted(loader._TAG_NAMESPACES), lambda v: wf(tags=[{"name": "t", "namespace": v}])),
    "backoff type": (["fixed", "exponential"], lambda v: wf(step(retry_policy={"backoff": {"type": v}}))),
    "maestro backoff type": (["FIXED_BACKOFF", "EXPONENTIAL_BACKOFF"],
                             lambda v: wf(step(retry_policy={"backoff": {"type": v}}))),
}


@pytest.mark.parametrize("where", list(ENUMS))
def test_enums_are_the_loaders_in_any_case(where):
    values, document = ENUMS[where]
    for value in values:
        for variant in _ci_variants(value):
            assert errors(document(variant)) == [], f"{where}: {variant!r} is refused"
        assert errors(document(value + "X")), f"{where}: {value + 'X'!r} is accepted"
    assert errors(document("")), f"{where}: the empty string is accepted"


def test_the_schemas_fields_are_the_loaders():
    """A field the loader learns (or forgets) must reach the schema too."""
    defs = SCHEMA["$defs"]
    assert set(SCHEMA["properties"]) == loader._TOP_KEYS
    assert set(defs["properties"]["properties"]) == loader._PROPERTY_KEYS
    assert set(defs["properties_snapshot"]["properties"]) == loader._PROPERTY_KEYS | loader._SNAPSHOT_KEYS
    assert set(defs["workflow"]["properties"]) == loader._WORKFLOW_KEYS
    assert set(defs["step"]["properties"]) == loader._STEP_KEYS - set(loader._NOT_YET)
    for kind in ("foreach", "while", "subworkflow"):
        assert set(defs[kind]["properties"]) == loopdef.KIND_KEYS[kind] - set(loader._NOT_YET)
    assert set(defs["steps"]["items"]["properties"]) == loader._WRAPPERS
    assert set(defs["retry_policy"]["properties"]) == loader._RETRY_KEYS
    assert set(defs["backoff"]["anyOf"][0]["properties"]) == loader._BACKOFF_KEYS
    assert set(defs["full_param"]["propertyNames"]["enum"]) == _FULL_FORM_KEYS
    assert set(defs["tags"]["items"]["anyOf"][1]["properties"]) == loader._TAG_KEYS
    assert defs["step"]["properties"]["id"]["pattern"] == loader._ID_RE.pattern
    assert defs["workflow"]["properties"]["id"]["pattern"] == loader._WORKFLOW_ID_RE.pattern


@pytest.mark.parametrize("duration", ["300", 300, 1.5, "300 seconds", "2 min", "1 hour", "1h30m", "500ms",
                                      "10 minutes 5 seconds 1 day", "1 day, 2 hours", "5M", "2 Hours"])
def test_durations_the_loader_reads_validate(duration, engine):
    document = wf(step(timeout=duration), timeout=duration)
    engine.load(document)
    assert errors(document) == []


def test_the_readme_says_how_to_point_vs_code_at_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert "legato schema" in readme and '"json.schemas"' in readme and '"yaml.schemas"' in readme
