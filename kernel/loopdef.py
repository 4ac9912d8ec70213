"""Foreach, while and subworkflow steps as a definition holds them (DESIGN §2–3).

A ``{"foreach": …}`` or ``{"while": …}`` wrapper becomes a :class:`legato.definition.StepDef` of
that ``type`` whose :attr:`~legato.definition.StepDef.loop` is a :class:`LoopDef`: the loop
variables (Maestro's ``params.loop_params``, a MAP), the body DAG, and the loop's settings. A
``{"subworkflow": …}`` wrapper becomes an ordinary leaf StepDef of type ``subworkflow`` whose
params are the written ones plus ``sync`` and ``explicit_params``. The shapes and limits are
Maestro's (``ForeachStep``, ``WhileStep``, ``SubworkflowStep``, ``Constants``,
``WorkflowConstraint``); the functions here check the parts that are particular to each kind and
report through the definition loader's validator, each problem at its JSON pointer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .limits import (
    DEFAULT_FOREACH_CONCURRENCY,
    DEFAULT_WHILE_ITERATIONS,
    MAX_FOREACH_CONCURRENCY,
    MAX_LOOP_ITERATIONS,
)
from .params import ParamSpec, ParamType

if TYPE_CHECKING:
    from .definition import Condition, StepDef

__all__ = [
    "LoopDef",
    "LOOP_KINDS",
    "KIND_KEYS",
    "FOREACH_TYPES",
    "WHILE_TYPES",
    "split_loop_params",
    "check_loop_params",
    "foreach_settings",
    "while_iterations",
    "subworkflow_params",
    "check_feeds",
]


@dataclass(slots=True)
class LoopDef:
    """The loop of a foreach or while step: its variables, its body DAG and its settings."""

    kind: str  # "foreach" | "while"
    #: The loop variables, from ``params.loop_params``: a foreach's are arrays (literal or CEL,
    #: e.g. ``dateIntsBetween(…)``) whose cartesian product gives the iterations; a while's are
    #: the initial values, which body steps' params of the same name replace for the next iteration.
    loop_params: dict[str, ParamSpec]
    #: The body DAG (predecessors and successors computed within the body).
    steps: list[StepDef]
    #: The body's steps by id (this body only; nested bodies have their own).
    by_id: dict[str, StepDef]
    #: foreach: iterations at once, Maestro's default and maximum applied (None for while).
    concurrency: int | None = None
    #: while: compiled CEL, checked before every iteration (the first included).
    condition: Condition | None = None
    #: while: the iteration limit (``max_iterations``, default DEFAULT_WHILE_ITERATIONS);
    #: foreach: the bound on the cartesian product's size (MAX_LOOP_ITERATIONS).
    max_iterations: int = MAX_LOOP_ITERATIONS
    #: foreach: Maestro's ``strict_ordering`` (accepted, warned: not enforced yet).
    strict_ordering: bool = False
    #: JSON pointer of the loop variables (``…/params/loop_params/value``).
    params_pointer: str = ""


LOOP_KINDS = ("foreach", "while")
# Maestro's AbstractStep fields; none of the three kinds has `type` or `retry_policy` (Maestro
# does not retry them: "retries won't help in those cases").
_COMMON_KEYS = {"id", "name", "description", "params", "transition", "timeout", "failure_mode", "tags",
                "signal_dependencies", "signal_outputs"}
KIND_KEYS = {
    "foreach": _COMMON_KEYS | {"steps", "concurrency", "strict_ordering"},  # ForeachStep
    "while": _COMMON_KEYS | {"steps", "condition", "max_iterations"},  # WhileStep, plus Legato's limit
    "subworkflow": _COMMON_KEYS | {"sync", "explicit_params"},  # SubworkflowStep
}
#: What a foreach's loop variable may be (ForeachStepRuntime: the typed arrays; and Legato's ARRAY).
FOREACH_TYPES = frozenset({ParamType.STRING_ARRAY, ParamType.LONG_ARRAY, ParamType.DOUBLE_ARRAY,
                           ParamType.BOOLEAN_ARRAY, ParamType.ARRAY})
#: What a while's loop variable may be (WhileStepRuntime.createLoopRunParams).
WHILE_TYPES = frozenset({ParamType.STRING, ParamType.LONG, ParamType.DOUBLE, ParamType.BOOLEAN})
_MAP_FORM_KEYS = {"type", "value", "mode", "description", "tags"}
_LOOP_PARAMS_HELP = ('loop_params is a MAP of loop variables, e.g. {"type": "MAP", "value": {"i": {"type": '
                     '"LONG_ARRAY", "expression": "dateIntsBetween(20200101, 20200110, 1)"}}}')


def _esc(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def split_loop_params(v, raw_params: Any, pointer: str) -> tuple[Any, dict[str, ParamSpec], str]:
    """``(the step's other params as written, the loop variables parsed, their pointer)`` of a
    loop step at ``pointer``. ``loop_params`` is Maestro's full form ``{"type": "MAP", "value":
    {name: definition…}}`` or, as a shorthand, the map of definitions itself."""
    if not isinstance(raw_params, dict):
        return raw_params, {}, f"{pointer}/params"  # where a problem about the missing variables points
    at = f"{pointer}/params/loop_params"
    if "loop_params" not in raw_params:
        return raw_params, {}, at
    others = {k: val for k, val in raw_params.items() if k != "loop_params"}
    raw = raw_params["loop_params"]
    if isinstance(raw, dict) and "type" in raw and ("value" in raw or "expression" in raw):
        kind = raw["type"]
        if not (isinstance(kind, str) and kind.upper() == "MAP"):
            v.add(f"{at}/type", f"loop_params is a MAP, not {kind!r:.40}: {_LOOP_PARAMS_HELP}")
        if "expression" in raw:
            v.add(f"{at}/expression", "loop_params is not computed as a whole: give each loop variable its own "
                                      f"`value` or `expression` inside `value`; {_LOOP_PARAMS_HELP}")
        v.unknown_keys({k: None for k in raw if k != "expression"}, _MAP_FORM_KEYS, at, "loop_params")
        raw, at = raw.get("value"), f"{at}/value"
    if not isinstance(raw, dict):
        v.add(at, _LOOP_PARAMS_HELP)
        return others, {}, at
    return others, v.params(raw, at), at


def check_loop_params(v, kind: str, loop_id: str, specs: dict[str, ParamSpec], at: str,
                      outer: dict[str, str], step_params: dict[str, ParamSpec]) -> None:
    """The loop variables' types, names and (foreach, when every array is written out) the
    number of iterations. ``outer`` maps the variables of the enclosing loops to their loop's id."""
    allowed = FOREACH_TYPES if kind == "foreach" else WHILE_TYPES
    for name, spec in specs.items():
        where = f"{at}/{_esc(name)}"
        if spec.secret:
            v.add(f"{where}/secret", "a loop variable cannot be secret (its values are stored with each "
                                     "iteration); pass the secret as a param of the loop step")
        elif spec.type not in allowed:
            if kind == "foreach":
                v.add(where, f"a foreach loop variable is an array whose elements it iterates over (STRING_ARRAY, "
                             f"LONG_ARRAY, DOUBLE_ARRAY, BOOLEAN_ARRAY or ARRAY, literal or an expression), not a "
                             f"{spec.type.value}")
            else:
                v.add(where, f"a while loop variable holds one value (STRING, LONG, DOUBLE or BOOLEAN) that the "
                             f"body's steps may replace for the next iteration, not a {spec.type.value}")
        if name in outer:
            v.add(where, f"`{name}` is already a loop variable of the enclosing loop `{outer[name]}`: name it "
                         "differently (Maestro refuses duplicate loop param names in nested loops)")
        elif name in step_params:
            v.add(where, f"`{name}` is both a loop variable and a param of `{loop_id}`: rename one of them")
    if kind == "foreach":
        if not specs:
            v.add(at, f"a foreach needs at least one loop variable, an array to iterate over; {_LOOP_PARAMS_HELP}")
            return
        total = 1
        for spec in specs.values():
            if not (spec.has_value and isinstance(spec.value, list)):
                return  # an expression: the engine checks the product when it evaluates the arrays
            total *= len(spec.value)
        if total > MAX_LOOP_ITERATIONS:
            v.add(at, f"the loop arrays give {total:,} iterations (the product of their lengths); the limit is "
                      f"{MAX_LOOP_ITERATIONS:,} (MAX_LOOP_ITERATIONS)")


def foreach_settings(v, raw: dict, pointer: str, workflow_cap: int | None) -> tuple[int, bool]:
    """``(concurrency, strict_ordering)`` of a foreach. Without ``concurrency``, the workflow's step
    concurrency or DEFAULT_FOREACH_CONCURRENCY; with one, at most the workflow's step
    concurrency (ForeachStepRuntime.getConcurrency takes the smaller)."""
    given = v.whole(raw, "concurrency", pointer, 1, MAX_FOREACH_CONCURRENCY, "MAX_FOREACH_CONCURRENCY")
    if given is None:
        concurrency = DEFAULT_FOREACH_CONCURRENCY if workflow_cap is None else workflow_cap
    else:
        concurrency = given if workflow_cap is None else min(given, workflow_cap)
    strict = raw.get("strict_ordering", False)
    if strict is None:
        strict = False
    if not isinstance(strict, bool):
        v.add(f"{pointer}/strict_ordering", f"strict_ordering must be true or false, got {strict!r:.40}")
        strict = False
    elif strict:
        v.warn(f"{pointer}/strict_ordering", "strict_ordering is accepted but not enforced yet: iterations start "
                                             "as concurrency allows, whichever earlier one is still running")
    return concurrency, strict


def while_iterations(v, raw: dict, pointer: str) -> int:
    """A while's ``max_iterations`` (Legato's; Maestro's limit is fixed at DEFAULT_WHILE_ITERATIONS)."""
    given = v.whole(raw, "max_iterations", pointer, 1, MAX_LOOP_ITERATIONS, "MAX_LOOP_ITERATIONS")
    return DEFAULT_WHILE_ITERATIONS if given is None else given


_VERSION_WORDS = ("active", "latest")


def subworkflow_params(v, raw: dict, pointer: str, params: dict[str, ParamSpec], workflow_id: str | None,
                       workflow_id_re: re.Pattern) -> dict[str, ParamSpec]:
    """The params of a subworkflow step: the written ones (``subworkflow_id``, required;
    ``subworkflow_version``, "active" by default, "latest" or a version number; the rest are
    passed to the child) plus the step's ``sync`` (default true) and ``explicit_params`` (default
    false) as literal BOOLEAN params. What can be known at load is checked: a literal id's
    shape, a literal version, and a workflow that would start itself."""
    out = dict(params)
    for key, default in (("sync", True), ("explicit_params", False)):
        if key in params:
            v.add(f"{pointer}/params/{key}", f"`{key}` is a field of the subworkflow step, not a param: write "
                                             f"\"{key}\": {str(default).lower()} beside `params` (as Maestro does)")
        value = raw.get(key, default)
        if value is None:
            value = default
        if not isinstance(value, bool):
            v.add(f"{pointer}/{key}", f"{key} must be true or false, got {value!r:.40}")
            value = default
        out[key] = ParamSpec(key, ParamType.BOOLEAN, value)
    at = f"{pointer}/params/subworkflow_id"
    sub = params.get("subworkflow_id")
    if sub is None:
        v.add(f"{pointer}/params", "a subworkflow step needs `subworkflow_id` in its params: the id of the stored "
                                   "workflow to start, e.g. {\"subworkflow_id\": \"daily-sales\"}")
    elif sub.type is not ParamType.STRING:
        v.add(at, f"subworkflow_id is a workflow id, a STRING, not a {sub.type.value}")
    elif sub.is_literal:
        if not workflow_id_re.match(sub.value):
            v.add(at, f"subworkflow_id {sub.value!r:.80} is not a workflow id: letters, digits, `_`, `.` and `-`")
        elif sub.value == workflow_id:
            v.add(at, f"this step starts workflow {sub.value!r}, the workflow it belongs to: each instance would "
                      "start another without end; start a different workflow")
    version = params.get("subworkflow_version")
    if version is not None and version.is_literal:
        value = version.value
        where = f"{pointer}/params/subworkflow_version"
        if isinstance(value, str) and value.strip().lower() in _VERSION_WORDS:
            out["subworkflow_version"] = ParamSpec(
                "subworkflow_version", ParamType.STRING, value.strip().lower(), mode=version.mode, tags=version.tags)
        elif isinstance(value, str) and value.strip().isdigit() and 0 < int(value) < 2**63:
            pass
        elif isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
            pass
        else:
            v.add(where, f"subworkflow_version is \"active\" (the default), \"latest\" or a version number (1, 2, …), "
                         f"got {value!r:.40}")
    return out


def check_feeds(v, loop: LoopDef) -> None:
    """A while's body step param named like a loop variable gives that variable its value for the
    next iteration (Maestro's WhileStepRuntime.updateWhileParams): it must have the variable's
    type (a LONG may feed a DOUBLE)."""
    if loop.kind != "while" or not loop.loop_params:
        return
    for step in loop.steps:
        for name, spec in step.params.items():
            var = loop.loop_params.get(name)
            if var is None or spec.type is var.type or (var.type is ParamType.DOUBLE and spec.type is ParamType.LONG):
                continue
            v.add(f"{step.pointer}/params/{_esc(name)}",
                  f"`{name}` feeds the while loop's variable `{name}` (a {var.type.value}) for the next iteration: "
                  f"give it that type, not {spec.type.value}")
