"""Loading and validating workflow definitions (DESIGN §2).

:func:`load_definition` turns a JSON or YAML document into a :class:`Definition` or raises
:class:`DefinitionError` carrying *every* problem found, each located by a JSON pointer into the
document (and line:col inside CEL or inside the file when it does not parse).

This module reads a document's top level (its properties and workflow fields) and hands the rest
to its parts, each importing only those listed before it: ``model`` (Definition, StepDef, …,
DefinitionError), ``document`` (parsing within bounds, JSON pointers), ``vocabulary`` (the fields
and names the format knows), then the validator's parts by concern, ``values``, ``maestro``,
``references`` (params and what they refer to), ``fields`` (a step's fields), ``dags`` (steps,
loop bodies, transitions, cycles), put together in ``validator``; and ``upstream`` (references to
steps that are not upstream). Every name other modules read is importable from here.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any, Mapping

from ..cel import CelCompiler
from ..limits import DEFAULT_PARALLELISM, DEFAULT_TIMEOUT_SECONDS, MAX_CONCURRENCY, MAX_DOCUMENT_BYTES
from ..loopdef import LoopDef
from ..params import ParamError, interpolate
from ..steptype import StepType
from .model import (
    RETRY_CLASSES,
    Backoff,
    Condition,
    Definition,
    DefinitionError,
    FailureMode,
    Problem,
    RetryPolicy,
    RunStrategy,
    StepDef,
)
from .document import _inspect, parse_document
from .vocabulary import _CRITICALITIES, _PROPERTY_KEYS, _SNAPSHOT_KEYS, _TOP_KEYS, _WORKFLOW_ID_RE, _WORKFLOW_KEYS
from .values import parse_duration
from .validator import _Validator
from .upstream import check_upstream, _every_step, _loop_upstream

# Read from here by legato.schema (the JSON Schema is built from them) and by the tests.
from .vocabulary import (  # noqa: F401
    _BACKOFF_KEYS,
    _ID_RE,
    _NOT_YET,
    _RETRY_KEYS,
    _STEP_KEYS,
    _TAG_KEYS,
    _TAG_NAMESPACES,
    _WRAPPERS,
)
from .values import _DURATION  # noqa: F401

__all__ = [
    "Problem",
    "DefinitionError",
    "FailureMode",
    "Backoff",
    "RetryPolicy",
    "RETRY_CLASSES",
    "Condition",
    "StepDef",
    "LoopDef",
    "Definition",
    "load_definition",
    "parse_document",
    "parse_duration",
    "resolve_attributes",
]


def resolve_attributes(definition: Definition, params: Mapping[str, Any]) -> tuple[float, dict[str, StepDef]]:
    """The workflow timeout and the steps whose ``timeout`` or ``retry_policy`` hold ``${param}``,
    read with one instance's evaluated workflow params (Maestro's DurationParser.
    getTimeoutWithParamInMillis and RetryPolicyParser: workflow params only). Returns (timeout,
    step id -> StepDef with its values). Raises ParamError whose pointer is absolute, naming
    what the reference gave."""
    timeout = definition.timeout
    if definition.timeout_template is None and not definition.templated:
        return timeout, {}
    v = _Validator({}, None)  # type: ignore[arg-type]

    def fill(raw: Any, at: str) -> Any:
        try:
            return interpolate(raw, lambda name: _param_path(params, name))
        except (KeyError, TypeError, IndexError) as exc:
            raise ParamError(f"${{…}} refers to {exc}, which this instance's workflow params do not have", at) from None
        except ParamError as exc:
            raise ParamError(exc.message, at) from None

    def first_problem(raw: Any, filled: Any) -> None:
        if v.problems:
            p = v.problems[0]
            shown = json.dumps(raw)[:80]
            raise ParamError(f"{p.message} ({shown} with this instance's params is {json.dumps(filled)[:80]})", p.pointer)

    if definition.timeout_template is not None:
        at = "/workflow/timeout"
        filled = fill(definition.timeout_template, at)
        timeout = v.duration(filled, at, DEFAULT_TIMEOUT_SECONDS)
        first_problem(definition.timeout_template, filled)
    steps: dict[str, StepDef] = {}
    for sid in definition.templated:
        sdef = definition.all_by_id[sid]
        changes: dict[str, Any] = {}
        for key, raw in (sdef.templates or {}).items():
            at = f"{sdef.pointer}/{key}"
            filled = fill(raw, at)
            if key == "timeout":
                changes["timeout"] = v.duration(filled, at, DEFAULT_TIMEOUT_SECONDS)
            else:
                changes["retry"] = v.retry_policy(filled, at)
            first_problem(raw, filled)
        steps[sid] = dataclasses.replace(sdef, **changes)
    return timeout, steps


def _param_path(params: Mapping[str, Any], path: str) -> Any:
    head, *rest = path.split(".")
    if head == "params" and rest:
        head, *rest = rest
    current = params[head]
    for part in rest:
        current = current[part]
    return current


def load_definition(
    source: str | Path | Mapping[str, Any],
    step_types: Mapping[str, type[StepType]],
    compiler: CelCompiler,
    trigger_types: Mapping[str, type] | None = None,
) -> Definition:
    """Load a definition from a path, a document text, or an already-parsed document; validate all of it.

    ``trigger_types`` (name -> :class:`legato.triggers.TriggerType`; default: the process's
    plugins, asked only when the workflow has triggers) read the workflow's ``time_triggers``
    and ``signal_triggers``. Raises :class:`DefinitionError` with every problem found.
    """
    # Loading allocates many small objects that all live on: the cyclic GC would walk them again
    # and again for nothing (half the time of a 100,000-step definition). Pause it meanwhile.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _load(source, step_types, compiler, trigger_types)
    finally:
        if paused:
            gc.enable()


def _load(source, step_types: Mapping[str, type[StepType]], compiler: CelCompiler,
          trigger_types: Mapping[str, type] | None = None) -> Definition:
    base_dir = None
    name = ""
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and not source.lstrip().startswith("{")
                                    and source.endswith((".json", ".yaml", ".yml"))):
        path = Path(source)
        name = str(path)
        try:
            if path.exists() and not path.is_file():  # a FIFO would block the read forever, a device stream on
                raise DefinitionError([Problem("", "not a regular file: give the path of a JSON or YAML file")], name)
            if path.stat().st_size > MAX_DOCUMENT_BYTES:
                raise DefinitionError([Problem("", f"the file is larger than {MAX_DOCUMENT_BYTES} bytes "
                                                   "(MAX_DOCUMENT_BYTES)")], name)
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DefinitionError([Problem("", "file not found")], name) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DefinitionError([Problem("", f"cannot read: {exc}")], name) from None
        document = parse_document(text, name)
        base_dir = path.resolve().parent
    elif isinstance(source, str):
        document = parse_document(source)
    else:
        document = dict(source)
        problems = _inspect(document)  # the same bounds whoever built the document
        if problems:
            raise DefinitionError(problems, name)

    v = _Validator(step_types, compiler)
    v.trigger_types = trigger_types
    v.unknown_keys(document, _TOP_KEYS, "", "top-level")
    # Maestro's create request carries `properties`; its stored definition (WorkflowDefinition)
    # carries `properties_snapshot`, which adds who wrote it and when.
    props_key = "properties"
    if "properties_snapshot" in document:
        if "properties" in document:
            v.add("/properties_snapshot", "give `properties` or Maestro's `properties_snapshot`, not both")
        else:
            props_key = "properties_snapshot"
    for key in ("metadata", "git_info", "extra_info", "enriched_extras"):
        if key in document and document[key] is not None and not isinstance(document[key], dict):
            v.add(f"/{key}", f"{key} must be an object")
    if "is_active" in document and not isinstance(document["is_active"], bool):
        v.add("/is_active", "is_active must be true or false")
    props = document.get(props_key, {})
    where = f"/{props_key}"
    step_concurrency = None
    run_strategy = RunStrategy.SEQUENTIAL  # Maestro's Defaults.DEFAULT_RUN_STRATEGY
    concurrency = None
    if props is None:
        props = {}
    if not isinstance(props, dict):
        v.add(where, f"{props_key} must be an object")
        props = {}
    else:
        allowed = _PROPERTY_KEYS | (_SNAPSHOT_KEYS if props_key == "properties_snapshot" else set())
        v.unknown_keys(props, allowed, where, props_key)
        if "owner" in props and not isinstance(props["owner"], (str, dict)):
            v.add(f"{where}/owner", "owner is a name or Maestro's {\"name\": …} object")
        step_concurrency = v.whole(props, "step_concurrency", where, 1, MAX_CONCURRENCY, "MAX_CONCURRENCY")
        concurrency = v.whole(props, "workflow_concurrency", where, 1, MAX_CONCURRENCY, "MAX_CONCURRENCY")
        if "run_strategy" in props:
            run_strategy, concurrency = v.run_strategy(props["run_strategy"], f"{where}/run_strategy", concurrency)
        elif concurrency is not None:  # a concurrency alone: Maestro's RunStrategy.create(long), PARALLEL
            run_strategy = RunStrategy.PARALLEL
        v.tags(props.get("tags"), f"{where}/tags")

    wf = document.get("workflow")
    if not isinstance(wf, dict):
        v.add("/workflow", "missing `workflow` object" if wf is None else "`workflow` must be an object")
        raise DefinitionError(v.problems, name)
    v.unknown_keys(wf, _WORKFLOW_KEYS, "/workflow", "workflow")
    wid = wf.get("id")
    if not isinstance(wid, str) or not _WORKFLOW_ID_RE.match(wid):
        v.add("/workflow/id", "a workflow needs an `id`: letters, digits, `_`, `.` and `-`" if wid is None
              else f"workflow id {wid!r} is not valid: use letters, digits, `_`, `.` and `-`")
    for key in ("name", "description"):
        if key in wf and not isinstance(wf[key], str):
            v.add(f"/workflow/{key}", f"{key} must be a string")
    v.tags(wf.get("tags"), "/workflow/tags")
    instance_limit = v.whole(wf, "instance_step_concurrency", "/workflow", 1, MAX_CONCURRENCY, "MAX_CONCURRENCY")
    shared_limit = step_concurrency
    if instance_limit is not None:  # what one instance counts for itself: the smaller cap
        step_concurrency = instance_limit if step_concurrency is None else min(step_concurrency, instance_limit)
    if "criticality" in wf and (not isinstance(wf["criticality"], str)
                                or wf["criticality"].upper() not in _CRITICALITIES):
        v.add("/workflow/criticality", f"criticality is one of {', '.join(sorted(_CRITICALITIES))}, "
                                       f"got {wf['criticality']!r:.40}")
    wparams = v.params(wf.get("params"), "/workflow/params")
    v.workflow_params = wparams
    timeout_template = wf.get("timeout") if isinstance(wf.get("timeout"), str) else None
    if timeout_template is not None and v.template(timeout_template, "/workflow/timeout"):
        timeout = DEFAULT_TIMEOUT_SECONDS
    else:
        timeout_template = None
        timeout = v.duration(wf.get("timeout"), "/workflow/timeout")
    v.triggers(wf)

    raw_steps = wf.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        v.add("/workflow/steps", "a workflow needs a non-empty array of `steps`")
        raw_steps = []
    if isinstance(wid, str) and _WORKFLOW_ID_RE.match(wid):
        v.workflow_id = wid
    v.step_concurrency = step_concurrency
    seen: dict[str, str] = {}
    steps, by_id = v.dag(raw_steps, "/workflow/steps", seen)
    all_by_id = by_id if len(v.dags) == 1 else _every_step(steps, {})  # one DAG: the common case
    v.known = known = all_by_id
    for raws, dag_steps, dag_by_id in v.dags:
        v.transitions(raws, dag_steps, dag_by_id)
        v.cycles(dag_steps, dag_by_id)
    scope = set(wparams)
    secret = frozenset(n for n, spec in wparams.items() if spec.secret)
    v.check_refs(wparams, known, scope, "/workflow/params", secret)
    has_secrets = v.dag_refs(steps, scope, secret, all_by_id) or bool(secret)
    v.problems.extend(check_upstream(steps, by_id, wparams, all_by_id, v.parent_of))
    if v.parent_of:
        _loop_upstream(steps, by_id, all_by_id, v.parent_of, frozenset(), v.problems)

    if v.problems:
        raise DefinitionError(v.problems, name)
    return Definition(
        document=document,
        workflow_id=wid,
        name=wf.get("name") if isinstance(wf.get("name"), str) else wid,
        params=wparams,
        steps=steps,
        by_id=by_id,
        timeout=timeout,
        step_concurrency=step_concurrency,
        run_strategy=run_strategy,
        shared_step_concurrency=shared_limit,
        instance_step_concurrency=instance_limit,
        workflow_concurrency=concurrency or (DEFAULT_PARALLELISM if run_strategy is RunStrategy.PARALLEL else 1),
        source=name,
        base_dir=base_dir,
        has_secrets=has_secrets,
        warnings=v.warnings,
        timeout_template=timeout_template,
        templated=[s.id for s in all_by_id.values() if s.templates],
        tagged=any(s.tags for s in all_by_id.values()),
        all_by_id=all_by_id,
        parent_of=v.parent_of,
        triggers=v.trigger_defs,
    )
