"""Builds ``definition.schema.json`` from the loader's own tables (its field names, enums, limits
and patterns), so the schema says what :mod:`legato.definition` accepts.

After changing the loader: ``python -m legato.schema.build`` rewrites the file;
``tests/test_schema.py`` fails while the shipped file and :func:`build` differ.
"""

from __future__ import annotations

import json
import re

from .. import definition as d
from .. import loopdef
from ..limits import (
    MAX_BACKOFF_EXPONENT,
    MAX_CONCURRENCY,
    MAX_DURATION_SECONDS,
    MAX_FOREACH_CONCURRENCY,
    MAX_LOOP_ITERATIONS,
    MAX_RETRY_LIMIT,
    MAX_TIMEOUT_SECONDS,
)
from ..params import _FULL_FORM_KEYS, NAME_RE, RESERVED_NAMES, ParamMode, ParamType
from . import SCHEMA_PATH

__all__ = ["build", "main"]


def ci_word(w: str) -> str:
    """A pattern matching ``w`` in any case (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in w)


def ci_enum(values, description: str, examples=None) -> dict:
    """A string that is one of ``values`` in any case, as Maestro reads its enums."""
    return {"type": "string", "pattern": "^(?:" + "|".join(ci_word(v) for v in values) + ")$",
            "description": description + " (any case).", "examples": list(examples or values)}


def whole(lo: int, hi: int, what: str) -> dict:
    """A whole number, or a string of one (Maestro's ParsableLong)."""
    return {"description": f"{what}: a whole number from {lo} to {hi}, or a string of one (Maestro's ParsableLong).",
            "anyOf": [{"type": "integer", "minimum": lo, "maximum": hi},
                      {"type": "string", "pattern": "^\\s*[0-9]{1,100}\\s*$"}]}


#: A ``${param}`` reference to a workflow param, which timeouts and retry fields may hold (read at start).
TEMPLATE = {"type": "string", "pattern": "\\$\\{", "description": "A string with ${param} references to workflow "
            "params, read when the instance starts (Maestro's parameterised timeouts and retries)."}


def templated(schema: dict) -> dict:
    """``schema``, or a ``${param}`` template in its place."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], TEMPLATE]}
    return {"anyOf": [schema, TEMPLATE], **({"description": schema["description"]} if "description" in schema else {})}


def build() -> dict:
    """The schema, as a dict."""
    # The loader's own unit alternation (milliseconds?|ms|…), each letter in either case.
    units = re.search(r"\((milli[^)]*)\)", d._DURATION.pattern).group(1)
    unit_re = "(?:" + re.sub(r"[a-z]", lambda m: f"[{m.group().upper()}{m.group()}]", units) + ")"
    duration_string = ("^(?:\\s*[+-]?[0-9]+(?:\\.[0-9]+)?\\s*|(?:\\s*[0-9]+(?:\\.[0-9]+)?\\s*" + unit_re + "(?![A-Za-z])\\s*,?)+)$")

    def duration(desc, zero=False):
        num = {"type": "number", "maximum": MAX_TIMEOUT_SECONDS}
        num["minimum" if zero else "exclusiveMinimum"] = 0
        return {"description": desc + " Seconds as a number or a numeric string, or a string of number-and-unit pairs: "
                                      "\"300 seconds\", \"2 min\", \"1h30m\", \"500ms\", \"1 day, 2 hours\".",
                "anyOf": [num, {"type": "string", "pattern": duration_string}, TEMPLATE],
                "examples": [300, "90s", "5m", "1h30m", "2 min", "1 hour"]}

    RETRY = d.RETRY_CLASSES
    maestro_keys_fixed = {f"{c}_retry_backoff_in_secs": {"$ref": "#/$defs/backoff_seconds"} for c in RETRY}
    maestro_keys_exp = dict(maestro_keys_fixed)
    for c in RETRY:
        maestro_keys_exp[f"{c}_retry_exponent"] = {
            "description": f"The exponent of the {c} class's backoff (default 2).",
            "anyOf": [{"type": "number", "minimum": 1, "maximum": MAX_BACKOFF_EXPONENT},
                      {"type": "string", "pattern": "^\\s*[+-]?[0-9]+(?:\\.[0-9]+)?\\s*$"}, TEMPLATE]}
        maestro_keys_exp[f"{c}_retry_limit_in_secs"] = {"$ref": "#/$defs/backoff_seconds"}

    any_value = {}
    defs = {
      "tags": {
        "description": "Tags: strings, or Maestro's Tag objects.",
        "type": ["array", "null"],
        "items": {"anyOf": [
          {"type": "string"},
          {"type": "object", "required": ["name"], "additionalProperties": False,
           "properties": {
             "name": {"type": "string", "minLength": 1},
             "namespace": ci_enum(sorted(n.lower() for n in d._TAG_NAMESPACES), "Maestro's tag namespace"),
             "permit": {"type": "integer", "minimum": 0, "description": "Steps carrying this tag that may run at once, across every instance (`legato permits set` overrides it)."},
             "attributes": {"type": "object"}}}]}},
      "owner": {"description": "Who owns the workflow: a name, or Maestro's {\"name\": …} object.",
                "type": ["string", "object"]},
      "run_strategy": {
        "description": "Maestro's RunStrategy: a rule, {rule, workflow_concurrency}, or a number (parallel with that "
                       "concurrency). Accepted, warned: not enforced yet.",
        "anyOf": [
          ci_enum([r.value for r in d.RunStrategy], "A run strategy rule"),
          {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY},
          {"type": "object", "required": ["rule"], "additionalProperties": False,
           "properties": {"rule": ci_enum([r.value for r in d.RunStrategy], "A run strategy rule"),
                          "workflow_concurrency": whole(1, MAX_CONCURRENCY, "Instances at once (parallel only)")}}]},
      "properties": {
        "description": "Not versioned: owner, run strategy, concurrency, alerting (Maestro's Properties).",
        "type": ["object", "null"], "additionalProperties": False,
        "properties": {
          "owner": {"$ref": "#/$defs/owner"},
          "run_strategy": {"$ref": "#/$defs/run_strategy"},
          "step_concurrency": whole(1, MAX_CONCURRENCY, "Steps running at once across every instance of the workflow"),
          "workflow_concurrency": whole(1, MAX_CONCURRENCY, "Instances at once (parallel only); warned: not enforced yet"),
          "description": {"description": "Free text."},
          "alerting": {"description": "Maestro's alerting config: accepted, not acted on."},
          "access_control": {"description": "Maestro's access control: accepted, not acted on."},
          "alerting_disabled": {"description": "Accepted, not acted on."},
          "signal_trigger_disabled": {"description": "Accepted, not acted on."},
          "time_trigger_disabled": {"description": "true: this version's time triggers do not run."},
          "tags": {"$ref": "#/$defs/tags"}}},
      "param": {
        "description": "A param: the full form {type, value | expression, mode, validator, secret} or a bare JSON literal "
                       "(its type inferred).",
        "anyOf": [{"$ref": "#/$defs/full_param"}, {"$ref": "#/$defs/literal_param"}]},
      "full_param": {
        "type": "object", "required": ["type"], "propertyNames": {"enum": sorted(_FULL_FORM_KEYS)},
        "oneOf": [{"required": ["value"]}, {"required": ["expression"]}],
        "properties": {
          "type": ci_enum([t.value for t in ParamType], "The param's type"),
          "value": {"description": "The value (a reference such as \"env:NAME\" or \"file:/path\" for a secret)."},
          "expression": {"type": "string", "description": "A CEL expression computing the value."},
          "mode": ci_enum([m.value for m in ParamMode], "Who may override the value"),
          "validator": {"type": ["string", "null"], "description": "A CEL expression over `value` that must be true."},
          "description": {"description": "Free text."},
          "secret": {"type": "boolean", "description": "The value is a reference resolved by the worker, never stored."}}},
      "literal_param": {
        "description": "A bare literal: a string, number, boolean, array or object.",
        "type": ["string", "number", "boolean", "array", "object"],
        "not": {"anyOf": [
          {"type": "object", "required": ["type"], "propertyNames": {"enum": sorted(_FULL_FORM_KEYS)}},
          {"type": "object", "required": ["type"], "not": {"anyOf": [{"required": ["value"]}, {"required": ["expression"]}]}},
          {"type": "object", "not": {"required": ["type"]}, "anyOf": [{"required": ["value"]}, {"required": ["expression"]}]}]}},
      "params": {
        "description": "Params by name: letters, digits and _, not starting with a digit.",
        "type": ["object", "null"],
        "propertyNames": {"pattern": NAME_RE.pattern, "not": {"enum": sorted(RESERVED_NAMES)}},
        "additionalProperties": {"$ref": "#/$defs/param"}},
      "backoff_seconds": {
        "description": "Seconds (0 allowed) as a number, a numeric string or a duration string.",
        "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_DURATION_SECONDS},
                  {"type": "string", "pattern": duration_string}, TEMPLATE]},
      "backoff": {
        "description": "Legato's backoff for every failure class, or Maestro's per-class FIXED_BACKOFF / "
                       "EXPONENTIAL_BACKOFF.",
        "anyOf": [
          {"type": "object", "additionalProperties": False, "properties": {
            "type": ci_enum(["fixed", "exponential"], "Legato's backoff type (default exponential)"),
            "base": templated({"type": "number", "minimum": 0, "maximum": MAX_DURATION_SECONDS, "description": "Seconds before the first retry (default 1)."}),
            "exponent": templated({"type": "number", "minimum": 1, "maximum": MAX_BACKOFF_EXPONENT, "description": "Growth per retry (default 2)."}),
            "cap": templated({"type": "number", "minimum": 0, "maximum": MAX_DURATION_SECONDS, "description": "The longest delay (default 600)."}),
            "jitter": templated({"type": "number", "minimum": 0, "maximum": 1, "description": "Up to this fraction of the delay added at random."})}},
          {"type": "object", "required": ["type"], "additionalProperties": False,
           "properties": {"type": ci_enum(["FIXED_BACKOFF"], "Maestro's fixed backoff"), **maestro_keys_fixed}},
          {"type": "object", "additionalProperties": False,
           "properties": {"type": ci_enum(["EXPONENTIAL_BACKOFF"], "Maestro's exponential backoff"), **maestro_keys_exp}}]},
      "retry_policy": {
        "description": "Retry limits per failure class (user errors, platform errors, timeouts) and the backoff.",
        "type": ["object", "null"], "additionalProperties": False,
        "properties": {
          "error_retry_limit": templated(whole(0, MAX_RETRY_LIMIT, "Retries of user errors (default 2)")),
          "platform_retry_limit": templated(whole(0, MAX_RETRY_LIMIT, "Retries of platform errors (default 10)")),
          "timeout_retry_limit": templated(whole(0, MAX_RETRY_LIMIT, "Retries of timeouts (default 0)")),
          "backoff": {"$ref": "#/$defs/backoff"}}},
      "transition": {
        "type": ["object", "null"], "additionalProperties": False,
        "properties": {"successors": {
          "description": "Step id -> CEL condition (or true/false); a list of step ids for unconditional edges.",
          "anyOf": [{"type": "object", "additionalProperties": {"type": ["string", "boolean"]}},
                    {"type": "array", "items": {"type": "string"}}]}}},
      "step": {
        "description": "A leaf step of some type.",
        "type": "object", "required": ["id", "type"], "additionalProperties": False,
        "properties": {
          "id": {"type": "string", "pattern": d._ID_RE.pattern, "description": "Unique in the definition; dots allowed (job.1)."},
          "type": {"type": "string", "minLength": 1, "description": "An installed step type (`legato plugins`), any case.",
                   "examples": ["bash", "noop", "sleep", "sql", "notebook", "docker", "http", "python"]},
          "name": {"type": "string"},
          "description": {"type": "string"},
          "params": {"$ref": "#/$defs/params"},
          "transition": {"$ref": "#/$defs/transition"},
          "retry_policy": {"$ref": "#/$defs/retry_policy"},
          "timeout": {"anyOf": [{"type": "null"}, duration("The step's timeout, from STARTING.")]},
          "failure_mode": ci_enum([m.value for m in d.FailureMode], "What a fatal failure of this step does"),
          "tags": {"$ref": "#/$defs/tags"}}},
      "time_trigger": {
        "description": "Maestro's TimeTrigger: CRON (cron, timezone), PREDEFINED (expression, timezone) or INTERVAL "
                       "(interval, start), each with fuzzy_max_delay; Legato's catch_up (the cron trigger plugin reads it).",
        "type": "object", "required": ["type"], "additionalProperties": False,
        "properties": {"type": ci_enum(["CRON", "PREDEFINED", "INTERVAL"], "The kind of time trigger"),
                       "cron": {"type": "string", "pattern": "^\\s*\\S+(?:\\s+\\S+){4,6}\\s*$",
                                "description": "5 fields (m h dom mon dow), or Quartz's 6 or 7 (s m h dom mon dow [year])."},
                       "expression": ci_enum(["@hourly", "@daily", "@weekly", "@monthly", "@yearly",
                                              "hourly", "daily", "weekly", "monthly", "yearly"],
                                             "A predefined schedule", ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"]),
                       "interval": duration("How often an INTERVAL trigger fires."),
                       "start": {"type": ["string", "number"], "description": "When an INTERVAL trigger's ticks start: "
                                 "ISO 8601 or epoch seconds (default: the Unix epoch)."},
                       "timezone": {"type": "string", "description": "An IANA time zone, e.g. Europe/Amsterdam (default UTC)."},
                       "fuzzy_max_delay": duration("A deterministic per-workflow delay below this, for every firing.", zero=True),
                       "catch_up": {"description": "Ticks missed while no host ran: all (default), latest or none, "
                                                   "within a window (default 1 day).",
                                    "anyOf": [ci_enum(["all", "latest", "none"], "A catch-up policy"),
                                              {"type": "object", "additionalProperties": False,
                                               "properties": {"policy": ci_enum(["all", "latest", "none"], "A catch-up policy"),
                                                              "window": duration("How far back missed ticks still fire.")}}]},
                       "description": {}}},
      "workflow": {
        "description": "The versioned part: id, params, steps.",
        "type": "object", "required": ["id", "steps"], "additionalProperties": False,
        "properties": {
          "id": {"type": "string", "pattern": d._WORKFLOW_ID_RE.pattern},
          "name": {"type": "string"},
          "description": {"type": "string"},
          "params": {"$ref": "#/$defs/params"},
          "steps": {"$ref": "#/$defs/steps"},
          "timeout": {"anyOf": [{"type": "null"}, duration("The workflow's timeout, from the instance's start.")]},
          "time_triggers": {"type": ["array", "null"], "items": {"$ref": "#/$defs/time_trigger"},
                            "description": "Start the workflow on a schedule (the `cron` trigger type, under `legato serve` "
                                           "and `legato worker`)."},
          "signal_triggers": {"description": "Not supported yet: only an empty list.",
                              "anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]},
          "tags": {"$ref": "#/$defs/tags"},
          "criticality": ci_enum(sorted(c.lower() for c in d._CRITICALITIES), "Maestro's criticality"),
          "instance_step_concurrency": whole(1, MAX_CONCURRENCY, "Leaf steps running at once in one instance and the subworkflows below it")}},
    }

    def kind_fields(kind: str, extra: dict) -> dict:
        """The fields every kind of step shares (Maestro's AbstractStep), and ``extra``."""
        shared = {k: defs["step"]["properties"][k] for k in ("id", "name", "description", "transition", "timeout",
                                                              "failure_mode", "tags")}
        fields = {**shared, **extra}
        assert set(fields) == loopdef.KIND_KEYS[kind] - set(d._NOT_YET), kind
        return fields

    def typed_param(types, literal: dict, what: str) -> dict:
        """A param of one of ``types``: the full form, or a bare ``literal``."""
        return {"description": what, "anyOf": [
            {"allOf": [{"$ref": "#/$defs/full_param"}],
             "properties": {"type": ci_enum(sorted(t.value for t in types), "The variable's type")}},
            literal]}

    def loop_params(variable: dict, minimum: int) -> dict:
        variables = {"type": "object", "minProperties": minimum, "additionalProperties": variable,
                     "propertyNames": {"pattern": NAME_RE.pattern, "not": {"enum": sorted(RESERVED_NAMES)}}}
        return {"description": "The loop variables (Maestro's loop_params): a MAP whose value holds one param "
                               "definition per variable, or that map itself.",
                "anyOf": [{"type": "object", "required": ["type", "value"], "additionalProperties": False,
                           "properties": {"type": ci_enum(["MAP"], "loop_params is a MAP"), "value": variables,
                                          "mode": defs["full_param"]["properties"]["mode"],
                                          "description": {"description": "Free text."}, "tags": {}}},
                          {**variables, "not": {"required": ["type", "value"]}}]}

    def loop_step_params(variable: dict, minimum: int, required: bool) -> dict:
        return {"allOf": [{"$ref": "#/$defs/params"}], "type": "object", **({"required": ["loop_params"]} if required else {}),
                "properties": {"loop_params": loop_params(variable, minimum)},
                "description": "The loop step's params: `loop_params` (the loop variables) and others, which the "
                               "body sees as params."}

    body = {"$ref": "#/$defs/steps", "description": "The body: a DAG of its own, run once per iteration; its "
                                                      "successors name steps of the body only."}
    defs["steps"] = {
        "type": "array", "minItems": 1, "description": "One-key wrappers: step, foreach, while or subworkflow.",
        "items": {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                  "properties": {"step": {"$ref": "#/$defs/step"}, "foreach": {"$ref": "#/$defs/foreach"},
                                 "while": {"$ref": "#/$defs/while"}, "subworkflow": {"$ref": "#/$defs/subworkflow"}}}}
    defs["foreach"] = {
        "description": "Runs its body once per element of the cartesian product of its loop arrays (Maestro's ForeachStep).",
        "type": "object", "required": ["id", "params", "steps"], "additionalProperties": False,
        "properties": kind_fields("foreach", {
            "params": loop_step_params(typed_param(loopdef.FOREACH_TYPES, {"type": "array"},
                                                   "An array to iterate over: literal, or an expression such as "
                                                   "dateIntsBetween(20200101, 20200110, 1)."), 1, True),
            "steps": body,
            "concurrency": whole(1, MAX_FOREACH_CONCURRENCY, "Iterations at once (default 20, or the workflow's "
                                                             "step concurrency, which also caps it)"),
            "strict_ordering": {"type": ["boolean", "null"], "description": "Accepted, warned: not enforced yet."}})}
    defs["while"] = {
        "description": "Runs its body while its condition holds, checked before every iteration (Maestro's WhileStep).",
        "type": "object", "required": ["id", "condition", "steps"], "additionalProperties": False,
        "properties": kind_fields("while", {
            "params": loop_step_params(typed_param(loopdef.WHILE_TYPES, {"type": ["string", "number", "boolean"]},
                                                   "A loop variable's initial value; a body step's param of the "
                                                   "same name gives the next iteration's."), 0, False),
            "steps": body,
            "condition": {"type": "string", "description": "CEL over the loop variables, the params and loop.index."},
            "max_iterations": whole(1, MAX_LOOP_ITERATIONS, "The most iterations (default 25,000)")})}
    version = {"description": "\"active\" (default), \"latest\" or a version number.",
               "anyOf": [ci_enum(["active", "latest"], "A version"), {"type": "integer", "minimum": 1},
                         {"type": "string", "pattern": "\\$", "description": "A ${param} template, read when the step runs."},
                         {"type": "string", "pattern": "^\\s*[0-9]{1,19}\\s*$"},
                         {"allOf": [{"$ref": "#/$defs/full_param"}], "properties": {"type": ci_enum(["STRING", "LONG"], "The param's type")}}]}
    defs["subworkflow"] = {
        "description": "Starts another stored workflow (Maestro's SubworkflowStep).",
        "type": "object", "required": ["id", "params"], "additionalProperties": False,
        "properties": kind_fields("subworkflow", {
            "params": {"allOf": [{"$ref": "#/$defs/params"}], "type": "object", "required": ["subworkflow_id"],
                       "propertyNames": {"not": {"enum": ["sync", "explicit_params"]}},
                       "description": "subworkflow_id, subworkflow_version, and the params passed to the child.",
                       "properties": {
                         "subworkflow_id": {"description": "The id of the workflow to start.", "anyOf": [
                           {"type": "string", "pattern": d._WORKFLOW_ID_RE.pattern},
                           {"type": "string", "pattern": "\\$", "description": "A ${param} template, read when the step runs."},
                           {"allOf": [{"$ref": "#/$defs/full_param"}], "properties": {"type": ci_enum(["STRING"], "The param's type")}}]},
                         "subworkflow_version": version}},
            "sync": {"type": ["boolean", "null"], "description": "Wait for the child and take its status (default true)."},
            "explicit_params": {"type": ["boolean", "null"],
                                "description": "Pass only the params given here, not the workflow's (default false)."}})}

    value_schemas = {
        "STRING": {"type": "string"}, "LONG": {"type": "integer"}, "DOUBLE": {"type": "number"},
        "BOOLEAN": {"type": "boolean"}, "MAP": {"type": "object"}, "ARRAY": {"type": "array"},
        "STRING_MAP": {"type": "object", "additionalProperties": {"type": "string"}},
        "STRING_ARRAY": {"type": "array", "items": {"type": "string"}},
        "LONG_ARRAY": {"type": "array", "items": {"type": "integer"}},
        "DOUBLE_ARRAY": {"type": "array", "items": {"type": "number"}},
        "BOOLEAN_ARRAY": {"type": "array", "items": {"type": "boolean"}},
    }
    assert set(value_schemas) == {t.value for t in ParamType}
    defs["full_param"]["allOf"] = [
        {"if": {"properties": {"type": {"pattern": f"^{ci_word(t)}$"}}},
         "then": {"properties": {"value": value_schemas[t]}}} for t in value_schemas]
    rule = defs["run_strategy"]["anyOf"][2]
    rule["if"] = {"properties": {"rule": {"not": {"pattern": f"^{ci_word('parallel')}$"}}}}
    rule["then"] = {"properties": {"workflow_concurrency": {
        "description": "Only the parallel rule allows more than 1 (Maestro's RunStrategy).",
        "anyOf": [{"type": "integer", "maximum": 1}, {"type": "string", "pattern": "^\\s*0*1\\s*$"}]}}}
    snapshot = json.loads(json.dumps(defs["properties"]))
    snapshot["description"] = "Maestro's stored PropertiesSnapshot: properties plus who wrote them and when."
    for k in sorted(d._SNAPSHOT_KEYS):
        snapshot["properties"][k] = {"description": "Accepted, not acted on."}
    defs["properties_snapshot"] = snapshot
    kept = {"description": "Maestro's envelope: accepted and kept, not acted on."}
    schema = {
      "$schema": "https://json-schema.org/draft/2020-12/schema",
      "$id": "urn:legato:definition",
      "title": "Legato workflow definition",
      "description": "A Legato (or Netflix Maestro) workflow definition. `legato validate FILE` checks what a schema "
                     "cannot: CEL, cycles, step-type params, references.",
      "type": "object", "required": ["workflow"], "additionalProperties": False,
      "not": {"required": ["properties", "properties_snapshot"]},
      "properties": {
        "properties": {"$ref": "#/$defs/properties"},
        "properties_snapshot": {"$ref": "#/$defs/properties_snapshot"},
        "workflow": {"$ref": "#/$defs/workflow"},
        "is_active": {"type": "boolean"},
        **{k: {"type": ["object", "null"], **kept} for k in ("git_info", "extra_info", "metadata", "enriched_extras")},
        **{k: kept for k in ("activate_time", "activated_by", "is_latest", "is_default", "modify_time", "internal_id",
                              "trigger_uuids")}},
      "$defs": defs,
    }
    return schema


def main() -> None:
    """Rewrite the shipped schema file from :func:`build`."""
    SCHEMA_PATH.write_text(json.dumps(build(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
