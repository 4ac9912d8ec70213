"""The API's operations and their OpenAPI 3.1 document (served at ``/openapi.json``).

Each route of :mod:`legato.server.app` is declared once, with :func:`operation`: its verb, its
path (Maestro's, under ``/api/v3``), what it takes (path and query parameters, a request body)
and what it answers (a schema of :data:`SCHEMAS`). The Starlette routes and the document are both
built from these declarations, so the document cannot describe a route that does not exist, nor
miss one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Operation", "OPERATIONS", "SCHEMAS", "operation", "document"]

_STR = {"type": "string"}
_INT = {"type": "integer"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_OBJ = {"type": "object"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


#: The shapes the API answers with (``components.schemas``).
SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {"type": "object", "required": ["pointer", "message"],
                "properties": {"pointer": _STR, "message": _STR}},
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "message"],
        "properties": {"status": _INT, "message": _STR, "pointer": _STR, "problems": _list("Problem")}}}},
    "Definition": {"type": "object", "description": "A workflow definition, as `legato validate` reads it "
                                                    "(JSON; YAML with Content-Type application/yaml)",
                   "required": ["workflow"], "properties": {"workflow": _OBJ, "properties": _OBJ}},
    "Validation": {"type": "object", "required": ["valid", "workflow_id"], "properties": {
        "valid": {"type": "boolean"}, "workflow_id": _STR, "steps": _INT, "steps_in_loops": _INT,
        "warnings": _list("Problem")}},
    "Version": {"type": "object", "required": ["workflow_id", "version", "active", "created_at"], "properties": {
        "workflow_id": _STR, "version": _INT, "active": {"type": "boolean"}, "new": {"type": "boolean"},
        "created_at": _TIME, "steps": {"type": ["integer", "null"]}, "warnings": _list("Problem")}},
    "VersionWithDefinition": {"allOf": [_ref("Version"), {"type": "object", "properties": {
        "definition": _ref("Definition")}}]},
    "StartRequest": {"type": "object", "properties": {
        "params": {"type": "object", "description": "Run params: values, or full param definitions "
                                                    "(Maestro's run params), merged into the workflow's"},
        "request_id": {"type": "string", "description": "Idempotency key: the same id starts at most one "
                                                        "instance of the workflow; a repeat answers with it"}},
        "additionalProperties": False},
    "Step": {"type": "object", "required": ["status", "attempt"], "properties": {
        "status": _STR, "attempt": _INT, "outputs": _OBJ, "message": _STR, "started_at": _TIME,
        "ended_at": _TIME, "iterations": _OBJ}},
    "Instance": {"type": "object", "required": ["instance_id", "workflow_id", "version", "status"], "properties": {
        "instance_id": _STR, "workflow_id": _STR, "version": _INT, "run_id": _INT, "status": _STR,
        "message": _STR, "params": _OBJ, "request_id": {"type": ["string", "null"]}, "created_at": _TIME,
        "started_at": _TIME, "ended_at": _TIME, "parent": {"type": ["object", "null"]},
        "steps": {"type": "object", "additionalProperties": _ref("Step")},
        "created": {"type": "boolean", "description": "On a start: false when the request id had started it"}}},
    "InstancePage": {"type": "object", "required": ["items"], "properties": {
        "items": _list("Instance"),
        "next_cursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next page; "
                                                                  "null on the last"}}},
    "Run": {"type": "object", "required": ["run_id", "steps"], "properties": {
        "run_id": _INT, "steps": {"type": "object", "additionalProperties": _ref("Step")}}},
    "Attempt": {"type": "object", "required": ["step_id", "attempt", "run_id", "status"], "properties": {
        "instance_id": _STR, "step_id": _STR, "attempt": _INT, "run_id": _INT, "status": _STR,
        "params": {"type": ["object", "null"]}, "outputs": _OBJ, "message": _STR, "created_at": _TIME,
        "started_at": _TIME, "ended_at": _TIME}},
    "StepDetail": {"allOf": [_ref("Step"), {"type": "object", "properties": {
        "step_id": _STR, "attempts": _list("Attempt")}}]},
    "RestartRequest": {"type": "object", "additionalProperties": False, "properties": {
        "mode": {"enum": ["RESTART_FROM_INCOMPLETE", "RESTART_FROM_BEGINNING", "RESTART_FROM_SPECIFIC"]},
        "step_id": {"type": "string", "description": "The step RESTART_FROM_SPECIFIC runs again from"},
        "run_params": {"type": "object", "description": "New values of MUTABLE / MUTABLE_ON_START_RESTART params"}}},
    "Action": {"type": "object", "required": ["id", "instance_id", "verb", "outcome"], "properties": {
        "id": _INT, "instance_id": _STR, "verb": _STR, "step_id": {"type": ["string", "null"]}, "params": _OBJ,
        "requested_by": _STR, "requested_at": _TIME, "applied_at": _TIME,
        "outcome": {"type": "string", "description": "`applied: …`, or empty while pending"},
        "instance_status": _STR}},
    "Unblocked": {"type": "object", "required": ["workflow_id", "unblocked"], "properties": {
        "workflow_id": _STR, "unblocked": {"type": "array", "items": _STR}, "by": _STR}},
    "TagPermitRequest": {"type": "object", "required": ["tag", "max_allowed"], "additionalProperties": False,
                         "properties": {"tag": _STR, "max_allowed": _INT}},
    "Trigger": {"type": "object", "required": ["workflow_id", "version", "paused", "disabled"], "properties": {
        "workflow_id": _STR, "version": _INT, "type": {"type": ["string", "null"], "description": "cron, signal, …"},
        "key": {"type": ["string", "null"]}, "schedule": _STR, "next_due": _TIME, "last_fired": _TIME,
        "paused": {"type": "boolean"}, "disabled": {"type": "boolean"},
        "problem": {"type": ["string", "null"], "description": "Why the version's triggers do not load here"}}},
    "TagPermit": {"type": "object", "required": ["tag", "max_allowed"], "properties": {
        "tag": _STR, "max_allowed": _INT, "held": _INT, "set_by": {"type": ["string", "null"]}, "set_at": _TIME}},
    "SignalRequest": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
        "name": _STR,
        "params": {"type": "object", "additionalProperties": {"type": ["integer", "string"]},
                   "description": "Whole numbers (LONG) and strings (STRING), what steps and triggers match"},
        "request_id": {"type": "string", "description": "Idempotency key: the same id for the same name stores "
                                                        "nothing new and answers with the signal it stored"}}},
    "Signal": {"type": "object", "required": ["name", "seq", "params"], "properties": {
        "name": _STR, "seq": {"type": "integer", "description": "Its number among the signals of its name, from 1"},
        "params": _OBJ, "request_id": {"type": ["string", "null"]}, "created_at": _TIME,
        "created": {"type": "boolean", "description": "On a send: false when the request id had stored it"}}},
    "WorkflowSummary": {"type": "object", "required": ["workflow_id", "versions", "recent"], "properties": {
        "workflow_id": _STR, "active_version": {"type": ["integer", "null"]}, "versions": _INT,
        "run_strategy": {"type": ["string", "null"]},
        "recent": {"type": "array", "description": "The latest instances, newest first", "items": {
            "type": "object", "properties": {"instance_id": _STR, "status": _STR, "run_id": _INT,
                                             "created_at": _TIME, "ended_at": _TIME}}}}},
    "Event": {"type": "object", "required": ["ts", "attempt", "status"], "properties": {
        "ts": _TIME, "step_id": {"type": ["string", "null"], "description": "null: the instance itself"},
        "attempt": _INT, "status": _STR, "message": _STR}},
    "Timeline": {"type": "object", "required": ["events", "offset", "next_offset", "total"], "properties": {
        "events": _list("Event"), "offset": _INT, "total": _INT,
        "next_offset": {"type": "integer", "description": "Pass as `offset` to read only what came after"}}},
    "GraphNode": {"type": "object", "required": ["id", "kind", "status", "attempt"], "properties": {
        "id": _STR, "name": _STR, "type": _STR, "kind": {"enum": ["step", "foreach", "while", "subworkflow"]},
        "status": _STR, "attempt": _INT, "started_at": _TIME, "ended_at": _TIME,
        "iterations": {"type": "object", "description": "A loop's iterations by state"},
        "total": {"type": ["integer", "null"], "description": "A foreach's number of iterations"},
        "counts": {"type": "object", "description": "In a loop's body: this step over the iterations, by state"},
        "child": {"type": "object", "description": "A subworkflow's instance",
                  "properties": {"workflow_id": _STR, "instance_id": _STR}}}},
    "Graph": {"type": "object", "required": ["instance_id", "nodes", "edges"], "properties": {
        "workflow_id": _STR, "instance_id": _STR, "version": _INT, "status": _STR, "run_id": _INT, "scope": _STR,
        "nodes": _list("GraphNode"),
        "edges": {"type": "array", "description": "[from, to, condition ('' when always)]",
                  "items": {"type": "array", "items": _STR}}}},
    "LogChunk": {"type": "object", "required": ["step_id", "attempt", "stream", "text"], "properties": {
        "step_id": _STR, "attempt": _INT, "stream": _STR, "text": _STR, "ts": _TIME}},
    "Logs": {"type": "object", "required": ["chunks", "next_offset"], "properties": {
        "chunks": _list("LogChunk"),
        "next_offset": {"type": "integer", "description": "Pass as `offset` to read only what came after"}}},
}


@dataclass(slots=True)
class Operation:
    """One route: ``handler(service, request, **path_params)`` returns ``(status, body)``."""

    method: str
    path: str
    handler: Callable[..., Any]
    summary: str
    tag: str  # the Maestro controller whose path it follows
    response: str | None  # a name of SCHEMAS, or a list of one ("[Version]")
    body: str | None = None  # a name of SCHEMAS
    query: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)  # name -> (schema, description)
    statuses: tuple[int, ...] = (200,)
    media: str = "application/json"  # of the answer (text/event-stream: a stream, no schema)

    @property
    def mutating(self) -> bool:
        return self.method != "GET"

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


#: Every operation, in declaration order.
OPERATIONS: list[Operation] = []


def operation(method: str, path: str, *, summary: str, tag: str, response: str | None, body: str | None = None,
              query: dict[str, tuple[dict[str, Any], str]] | None = None, statuses: tuple[int, ...] = (200,),
              media: str = "application/json"):
    """Declare the decorated coroutine as the handler of ``method path``."""
    def register(handler):
        OPERATIONS.append(Operation(method, path, handler, summary, tag, response, body, query or {}, statuses,
                                    media))
        return handler
    return register


_ERRORS = {401: "No token given (`Authorization: Bearer <token>`)",
           403: "Wrong token", 404: "No such workflow, version, instance or step", 409: "Conflicts with the "
           "current state", 422: "Invalid input: `problems` locate each by JSON pointer"}


def _schema_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name[1:-1])} if name.startswith("[") else _ref(name)


def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`OPERATIONS`."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        params = [{"name": name, "in": "path", "required": True, "schema": _STR} for name in op.path_params]
        params += [{"name": name, "in": "query", "required": False, "schema": schema, "description": text}
                   for name, (schema, text) in op.query.items()]
        responses: dict[str, Any] = {}
        for status in op.statuses:
            answer: dict[str, Any] = {"description": {200: "OK", 201: "Created", 202: "Accepted: not applied yet"}[status]}
            if op.response:
                answer["content"] = {"application/json": {"schema": _schema_of(op.response)}}
            elif op.media != "application/json":
                answer["content"] = {op.media: {"schema": {"type": "string"}}}
            responses[str(status)] = answer
        errors = [404, 422] + ([401, 403, 409] if op.mutating else [])
        for status in sorted(errors):
            responses[str(status)] = {"description": _ERRORS[status],
                                      "content": {"application/json": {"schema": _ref("Error")}}}
        entry: dict[str, Any] = {"operationId": op.handler.__name__, "summary": op.summary, "tags": [op.tag],
                                 "parameters": params, "responses": responses}
        if op.body:
            content = {"application/json": {"schema": _ref(op.body)}}
            if op.body == "Definition":
                content["application/yaml"] = {"schema": {"type": "string"}}
            entry["requestBody"] = {"required": op.body == "Definition", "content": content}
        if op.mutating:
            entry["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "Legato API", "version": version,
                 "description": "Legato's REST API (`legato serve`): Maestro's paths under /api/v3. Calls that "
                                "change anything need `Authorization: Bearer <token>`."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def markdown(spec: dict[str, Any]) -> str:
    """``docs/api.md``: the operations of ``spec`` for people, grouped by the Maestro controller
    whose paths they follow (``python -m legato.server.openapi > docs/api.md`` writes it)."""
    lines = ["# The REST API (`legato serve`)", "",
             "Generated from the OpenAPI document the server answers at `/openapi.json` "
             "(`python -m legato.server.openapi > docs/api.md`); tests/test_serve.py checks they agree.", "",
             spec["info"]["description"], "",
             'Errors are JSON: `{"error": {"status", "message", "pointer"?, "problems"?}}`: 404 for an unknown '
             "workflow, version, instance or step; 409 for a conflict with the current state; 422 for invalid "
             "input (a definition's `problems` carry the JSON pointers `legato validate` prints); 401 without "
             "a token, 403 with a wrong one.", ""]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            by_tag.setdefault(op["tags"][0], []).append((method.upper(), path, op))
    for tag, ops in by_tag.items():
        lines += [f"## {tag}", ""]
        for method, path, op in ops:
            token = " (token)" if op.get("security") else ""
            lines += [f"### `{method} {path}`{token}", "", op["summary"] + ".", ""]
            query = [p for p in op["parameters"] if p["in"] == "query"]
            for p in query:
                lines.append(f"- `?{p['name']}`: {p.get('description', '')}")
            if "requestBody" in op:
                kinds = ", ".join(op["requestBody"]["content"])
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                lines.append(f"- body: `{ref}` ({kinds})")
            ok = [code for code in op["responses"] if code < "400"]
            content = op["responses"][ok[0]].get("content", {})
            if "application/json" not in content:
                lines += [f"- answers {' or '.join(ok)}: `{', '.join(content)}`", ""]
                continue
            answer = content["application/json"].get("schema", {})
            shown = answer.get("$ref", "").rsplit("/", 1)[-1] or f"[{answer['items']['$ref'].rsplit('/', 1)[1]}]"
            lines += [f"- answers {' or '.join(ok)}: `{shown}`", ""]
    lines += ["## Schemas", ""]
    for name, schema in spec["components"]["schemas"].items():
        lines += [f"### {name}", "", "```json", json.dumps(schema, indent=2), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from legato import __version__
    from legato.server import app, openapi  # the module, not this __main__ copy: app declares into it

    sys.stdout.write(openapi.markdown(openapi.document(__version__)))
