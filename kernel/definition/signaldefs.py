"""A step's ``signal_dependencies`` and ``signal_outputs``, and the workflow's ``signal_triggers``
(DESIGN §3 signals), read as Maestro writes them:

- ``signal_dependencies`` (Maestro's SignalDependenciesDefinition): ``[{"name": …, "match_params":
  {param: {"param": <param definition>, "operator": "="}}}]``. The name may interpolate ``${…}``,
  a match value may be a CEL ``expression`` (evaluated when the step waits); Legato also takes
  ``{"value": …, "operator": …}`` and a bare value (``=``) as shorthand.
- ``signal_outputs`` (SignalOutputsDefinition): ``[{"name": …, "params": {name: <param>}}]``,
  evaluated when the step succeeds.
- ``signal_triggers`` (SignalTrigger): ``[{"definitions": {signal name: {"match_params": {param:
  {"value": …, "operator": …}}, "join_keys": […]}}, "condition": <CEL>, "dedup_expr": <CEL>,
  "params": {…}}]``.

Match and output params are LONG or STRING (SignalMatchParamDef, SignalOutputDefinition.setParams).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..params import ParamError, ParamSpec, interpolation_names, parse_param
from ..signals import MAX_NAME, OPERATORS
from .document import _esc

_SIGNAL_TYPES = ("STRING", "LONG")
_DEPENDENCY_KEYS = {"name", "match_params"}
_OUTPUT_KEYS = {"name", "params"}
_TRIGGER_KEYS = {"definitions", "condition", "dedup_expr", "params"}
_ENTRY_KEYS = {"match_params", "join_keys"}


@dataclass(frozen=True, slots=True)
class SignalDependency:
    """One signal a step waits for: its name (a STRING param: it may interpolate) and its match
    conditions ``(param, operator, value)``, the value a param definition evaluated when the step waits."""

    name: ParamSpec
    match: tuple[tuple[str, str, ParamSpec], ...]
    pointer: str


@dataclass(frozen=True, slots=True)
class SignalOutput:
    """One signal a step announces when it succeeds."""

    name: ParamSpec
    params: dict[str, ParamSpec]
    pointer: str


@dataclass(frozen=True, slots=True)
class SignalTriggerEntry:
    """One signal of a trigger: literal match conditions and the join keys (params whose values
    must be equal across the trigger's signals, position by position)."""

    name: str
    match: tuple[tuple[str, str, Any], ...]
    join_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SignalTriggerDef:
    """A workflow's signal trigger: its signals (in the order written), a CEL ``condition`` over
    ``signal`` and ``params`` (absent: true), a CEL ``dedup_expr`` whose value names a joined set
    (absent: the signals' numbers), and params passed to each start."""

    entries: tuple[SignalTriggerEntry, ...]
    condition: str | None
    dedup_expr: str | None
    params: dict[str, Any] = field(default_factory=dict)
    pointer: str = ""


class _SignalFields:
    """The part of :class:`~legato.definition.validator._Validator` that reads signal fields."""

    def _signal_name(self, raw: Any, pointer: str) -> ParamSpec | None:
        if not isinstance(raw, str) or not raw.strip():
            self.add(pointer, "a signal needs a `name` (a non-empty string; it may hold ${param})")
            return None
        if len(raw) > MAX_NAME:
            self.add(pointer, f"a signal name has at most {MAX_NAME} characters")
            return None
        return self._signal_param("name", raw, pointer, is_name=True)

    def _operator(self, raw: Any, pointer: str) -> str | None:
        if raw not in OPERATORS:
            self.add(pointer, f"unknown operator {raw!r:.20}: use one of {' '.join(OPERATORS)} (Maestro's SignalOperator)")
            return None
        return raw

    def _signal_param(self, name: str, raw: Any, pointer: str, *, is_name: bool = False) -> ParamSpec | None:
        """A LONG or STRING param definition (or literal) at ``pointer``, its CEL compiled and its
        ``${}`` checked."""
        try:
            spec = parse_param(name, raw, nested=True)  # nested: any signal param name is allowed
        except ParamError as exc:
            for problem in (exc, *exc.more):
                self.add(pointer + problem.pointer, problem.message)
            return None
        if spec.expression is not None and self.cel(spec.expression, pointer + "/expression") is None:
            return None
        if spec.interpolated:
            try:
                interpolation_names(spec.value)
            except ParamError as exc:
                self.add(pointer, exc.message)
                return None
        if spec.type.value not in _SIGNAL_TYPES:
            self.add(pointer, f"a signal {'name' if is_name else 'param'} is LONG or STRING, not {spec.type.value} "
                              "(Maestro's SignalMatchParamDef / SignalOutputDefinition)")
            return None
        return spec

    def signal_dependencies(self, raw: Any, pointer: str) -> tuple[SignalDependency, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.add(pointer, "signal_dependencies is an array of {\"name\": …, \"match_params\": {…}}")
            return ()
        out = []
        for i, dep in enumerate(raw):
            where = f"{pointer}/{i}"
            if not isinstance(dep, dict):
                self.add(where, "a signal dependency is {\"name\": …, \"match_params\": {param: {\"param\": …, "
                                "\"operator\": \"=\"}}}")
                continue
            self.unknown_keys(dep, _DEPENDENCY_KEYS, where, "signal dependency")
            name = self._signal_name(dep.get("name"), f"{where}/name")
            match = self._dependency_match(dep.get("match_params"), f"{where}/match_params")
            if name is not None and match is not None:
                out.append(SignalDependency(name, match, where))
        return tuple(out)

    def _dependency_match(self, raw: Any, pointer: str) -> tuple | None:
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self.add(pointer, "match_params is an object of param name -> {\"param\": …, \"operator\": …}")
            return None
        out = []
        ok = True
        for pname, cond in raw.items():
            at = f"{pointer}/{_esc(str(pname))}"
            if isinstance(cond, dict) and ("param" in cond or "operator" in cond):
                self.unknown_keys(cond, {"param", "value", "operator"}, at, "match param")
                op = self._operator(cond.get("operator", "="), f"{at}/operator")
                if "param" in cond:
                    spec = self._signal_param(str(pname), cond["param"], f"{at}/param")
                elif "value" in cond:
                    spec = self._signal_param(str(pname), cond["value"], f"{at}/value")
                else:
                    self.add(at, "a match param needs its `param` (a param definition) or `value`")
                    ok = False
                    continue
            else:
                op, spec = "=", self._signal_param(str(pname), cond, at)
            if op is None or spec is None:
                ok = False
                continue
            out.append((str(pname), op, spec))
        return tuple(out) if ok else None

    def signal_outputs(self, raw: Any, pointer: str) -> tuple[SignalOutput, ...]:
        if raw is None:
            return ()
        if isinstance(raw, dict) and set(raw) == {"outputs"}:  # Maestro's StepOutputsDefinition wrapper
            raw, pointer = raw["outputs"], f"{pointer}/outputs"
        if not isinstance(raw, list):
            self.add(pointer, "signal_outputs is an array of {\"name\": …, \"params\": {…}}")
            return ()
        out = []
        for i, sig in enumerate(raw):
            where = f"{pointer}/{i}"
            if not isinstance(sig, dict):
                self.add(where, "a signal output is {\"name\": …, \"params\": {name: value or param definition}}")
                continue
            if "payload" in sig:
                self.add(f"{where}/payload", "a signal's payload is not supported: put what steps and triggers "
                                             "match in `params`")
            self.unknown_keys(sig, _OUTPUT_KEYS | {"payload"}, where, "signal output")
            name = self._signal_name(sig.get("name"), f"{where}/name")
            params = sig.get("params") or {}
            if not isinstance(params, dict):
                self.add(f"{where}/params", "a signal output's params are an object")
                continue
            specs = {}
            for pname, praw in params.items():
                spec = self._signal_param(str(pname), praw, f"{where}/params/{_esc(str(pname))}")
                if spec is not None:
                    specs[str(pname)] = spec
            if name is not None and len(specs) == len(params):
                out.append(SignalOutput(name, specs, where))
        return tuple(out)

    def signal_triggers(self, raw: Any, pointer: str) -> tuple[SignalTriggerDef, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.add(pointer, "signal_triggers is an array of {\"definitions\": {signal name: {…}}, …}")
            return ()
        out = []
        for i, trig in enumerate(raw):
            where = f"{pointer}/{i}"
            if not isinstance(trig, dict):
                self.add(where, "a signal trigger is {\"definitions\": {signal name: {\"match_params\": …, "
                                "\"join_keys\": […]}}, \"condition\": …, \"dedup_expr\": …}")
                continue
            self.unknown_keys(trig, _TRIGGER_KEYS, where, "signal trigger")
            defs = trig.get("definitions")
            if not isinstance(defs, dict) or not defs:
                self.add(f"{where}/definitions", "a signal trigger needs `definitions`: signal name -> "
                                                 "{\"match_params\": …, \"join_keys\": […]}")
                continue
            entries, ok = [], True
            for name, entry in defs.items():
                at = f"{where}/definitions/{_esc(str(name))}"
                if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
                    self.add(at, "a signal name is a non-empty string")
                    ok = False
                    continue
                if entry is None:
                    entry = {}
                if not isinstance(entry, dict):
                    self.add(at, "a trigger's signal is {\"match_params\": …, \"join_keys\": […]}")
                    ok = False
                    continue
                self.unknown_keys(entry, _ENTRY_KEYS, at, "signal trigger entry")
                match = self._literal_match(entry.get("match_params"), f"{at}/match_params")
                keys = entry.get("join_keys") or []
                if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                    self.add(f"{at}/join_keys", "join_keys is an array of signal param names")
                    ok = False
                    continue
                if match is None:
                    ok = False
                    continue
                entries.append(SignalTriggerEntry(name, match, tuple(keys)))
            if not ok:
                continue
            sizes = {len(e.join_keys) for e in entries}
            if len(sizes) > 1:
                self.add(f"{where}/definitions", "every signal of a trigger has as many join_keys (they are "
                                                 "compared position by position, Maestro's SignalTriggerEntry)")
                continue
            bad = [key for key in ("condition", "dedup_expr")
                   if trig.get(key) is not None and self.cel(trig[key], f"{where}/{key}") is None]
            if bad:
                continue
            params = trig.get("params") or {}
            specs = self.params(params, f"{where}/params")
            if any(spec.expression is not None for spec in specs.values()):
                self.add(f"{where}/params", "a signal trigger's params are values (CEL expressions belong in the "
                                            "workflow's params, which see `signal`)")
                continue
            out.append(SignalTriggerDef(tuple(entries), trig.get("condition"), trig.get("dedup_expr"),
                                        {n: s.value for n, s in specs.items()}, where))
        return tuple(out)

    def _literal_match(self, raw: Any, pointer: str) -> tuple | None:
        from ..signals import SignalError, check_value

        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self.add(pointer, "match_params is an object of param name -> {\"value\": …, \"operator\": …}")
            return None
        out = []
        for pname, cond in raw.items():
            at = f"{pointer}/{_esc(str(pname))}"
            if isinstance(cond, dict):
                self.unknown_keys(cond, {"value", "operator"}, at, "match param")
                op = self._operator(cond.get("operator", "="), f"{at}/operator")
                value, value_at = cond.get("value"), f"{at}/value"
            else:
                op, value, value_at = "=", cond, at
            try:
                check_value(value, value_at)
            except SignalError as exc:
                self.add(value_at, exc.message + " (a trigger's match values are literals)")
                return None
            if op is None:
                return None
            out.append((str(pname), op, value))
        return tuple(out)


def parse_signal_triggers(items: Any, pointer: str) -> tuple[list[SignalTriggerDef], list[tuple[str, str]]]:
    """A workflow's ``signal_triggers`` read on their own (what the ``signal`` trigger type's
    ``parse`` answers): the triggers and the problems found, each ``(pointer, message)``; CEL is
    compiled (not evaluated) to locate its mistakes."""
    from ..cel import CelCompiler
    from .validator import _Validator

    v = _Validator({}, CelCompiler())
    found = v.signal_triggers(items, pointer)
    return list(found), [(p.pointer, p.message) for p in v.problems]
