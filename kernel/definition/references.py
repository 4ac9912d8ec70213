"""A definition's params and what they refer to: each param parsed, its CEL compiled, its ``${}``
names, ``steps.<id>`` and Maestro's cross-step references (``job1__param``) checked."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping

from ..cel import CelError, CelProgram
from ..params import ParamError, ParamSpec, argv_problems, interpolate, interpolation_names, parse_param
from .model import Problem, StepDef
from .document import _esc
from .maestro import _sel_hint


def _nested(spec: ParamSpec, pointer: str):
    """``(pointer, spec)`` of each param definition nested in a MAP, at any depth."""
    for key, sub in spec.entries or ():
        if sub is not None:
            at = f"{pointer}/value/{_esc(key)}"
            yield at, sub
            yield from _nested(sub, at)


def _units(spec: ParamSpec, pointer: str):
    """``(pointer, spec)`` of the param itself, then of each param definition nested in it (a
    MAP's entries): each is evaluated on its own, so each is checked on its own, at its pointer."""
    yield pointer, spec
    if spec.entries is not None:
        yield from _nested(spec, pointer)


def _strings(raw: Any) -> list[str]:
    """The strings of a timeout or a retry policy (its limits and its backoff's fields)."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, dict):
        return []
    out = [x for x in raw.values() if isinstance(x, str)]
    backoff = raw.get("backoff")
    if isinstance(backoff, dict):
        out += [x for x in backoff.values() if isinstance(x, str)]
    return out


_CROSS_STEP = re.compile(r"(?<![.\w])([A-Za-z_]\w*?__\w+)")


def _split_step_ref(token: str, by_id: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(step id, param)`` of ``job1__param`` when a step has that id; the first `__` that
    leaves a known step id wins (``_a___b`` is step `_a`, param `_b`, when there is no `_a_`)."""
    i = token.find("__")
    while i > 0:
        if token[:i] in by_id and token[i + 2:]:
            return token[:i], token[i + 2:]
        i = token.find("__", i + 1)
    return None


def _cross_step_tokens(spec: ParamSpec) -> list[str]:
    """The ``<step id>__<param>``-shaped tokens of one param's expression, validator and ``${}``
    names (not of the definitions nested in it)."""
    sources = [src for src in (spec.expression, spec.validator) if src and "__" in src]
    if spec.interpolated and "__" in json.dumps(spec.value):
        try:
            sources += interpolation_names(spec.value)
        except ParamError:
            pass  # reported by the validator
    return [token for src in sources for token in _CROSS_STEP.findall(src)]


_STEPS_REF = re.compile(r"\bsteps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)|\bsteps\s*\[\s*[\"']([^\"']+)[\"']\s*\]")


class _References:
    """The part of :class:`~legato.definition.validator._Validator` that reads params and checks what they refer
    to: CEL, ``${}`` names, ``steps.<id>``, Maestro's cross-step references, templates."""

    def cel(self, source: Any, pointer: str) -> CelProgram | None:
        if not isinstance(source, str):
            self.add(pointer, "expected a CEL expression string")
            return None
        try:
            return self.compiler.compile(source)
        except CelError as exc:
            hint = _sel_hint(source)
            self.add(pointer, f"CEL {exc.located()}{hint}")
            return None

    def params(self, raw: Any, pointer: str, code: frozenset[str] = frozenset(),
               argv: frozenset[str] = frozenset()) -> dict[str, ParamSpec]:
        """Parse params; names in ``code`` are code for the step type, never ``${}`` templates;
        names in ``argv`` are argument vectors, where ``${}`` may only be a whole element."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.add(pointer, "params must be an object of name -> value or full-form param")
            return {}
        specs: dict[str, ParamSpec] = {}
        for name, value in raw.items():
            where = f"{pointer}/{_esc(name)}"
            if not isinstance(name, str):
                self.add(where, f"param name {name!r} must be a string (quote it in YAML)")
                continue
            try:
                spec = parse_param(name, value)
            except ParamError as exc:
                for problem in (exc, *exc.more):
                    self.add(where + problem.pointer, problem.message)
                continue
            if name in code and spec.interpolated:
                spec = dataclasses.replace(spec, interpolated=False)
            if spec.expression is not None:
                self.cel(spec.expression, where + "/expression")
            if spec.validator is not None:
                self.cel(spec.validator, where + "/validator")
            for at, sub in _nested(spec, where):  # a MAP's entries written as param definitions
                if sub.expression is not None:
                    self.cel(sub.expression, at + "/expression")
                if sub.validator is not None:
                    self.cel(sub.validator, at + "/validator")
                if sub.interpolated:
                    try:
                        interpolation_names(sub.value)
                    except ParamError as exc:
                        self.add(at, exc.message)
            if spec.interpolated:
                try:
                    interpolation_names(spec.value)
                except ParamError as exc:
                    self.add(where, exc.message)
                else:
                    if name in argv:
                        at = where + ("/value" if isinstance(value, dict) and "value" in value else "")
                        for index, message in argv_problems(spec.value):
                            self.add(f"{at}/{index}", message)
            specs[name] = spec
        return specs

    def check_refs(self, params: dict[str, ParamSpec], known: set[str], scope: set[str], pointer: str,
                   secret: frozenset[str] = frozenset()) -> None:
        """``${name}`` and ``steps.<id>`` references must name something that exists; a secret
        (a name in ``secret``) is never pasted into another param."""
        for name, spec in params.items():
            for where, unit in _units(spec, f"{pointer}/{_esc(name)}"):
                self.unit_refs(unit, known, scope, where, secret)

    def unit_refs(self, spec: ParamSpec, known: set[str], scope: set[str], where: str, secret: frozenset[str]) -> None:
        """check_refs for one param, or one param definition nested in a MAP (at ``where``)."""
        sources = [spec.expression, spec.validator]
        if spec.interpolated:
            try:
                for ref in interpolation_names(spec.value):
                    parts = ref.split(".")
                    head = parts[1] if parts[0] == "params" and len(parts) > 1 else parts[0]
                    if head not in scope and head not in ("params", "steps", "workflow") and (
                            "__" not in head or _split_step_ref(head, known) is None):
                        self.add(where, f"${{{ref}}} names no param; declare `{head}` or write $${{…}} for a literal")
                    elif head == "loop" and parts[0] == "loop" and (len(parts) < 2 or (
                            parts[1] != "index" and parts[1] not in scope)):
                        self.add(where, f"${{{ref}}}: `loop` holds `index` (the iteration's number, from 0) and "
                                        "the loop variables; write ${loop.index} or ${<variable>}")
                    elif head in secret:
                        self.add(where, f"${{{ref}}} names the secret param `{head}`: a secret is never pasted "
                                        "into another param (the result would be stored); use it where it "
                                        f"arrives in the step (bash: \"${head}\")")
                    sources.append(ref)
            except ParamError:
                pass
        for src in sources:
            if src:
                self.check_step_refs(src, known, where)

    def check_step_refs(self, source: str, known: set[str], pointer: str) -> None:
        for m in _STEPS_REF.finditer(source):
            ref = m.group(1) or m.group(2)
            if ref not in known:
                self.add(pointer, f"`steps.{ref}` names no step")

    def template(self, raw: Any, pointer: str) -> bool:
        """Whether ``raw`` (a timeout or a retry policy) holds ``${param}``; if so, check that it
        names only workflow params (Maestro resolves these with the workflow's params alone) and
        that it has the right shape with a number in each reference's place."""
        texts = _strings(raw)
        if not any("${" in t for t in texts):
            return False
        ok = True
        for text in texts:
            try:
                names = interpolation_names(text)
            except ParamError as exc:
                self.add(pointer, exc.message)
                return True
            for name in names:
                parts = name.split(".")
                head = parts[1] if parts[0] == "params" and len(parts) > 1 else parts[0]
                if head not in self.workflow_params:
                    self.add(pointer, f"${{{name}}} names no workflow param: a {pointer.rsplit('/', 1)[-1]} may refer "
                                      "to the workflow's params only (as in Maestro), declare it under /workflow/params")
                    ok = False
        if ok:  # the shape, with 1 in each reference's place (Maestro's TimeoutConstraint uses a dummy too)
            dummy, before = interpolate(raw, lambda name: 1), len(self.problems)
            if isinstance(raw, str):
                self.duration(dummy, pointer)
            else:
                self.retry_policy(dummy, pointer)
            for i in range(before, len(self.problems)):
                p = self.problems[i]
                self.problems[i] = Problem(p.pointer, f"{p.message} (read with 1 in place of each ${{…}})")
        return True

    def dag_refs(self, steps: list[StepDef], scope: set[str], secret: frozenset[str],
                 all_by_id: dict[str, StepDef]) -> bool:
        """check_refs and cross_step_refs for the params of one DAG's steps, with ``scope`` the
        names their ``${}`` may use besides their own params, then for each loop's variables and
        body (which see the loop step's params, its variables and ``loop``). Returns whether
        any of these params is secret."""
        has_secrets = False
        known = self.known
        for step in steps:
            loop = step.loop
            for dep in step.signal_dependencies:  # evaluated before the step's own params exist
                self.unit_refs(dep.name, known, scope, f"{dep.pointer}/name", secret)
                for pname, _, spec in dep.match:
                    self.unit_refs(spec, known, scope, f"{dep.pointer}/match_params/{_esc(pname)}", secret)
            if not step.params and loop is None:
                continue  # nothing to check (most steps of a large definition)
            step_secret = secret | {n for n, spec in step.params.items() if spec.secret}
            has_secrets = has_secrets or len(step_secret) > len(secret)
            own = scope | set(step.params)
            if step.params:
                self.check_refs(step.params, known, own, f"{step.pointer}/params", step_secret)
                self.cross_step_refs(step, all_by_id, own)
            if loop is not None:
                inner = own | set(loop.loop_params)
                self.check_refs(loop.loop_params, known, inner, loop.params_pointer, step_secret)
                self.cross_step_refs(step, all_by_id, inner, loop.loop_params, loop.params_pointer)
                if loop.condition is not None and loop.condition.program is not None:
                    self.check_step_refs(loop.condition.source, known, f"{step.pointer}/condition")
                if self.dag_refs(loop.steps, inner | {"loop"}, step_secret, all_by_id):
                    has_secrets = True
        return has_secrets

    def cross_step_refs(self, step: StepDef, by_id: dict[str, StepDef], scope: set[str],
                        params: dict[str, ParamSpec] | None = None, pointer: str | None = None) -> None:
        """Maestro's cross-step references, ``<step id>__<param>`` (ParamEvaluator, the
        ``__`` of Constants.DEFAULT_STEP_PARAM_SEPARATOR), in a step param's ``${}``, expression
        or validator: each must name a param the other step declares; the spec records them so
        that evaluating it can read them from the steps that finished. A MAP's nested param
        definitions are checked each at its own pointer; the MAP's spec records their references.
        ``params`` at ``pointer``: another dict of the step's than its params (a loop's variables)."""
        if params is None:
            params, pointer = step.params, f"{step.pointer}/params"
        for name, spec in params.items():
            refs: dict[str, tuple[str, str, str]] = {}
            for where, unit in _units(spec, f"{pointer}/{_esc(name)}"):
                for token in _cross_step_tokens(unit):
                    split = _split_step_ref(token, by_id)
                    if split is None or token in scope:
                        continue
                    sid, param = split
                    if sid == step.id:
                        self.add(where, f"`{token}` is this step's own param: write `{param}`")
                    elif param not in by_id[sid].params:
                        known = ", ".join(by_id[sid].params) or "none"
                        self.add(where, f"`{token}`: step {sid!r} declares no param {param!r} (it declares {known})")
                    else:
                        refs[token] = (token, sid, param)
            if refs:
                params[name] = dataclasses.replace(spec, step_refs=tuple(refs.values()))
