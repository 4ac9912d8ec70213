"""References to steps that are not upstream: a step reads only the steps that have finished
when it is evaluated, whatever the timing (see :func:`check_upstream`)."""

from __future__ import annotations

import heapq
import re
from typing import Any

from ..params import ParamError, ParamSpec, interpolation_names
from .model import Problem, StepDef
from .document import _esc
from .references import _CROSS_STEP, _cross_step_tokens, _split_step_ref, _units


# `steps.x` or `steps["x"]` (not `a.steps.x`): a step an expression or `${}` reads.
_UPSTREAM_REF = re.compile(r"(?<![.\w])steps\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*[\"']([^\"']+)[\"']\s*\])")
#: How many upstream steps an error's hint names (the nearest first).
_HINT_STEPS = 8


def check_upstream(steps: list[StepDef], by_id: dict[str, StepDef], wparams: dict[str, ParamSpec],
                   all_by_id: dict[str, StepDef] | None = None, parent_of: dict[str, str] | None = None, *,
                   loop: StepDef | None = None, readable: Any = frozenset()) -> list[Problem]:
    """References to steps that have not finished when the expression is evaluated, each at its
    pointer: a step's params (expressions, validators, ``${steps.x…}``) read only steps upstream of
    it; an edge condition of step ``s`` reads ``s`` and the steps upstream of it; workflow params
    read none (they are evaluated at start). The engine's ``steps`` holds every step finished so
    far, so such a reference would work or fail depending on timing. The same holds for Maestro's
    cross-step references (``job1__sleep_seconds``) and for the definitions nested in a MAP.

    ``steps`` is one DAG: the workflow's, or the body of ``loop``. ``all_by_id`` holds every step
    of the definition and ``parent_of`` each body step's loop: a reference to a step of another DAG
    is right only when that step is in ``readable`` (for a body: upstream of its loop, or of the
    loops around that); a loop's variables and a while's condition are checked as its params.

    One pass over the steps; a reference to a predecessor (or a predecessor's predecessor) costs
    nothing more. The others are grouped by the step they name: one forward walk from it, over the
    steps no later than its last reader in topological order, answers them all."""
    problems: list[Problem] = []
    if all_by_id is None:
        all_by_id = by_id
    parent_of = parent_of or {}

    def outside(step: StepDef, ref: str, where: str, written: str) -> None:
        if ref in all_by_id and ref not in readable:
            problems.append(Problem(where, _outside_message(step, ref, loop, parent_of, written)))

    for name, spec in wparams.items():
        cross = {}
        for _, unit in _units(spec, ""):
            for token in _cross_step_tokens(unit):
                split = _split_step_ref(token, by_id)
                if split is not None and token not in wparams:
                    cross[token] = split[0]
        for ref, field, written in _param_step_refs(spec, cross):
            if ref in all_by_id:
                problems.append(Problem(f"/workflow/params/{_esc(name)}{field}", f"`{written}`: workflow params are evaluated when the instance "
                                               "starts, before any step has run; read it in the params of a step "
                                               f"downstream of {ref}"))
    # (reader step, referenced step, pointer, whether a condition reads it, how the reference is
    # written), for references that are neither to a predecessor nor to a predecessor's
    # predecessor (the cheap, common cases)
    queries: list[tuple[StepDef, str, str, bool, str]] = []
    for step in steps:
        groups = ((step.params, f"{step.pointer}/params"),)
        if step.loop is not None:
            groups += ((step.loop.loop_params, step.loop.params_pointer),)
            cond = step.loop.condition
            if cond is not None and cond.program is not None:
                for ref in _cel_step_refs(cond.source):
                    where = f"{step.pointer}/condition"
                    if ref not in by_id:
                        outside(step, ref, where, f"steps.{ref}")
                    elif ref == step.id or not _near_upstream(step, ref, by_id):
                        queries.append((step, ref, where, False, f"steps.{ref}"))
        for params, at in groups:
            for name, spec in params.items():
                if spec.expression is None and spec.validator is None and not spec.interpolated and spec.entries is None:
                    continue
                cross = {token: sid for token, sid, _ in spec.step_refs}  # checked by cross_step_refs
                for ref, field, written in _param_step_refs(spec, cross):
                    if ref not in by_id:
                        outside(step, ref, f"{at}/{_esc(name)}{field}", written)
                    elif ref == step.id or not _near_upstream(step, ref, by_id):
                        queries.append((step, ref, f"{at}/{_esc(name)}{field}", False, written))
        for target, cond in step.successors:
            if cond.program is None:
                continue
            for ref in _cel_step_refs(cond.source):
                if ref not in by_id:
                    outside(step, ref, f"{step.pointer}/transition/successors/{_esc(target)}", f"steps.{ref}")
                elif ref != step.id and not _near_upstream(step, ref, by_id):
                    queries.append((step, ref, f"{step.pointer}/transition/successors/{_esc(target)}", True, f"steps.{ref}"))
    if not queries:
        return problems
    order = _topological_index(steps)
    if order is None:
        return problems  # a cycle, reported by the validator
    last_reader: dict[str, int] = {}
    for step, ref, _, _, _ in queries:
        if step.id != ref and order[ref] < order[step.id] and order[step.id] > last_reader.get(ref, -1):
            last_reader[ref] = order[step.id]
    downstream = {ref: _descendants(ref, by_id, order, last) for ref, last in last_reader.items()}
    for step, ref, where, condition, written in queries:
        if step.id in downstream.get(ref, ()):
            continue
        problems.append(Problem(where, _not_upstream_message(step, ref, condition, by_id, order, written)))
    return problems


def _every_step(steps: list[StepDef], into: dict[str, StepDef]) -> dict[str, StepDef]:
    """The steps of a DAG and of the loop bodies in it, at every depth, in document order."""
    for step in steps:
        into[step.id] = step
        if step.loop is not None:
            _every_step(step.loop.steps, into)
    return into


def _loop_upstream(steps: list[StepDef], by_id: dict[str, StepDef], all_by_id: dict[str, StepDef],
                   parent_of: dict[str, str], readable: Any, problems: list[Problem]) -> None:
    """check_upstream for the body of each loop of one DAG, and of the loops in those bodies: a
    body reads its own steps upstream, and those upstream of its loop (or of the loops around)."""
    walks: dict[str, Any] = {}  # shared by the loops of this DAG: see _Upstream
    for step in steps:
        loop = step.loop
        if loop is None or not loop.steps:
            continue
        inner = _Upstream(step, by_id, readable, walks)
        problems.extend(check_upstream(loop.steps, loop.by_id, {}, all_by_id, parent_of, loop=step, readable=inner))
        _loop_upstream(loop.steps, loop.by_id, all_by_id, parent_of, inner, problems)


class _Upstream:
    """Whether a step outside a loop's body may be read in it: a step upstream of the loop in its
    DAG, or one that DAG may read (``outer``).

    Answered as check_upstream answers its queries: a walk downstream from the step read, over the
    steps no later than the loop in a topological order; the walk is kept (in ``walks``, shared
    by the loops of the DAG) and carried further when a later loop reads the same step, so each
    step read costs one walk however many loops read it."""

    __slots__ = ("step", "by_id", "outer", "walks")

    def __init__(self, step: StepDef, by_id: dict[str, StepDef], outer: Any, walks: dict[str, Any]) -> None:
        self.step, self.by_id, self.outer, self.walks = step, by_id, outer, walks

    def __contains__(self, sid: str) -> bool:
        by_id = self.by_id
        if sid not in by_id:
            return sid in self.outer
        order = self.walks.get("")
        if order is None:
            order = self.walks[""] = _topological_index(list(by_id.values())) or {}
        if sid not in order or self.step.id not in order:
            return False  # a cycle, reported by the validator
        walk = self.walks.get(sid)
        if walk is None:  # (steps reached, the steps found but later than every reader so far)
            walk = self.walks[sid] = (set(), [(order[sid], sid)])
        reached, pending = walk
        bound = order[self.step.id]
        while pending and pending[0][0] <= bound:
            _, node = heapq.heappop(pending)
            for target, _ in by_id[node].successors:
                if target not in reached:
                    reached.add(target)
                    heapq.heappush(pending, (order[target], target))
        return self.step.id in reached


def _encloses(loop_id: str, sid: str, parent_of: dict[str, str]) -> bool:
    """Whether step ``sid`` is in the body of ``loop_id``, at any depth."""
    owner = parent_of.get(sid)
    while owner is not None:
        if owner == loop_id:
            return True
        owner = parent_of.get(owner)
    return False


def _outside_message(step: StepDef, ref: str, loop: StepDef | None, parent_of: dict[str, str], written: str) -> str:
    """Why ``step`` (in the body of ``loop``, or at the top when None) cannot read step ``ref`` of
    another DAG (written ``written``)."""
    subject = f"`steps.{ref}`" if written.startswith("steps.") else f"`{written}` reads step `{ref}`, which"
    owner = parent_of.get(ref)
    if loop is not None and ref == loop.id:
        return (f"{subject} is the loop whose body holds `{step.id}`: it has not finished while its body runs; read "
                f"its loop variables and `loop.index` instead")
    if owner == step.id:
        return (f"{subject} is a step of `{owner}`'s own body, which runs once per iteration: `{owner}`'s params, "
                "loop variables and condition cannot read it (a while's body feeds the next iteration through params "
                "named like its loop variables)")
    if owner is not None and not _encloses(owner, step.id, parent_of):
        return (f"{subject} is a step of the body of `{owner}` and runs once per iteration of it: steps outside that "
                "body cannot read it")
    if loop is None:
        return f"{subject} is a step of a loop's body: steps outside that body cannot read it"
    return (f"{subject} is outside the body of `{loop.id}` and not upstream of it (nor of a loop around it), so it may "
            f"or may not have run when `{step.id}` is evaluated; a body's step reads the steps upstream of it in the "
            f"body and those upstream of `{loop.id}`")


def _near_upstream(step: StepDef, ref: str, by_id: dict[str, StepDef]) -> bool:
    """Whether ``ref`` is a predecessor of ``step`` or of one of its predecessors; True also for a
    step that does not exist (the validator says it names no step)."""
    preds = step.predecessors
    if ref in preds or ref not in by_id:
        return True
    return len(preds) <= 8 and any(ref in by_id[p].predecessors for p in preds)


def _param_step_refs(spec: ParamSpec, cross: dict[str, str]):
    """(step id, field, the reference as written) for each step a param's expressions, validators
    or ``${}`` read, its own and those of the definitions nested in it; the field is relative to
    the param ("/expression", "/value/k/validator", "" for its ``${}``…). ``cross`` maps the
    Maestro cross-step references to check (``job1__sleep_seconds``) to their step."""
    for field, unit in _units(spec, ""):
        for source, at in ((unit.expression, "/expression"), (unit.validator, "/validator")):
            if source is not None:
                for ref in _cel_step_refs(source):
                    yield ref, field + at, f"steps.{ref}"
                if cross and "__" in source:
                    for token in _CROSS_STEP.findall(source):
                        if token in cross:
                            yield cross[token], field + at, token
        if unit.interpolated and (cross or not isinstance(unit.value, str) or "steps" in unit.value):
            try:
                names = interpolation_names(unit.value)
            except ParamError:
                continue  # reported by the validator
            for name in names:
                head = name.split(".")[0]
                if name.startswith("steps."):
                    ref = name.split(".")[1]
                    yield ref, field, f"steps.{ref}"
                elif head in cross:
                    yield cross[head], field, head


_NO_REFS: list[str] = []
_REFS_SEEN: dict[str, list[str]] = {}


def _cel_step_refs(source: Any) -> list[str]:
    """The steps a CEL source reads (remembered: generated definitions repeat their expressions)."""
    if not isinstance(source, str) or "steps" not in source:
        return _NO_REFS
    refs = _REFS_SEEN.get(source)
    if refs is not None:
        return refs
    if len(_REFS_SEEN) > 10_000:
        _REFS_SEEN.clear()
    refs = [m.group(1) or m.group(2) for m in _UPSTREAM_REF.finditer(source)
            if not (m.group(1) and _in_string(source, m.start()))]  # not "see steps.x" inside a string
    _REFS_SEEN[source] = refs
    return refs


def _in_string(source: str, index: int) -> bool:
    quote, escaped = None, False
    for ch in source[:index]:
        if escaped:
            escaped = False
        elif quote and ch == "\\":
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
    return quote is not None


def _topological_index(steps: list[StepDef]) -> dict[str, int] | None:
    """Each step's position in one topological order (Kahn), or None when the graph has a cycle."""
    remaining = {s.id: len(s.predecessors) for s in steps}
    by_id = {s.id: s for s in steps}
    ready = [s.id for s in steps if not s.predecessors]
    order: dict[str, int] = {}
    while ready:
        sid = ready.pop()
        order[sid] = len(order)
        for target, _ in by_id[sid].successors:
            remaining[target] -= 1
            if remaining[target] == 0:
                ready.append(target)
    return order if len(order) == len(steps) else None


def _descendants(start: str, by_id: dict[str, StepDef], order: dict[str, int], last: int) -> set[str]:
    """The steps downstream of ``start`` whose topological position is at most ``last``."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        for target, _ in by_id[stack.pop()].successors:
            if target not in seen and order[target] <= last:
                seen.add(target)
                stack.append(target)
    return seen


def _nearest_upstream(step: StepDef, by_id: dict[str, StepDef]) -> list[str]:
    """Up to _HINT_STEPS + 1 steps upstream of ``step``, nearest first."""
    found: list[str] = []
    seen = {step.id}
    frontier = [step.id]
    while frontier and len(found) <= _HINT_STEPS:
        nxt = []
        for sid in frontier:
            for pred in by_id[sid].predecessors:
                if pred not in seen:
                    seen.add(pred)
                    found.append(pred)
                    nxt.append(pred)
        frontier = nxt
    return found


def _not_upstream_message(step: StepDef, ref: str, condition: bool, by_id: dict[str, StepDef],
                          order: dict[str, int], written: str) -> str:
    """Why step ``ref`` (written ``written``: ``steps.x…`` or ``x__param``) cannot be read there."""
    sid = step.id
    upstream = ([sid] if condition else []) + _nearest_upstream(step, by_id)
    names = ", ".join(f"`{n}`" for n in upstream[:_HINT_STEPS]) + (", …" if len(upstream) > _HINT_STEPS else "")
    if condition:
        readable = f"a condition of `{sid}` can read {names}"
    else:
        readable = f"`{sid}` can read {names}" if names else f"nothing is upstream of `{sid}`"
    if ref == sid:
        return (f"`steps.{sid}` is this step itself: its params are evaluated before it runs; read its outputs "
                "in its transition's conditions or in the params of a step downstream of it")
    when = f"`{sid}`'s conditions are evaluated (as it ends)" if condition else f"`{sid}`'s params are evaluated"
    subject = f"`steps.{ref}`" if written.startswith("steps.") else f"`{written}` reads step `{ref}`, which"
    if order[ref] > order[sid] and ref in _descendants(sid, by_id, order, order[ref]):
        return f"{subject} runs after `{sid}`, so it has not run yet when {when}; {readable}"
    return (f"{subject} is not upstream of `{sid}`, so it may or may not have run when {when}; "
            f"{readable} (or add `{sid}` to the successors of `{ref}`)")
