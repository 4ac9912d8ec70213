"""Typed params: declaration forms, types, modes, coercion and ``${}`` interpolation (DESIGN §2).

A param is declared in full form ``{"type": …, "value": … | "expression": "<CEL>", "mode": …,
"validator": "<CEL>"}`` or as a bare JSON literal whose type is inferred.  Values are plain JSON
values; CEL sees them converted by :func:`legato.cel.to_cel`.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from .cel import INT_MAX as _INT_MAX
from .cel import INT_MIN as _INT_MIN
from .cel import unconvertible
from .limits import MAX_INSTANCE_VALUE_BYTES, MAX_NESTING, MAX_VALUE_BYTES, nests_deeper, value_size
from .processes import controls_execution

__all__ = [
    "ParamType",
    "ParamMode",
    "ParamSpec",
    "ParamError",
    "parse_param",
    "coerce",
    "interpolate",
    "interpolate_argv",
    "argv_problems",
    "interpolation_names",
    "check_secret_override",
    "resolve_secrets",
    "ValueBudget",
    "RESERVED_NAMES",
    "NAME_RE",
]


class ParamType(str, enum.Enum):
    STRING = "STRING"
    LONG = "LONG"
    DOUBLE = "DOUBLE"
    BOOLEAN = "BOOLEAN"
    STRING_MAP = "STRING_MAP"
    STRING_ARRAY = "STRING_ARRAY"
    LONG_ARRAY = "LONG_ARRAY"
    DOUBLE_ARRAY = "DOUBLE_ARRAY"
    BOOLEAN_ARRAY = "BOOLEAN_ARRAY"
    MAP = "MAP"
    ARRAY = "ARRAY"  # an array of anything (maps, mixed values): what a bare mixed array infers


class ParamMode(str, enum.Enum):
    """Who may override a param's value (Maestro's modes)."""

    MUTABLE = "MUTABLE"  # the start request, a restart, a step's output
    MUTABLE_ON_START_RESTART = "MUTABLE_ON_START_RESTART"  # the start request or a restart
    MUTABLE_ON_START = "MUTABLE_ON_START"  # the start request only
    IMMUTABLE = "IMMUTABLE"  # set once (definition or start request), never changed after
    CONSTANT = "CONSTANT"  # the definition's value, always

    def allows(self, who: str) -> bool:
        """``who`` is "start", "restart" or "output"."""
        return who in _MODE_ALLOWS[self]


_MODE_ALLOWS = {
    ParamMode.MUTABLE: {"start", "restart", "output"},
    ParamMode.MUTABLE_ON_START_RESTART: {"start", "restart"},
    ParamMode.MUTABLE_ON_START: {"start"},
    ParamMode.IMMUTABLE: {"start"},
    ParamMode.CONSTANT: set(),
}

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the CEL environment owns, plus CEL's reserved words: a param cannot shadow them.
RESERVED_NAMES = frozenset(
    {"params", "steps", "workflow", "signal", "loop", "step"}
    | {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
       "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
)


class ParamError(ValueError):
    """A param declaration or value is wrong; ``pointer`` is relative to the param."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.pointer = pointer


@dataclass(slots=True, frozen=True)
class ParamSpec:
    """A declared param. Exactly one of ``value`` (``has_value``) or ``expression`` applies."""

    name: str
    type: ParamType
    value: Any = None
    expression: str | None = None
    mode: ParamMode = ParamMode.MUTABLE
    validator: str | None = None
    has_value: bool = True
    interpolated: bool = False  # a string (or strings inside) containing ${…}
    #: A secret: ``value`` is a reference (``env:NAME``, ``file:PATH``) resolved at run time by
    #: :mod:`legato.secrets`; the value itself is never stored.
    secret: bool = False

    @property
    def is_literal(self) -> bool:
        return self.has_value and not self.interpolated


_FULL_FORM_KEYS = {"type", "value", "expression", "mode", "validator", "description", "secret"}


def infer_type(value: Any) -> ParamType:
    """The type of a bare literal."""
    if isinstance(value, bool):
        return ParamType.BOOLEAN
    if isinstance(value, int):
        return ParamType.LONG
    if isinstance(value, float):
        return ParamType.DOUBLE
    if isinstance(value, str):
        return ParamType.STRING
    if isinstance(value, list):
        kinds = {infer_type(v) for v in value}
        if kinds and kinds <= {ParamType.LONG}:
            return ParamType.LONG_ARRAY
        if kinds and kinds <= {ParamType.LONG, ParamType.DOUBLE}:
            return ParamType.DOUBLE_ARRAY
        if kinds and kinds <= {ParamType.BOOLEAN}:
            return ParamType.BOOLEAN_ARRAY
        if kinds <= {ParamType.STRING}:
            return ParamType.STRING_ARRAY
        return ParamType.ARRAY
    if isinstance(value, dict):
        if value and all(isinstance(v, str) for v in value.values()):
            return ParamType.STRING_MAP
        return ParamType.MAP
    raise ParamError("null is not a param value; use the full form with a type and a value")


def _is_full_form(raw: Any) -> bool:
    return isinstance(raw, dict) and "type" in raw and set(raw) <= _FULL_FORM_KEYS and (
        "value" in raw or "expression" in raw
    )


def parse_param(name: str, raw: Any) -> ParamSpec:
    """Read one param declaration. Raises ParamError naming what is wrong."""
    if not NAME_RE.match(name):
        raise ParamError(f"param name {name!r} is not an identifier (letters, digits, _; not starting with a digit)")
    if name in RESERVED_NAMES:
        raise ParamError(f"param name {name!r} is reserved; choose another name")
    if controls_execution(name):
        raise ParamError(f"param name {name!r} is refused: params reach bash and docker steps as "
                         f"environment variables of the same name, and {name} changes what those processes run; "
                         f"choose another name (a step's `env` may still set {name} explicitly)")
    if not _is_full_form(raw):
        if isinstance(raw, dict) and "type" in raw and ("value" not in raw and "expression" not in raw):
            raise ParamError("a full-form param needs a `value` or an `expression`")
        if isinstance(raw, dict) and ("expression" in raw or "value" in raw) and "type" not in raw:
            raise ParamError(f"a full-form param needs a `type` ({', '.join(t.value for t in ParamType)})", "/type")
        ptype = infer_type(raw)
        value = coerce(ptype, raw)
        return ParamSpec(name, ptype, value, interpolated=_has_interpolation(value))
    try:
        ptype = ParamType(raw["type"].upper() if isinstance(raw["type"], str) else raw["type"])
    except ValueError:
        raise ParamError(
            f"unknown param type {raw['type']!r}; use one of {', '.join(t.value for t in ParamType)}", "/type"
        ) from None
    try:
        mode = raw.get("mode", "MUTABLE")
        mode = ParamMode(mode.upper() if isinstance(mode, str) else mode)  # Maestro's are case-insensitive
    except ValueError:
        raise ParamError(
            f"unknown param mode {raw['mode']!r}; use one of {', '.join(m.value for m in ParamMode)}", "/mode"
        ) from None
    validator = raw.get("validator")
    if validator is not None and not isinstance(validator, str):
        raise ParamError("`validator` must be a CEL expression string", "/validator")
    if "value" in raw and "expression" in raw:
        raise ParamError("give either `value` or `expression`, not both")
    secret = raw.get("secret", False)
    if not isinstance(secret, bool):
        raise ParamError("`secret` must be true or false", "/secret")
    if secret:
        return _parse_secret(name, ptype, raw, mode, validator)
    if "expression" in raw:
        if not isinstance(raw["expression"], str):
            raise ParamError("`expression` must be a CEL expression string", "/expression")
        return ParamSpec(name, ptype, None, raw["expression"], mode, validator, has_value=False)
    try:
        value = coerce(ptype, raw["value"])
    except ParamError as exc:
        raise ParamError(exc.message, "/value") from None
    return ParamSpec(name, ptype, value, None, mode, validator, interpolated=_has_interpolation(value))


def _parse_secret(name: str, ptype: ParamType, raw: dict, mode: ParamMode, validator: str | None) -> ParamSpec:
    from .secrets import REFERENCE_HELP, parse_reference

    if ptype is not ParamType.STRING:
        raise ParamError(f"a secret param is a STRING (its value is text read from the environment or a file), "
                         f"not a {ptype.value}", "/type")
    if "expression" in raw:
        raise ParamError(f"a secret param takes its value from a reference, {REFERENCE_HELP}, not an expression "
                         "(whatever an expression computes would be stored)", "/expression")
    try:
        parse_reference(raw["value"])
    except ValueError as exc:
        raise ParamError(str(exc), "/value") from None
    return ParamSpec(name, ptype, raw["value"], None, mode, validator, secret=True)


def check_secret_override(spec: ParamSpec, value: Any) -> None:
    """A start or restart may point a secret param at another reference, never give the value
    itself (it would be stored, and it shows in shell history and ``ps``). Raises ParamError."""
    from .secrets import REFERENCE_HELP, parse_reference

    try:
        parse_reference(value)
    except ValueError:
        raise ParamError(f"param {spec.name} is secret: give a reference, {REFERENCE_HELP} "
                         f"(e.g. -p {spec.name}=env:{spec.name.upper()}), never the secret itself; "
                         "a value given here would be stored") from None


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "map"}.get(
        type(value), type(value).__name__
    )


def coerce(ptype: ParamType, value: Any) -> Any:
    """Check ``value`` against ``ptype`` and return it in canonical form (LONG accepts integral
    floats, DOUBLE accepts integers). Raises ParamError."""
    def fail() -> ParamError:
        return ParamError(f"expected a {ptype.value}, got {_type_name(value)} {value!r:.80}")

    if ptype is ParamType.STRING:
        if not isinstance(value, str):
            raise fail()
        return value
    if ptype is ParamType.LONG:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise fail()
        if not _INT_MIN <= value <= _INT_MAX:
            raise ParamError(f"{_shown(value)} is outside the range of a LONG, a 64-bit integer "
                             f"({_INT_MIN} to {_INT_MAX}); use a DOUBLE or a STRING for larger numbers")
        return value
    if ptype is ParamType.DOUBLE:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        try:
            number = float(value)
        except OverflowError:
            raise ParamError(f"{_shown(value)} is too large for a DOUBLE") from None
        if not math.isfinite(number):
            raise ParamError(f"expected a finite DOUBLE, got {value!r:.40}")
        return number
    if ptype is ParamType.BOOLEAN:
        if not isinstance(value, bool):
            raise fail()
        return value
    if ptype is ParamType.ARRAY or ptype is ParamType.MAP:
        if not isinstance(value, list if ptype is ParamType.ARRAY else dict):
            raise fail()
        problem = unconvertible(value)  # what it holds must reach CEL and storage intact
        if problem is not None:
            raise ParamError(f"{problem[0] or 'the value'}: {problem[1]}")
        return value
    if ptype is ParamType.STRING_MAP:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise fail()
        return value
    element = {
        ParamType.STRING_ARRAY: ParamType.STRING,
        ParamType.LONG_ARRAY: ParamType.LONG,
        ParamType.DOUBLE_ARRAY: ParamType.DOUBLE,
        ParamType.BOOLEAN_ARRAY: ParamType.BOOLEAN,
    }[ptype]
    if not isinstance(value, list):
        raise fail()
    out = []
    for i, item in enumerate(value):
        try:
            out.append(coerce(element, item))
        except ParamError as exc:
            raise ParamError(f"element {i}: {exc.message}") from None
    return out


def _shown(number: int | float) -> str:
    if isinstance(number, int) and abs(number) >= 10**60:
        return f"an integer of {len(str(abs(number)))} digits"
    return repr(number)


def parse_override(spec: ParamSpec, text: str) -> Any:
    """Turn a command-line ``name=value`` string into a value of the param's type."""
    import json

    if spec.type is ParamType.STRING:
        return text
    if spec.type is ParamType.BOOLEAN and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if len(text) > MAX_VALUE_BYTES:
        raise ParamError(f"the value is {len(text)} characters long; the limit is {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)")
    too_deep = ParamError(f"{text[:40]!r}… nests arrays and maps deeper than {MAX_NESTING} levels (MAX_NESTING)")
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except ValueError:
        raise ParamError(f"{text!r:.80} is not a {spec.type.value} (give it as JSON)") from None
    if nests_deeper(value):
        raise too_deep
    return coerce(spec.type, value)


# -- ${…} interpolation ------------------------------------------------------------------------

_INTERP = re.compile(r"\$\$|\$\{([^}]*)\}")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def _has_interpolation(value: Any) -> bool:
    if isinstance(value, str):
        return "$" in value and _INTERP.search(value) is not None
    if isinstance(value, list):
        return any(_has_interpolation(v) for v in value)
    if isinstance(value, dict):
        return any(_has_interpolation(v) for v in value.values())
    return False


def interpolation_names(value: Any) -> list[str]:
    """The dotted names ``${…}`` refers to inside ``value``. Raises ParamError on a malformed one."""
    names: list[str] = []
    if isinstance(value, str):
        for m in _INTERP.finditer(value):
            if m.group(0) == "$$":
                continue
            name = m.group(1).strip()
            if not _PATH.match(name):
                raise ParamError(f"${{{m.group(1)}}} is not a name or a dotted path (write $$ for a literal $)")
            names.append(name)
    elif isinstance(value, list):
        for v in value:
            names.extend(interpolation_names(v))
    elif isinstance(value, dict):
        for v in value.values():
            names.extend(interpolation_names(v))
    return names


def _as_text(found: Any) -> str:
    """A value as ``${}`` spells it in text: booleans ``true``/``false``, arrays and maps as JSON."""
    if isinstance(found, bool):
        return "true" if found else "false"
    if isinstance(found, (dict, list)):
        import json

        return json.dumps(found, separators=(",", ":"))
    return str(found)


def interpolate(value: Any, lookup: Callable[[str], Any], limit: int = MAX_VALUE_BYTES) -> Any:
    """Replace each ``${name}`` (or ``${a.b.c}``) by ``lookup(name)`` as text; ``$$`` is ``$``.
    Arrays and maps are interpolated element by element. ``lookup`` raises KeyError when unknown.
    Raises ParamError (before building it) when the result would grow past ``limit`` characters."""
    size = [0]

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            size[0] -= 1
            return "$"
        text = _as_text(lookup(m.group(1).strip()))
        size[0] += len(text) - len(m.group(0))  # the result's length, not the template's
        if size[0] > limit:
            raise ParamError(f"${{…}} would make a value of more than {limit} characters "
                             "(MAX_VALUE_BYTES); pass big values by reference (a file, a table)")
        return text

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            size[0] += len(item)
            return _INTERP.sub(sub, item) if "$" in item else item
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        return item

    return walk(value)


class ValueBudget:
    """What the values computed for one instance (expressions, interpolations, overrides) may
    still take, in :func:`legato.limits.value_size` units; each value is also held to
    MAX_VALUE_BYTES on its own."""

    __slots__ = ("left",)

    def __init__(self, total: int = MAX_INSTANCE_VALUE_BYTES) -> None:
        self.left = total

    def charge(self, value: Any) -> None:
        """Count ``value`` against the budget; raise ParamError (pointer "") when it does not fit."""
        size = value_size(value)
        if size > MAX_VALUE_BYTES:
            raise ParamError(f"the value is {size} characters large; the limit is {MAX_VALUE_BYTES} "
                             "(MAX_VALUE_BYTES): pass big values by reference (a file, a table)")
        self.left -= size
        if self.left < 0:
            raise ParamError(f"the values this instance computed exceed {MAX_INSTANCE_VALUE_BYTES} characters "
                             "in all (MAX_INSTANCE_VALUE_BYTES): pass big values by reference (a file, a table)")


# An argv element that is one whole ``${name}``: the only place ``${}`` may appear in an argv.
_WHOLE = re.compile(r"\$\{([^}]*)\}\Z")
_ESCAPE = re.compile(r"\$\$")


def argv_problems(value: Any) -> list[tuple[int, str]]:
    """For a param that is an argument vector: ``(index, message)`` of each element holding a
    ``${…}`` that is not the whole element (a program such as ``sh -c`` would parse the pasted
    value as code). ``$$`` is a literal ``$`` and is fine anywhere."""
    problems: list[tuple[int, str]] = []
    if not isinstance(value, list):
        return problems
    for i, element in enumerate(value):
        if not isinstance(element, str) or "$" not in element or _WHOLE.match(element):
            continue
        refs = [m.group(1).strip() for m in _INTERP.finditer(element) if m.group(0) != "$$"]
        if refs:
            name = refs[0].split(".")[-1] if refs[0].startswith("params.") else refs[0]
            var = name if NAME_RE.match(name) else "name"
            problems.append((i, (
                f"${{{refs[0]}}} inside an argument is refused: the program (e.g. `sh -c`) could parse the "
                f"pasted value as code. Read the param from the environment instead (\"${var}\" in a shell), "
                f"or make the whole element `${{{refs[0]}}}` (it is passed as one argument); write $${{ for a "
                f"literal ${{")))
    return problems


def interpolate_argv(value: Any, lookup: Callable[[str], Any]) -> Any:
    """``${}`` in an argument vector: an element that is exactly ``${name}`` becomes the value's
    text as one whole element; ``$$`` is ``$``. Raises ParamError for ``${…}`` anywhere else
    (:func:`argv_problems` refuses that when the definition loads)."""
    if not isinstance(value, list):
        return interpolate(value, lookup)
    out = []
    for i, element in enumerate(value):
        if isinstance(element, str) and "$" in element:
            whole = _WHOLE.match(element)
            if whole:
                element = _as_text(lookup(whole.group(1).strip()))
            elif argv_problems([element]):
                raise ParamError(argv_problems([element])[0][1], f"/{i}")
            else:
                element = _ESCAPE.sub("$", element)
        out.append(element)
    return out


# -- evaluation ---------------------------------------------------------------------------------


def evaluate_params(
    specs: dict[str, ParamSpec],
    compiler,
    *,
    scope: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    raw: frozenset[str] = frozenset(),
    argv: frozenset[str] = frozenset(),
    budget: ValueBudget | None = None,
) -> dict[str, Any]:
    """Evaluate ``specs`` in declaration order and return name -> value.

    Each param sees the ones before it (and ``scope``, e.g. the workflow's params when evaluating a
    step's) as bare identifiers and under ``params``; ``context`` adds CEL names (``steps``,
    ``workflow``) already converted with :func:`legato.cel.to_cel`. ``overrides`` replace declared
    values (the caller checked the modes). Names in ``raw`` are code for the step type: their
    ``${}`` is left alone; names in ``argv`` are argument vectors (:func:`interpolate_argv`).
    Values computed here (not the definition's literals) are charged to ``budget`` (a fresh one
    per call by default). Raises ParamError whose ``pointer`` is ``/<name>…``.
    """
    from .cel import CelError, to_cel

    values: dict[str, Any] = dict(scope or {})
    out: dict[str, Any] = {}
    # Each value is converted to CEL once, not once per expression after it (a chain of params
    # building on each other was quadratic); a scope value the caller already converted (the
    # engine's context holds the workflow's params) is reused as it is.
    cel_values: dict[str, Any] = {}
    given = context or {}

    def activation() -> dict[str, Any]:
        for key, value in values.items():
            if key not in cel_values:
                known = given.get(key) if scope is not None and scope.get(key) is value else None
                cel_values[key] = known if known is not None else to_cel(value)
        act = dict(given)
        act.update(cel_values)
        params = to_cel({})  # a CEL map, filled with the values converted above
        params.update((to_cel(key), value) for key, value in cel_values.items())
        act["params"] = params
        return act

    def lookup(path: str) -> Any:
        head, *rest = path.split(".")
        if head == "params" and rest:
            head, *rest = rest
            current: Any = values[head]
        elif head in values:
            current = values[head]
        elif context and head in context:
            from .cel import to_python

            current = to_python(context[head])
        else:
            raise KeyError(path)
        for part in rest:
            current = current[part]
        return current

    if budget is None:
        budget = ValueBudget()
    for name, spec in specs.items():
        if spec.secret:
            # The reference is the param's stored value; legato.secrets resolves it (and runs the
            # validator on the resolved value) when the instance runs.
            value = overrides[name] if overrides and name in overrides else spec.value
            try:
                check_secret_override(spec, value)
            except ParamError as exc:
                raise ParamError(exc.message, f"/{name}") from None
            values[name] = out[name] = value
            cel_values.pop(name, None)  # the reference shadows a scope param of the same name
            continue
        computed = True
        if overrides and name in overrides:
            value = overrides[name]
        elif spec.expression is not None:
            try:
                value = compiler.compile(spec.expression).evaluate(activation())
            except CelError as exc:
                raise ParamError(f"CEL {exc.located()}", f"/{name}/expression") from None
            if value is None:
                raise ParamError(f"expression evaluated to null; a {spec.type.value} is expected", f"/{name}/expression")
        elif spec.interpolated and name not in raw:
            try:
                value = interpolate_argv(spec.value, lookup) if name in argv else interpolate(spec.value, lookup)
            except (KeyError, TypeError, IndexError) as exc:
                raise ParamError(f"${{…}} refers to {exc} which is not known here", f"/{name}") from None
            except ParamError as exc:
                raise ParamError(exc.message, f"/{name}{exc.pointer}") from None
        else:
            value = spec.value
            computed = False
        try:
            value = coerce(spec.type, value)
            if computed:
                budget.charge(value)
        except ParamError as exc:
            raise ParamError(exc.message, f"/{name}") from None
        values[name] = value
        out[name] = value
        cel_values.pop(name, None)  # a step param may shadow a scope param of the same name
        if spec.validator is not None:
            act = activation()
            act["value"] = to_cel(value)
            try:
                ok = compiler.compile(spec.validator).evaluate(act)
            except CelError as exc:
                raise ParamError(f"CEL {exc.located()}", f"/{name}/validator") from None
            if ok is not True:
                raise ParamError(f"value {value!r:.80} fails its validator `{spec.validator}`", f"/{name}/validator")
    return out


def resolve_secrets(specs: dict[str, ParamSpec], values: dict[str, Any], compiler, secrets) -> dict[str, Any]:
    """``values`` (evaluated params) with each secret param's reference replaced by the secret it
    names, which ``secrets`` (a :class:`legato.secrets.Secrets`) learns to mask. A secret's
    validator runs here, on the resolved value; its message never shows the value. Raises
    ParamError whose ``pointer`` is ``/<name>…``."""
    from .cel import CelError, to_cel
    from .secrets import resolve_reference

    resolved = dict(values)
    for name, spec in specs.items():
        if not spec.secret or name not in values:
            continue
        try:
            value = resolve_reference(values[name])
        except ValueError as exc:
            raise ParamError(f"secret param {name}: {exc}", f"/{name}/value") from None
        secrets.add(value)
        resolved[name] = value
        if spec.validator is not None:
            try:
                ok = compiler.compile(spec.validator).evaluate({"value": to_cel(value)})
            except CelError as exc:
                raise ParamError(secrets.mask(f"CEL {exc.located()}"), f"/{name}/validator") from None
            if ok is not True:
                raise ParamError(f"the secret value of {name} (from {values[name]}) fails its validator "
                                 f"`{spec.validator}`", f"/{name}/validator")
    return resolved
