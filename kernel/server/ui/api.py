"""What the web UI reads that Maestro's paths do not answer: the list of workflows, an instance's
timeline, its actions, its DAG with live states, and its events as a stream (Server-Sent Events).

Declared with :func:`legato.server.openapi.operation` like every other route, so they are in the
OpenAPI document (and ``docs/api.md``) and answer errors as the rest of the API does.
"""

from __future__ import annotations

from typing import Any

from ... import overview
from ...cli.output import _iso
from ..app import _I, _W, INSTANCE, STEP, WORKFLOW, ApiError, Service, _int_query
from ..openapi import operation
from . import live

__all__ = ["RECENT_RUNS", "TIMELINE_DEFAULT", "TIMELINE_MAX", "GRAPHS_KEPT"]

RECENT_RUNS = 10  # instances of each workflow the workflows page shows as dots
TIMELINE_DEFAULT, TIMELINE_MAX = 1000, 10_000
_INT, _STR = {"type": "integer"}, {"type": "string"}


@operation("GET", _W, summary="Every workflow: its active version, run strategy and latest instances",
           tag=WORKFLOW, response="[WorkflowSummary]",
           query={"recent": (_INT, f"How many latest instances of each to include (default {RECENT_RUNS}, at most 100)")})
async def list_workflows(svc: Service, request) -> tuple[int, Any]:
    recent = _int_query(request, "recent", RECENT_RUNS, 0, 100)
    out = []
    for wid in await svc.storage.list_workflows():
        versions = await svc.storage.list_versions(wid)
        active = next((v for v in versions if v.active), versions[-1] if versions else None)
        strategy = None
        if active is not None:
            try:
                strategy = (await svc.definition(wid, active.version)).run_strategy.value.upper()
            except Exception:  # noqa: BLE001 - a version that no longer loads here is still listed
                strategy = None
        runs = await svc.storage.list_instances(wid, limit=recent) if recent else []
        out.append({"workflow_id": wid, "active_version": active.version if active and active.active else None,
                    "versions": len(versions), "run_strategy": strategy,
                    "recent": [{"instance_id": r.instance_id, "status": r.status.value, "run_id": r.run_id,
                                "created_at": _iso(r.created_at), "ended_at": _iso(r.ended_at)} for r in runs]})
    return 200, out


@operation("GET", _I + "/timeline", summary="An instance's timeline: every transition of it and its steps, oldest "
           "first, from an offset", tag=INSTANCE, response="Timeline",
           query={"offset": (_INT, "Skip this many events (a previous answer's next_offset)"),
                  "last": (_INT, "Only the last this many events (instead of offset)"),
                  "limit": (_INT, f"At most this many events (default {TIMELINE_DEFAULT}, at most {TIMELINE_MAX})")})
async def get_timeline(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    limit = _int_query(request, "limit", TIMELINE_DEFAULT, 1, TIMELINE_MAX)
    last = _int_query(request, "last", 0, 1, TIMELINE_MAX) or None
    offset = _int_query(request, "offset", 0, 0, 2**62)
    if last is not None:
        total, chunk = await svc.storage.get_timeline_tail(record.instance_id, min(last, limit))
        offset = total - len(chunk)
    else:
        events = await svc.storage.get_timeline(record.instance_id)
        total, chunk = len(events), events[offset:offset + limit]
    return 200, {"events": [live.event_json(e, _iso) for e in chunk], "offset": offset,
                 "next_offset": offset + len(chunk), "total": total}


@operation("GET", _I + "/actions", summary="The actions asked of an instance and its steps: who, when, what came "
           "of it", tag=INSTANCE, response="[Action]")
async def list_actions(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
    from ...cli.acting import _action_json

    record = await svc.instance(workflowId, instanceId)
    return 200, [_action_json(a) for a in await svc.storage.list_actions(record.instance_id)]


@operation("GET", _I + "/events", summary="An instance's new timeline events as they happen (Server-Sent Events, "
           "text/event-stream: `hello`, `timeline`, `instance`, then `end` once it has ended)", tag=INSTANCE,
           response=None, media="text/event-stream",
           query={"after": (_INT, "Start after this many events (default: the current end; an EventSource's "
                                  "Last-Event-ID header does the same)")})
async def stream_events(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
    from starlette.responses import StreamingResponse

    record = await svc.instance(workflowId, instanceId)
    after: int | None = _int_query(request, "after", -1, 0, 2**62)
    given = request.headers.get("last-event-id", "")
    if given.isascii() and given.isdigit():
        after = int(given)
    body = live.stream(svc.storage, record.instance_id, None if after == -1 else after, svc.live, _iso)
    return 200, StreamingResponse(body, media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _kind(step) -> str:
    if step.loop is not None:
        return step.type  # foreach / while
    return "subworkflow" if step.type == "subworkflow" else "step"


def _node(step, node: overview.Node | None) -> dict[str, Any]:
    a = node.record if node is not None else None
    out: dict[str, Any] = {"id": step.id, "name": step.name or "", "type": step.type, "kind": _kind(step),
                           "status": a.status.value if a else "NOT_CREATED", "attempt": a.attempt if a else 0,
                           "started_at": _iso(a.started_at) if a else None, "ended_at": _iso(a.ended_at) if a else None}
    if step.loop is not None:
        out["iterations"] = overview.counts(node) if node is not None else {}
        out["total"] = overview.loop_total(a)
    if step.type == "subworkflow" and a is not None and isinstance(a.outputs, dict):
        child = a.outputs.get("subworkflow_instance_id")
        if child:
            out["child"] = {"workflow_id": a.outputs.get("subworkflow_id"), "instance_id": child}
    return out


@operation("GET", _I + "/graph", summary="An instance's DAG (of the top level, or of a loop's body) with each "
           "step's latest state and attempt; a loop is one node with its iterations counted by state", tag=STEP,
           response="Graph",
           query={"scope": (_STR, "A foreach or while step (`loop`, `loop/3` for one iteration, `loop/3/inner` for a "
                                  "loop in its body…): its body's DAG, each step counted over the iterations (or of "
                                  "that iteration)")})
async def get_graph(svc: Service, request, workflowId: str, instanceId: str) -> tuple[int, Any]:
    record = await svc.instance(workflowId, instanceId)
    scope = request.query_params.get("scope", "").strip("/")
    # An ended instance's graph changes only with a restart (a new run, a new status): kept.
    key = (record.instance_id, record.run_id, record.status.value, record.ended_at, scope)
    found = _GRAPHS.get(key)
    if found is None:
        found = await _graph(svc, record, scope)
        if record.status.terminal:
            if len(_GRAPHS) >= GRAPHS_KEPT:
                _GRAPHS.pop(next(iter(_GRAPHS)))
            _GRAPHS[key] = found
    return 200, found


GRAPHS_KEPT = 16
_GRAPHS: dict[tuple, dict[str, Any]] = {}


async def _graph(svc: Service, record, scope: str) -> dict[str, Any]:
    workflowId = record.workflow_id
    definition = await svc.definition(record.workflow_id, record.version)
    top = overview.tree(await svc.storage.get_attempts(record.instance_id))
    steps, nodes = definition.steps, top
    iteration = False
    if scope:
        # loop[/iteration[/inner loop[/iteration…]]]: the loops' ids, each (but maybe the last) with one of its iterations
        parts = scope.split("/")
        for i in range(0, len(parts), 2):
            step = next((s for s in steps if s.id == parts[i]), None)
            if step is None or step.loop is None:
                where = "at the top level" if i == 0 else f"in the body of {'/'.join(parts[:i])}"
                raise ApiError(404, f"{workflowId} v{record.version} has no foreach or while step {parts[i]!r} "
                                    f"{where}: scope names one (loop, loop/3, loop/3/inner, …)")
            steps = step.loop.steps
            if i + 1 < len(parts) and not parts[i + 1].isdigit():
                raise ApiError(404, f"scope {scope!r}: after a loop comes one of its iterations, a number")
        iteration = len(parts) % 2 == 0
        holder = overview.find(top, scope)
        if iteration:
            nodes = holder.children if holder is not None else {}
        else:  # every iteration's steps, counted: the body node's state is its latest iteration's
            nodes = {}
            counted: dict[str, dict[str, int]] = {}
            for it in (holder.iterations() if holder is not None else []):
                for name, child in it.children.items():
                    nodes[name] = child
                    if child.record is not None:
                        by = counted.setdefault(name, {})
                        by[child.record.status.value] = by.get(child.record.status.value, 0) + 1
    out = [_node(s, nodes.get(s.id)) for s in steps]
    if scope and not iteration:
        for n in out:
            n["counts"] = counted.get(n["id"], {})
    edges = [[s.id, target, "" if cond.constant is True else cond.source] for s in steps for target, cond in s.successors]
    return {"workflow_id": record.workflow_id, "instance_id": record.instance_id, "version": record.version,
            "status": record.status.value, "run_id": record.run_id, "scope": scope, "nodes": out, "edges": edges}
