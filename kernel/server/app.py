"""The REST API's routes: Maestro's paths under ``/api/v3`` over the store and the engine of
``legato serve`` (DESIGN §8).

Each handler is declared with :func:`legato.server.openapi.operation` (its path, what it takes
and answers) and returns ``(status, body)``; :func:`build_app` turns the declarations into
Starlette routes that check the token of mutating calls and answer every error as JSON,
``{"error": {"status", "message", "pointer"?, "problems"?}}``, never a traceback.

What is stored holds secret params as references (``env:NAME``), never their values, and the
engine masks resolved values out of logs, messages and outputs before they are stored: nothing
here can answer a secret's value, because nothing it reads holds one.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import traceback
from typing import Any

from .. import overview
from ..cli.output import _instance_json, _iso
from ..definition import DefinitionError
from ..definition.document import parse_document
from ..instance import StartError
from ..limits import MAX_DOCUMENT_BYTES
from ..storage import StorageError, VersionNotFound, parse_version
from . import auth
from .openapi import OPERATIONS, operation

_INT, _STR = {"type": "integer"}, {"type": "string"}

__all__ = ["ApiError", "Service", "build_app"]

_W = "/api/v3/workflows"
_I = _W + "/{workflowId}/instances/{instanceId}"
WORKFLOW = "WorkflowController"
WORKFLOW_ACTION = "WorkflowActionController"
INSTANCE = "WorkflowInstanceController"
STEP = "StepInstanceController"

PAGE_DEFAULT, PAGE_MAX = 20, 1000
LOGS_DEFAULT, LOGS_MAX = 1000, 10_000
DEFINITIONS_KEPT = 256


class ApiError(Exception):
    """An answer other than success: ``status`` and a message for people, maybe located."""

    def __init__(self, status: int, message: str, pointer: str | None = None,
                 problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.pointer, self.problems = status, message, pointer, problems

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "message": self.message}
        if self.pointer is not None:
            error["pointer"] = self.pointer
        if self.problems is not None:
            error["problems"] = self.problems
        return {"error": error}


def _invalid(exc: DefinitionError) -> ApiError:
    problems = [{"pointer": p.pointer, "message": p.message} for p in exc.problems]
    first = exc.problems[0] if exc.problems else None
    return ApiError(422, f"{len(problems)} problem(s) found" + (f"; first: {first}" if first else ""),
                    first.pointer if first else None, problems)


class Service:
    """What the handlers work with: the engine (its store), the token, loaded definitions."""

    def __init__(self, engine, *, token: str | None, version: str = "") -> None:
        self.engine = engine
        self.storage = engine.storage
        self.token = token
        self.version = version
        self.live = None  # a legato.server.ui.live.LiveEvents when the engine runs in this process
        self._definitions: dict[tuple[str, int], Any] = {}

    async def definition(self, workflow_id: str, version: int):
        """The stored version loaded (cached: versions are immutable); DefinitionError if it no longer loads."""
        key = (workflow_id, version)
        found = self._definitions.get(key)
        if found is None:
            stored = await self.storage.require_definition(workflow_id, version)
            found = self.engine.load(stored.document)
            found.version = stored.version
            if len(self._definitions) >= DEFINITIONS_KEPT:
                self._definitions.pop(next(iter(self._definitions)))
            self._definitions[key] = found
        return found

    async def step_ids(self, record) -> list[str]:
        try:
            return [s.id for s in (await self.definition(record.workflow_id, record.version)).steps]
        except (DefinitionError, StorageError):
            return []  # shown from what ran: a definition that no longer loads here still has its history

    async def instance(self, workflow_id: str, given: str):
        """The instance of ``workflow_id`` that ``given`` names (its id or a unique prefix), or 404."""
        record = await self.storage.get_instance(given) if given else None
        if record is None and given:
            found = await self.storage.find_instances(given, 2)
            if len(found) == 1:
                record = found[0]
            elif found:
                raise ApiError(404, f"instance id {given!r} is ambiguous: it starts several instances; give more of it")
        if record is None or record.workflow_id != workflow_id:
            raise ApiError(404, f"no instance {given!r} of workflow {workflow_id!r}")
        return record


# -- reading requests -----------------------------------------------------------------------------

async def _definition_body(request) -> dict[str, Any]:
    """The definition a request carries (JSON, or YAML by its content type), parsed as
    `legato validate` parses a file: a syntax error is a located problem."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_DOCUMENT_BYTES:
        raise ApiError(413, f"the definition is larger than {MAX_DOCUMENT_BYTES} bytes (MAX_DOCUMENT_BYTES)")
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, "the body is not UTF-8 text", "") from None
    if not text.strip():
        raise ApiError(422, "the body is empty: send the definition (JSON, or YAML with Content-Type "
                            "application/yaml)", "")
    kind = request.headers.get("content-type", "")
    source = "request.yaml" if "yaml" in kind else "request.json"
    try:
        document = parse_document(text, source)
    except DefinitionError as exc:
        raise _invalid(exc) from None
    if not isinstance(document, dict):
        raise ApiError(422, "the definition must be an object with a `workflow`", "")
    return document


async def _json_body(request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(422, f"the body is not valid JSON: {exc}", "") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object", "")
    return body


def _int_query(request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ApiError(422, f"query parameter {name!r} must be a whole number from {low} to {high}, got {text!r:.40}")
    return int(text)


def _version_spec(version: str) -> str | int:
    try:
        return parse_version(version)
    except ValueError as exc:
        raise ApiError(404, str(exc)) from None


# -- what the API answers -------------------------------------------------------------------------

def _version_json(v, warnings=()) -> dict[str, Any]:
    workflow = v.document.get("workflow") if isinstance(v.document, dict) else None
    out = {"workflow_id": v.workflow_id, "version": v.version, "active": v.active, "new": v.new,
           "created_at": _iso(v.created_at),
           "steps": len(workflow.get("steps", [])) if isinstance(workflow, dict) else None}
    if warnings:
        out["warnings"] = [{"pointer": w.pointer, "message": w.message} for w in warnings]
    return out


def _instance_out(record, attempts, step_ids=()) -> dict[str, Any]:
    out = _instance_json(record, attempts, step_ids)
    out["run_id"], out["request_id"] = record.run_id, record.request_id
    return out


def _attempt_json(a) -> dict[str, Any]:
    return {"instance_id": a.instance_id, "step_id": a.step_id, "attempt": a.attempt, "run_id": a.run_id,
            "status": a.status.value, "params": a.params, "outputs": a.outputs, "message": a.message,
            "created_at": _iso(a.created_at), "started_at": _iso(a.started_at), "ended_at": _iso(a.ended_at)}


def _steps(attempts) -> dict[str, Any]:
    return {name: overview.to_json(node, _iso) for name, node in overview.tree(attempts).items()}


# -- workflows and versions (WorkflowController, WorkflowActionController) -------------------------

@operation("POST", _W, summary="Create a workflow version from a definition (validated as `legato validate`)",
           tag=WORKFLOW, body="Definition", response="Version", statuses=(201, 200),
           query={"activate": ({"type": "boolean"}, "Make the version active (default true)")})
async def create_workflow(svc: Service, request) -> tuple[int, Any]:
    document = await _definition_body(request)
    try:
        definition = svc.engine.load(document)
    except DefinitionError as exc:
        raise _invalid(exc) from None
    activate = request.query_params.get("activate", "true").lower() not in ("false", "0", "no")
    stored = await svc.storage.push_definition(definition.workflow_id, definition.document, activate=activate)
    return (201 if stored.new else 200), _version_json(stored, definition.warnings)


@operation("PUT", _W + "/actions/validate", summary="Validate a definition without storing it",
           tag=WORKFLOW_ACTION, body="Definition", response="Validation")
async def validate_workflow(svc: Service, request) -> tuple[int, Any]:
    document = await _definition_body(request)
    try:
        definition = svc.engine.load(document)
    except DefinitionError as exc:
        raise _invalid(exc) from None
    return 200, {"valid": True, "workflow_id": definition.workflow_id, "steps": len(definition.steps),
                 "steps_in_loops": len(definition.all_by_id) - len(definition.steps),
                 "warnings": [{"pointer": w.pointer, "message": w.message} for w in definition.warnings]}


@operation("GET", _W + "/{workflowId}/versions", summary="The stored versions of a workflow, oldest first",
           tag=WORKFLOW, response="[Version]")
async def list_versions(svc: Service, request, workflowId: str) -> tuple[int, Any]:
    rows = await svc.storage.list_versions(workflowId)
    if not rows:
        raise ApiError(404, await svc.storage._no_version(workflowId, "active"))
    return 200, [_version_json(v) for v in rows]


@operation("GET", _W + "/{workflowId}/versions/{version}", summary="One version (a number, `active` or `latest`) "
           "with its definition", tag=WORKFLOW, response="VersionWithDefinition")
async def get_version(svc: Service, request, workflowId: str, version: str) -> tuple[int, Any]:
    stored = await svc.storage.require_definition(workflowId, _version_spec(version))
    return 200, {**_version_json(stored), "definition": stored.document}


@operation("PUT", _W + "/{workflowId}/versions/{version}/actions/activate",
           summary="Make a version the active one (what a start of `active` runs)", tag=WORKFLOW_ACTION,
           response="Version")
async def activate_version(svc: Service, request, workflowId: str, version: str) -> tuple[int, Any]:
    spec = _version_spec(version)
    stored = await svc.storage.require_definition(workflowId, spec)
    return 200, _version_json(await svc.storage.activate(workflowId, stored.version))


@operation("POST", _W + "/{workflowId}/versions/{version}/actions/start",
           summary="Start an instance of a version (queued for this server's worker); a known request_id "
                   "answers with the instance it started", tag=WORKFLOW_ACTION, body="StartRequest",
           response="Instance", statuses=(201, 200))
async def start_instance(svc: Service, request, workflowId: str, version: str) -> tuple[int, Any]:
    body = await _json_body(request)
    unknown = sorted(set(body) - {"params", "request_id"})
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r}: a start takes `params` and `request_id`", f"/{unknown[0]}")
    params, request_id = body.get("params"), body.get("request_id")
    if params is not None and not isinstance(params, dict):
        raise ApiError(422, "params must be an object of param names to values", "/params")
    if request_id is not None and (not isinstance(request_id, str) or not request_id or len(request_id) > 256):
        raise ApiError(422, "request_id must be a non-empty string of at most 256 characters", "/request_id")
    spec = _version_spec(version)
    if not isinstance(spec, int):  # active or latest: which number it is now
        spec = (await svc.storage.require_definition(workflowId, spec)).version
    try:
        definition = await svc.definition(workflowId, spec)
    except DefinitionError as exc:
        raise ApiError(409, f"{workflowId} v{spec} no longer loads here: "
                            + "; ".join(str(p) for p in exc.problems[:5])) from None
    try:
        record, created = await svc.engine.start(definition, params=params, request_id=request_id,
                                                 initiator="api", queued=True)
    except StartError as exc:
        raise ApiError(422, exc.message, exc.pointer or None) from None
    attempts = [] if created else await svc.storage.get_attempts(record.instance_id)
    out = _instance_out(record, attempts)
    out["created"] = created
    return (201 if created else 200), out


# -- instances, runs, steps, attempts, logs (WorkflowInstanceController, StepInstanceController) ---

def _cursor(record) -> str:
    return base64.urlsafe_b64encode(json.dumps([record.created_at, record.instance_id]).encode()).decode()


def _read_cursor(text: str) -> tuple[float, str]:
    try:
        ts, iid = json.loads(base64.urlsafe_b64decode(text.encode()))
        return float(ts), str(iid)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "cursor is not one this API gave: pass the `next_cursor` of the previous page") from None


@operation("GET", _W + "/{workflowId}/instances", summary="The instances of a workflow, newest first, a page at a time",
           tag=INSTANCE, response="InstancePage",
           query={"first": (_INT, f"Page size (default {PAGE_DEFAULT}, at most {PAGE_MAX})"),
                  "cursor": (_STR, "The `next_cursor` of the previous page"),
                  "status": (_STR, "Only instances in this status (e.g. SUCCEEDED)")})
async def list_instances(svc: Service, request, workflowId: str) -> tuple[int, Any]:
    from ..states import InstanceStatus

    first = _int_query(request, "first", PAGE_DEFAULT, 1, PAGE_MAX)
    status = request.query_params.get("status")
    if status is not None:
        try:
            status = InstanceStatus(status.upper())
        except ValueError:
            raise ApiError(422, f"status must be one of {', '.join(s.value for s in InstanceStatus)}") from None
    text = request.query_params.get("cursor")
    after = _read_cursor(text) if text else None
    # Newest first by (created_at, id). The store lists by created_at only: read more until the
    # page is full past the cursor, dropping the last created_at of a cut list (its ties may be cut).
    want = first + 1
    while True:
        rows = await svc.storage.list_instances(workflowId, limit=want, status=status)
        complete = len(rows) < want
        if not complete:
            edge = rows[-1].created_at
            rows = [r for r in rows if r.created_at != edge]
        rows.sort(key=lambda r: (r.created_at, r.instance_id), reverse=True)
        if after is not None:
            rows = [r for r in rows if (r.created_at, r.instance_id) < after]
        if complete or len(rows) > first:
            break
        want *= 2
    page, more = rows[:first], len(rows) > first
    return 200, {"items": [_instance_out(r, []) for r in page], "next_cursor": _cursor(page[-1]) if more else None}


@operation("GET", _I, summary="An instance and the overview of its steps (over all its runs)", tag=INSTANCE,
           response="Instance",
           query={"view": (_STR, "`summary`: the instance without its steps (the web UI reads them from /graph)")})
async def get_instance(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    if request.query_params.get("view") == "summary":
        return 200, {k: v for k, v in _instance_out(record, []).items() if k != "steps"}
    attempts = await svc.storage.get_attempts(record.instance_id)
    return 200, _instance_out(record, attempts, await svc.step_ids(record))


def _runs(record, attempts) -> dict[int, list]:
    runs: dict[int, list] = {n: [] for n in range(1, record.run_id + 1)}
    for a in attempts:
        runs.setdefault(a.run_id, []).append(a)
    return runs


@operation("GET", _I + "/runs", summary="Each run of an instance (a restart adds one) and the steps it ran",
           tag=INSTANCE, response="[Run]")
async def list_runs(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    runs = _runs(record, await svc.storage.get_attempts(record.instance_id))
    return 200, [{"run_id": n, "steps": _steps(rows)} for n, rows in sorted(runs.items())]


@operation("GET", _I + "/runs/{runId}", summary="One run of an instance and the steps it ran", tag=INSTANCE,
           response="Run")
async def get_run(svc: Service, request, workflowId: str, instanceId: str, runId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    runs = _runs(record, await svc.storage.get_attempts(record.instance_id))
    run = int(runId) if runId.isascii() and runId.isdigit() else None
    if run not in runs:
        raise ApiError(404, f"instance {record.instance_id} has runs 1–{record.run_id}; no run {runId!r:.40}")
    return 200, {"run_id": run, "steps": _steps(runs[run])}


@operation("GET", _I + "/steps", summary="The steps of an instance (every step of its definition)", tag=STEP,
           response="Instance")
async def list_steps(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    attempts = await svc.storage.get_attempts(record.instance_id)
    return 200, _instance_out(record, attempts, await svc.step_ids(record))["steps"]


async def _step_attempts(svc: Service, record, step_id: str) -> list:
    attempts = [a for a in await svc.storage.get_attempts(record.instance_id) if a.step_id == step_id]
    if not attempts and step_id not in await svc.step_ids(record):
        raise ApiError(404, f"workflow {record.workflow_id} v{record.version} has no step {step_id!r}")
    return attempts


@operation("GET", _I + "/steps/{stepId}", summary="A step: its latest attempt and all its attempts", tag=STEP,
           response="StepDetail")
async def get_step(svc: Service, request, workflowId: str, instanceId: str, stepId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    attempts = await _step_attempts(svc, record, stepId)
    steps = _instance_out(record, attempts, [stepId])["steps"]
    return 200, {"step_id": stepId, **steps[stepId], "attempts": [_attempt_json(a) for a in attempts]}


@operation("GET", _I + "/steps/{stepId}/attempts", summary="Every attempt of a step, over all runs", tag=STEP,
           response="[Attempt]")
async def list_attempts(svc: Service, request, workflowId: str, instanceId: str, stepId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    return 200, [_attempt_json(a) for a in await _step_attempts(svc, record, stepId)]


@operation("GET", _I + "/runs/{runId}/steps/{stepId}/attempts/{attempt}",
           summary="One attempt of a step in one run", tag=STEP, response="Attempt")
async def get_attempt(svc: Service, request, workflowId: str, instanceId: str, runId: str, stepId: str,
                      attempt: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    for a in await _step_attempts(svc, record, stepId):
        if str(a.run_id) == runId and str(a.attempt) == attempt:
            return 200, _attempt_json(a)
    raise ApiError(404, f"step {stepId!r} of instance {record.instance_id} has no attempt {attempt!r:.20} in "
                        f"run {runId!r:.20}")


@operation("GET", _I + "/logs", summary="The logs of an instance (or of one step or attempt) from an offset: "
           "ask again from `next_offset` to tail them", tag=STEP, response="Logs",
           query={"step_id": (_STR, "Only this step's logs"), "attempt": (_INT, "Only this attempt's (with step_id)"),
                  "offset": (_INT, "Skip this many chunks (a previous answer's next_offset)"),
                  "limit": (_INT, f"At most this many chunks (default {LOGS_DEFAULT}, at most {LOGS_MAX})")})
async def get_logs(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    step_id = request.query_params.get("step_id")
    attempt = _int_query(request, "attempt", 0, 1, 2**31) or None
    offset = _int_query(request, "offset", 0, 0, 2**62)
    limit = _int_query(request, "limit", LOGS_DEFAULT, 1, LOGS_MAX)
    if step_id is not None:
        await _step_attempts(svc, record, step_id)
    chunks = (await svc.storage.get_logs_since(record.instance_id, offset, step_id, attempt))[:limit]
    return 200, {"chunks": [{"step_id": c.step_id, "attempt": c.attempt, "stream": c.stream, "text": c.text,
                             "ts": _iso(c.ts)} for c in chunks],
                 "next_offset": offset + len(chunks)}


# -- actions (WorkflowInstanceActionController, StepInstanceActionController, WorkflowActionController)

INSTANCE_ACTION = "WorkflowInstanceActionController"
STEP_ACTION = "StepInstanceActionController"
TAG_PERMIT = "TagPermitController"
BLOCKING_FOR = 30.0  # seconds a blocking action call waits to be applied before answering 202
_BLOCKING = {"blocking": ({"type": "boolean"}, "Wait until the action is applied (default true; at most "
                                               f"{BLOCKING_FOR:g} s, then 202 with the action pending)")}


async def _act(svc: Service, request, workflowId: str, instanceId: str, verb: str, step_id: str | None = None,
               params: dict | None = None) -> tuple[int, Any]:
    import trio

    from ..actions import ActionInvalid, ActionRefused, request_action, requester, wait_applied
    from ..cli.acting import _action_json

    record = await svc.instance(workflowId, instanceId)
    if step_id is not None:
        await _step_attempts(svc, record, step_id)  # 404 for a step the definition does not have
    try:
        action = await request_action(svc.storage, record.instance_id, verb, step_id=step_id, by=requester("api"),
                                      params=params, engine=svc.engine, queue=True)
        if action.applied_at is None and request.query_params.get("blocking", "true").lower() not in ("false", "0"):
            with trio.move_on_after(BLOCKING_FOR):
                action = await wait_applied(svc.storage, action.id, record.instance_id)
    except ActionInvalid as exc:
        raise ApiError(422, str(exc)) from None
    except ActionRefused as exc:
        raise ApiError(409, str(exc)) from None
    if action.outcome.startswith("refused"):
        raise ApiError(409, f"{verb}{' ' + step_id if step_id else ''}: {action.outcome}")
    now = await svc.storage.get_instance(record.instance_id)
    return (200 if action.applied_at is not None else 202), {**_action_json(action),
                                                            "instance_status": now.status.value}


def _instance_action(verb: str, summary: str):
    method = "POST" if verb == "restart" else "PUT"  # Maestro's verbs

    async def handler(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
        params = None
        if verb == "restart":
            body = await _json_body(request)
            unknown = sorted(set(body) - {"mode", "step_id", "run_params"})
            if unknown:
                raise ApiError(422, f"unknown field {unknown[0]!r}: a restart takes `mode` "
                                    "(RESTART_FROM_INCOMPLETE, RESTART_FROM_BEGINNING, RESTART_FROM_SPECIFIC), "
                                    "`step_id` and `run_params`", f"/{unknown[0]}")
            params = body
        return await _act(svc, request, workflowId, instanceId, verb, params=params)

    handler.__name__ = f"{verb}_instance"
    operation(method, _I + f"/actions/{verb}", summary=summary, tag=INSTANCE_ACTION, response="Action",
              body="RestartRequest" if verb == "restart" else None, query=_BLOCKING, statuses=(200, 202))(handler)


def _step_action(verb: str, summary: str):
    method = "POST" if verb == "restart" else "PUT"

    async def handler(svc: Service, request, workflowId: str, instanceId: str, stepId: str) -> tuple[int, Any]:
        return await _act(svc, request, workflowId, instanceId, verb, step_id=stepId)

    handler.__name__ = f"{verb}_step"
    operation(method, _I + f"/steps/{{stepId}}/actions/{verb}", summary=summary, tag=STEP_ACTION,
              response="Action", query=_BLOCKING, statuses=(200, 202))(handler)


_instance_action("stop", "Stop a running or queued instance: its running steps are cancelled, it ends STOPPED")
_instance_action("kill", "Kill an instance: like stop, but it ends FAILED")
_instance_action("restart", "Run an ended instance again as its next run (from its incomplete steps by default; "
                            "queued for a worker)")
_step_action("stop", "Stop a step of a running instance: it ends STOPPED (the instance ends STOPPED)")
_step_action("kill", "Kill a step of a running instance: it ends FATALLY_FAILED, its failure mode applies")
_step_action("skip", "Skip a step of a running instance: it ends SKIPPED, the DAG goes on as if it completed")
_step_action("bypass", "Let a step WAITING_FOR_SIGNALS go on without its signals (Maestro's "
                       "BYPASS_STEP_DEPENDENCIES)")
_step_action("restart", "Run a step that failed, was stopped or timed out again (of an ended instance: a new run "
                        "from that step)")


@operation("PUT", _W + "/{workflowId}/actions/unblock", summary="Let a STRICT_SEQUENTIAL queue go on past its "
           "failed instances", tag=WORKFLOW_ACTION, response="Unblocked")
async def unblock_workflow(svc: Service, request, workflowId: str) -> tuple[int, Any]:
    from ..actions import requester
    from ..strategy import unblock

    by = requester("api")
    return 200, {"workflow_id": workflowId, "unblocked": await unblock(svc.storage, workflowId, by=by), "by": by}


# -- tag permits (TagPermitController) --------------------------------------------------------------

def _permit_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"tag": row["tag"], "max_allowed": row["limit"], "held": row.get("held", 0), "set_by": row.get("set_by"),
            "set_at": _iso(row.get("set_at"))}


@operation("POST", "/api/v3/tag-permits", summary="Set how many steps carrying a tag may run at once, in every "
           "workflow (replaces an earlier limit)", tag=TAG_PERMIT, body="TagPermitRequest", response="TagPermit")
async def set_tag_permit(svc: Service, request) -> tuple[int, Any]:
    from ..actions import requester
    from ..limits import MAX_CONCURRENCY

    body = await _json_body(request)
    tag, limit = body.get("tag"), body.get("max_allowed")
    unknown = sorted(set(body) - {"tag", "max_allowed"})
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r}: a tag permit is `tag` and `max_allowed`", f"/{unknown[0]}")
    if not isinstance(tag, str) or not tag.strip() or len(tag) > 256:
        raise ApiError(422, "tag must be a non-empty string of at most 256 characters", "/tag")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_CONCURRENCY:
        raise ApiError(422, f"max_allowed must be a whole number from 0 to {MAX_CONCURRENCY} (MAX_CONCURRENCY)",
                       "/max_allowed")
    await svc.storage.set_tag_permit(tag, limit, by=requester("api"))
    return 200, await _tag_permit(svc, tag)


async def _tag_permit(svc: Service, tag: str) -> dict[str, Any]:
    for row in await svc.storage.get_tag_permits():
        if row["tag"] == tag:
            return _permit_json(row)
    raise ApiError(404, f"no permit is set for tag {tag!r} (POST /api/v3/tag-permits sets one)")


@operation("GET", "/api/v3/tag-permits", summary="Every tag permit set, and how many steps hold each now",
           tag=TAG_PERMIT, response="[TagPermit]")
async def list_tag_permits(svc: Service, request) -> tuple[int, Any]:
    return 200, [_permit_json(row) for row in await svc.storage.get_tag_permits()]


@operation("GET", "/api/v3/triggers", summary="The triggers of the active versions (cron, signal, …): schedule, next "
           "due, last fired, paused", tag="TriggerController", response="[Trigger]")
async def list_triggers(svc: Service, request) -> tuple[int, Any]:
    from ..triggers import list_triggers as rows

    return 200, [{**row, "next_due": _iso(row["next_due"]), "last_fired": _iso(row["last_fired"])}
                 for row in await rows(svc.engine)]


@operation("GET", "/api/v3/tag-permits/{tag}", summary="A tag's permit", tag=TAG_PERMIT, response="TagPermit")
async def get_tag_permit(svc: Service, request, tag: str) -> tuple[int, Any]:
    return 200, await _tag_permit(svc, tag)


@operation("DELETE", "/api/v3/tag-permits/{tag}", summary="Remove a tag's permit (steps fall back to their own "
           "tag permits)", tag=TAG_PERMIT, response="TagPermit")
async def delete_tag_permit(svc: Service, request, tag: str) -> tuple[int, Any]:
    found = await _tag_permit(svc, tag)
    await svc.storage.delete_tag_permit(tag)
    return 200, found


# -- signals (SignalController) ----------------------------------------------------------------------

SIGNAL = "SignalController"


@operation("POST", "/api/v3/signals", summary="Announce a signal: steps waiting on it and signal triggers go on "
           "(a request id already stored for its name stores nothing new: 200 with that signal)", tag=SIGNAL,
           body="SignalRequest", response="Signal", statuses=(200, 201))
async def send_signal(svc: Service, request) -> tuple[int, Any]:
    from ..signals import SignalError, check_signal, signal_json

    body = await _json_body(request)
    unknown = sorted(set(body) - {"name", "params", "request_id"})
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r}: a signal is `name`, `params` and `request_id`",
                       f"/{unknown[0]}")
    request_id = body.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not request_id.strip() or len(request_id) > 256):
        raise ApiError(422, "request_id must be a non-empty string of at most 256 characters", "/request_id")
    try:
        name, params = check_signal(body.get("name"), body.get("params"))
    except SignalError as exc:
        raise ApiError(422, exc.message, exc.pointer) from None
    record, created = await svc.storage.send_signal(name, params, request_id)
    return (201 if created else 200), signal_json(record, created)


async def _signal(svc: Service, name: str, seq: int | None) -> dict[str, Any]:
    from ..signals import signal_json

    record = await svc.storage.get_signal(name, seq)
    if record is None:
        raise ApiError(404, f"no signal {name!r}" + ("" if seq is None else f" #{seq}") + " in this store")
    return signal_json(record)


@operation("GET", "/api/v3/signals/{name}", summary="The latest signal of a name", tag=SIGNAL, response="Signal")
async def get_latest_signal(svc: Service, request, name: str) -> tuple[int, Any]:
    return 200, await _signal(svc, name, None)


@operation("GET", "/api/v3/signals/{name}/{seq}", summary="A signal by its name and number (`latest`: the "
           "latest)", tag=SIGNAL, response="Signal")
async def get_signal(svc: Service, request, name: str, seq: str) -> tuple[int, Any]:
    if seq.lower() == "latest":
        return 200, await _signal(svc, name, None)
    if not seq.isascii() or not seq.isdigit() or len(seq) > 18 or int(seq) < 1:
        raise ApiError(404, f"a signal's number is a whole number from 1 (or `latest`), got {seq!r:.40}")
    return 200, await _signal(svc, name, int(seq))


# -- the application ------------------------------------------------------------------------------

def _json(status: int, body: Any):
    from starlette.responses import Response

    if isinstance(body, Response):  # a stream (the UI's events): answered as it is
        return body
    return Response(json.dumps(body, default=str), status_code=status, media_type="application/json")


def _endpoint(svc: Service, op):
    async def endpoint(request):
        try:
            if op.mutating and svc.token is not None:
                refused = auth.check(request.headers.get("authorization"), svc.token)
                if refused is not None:
                    raise ApiError(*refused)
            status, body = await op.handler(svc, request, **request.path_params)
        except ApiError as exc:
            return _json(exc.status, exc.body())
        except VersionNotFound as exc:
            return _json(404, ApiError(404, str(exc)).body())
        except StorageError as exc:
            return _json(503, ApiError(503, f"the store failed: {exc}").body())
        except Exception as exc:  # a bug: said, with the traceback on the server's stderr only
            traceback.print_exception(exc, file=sys.stderr)
            return _json(500, ApiError(500, f"internal error (a bug in Legato or a plugin): "
                                            f"{type(exc).__name__}").body())
        return _json(status, body)

    endpoint.__name__ = op.handler.__name__
    return endpoint


def build_app(svc: Service):
    """The Starlette application of every declared operation, ``/openapi.json`` and ``/docs``."""
    from importlib.resources import files

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from .openapi import document

    spec = document(svc.version)
    page = files("legato.server").joinpath("docs.html").read_text(encoding="utf-8")

    async def openapi_json(request):
        return _json(200, spec)

    async def docs(request):
        return HTMLResponse(page)

    async def http_error(request, exc: HTTPException):
        message = {404: f"no such path: {request.url.path} (GET /openapi.json lists the API)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return _json(exc.status_code, ApiError(exc.status_code, message).body())

    async def crashed(request, exc: Exception):
        traceback.print_exception(exc, file=sys.stderr)
        return _json(500, ApiError(500, "internal error (a bug in Legato)").body())

    from .ui import routes as ui_routes

    routes = [Route(op.path, _endpoint(svc, op), methods=[op.method]) for op in OPERATIONS]
    routes += [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs, methods=["GET"])]
    routes += ui_routes()
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: crashed})


from .ui import api as _ui_api  # noqa: E402,F401  (declares the operations the web UI reads)
