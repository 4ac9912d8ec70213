"""Typed params: declaration forms, types, modes, coercion and ``${}`` interpolation (DESIGN §2).

A param is declared in full form ``{"type": …, "value": … | "expression": "<CEL>", "mode": …,
"validator": "<CEL>"}`` or as a bare JSON literal whose type is inferred.  Values are plain JSON
values; CEL sees them converted by :func:`legato.cel.to_cel`.
"""

from __future__ import annotations

import dataclasses
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
    "merge_start_params",
    "STRICTNESS",
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
    "needs_cel",
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
    IMMUTABLE = "IMMUTABLE"  # the definition's; re-evaluated on a restart (Maestro's ParamMode)
    CONSTANT = "CONSTANT"  # the definition's; its first result kept on a restart

    def allows(self, who: str) -> bool:
        """``who`` is "start", "restart" or "output" (ParamsMergeHelper.ALLOWED_UPDATE_MODES)."""
        return who in _MODE_ALLOWS[self]

    @property
    def strictness(self) -> int:
        """Position in Maestro's PARAM_MODE_STRICTNESS: a later source may raise it, never lower it."""
        return STRICTNESS.index(self)


_MODE_ALLOWS = {
    ParamMode.MUTABLE: {"start", "restart", "output"},
    ParamMode.MUTABLE_ON_START_RESTART: {"start", "restart"},
    ParamMode.MUTABLE_ON_START: {"start"},
    ParamMode.IMMUTABLE: set(),
    ParamMode.CONSTANT: set(),
}
#: Maestro's ParamsMergeHelper.PARAM_MODE_STRICTNESS, least strict first.
STRICTNESS = (ParamMode.MUTABLE, ParamMode.MUTABLE_ON_START_RESTART, ParamMode.MUTABLE_ON_START,
              ParamMode.IMMUTABLE, ParamMode.CONSTANT)

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the CEL environment owns, plus CEL's reserved words: a param cannot shadow them.
RESERVED_NAMES = frozenset(
    {"params", "steps", "workflow", "signal", "loop", "step"}
    | {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
       "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
)


class ParamError(ValueError):
    """A param declaration or value is wrong; ``pointer`` is relative to the param."""

    def __init__(self, message: str, pointer: str = "", more: "list[ParamError] | None" = None) -> None:
        super().__init__(message)
        self.message = message
        self.pointer = pointer
        #: Further problems found beside this one (the other bad entries of a MAP).
        self.more = more or []


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
    #: Tag names (Maestro's ``tags`` on a param definition: strings or ``{name, …}`` objects).
    tags: tuple[str, ...] = ()
    #: A MAP written Maestro's way: ``(key, nested ParamSpec)`` per entry (None for an entry given
    #: as a plain JSON value). ``value`` holds the literal entries; when ``interpolated`` is set,
    #: some entry is an expression or a ``${}`` template and is evaluated with the others.
    entries: tuple[tuple[str, "ParamSpec | None"], ...] | None = None
    #: ``(name, step id, param)`` for each Maestro cross-step reference (``job1__sleep_seconds``)
    #: its expression, validator or ``${}`` uses; filled in when the definition is validated.
    step_refs: tuple[tuple[str, str, str], ...] = ()

    @property
    def is_literal(self) -> bool:
        return self.has_value and not self.interpolated


# Maestro's AbstractParamDefinition fields (name, value, expression, type, validator, tags, mode)
# plus Legato's `description` and `secret`.
_FULL_FORM_KEYS = {"type", "value", "expression", "mode", "validator", "description", "secret", "tags"}


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
    """A param definition (``type`` with a ``value`` or an ``expression``), whatever else it holds:
    another key (``tags``, a typo) is part of the definition, never a reason to read it as a MAP."""
    return isinstance(raw, dict) and "type" in raw and ("value" in raw or "expression" in raw)


def _esc(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def _tag_names(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ParamError("`tags` must be an array of names or {\"name\": …} objects", "/tags")
    names = []
    for i, tag in enumerate(raw):
        name = tag.get("name") if isinstance(tag, dict) else tag
        if not isinstance(name, str) or not name:
            raise ParamError("a tag is a name or a {\"name\": …, \"namespace\": …} object", f"/tags/{i}")
        names.append(name)
    return tuple(names)


def _stricter(mode: ParamMode, other: ParamMode | None) -> ParamMode:
    return other if other is not None and other.strictness > mode.strictness else mode


def parse_param(name: str, raw: Any, *, nested: bool = False, parent_mode: ParamMode | None = None) -> ParamSpec:
    """Read one param declaration. Raises ParamError naming what is wrong.

    ``nested`` is for an entry of a MAP (any key is a name; it may not be secret); it takes the
    ``parent_mode`` where that is stricter than its own (ParamsMergeHelper.copyWithParentMode)."""
    if not nested:
        _check_name(name)
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
    except (ValueError, TypeError):
        raise ParamError(
            f"unknown param type {raw['type']!r:.40}; use one of {', '.join(t.value for t in ParamType)} (a map whose "
            "own keys are `type` and `value` is written in full: {\"type\": \"MAP\", \"value\": {…}})", "/type"
        ) from None
    for key in raw:
        if key not in _FULL_FORM_KEYS:
            import difflib

            close = difflib.get_close_matches(str(key), sorted(_FULL_FORM_KEYS), n=1, cutoff=0.6)
            hint = f" (did you mean `{close[0]}`?)" if close else f"; allowed: {', '.join(sorted(_FULL_FORM_KEYS))}"
            raise ParamError(f"unknown param definition field{hint}", f"/{_esc(key)}")
    mode = _mode(raw)
    mode = _stricter(mode, parent_mode)
    tags = _tag_names(raw.get("tags"))
    if "description" in raw and not isinstance(raw["description"], str):
        raise ParamError("`description` must be a string", "/description")
    validator = raw.get("validator")
    if validator is not None and not isinstance(validator, str):
        raise ParamError("`validator` must be a CEL expression string", "/validator")
    if "value" in raw and "expression" in raw:
        raise ParamError("give either `value` or `expression`, not both")
    secret = raw.get("secret", False)
    if not isinstance(secret, bool):
        raise ParamError("`secret` must be true or false", "/secret")
    if secret:
        if nested:
            raise ParamError("an entry of a MAP cannot be secret; make it a param of its own", "/secret")
        return dataclasses.replace(_parse_secret(name, ptype, raw, mode, validator), tags=tags)
    if "expression" in raw:
        if not isinstance(raw["expression"], str):
            raise ParamError("`expression` must be a CEL expression string", "/expression")
        return ParamSpec(name, ptype, None, raw["expression"], mode, validator, has_value=False, tags=tags)
    if ptype is ParamType.MAP and isinstance(raw["value"], dict):
        return _parse_map(name, raw["value"], mode, validator, tags)
    try:
        value = coerce(ptype, raw["value"])
    except ParamError as exc:
        raise ParamError(exc.message, "/value") from None
    return ParamSpec(name, ptype, value, None, mode, validator, interpolated=_has_interpolation(value), tags=tags)


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ParamError(f"param name {name!r} is not an identifier (letters, digits, _; not starting with a digit)")
    if name in RESERVED_NAMES:
        raise ParamError(f"param name {name!r} is reserved; choose another name")
    if controls_execution(name):
        raise ParamError(f"param name {name!r} is refused: params reach bash and docker steps as "
                         f"environment variables of the same name, and {name} changes what those processes run; "
                         f"choose another name (a step's `env` may still set {name} explicitly)")


def _mode(raw: dict) -> ParamMode:
    mode = raw.get("mode", "MUTABLE")
    try:
        return ParamMode(mode.upper() if isinstance(mode, str) else mode)  # Maestro's are case-insensitive
    except (ValueError, TypeError):
        raise ParamError(
            f"unknown param mode {mode!r:.40}; use one of {', '.join(m.value for m in ParamMode)}", "/mode"
        ) from None


def _parse_map(name: str, raw: dict, mode: ParamMode, validator: str | None, tags: tuple[str, ...]) -> ParamSpec:
    """A MAP's value as Maestro writes it (MapParamDefinition): each entry a nested param
    definition, ``{"image": {"type": "STRING", "value": "busybox"}}``, read with the MAP's mode
    where that is stricter. An entry that is not a definition is a plain JSON value (Legato's
    shorthand); a map of plain values only is kept as it is."""
    entries: list[tuple[str, ParamSpec | None]] = []
    plain: dict[str, Any] = {}
    dynamic = nested = False
    errors: list[ParamError] = []
    for key, item in raw.items():
        if _is_full_form(item) or (isinstance(item, dict) and "type" in item and "value" not in item
                                   and isinstance(item["type"], str) and item["type"].upper() in ParamType.__members__):
            try:
                sub = parse_param(str(key), item, nested=True, parent_mode=mode)
            except ParamError as exc:
                errors += [ParamError(e.message, f"/value/{_esc(key)}{e.pointer}") for e in (exc, *exc.more)]
                continue
            nested = True
            entries.append((key, sub))
            plain[key] = sub.value if sub.is_literal else None
            dynamic = dynamic or not sub.is_literal
        else:
            entries.append((key, None))
            plain[key] = item
            dynamic = dynamic or _has_interpolation(item)
    if errors:
        raise ParamError(errors[0].message, errors[0].pointer, errors[1:])
    try:
        value = coerce(ParamType.MAP, plain)
    except ParamError as exc:
        raise ParamError(exc.message, "/value") from None
    return ParamSpec(name, ParamType.MAP, value, None, mode, validator, interpolated=dynamic, tags=tags,
                     entries=tuple(entries) if nested else None)


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


# -- merging a start request's params (Maestro's ParamsMergeHelper) ---------------------------


def merge_start_params(
    specs: dict[str, ParamSpec],
    params: dict[str, Any] | None = None,
    raw: dict[str, str] | None = None,
    *,
    who: str = "start",
    budget: "ValueBudget | None" = None,
) -> dict[str, ParamSpec]:
    """The workflow's params with a start request's merged in, as Maestro's
    ``ParamsMergeHelper.mergeParams`` merges run params into the definition's.

    ``params`` maps a name to a value, or to a param definition in full form (Maestro's run
    params: ``{"type": …, "value": … | "expression": …, "mode": …}``); ``raw`` maps a name to the
    text after ``-p name=``, parsed by the declared type (an undeclared name: JSON, else text).

    - A changed param must have a mode the source may change (``who``: start allows MUTABLE,
      MUTABLE_ON_START_RESTART, MUTABLE_ON_START; IMMUTABLE and CONSTANT never); giving the
      definition's own value is no change.
    - A mode given with the value may be stricter, never less strict.
    - MAP and STRING_MAP values deep-merge into the declared ones (a nested entry keeps its own
      mode and type) instead of replacing them.
    - A name the definition does not declare becomes a new param typed from its value, unless it
      is one edit away from a declared name (then it is refused with a "did you mean").

    Start values are data: a ``${…}`` inside one is never interpolated. Each given value is
    charged to ``budget``. Raises ParamError whose pointer is ``/<name>…`` under /workflow/params.
    """
    merged = dict(specs)
    budget = budget if budget is not None else ValueBudget()
    given: list[tuple[str, Any, bool]] = [(n, v, False) for n, v in (params or {}).items()]
    given += [(n, v, True) for n, v in (raw or {}).items()]
    for name, value, is_text in given:
        at = f"/{_esc(name)}"
        if not isinstance(name, str):
            raise ParamError(f"a param name is a string, got {_type_name(name)} {name!r:.40}", at)
        base = specs.get(name)
        try:
            if base is None:
                merged[name] = _new_param(name, value, is_text, specs)
            else:
                if is_text:
                    value = parse_override(base, value)
                merged[name] = _merge(base, value, who, name)
            if merged[name].has_value and merged[name] is not base:
                budget.charge(merged[name].value)
        except ParamError as exc:
            raise ParamError(f"param {name}: {exc.message}", at + exc.pointer) from None
    return merged


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one insertion, deletion, substitution or swap of two
    neighbours, or only in case (names shorter than 3 characters never count as near)."""
    if a.lower() == b.lower():
        return True
    if min(len(a), len(b)) < 3 or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1:]


def _new_param(name: str, value: Any, is_text: bool, specs: dict[str, ParamSpec]) -> ParamSpec:
    """A param the start request adds (Maestro accepts run params the definition does not
    declare), typed from its value; a near miss of a declared name is refused as a typo."""
    near = [declared for declared in specs if _one_edit(name, declared)]
    if near:
        raise ParamError(f"not declared by the workflow (did you mean {near[0]!r}?); a start may add params, "
                         "but not one a single edit away from a declared name: fix the name, or declare it "
                         "under /workflow/params")
    if is_text:
        value = _typed_text(value)
    if isinstance(value, dict) and value.get("secret"):
        raise ParamError("a secret param is declared in the definition, never added when starting")
    spec = parse_param(name, value)
    if spec.has_value and spec.entries is None:
        spec = dataclasses.replace(spec, interpolated=False)  # data, not a template
    return spec


def _typed_text(text: str) -> Any:
    """The value of ``-p name=text`` for an undeclared name: a JSON number, boolean, array or
    object when the text is one, else the text itself."""
    import json

    if len(text) > MAX_VALUE_BYTES:
        raise ParamError(f"the value is {len(text)} characters long; the limit is {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)")

    def constant(word: str) -> Any:
        raise ValueError(word)  # NaN, Infinity: text, not numbers

    try:
        value = json.loads(text, parse_constant=constant)
    except RecursionError:
        raise ParamError(f"{text[:40]!r}… nests arrays and maps deeper than {MAX_NESTING} levels (MAX_NESTING)") from None
    except ValueError:
        return text
    if value is None or isinstance(value, str):
        return text
    if nests_deeper(value):
        raise ParamError(f"{text[:40]!r}… nests arrays and maps deeper than {MAX_NESTING} levels (MAX_NESTING)")
    return value


def _merge(base: ParamSpec, value: Any, who: str, name: str) -> ParamSpec:
    """``base`` with ``value`` (a value, or a full-form definition) merged in by source ``who``."""
    mode = base.mode
    if _is_full_form(value):
        given = parse_param(name, value, nested=True)
        if "mode" in value:
            if given.mode.strictness < base.mode.strictness:
                raise ParamError(f"cannot make the mode less strict, from {base.mode.value} to {given.mode.value} "
                                 "(a later source may only keep or raise it)", "/mode")
            mode = given.mode
        if given.type is not base.type and given.has_value:
            try:
                given = dataclasses.replace(given, type=base.type, value=coerce(base.type, given.value))
            except ParamError:
                raise ParamError(f"it is a {base.type.value}, given a {given.type.value}", "/type") from None
        if given.expression is not None:
            changed = given.expression != base.expression or mode is not base.mode
            _check_mode(mode, who, changed)
            return dataclasses.replace(base, value=None, expression=given.expression, mode=mode,
                                       has_value=False, interpolated=False, entries=None)
        if base.type is ParamType.MAP and given.entries is not None:
            value = {key: (sub if sub is not None else given.value[key]) for key, sub in given.entries}
        else:
            value = given.value
    if base.secret:
        check_secret_override(base, value)
        _check_mode(mode, who, value != base.value)
        return dataclasses.replace(base, value=value, mode=mode)
    if base.type in (ParamType.MAP, ParamType.STRING_MAP) and isinstance(value, dict):
        if base.expression is not None:
            raise ParamError(f"it is a {base.type.value} computed by an expression: a map given at start cannot be "
                             "merged into it (Maestro's rule); declare it with a `value`")
        return _merge_map(dataclasses.replace(base, mode=mode), value, who, mode is not base.mode)
    value = coerce(base.type, value)
    changed = not (base.is_literal and value == base.value) or mode is not base.mode
    _check_mode(mode, who, changed)
    if not changed:
        return base
    return dataclasses.replace(base, value=value, expression=None, mode=mode, has_value=True,
                               interpolated=False, entries=None)


def _check_mode(mode: ParamMode, who: str, changed: bool) -> None:
    if changed and not mode.allows(who):
        sources = {"start": "when starting", "restart": "when restarting", "output": "by a step's output"}
        raise ParamError(f"it is {mode.value} and cannot be set {sources.get(who, who)}", "/mode")


def _escape(value: Any) -> Any:
    """A start value placed among ``${}`` templates: its ``$`` stay literal."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def _merge_map(base: ParamSpec, value: dict, who: str, changed: bool) -> ParamSpec:
    """Deep-merge ``value`` into a MAP or STRING_MAP ``base`` (ParamsMergeHelper: a STRING_MAP
    takes the given keys over its own; a MAP merges entry by entry, a nested MAP recursively)."""
    if base.type is ParamType.STRING_MAP:
        given = coerce(ParamType.STRING_MAP, value)
        merged = {**base.value, **(_escape(given) if base.interpolated else given)}
        changed = changed or merged != base.value
        _check_mode(base.mode, who, changed)
        return dataclasses.replace(base, value=merged) if changed else base
    entries: dict[str, ParamSpec | None] = dict(base.entries) if base.entries is not None else dict.fromkeys(base.value)
    plain = dict(base.value)
    for key, item in value.items():
        sub = entries.get(key)
        at = f"/value/{_esc(key)}"
        try:
            if isinstance(item, ParamSpec):  # a nested definition from a full-form start value
                item = item.value if item.is_literal else item
            if isinstance(item, ParamSpec):
                if sub is not None:
                    _check_mode(sub.mode, who, True)
                entries[key] = item
                plain[key] = None
                changed = True
            elif sub is not None:
                new = _merge(sub, item, who, str(key))
                if new is not sub:
                    entries[key], plain[key], changed = new, new.value if new.is_literal else None, True
            elif key in plain and isinstance(plain[key], dict) and isinstance(item, dict):
                new_value = _deep(plain[key], _escape(item) if base.interpolated else item)
                changed = changed or new_value != plain[key]
                plain[key] = new_value
            elif key not in plain or plain[key] != item:
                plain[key] = _escape(item) if base.interpolated else item
                entries[key] = None
                changed = True
        except ParamError as exc:
            raise ParamError(exc.message, at + exc.pointer) from None
    _check_mode(base.mode, who, changed)
    if not changed:
        return base
    plain = coerce(ParamType.MAP, plain)
    nested = any(sub is not None for sub in entries.values())
    dynamic = any(sub is not None and not sub.is_literal for sub in entries.values()) or (
        base.interpolated and any(sub is None and _has_interpolation(plain[k]) for k, sub in entries.items()))
    return dataclasses.replace(base, value=plain, expression=None, has_value=True, interpolated=dynamic,
                               entries=tuple(entries.items()) if nested else None)


def _deep(base: dict, given: dict) -> dict:
    """Plain JSON maps merged key by key, nested maps recursively (Legato's shorthand MAP values)."""
    out = dict(base)
    for key, item in given.items():
        out[key] = _deep(out[key], item) if isinstance(out.get(key), dict) and isinstance(item, dict) else item
    return out


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

    def step_param(ref: str) -> Any:
        """A Maestro cross-step reference ``<step>__<param>``, from the steps that finished."""
        for name, step_id, param in refs:
            if name == ref:
                break
        else:
            raise KeyError(ref)
        try:
            return given["steps"][to_cel(step_id)]["params"][to_cel(param)]
        except (KeyError, TypeError):
            raise ParamError(f"`{ref}` is param `{param}` of step {step_id!r}, which has not finished before "
                             "this one: a step sees the params of the steps upstream of it") from None

    def with_step_refs(act: dict[str, Any], source: str, at: str) -> dict[str, Any]:
        for name, _, _ in refs:
            if name in source:
                try:
                    act[name] = step_param(name)
                except ParamError as exc:
                    raise ParamError(exc.message, at) from None
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
        elif refs:
            from .cel import to_python

            current = to_python(step_param(head))
        else:
            raise KeyError(path)
        for part in rest:
            current = current[part]
        return current

    def compute(spec: ParamSpec, at: str) -> tuple[Any, bool]:
        """The value of ``spec`` (at pointer ``at``) and whether it was computed here."""
        if spec.expression is not None:
            act = with_step_refs(activation(), spec.expression, f"{at}/expression")
            try:
                value = compiler.compile(spec.expression).evaluate(act)
            except CelError as exc:
                raise ParamError(f"CEL {exc.located()}", f"{at}/expression") from None
            if value is None:
                raise ParamError(f"expression evaluated to null; a {spec.type.value} is expected", f"{at}/expression")
        elif spec.entries is not None and spec.interpolated:
            value = {}
            for key, sub in spec.entries:
                where = f"{at}/value/{_esc(key)}"
                if sub is None:
                    value[key] = interpolate_at(spec.value[key], where)
                else:
                    value[key] = check(sub, compute(sub, where)[0], where)
            return value, True
        elif spec.interpolated and spec.name not in raw:
            return interpolate_at(spec.value, at, argv=spec.name in argv), True
        else:
            return spec.value, False
        return value, True

    def interpolate_at(value: Any, at: str, argv: bool = False) -> Any:
        try:
            return interpolate_argv(value, lookup) if argv else interpolate(value, lookup)
        except (KeyError, TypeError, IndexError) as exc:
            raise ParamError(f"${{…}} refers to {exc} which is not known here", at) from None
        except ParamError as exc:
            raise ParamError(exc.message, f"{at}{exc.pointer}") from None

    def check(spec: ParamSpec, value: Any, at: str) -> Any:
        """``value`` coerced to the spec's type and passed through its validator."""
        try:
            value = coerce(spec.type, value)
        except ParamError as exc:
            raise ParamError(exc.message, at) from None
        if spec.validator is not None:
            act = with_step_refs(activation(), spec.validator, f"{at}/validator")
            act["value"] = to_cel(value)
            try:
                ok = compiler.compile(spec.validator).evaluate(act)
            except CelError as exc:
                raise ParamError(f"CEL {exc.located()}", f"{at}/validator") from None
            if ok is not True:
                raise ParamError(f"value {value!r:.80} fails its validator `{spec.validator}`", f"{at}/validator")
        return value

    refs = [ref for spec in specs.values() for ref in spec.step_refs]
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
        at = f"/{name}"
        if overrides and name in overrides:
            value, computed = overrides[name], True
        else:
            value, computed = compute(spec, at)
        try:
            value = coerce(spec.type, value)
            if computed:
                budget.charge(value)
        except ParamError as exc:
            raise ParamError(exc.message, at) from None
        values[name] = value
        out[name] = value
        cel_values.pop(name, None)  # a step param may shadow a scope param of the same name
        if spec.validator is not None:
            check(spec, value, at)
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


def needs_cel(specs) -> bool:
    """Whether evaluating these param specs reads CEL names (an expression, a validator, a
    ``${}``), in a MAP's nested entries too (an entry given as a plain value has no spec)."""
    for spec in specs:
        if spec is None:
            continue
        if spec.expression is not None or spec.validator is not None or spec.interpolated:
            return True
        if spec.entries and needs_cel(sub for _, sub in spec.entries):
            return True
    return False
