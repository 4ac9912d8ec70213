"""The DAGs of a definition: the workflow's steps and each loop's body (foreach, while; and
subworkflow steps), their transitions and the cycles they must not have."""

from __future__ import annotations

import graphlib
from typing import Any

from .. import loopdef
from ..limits import MAX_WORKFLOW_DEPTH
from ..loopdef import KIND_KEYS, LoopDef
from .model import _ALWAYS, Condition, StepDef
from .document import _esc
from .vocabulary import _WORKFLOW_ID_RE, _WRAPPERS


class _Dags:
    """The part of :class:`~legato.definition.validator._Validator` that reads the DAGs: the workflow's steps and
    loop bodies, their transitions and cycles."""

    def nested(self, kind: str, raw: Any, pointer: str, index: int, seen: dict[str, str], depth: int,
               outer: dict[str, str]) -> StepDef | None:
        """A foreach, while or subworkflow step (:mod:`legato.loopdef`) at ``pointer``, in a DAG at
        ``depth`` (1: the workflow's own steps) inside loops whose variables ``outer`` maps to their
        loop's id. A loop's body is read here too, its steps registered as the workflow's are."""
        if not isinstance(raw, dict):
            self.add(pointer, f"a {kind} step is an object with an `id`" + ("" if kind == "subworkflow" else " and `steps`"))
            return None
        for key in ("type", "retry_policy"):
            if key in raw:
                self.add(f"{pointer}/{key}", f"a {kind} step has no `{key}`" + (
                    ": its kind is its wrapper's key" if key == "type" else
                    " (Maestro does not retry foreach, while and subworkflow steps): set retry policies on the steps "
                    "it runs" + (" in its body" if kind != "subworkflow" else " in the child workflow")))
        if "loop_params" in raw and kind != "subworkflow":
            self.add(f"{pointer}/loop_params", "`loop_params` goes inside `params`, as Maestro writes it: "
                                               "\"params\": {\"loop_params\": {\"type\": \"MAP\", \"value\": {…}}}")
        self.unknown_keys({k: None for k in raw if k not in ("type", "retry_policy", "loop_params")}, KIND_KEYS[kind],
                          pointer, f"{kind} step")
        ok = self.ident(raw, pointer, seen)
        sid = raw.get("id")
        loop = None
        if kind == "subworkflow":
            params = self.params(raw.get("params"), f"{pointer}/params")
            params = loopdef.subworkflow_params(self, raw, pointer, params, self.workflow_id, _WORKFLOW_ID_RE)
            cls = self.step_types.get("subworkflow")  # the step type that runs it
            if cls is None:
                self.add(pointer, "subworkflow steps cannot run here: no `subworkflow` step type is installed "
                                  "(it ships with Legato: reinstall it, `pip install legato`; `legato plugins` "
                                  "lists what is installed)")
            else:
                why = cls.unavailable()
                if why:
                    self.add(pointer, f"subworkflow steps cannot run here: {why}")
                if "subworkflow_id" in params:  # (its absence is reported above, at the params)
                    self.step_config(cls, params, f"{pointer}/params")
        else:
            others, loop_params, at = loopdef.split_loop_params(self, raw.get("params"), pointer)
            params = self.params(others, f"{pointer}/params")
            loopdef.check_loop_params(self, kind, sid if isinstance(sid, str) else kind, loop_params, at, outer, params)
            loop = LoopDef(kind, loop_params, [], {}, params_pointer=at)
            if kind == "foreach":
                loop.concurrency, loop.strict_ordering = loopdef.foreach_settings(self, raw, pointer,
                                                                                self.step_concurrency)
            else:
                loop.max_iterations = loopdef.while_iterations(self, raw, pointer)
                loop.condition = self.loop_condition(raw, pointer)
            body, at = raw.get("steps"), f"{pointer}/steps"
            if not isinstance(body, list) or not body:
                self.add(at, f"a {kind} step needs a non-empty array of `steps`: its body, run once per iteration")
            elif depth + 1 > MAX_WORKFLOW_DEPTH:
                self.add(at, f"this body would be level {depth + 1} of workflows nested in one another (the "
                             f"workflow, each loop's body); the limit is {MAX_WORKFLOW_DEPTH} (MAX_WORKFLOW_DEPTH, "
                             "Maestro's WORKFLOW_DEPTH_LIMIT)")
            else:
                inner = dict(outer)
                inner.update((name, sid) for name in loop_params)
                loop.steps, loop.by_id = self.dag(body, at, seen, depth + 1, inner)
                loopdef.check_feeds(self, loop)
                if ok:
                    for body_id in loop.by_id:
                        self.parent_of[body_id] = sid
        deps, outs = self.signal_fields(raw, pointer, outputs=kind == "subworkflow")
        if not ok:
            self.attributes(raw, pointer, False)
            return None
        return StepDef(sid, kind if loop is not None else "subworkflow", index, pointer, params, [],
                       *self.attributes(raw, pointer, False), loop=loop, signal_dependencies=deps,
                       signal_outputs=outs)

    def loop_condition(self, raw: dict, pointer: str) -> Condition | None:
        """A while's ``condition``: CEL over the loop variables, the params and ``loop.index``."""
        at = f"{pointer}/condition"
        source = raw.get("condition")
        if source is None:
            self.add(at, "a while step needs a `condition`: CEL checked before every iteration (the first too), "
                         "e.g. \"i <= 20200105\"; the loop ends when it is false")
            return None
        if isinstance(source, str) and source.strip() in ("true", "false"):
            return Condition(source.strip(), source.strip() == "true")
        program = self.cel(source, at)
        return None if program is None else Condition(source, None, program)

    def dag(self, raw_steps: list, pointer: str, seen: dict[str, str], depth: int = 1,
            outer: dict[str, str] | None = None) -> tuple[list[StepDef], dict[str, StepDef]]:
        """The steps of one DAG (the workflow's, or a loop's body) at ``pointer``, and by id; the
        DAG is kept for :meth:`transitions` (which needs every id of the definition first)."""
        steps: list[StepDef] = []
        by_id: dict[str, StepDef] = {}
        raws: list[dict] = []
        for i, wrapper in enumerate(raw_steps):
            at = f"{pointer}/{i}"
            if not isinstance(wrapper, dict) or len(wrapper) != 1:
                self.add(at, "each entry is a one-key object: {\"step\": {…}} (or foreach, while, subworkflow)")
                continue
            (kind, body), = wrapper.items()
            if kind == "step":
                step = self.step(body, f"{at}/step", i, seen)
            elif kind in _WRAPPERS:
                step = self.nested(kind, body, f"{at}/{kind}", i, seen, depth, outer or {})
            else:
                self.add(f"{at}/{_esc(kind)}", f"unknown step kind {kind!r}; use step, foreach, while or subworkflow")
                continue
            if step is not None:
                steps.append(step)
                by_id[step.id] = step
                raws.append(body)
        self.dags.append((raws, steps, by_id))
        return steps, by_id

    def transitions(self, raws: list[dict], steps: list[StepDef], by_id: dict[str, StepDef]) -> None:
        """Each step's successors (``raws``: the steps as written, aligned with ``steps``), within its DAG."""
        for step, raw in zip(steps, raws):
            transition = raw.get("transition")
            if transition is None:
                continue
            where = f"{step.pointer}/transition"
            if not isinstance(transition, dict):
                self.add(where, "transition must be an object with `successors`")
                continue
            self.unknown_keys(transition, {"successors"}, where, "transition")
            successors = transition.get("successors", {})
            if isinstance(successors, list):  # shorthand: unconditional successors
                for i, target in enumerate(successors):
                    if not isinstance(target, str):
                        self.add(f"{where}/successors/{i}", f"expected a step id, got {target!r}")
                successors = {target: "true" for target in successors if isinstance(target, str)}
            if not isinstance(successors, dict):
                self.add(f"{where}/successors", "successors must map step id -> CEL condition")
                continue
            successors_at = f"{where}/successors/"
            for target, condition in successors.items():
                # The pointer is spelt out only where it is used (a 100,000-step fan-out has as
                # many successors, nearly all fine).
                target = str(target)
                if target not in by_id:
                    if target in self.known:
                        where = self.parent_of.get(target)
                        self.add(successors_at + _esc(target), f"`{target}` is not in the same list of steps: "
                                 + (f"it is in the body of `{where}`" if where else "it is one of the workflow's own steps")
                                 + "; a transition names steps of its own DAG (a loop's body is a DAG of its own)")
                        continue
                    close = [s for s in by_id if s[:2] == target[:2]]
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    self.add(successors_at + _esc(target), f"no such step{hint}")
                    continue
                if target == step.id:
                    self.add(successors_at + _esc(target), "a step cannot be its own successor")
                    continue
                if condition is True or condition == "true":
                    cond = _ALWAYS
                elif isinstance(condition, bool):
                    cond = Condition(str(condition).lower(), condition)
                elif isinstance(condition, str) and condition.strip() in ("true", "false"):
                    cond = Condition(condition.strip(), condition.strip() == "true")
                else:
                    at = successors_at + _esc(target)
                    program = self.cel(condition, at)
                    if program is None:
                        continue
                    self.check_step_refs(condition, self.known, at)
                    cond = Condition(condition, None, program)
                step.successors.append((target, cond))
                by_id[target].predecessors.append(step.id)

    def cycles(self, steps: list[StepDef], by_id: dict[str, StepDef]) -> None:
        # Kahn's algorithm on the successor lists settles the common case in one linear pass;
        # graphlib only names a cycle when there is one.
        waiting = {s.id: len(s.predecessors) for s in steps}
        ready = [s for s in steps if not s.predecessors]
        settled = 0
        while ready:
            settled += 1
            for target, _ in ready.pop().successors:
                waiting[target] -= 1
                if not waiting[target]:
                    ready.append(by_id[target])
        if settled == len(steps):
            return
        graph = {s.id: set(s.predecessors) for s in steps}
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as exc:
            cycle = exc.args[1]  # [a, b, …, a]: each a predecessor of the next
            first = by_id[cycle[0]]
            self.add(f"{first.pointer}/transition/successors/{_esc(cycle[1])}", "cycle: " + " -> ".join(cycle))
