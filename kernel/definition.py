"""Loading and validating workflow definitions (DESIGN §2).

:func:`load_definition` turns a JSON or YAML document into a :class:`Definition` or raises
:class:`DefinitionError` carrying *every* problem found, each located by a JSON pointer into the
document (and line:col inside CEL or inside the file when it does not parse).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import gc
import graphlib
import heapq
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .cel import CelCompiler, CelError, CelProgram
from . import loopdef
from .loopdef import KIND_KEYS, LoopDef
from .limits import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_BACKOFF_EXPONENT,
    MAX_CONCURRENCY,
    MAX_DOCUMENT_BYTES,
    MAX_DURATION_SECONDS,
    MAX_NESTING,
    MAX_NUMBER_DIGITS,
    MAX_RETRY_LIMIT,
    MAX_STRING_BYTES,
    MAX_TIMEOUT_SECONDS,
    MAX_WORKFLOW_DEPTH,
)
from .params import (
    ParamError,
    ParamSpec,
    argv_problems,
    interpolate,
    interpolation_names,
    parse_param,
)
from . import yaml12
from .steptype import StepType

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


@dataclass(slots=True, frozen=True)
class Problem:
    """One thing wrong with a definition, at ``pointer`` (a JSON pointer, "" for the document)."""

    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.pointer or '/'}: {self.message}"


class DefinitionError(Exception):
    """A definition is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + f"{len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


class FailureMode(str, enum.Enum):
    FAIL_AFTER_RUNNING = "FAIL_AFTER_RUNNING"
    FAIL_IMMEDIATELY = "FAIL_IMMEDIATELY"
    IGNORE_FAILURE = "IGNORE_FAILURE"


class RunStrategy(str, enum.Enum):
    SEQUENTIAL = "sequential"
    STRICT_SEQUENTIAL = "strict_sequential"
    PARALLEL = "parallel"
    FIRST_ONLY = "first_only"
    LAST_ONLY = "last_only"


@dataclass(slots=True, frozen=True)
class Backoff:
    """Delay before retry ``n`` (1-based): fixed ``base``, or ``base * exponent**(n-1)``, capped,
    plus up to ``jitter`` × delay of random extra."""

    type: str = "exponential"
    base: float = 1.0
    exponent: float = 2.0
    cap: float = 600.0
    jitter: float = 0.0

    def delay(self, n: int, rand: float = 0.0) -> float:
        try:
            raw = self.base if self.type == "fixed" else self.base * self.exponent ** (n - 1)
        except OverflowError:  # the hundredth retry of a steep backoff: the cap applies
            raw = self.cap
        raw = min(raw, self.cap)
        return raw + raw * self.jitter * rand


#: The failure classes a retry policy counts separately, as Maestro's RetryPolicy names them.
RETRY_CLASSES = ("error", "platform", "timeout")


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Separate limits per failure class (DESIGN §3), and the backoff before each retry.

    ``backoff`` applies to every class unless the class has its own (``platform_backoff``,
    ``timeout_backoff``: Maestro's backoffs are per class, ``error_`` / ``platform_`` /
    ``timeout_retry_backoff_in_secs`` …); :meth:`backoff_for` picks the one that applies."""

    error_retry_limit: int = 2
    platform_retry_limit: int = 10
    timeout_retry_limit: int = 0
    backoff: Backoff = Backoff()
    platform_backoff: Backoff | None = None
    timeout_backoff: Backoff | None = None

    def backoff_for(self, kind: str) -> Backoff:
        """The backoff for failure class ``kind``: ``"error"`` (user), ``"platform"`` or ``"timeout"``."""
        own = self.platform_backoff if kind == "platform" else self.timeout_backoff if kind == "timeout" else None
        return own or self.backoff


@dataclass(slots=True)
class Condition:
    """An edge condition: a literal (``constant``) or a compiled CEL program."""

    source: str
    constant: bool | None
    program: CelProgram | None = None


_ALWAYS = Condition("true", True)  # the unconditional edge, shared (conditions are never changed)
_DEFAULT_RETRY = RetryPolicy()  # frozen: shared by every step that sets none


@dataclass(slots=True)
class StepDef:
    """One step of a definition: a leaf of some ``type``, a subworkflow (a leaf of type
    ``subworkflow``), or a foreach / while (``type`` "foreach" / "while", with its :attr:`loop`)."""

    id: str
    type: str
    index: int
    pointer: str
    params: dict[str, ParamSpec]
    successors: list[tuple[str, Condition]]
    retry: RetryPolicy
    timeout: float
    failure_mode: FailureMode
    name: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    predecessors: list[str] = field(default_factory=list)
    #: ``timeout`` / ``retry_policy`` as written when they hold ``${param}`` (Maestro's
    #: ParsableLong with a param): :func:`resolve_attributes` reads them with each instance's
    #: workflow params; ``timeout`` and ``retry`` above hold the defaults until then.
    templates: dict[str, Any] | None = None
    #: The loop of a foreach or while step (its variables, body DAG and settings); None otherwise.
    loop: LoopDef | None = None


@dataclass(slots=True)
class Definition:
    """A validated definition: the raw document plus everything the engine needs, precomputed."""

    document: dict[str, Any]
    workflow_id: str
    name: str
    params: dict[str, ParamSpec]
    steps: list[StepDef]
    by_id: dict[str, StepDef]
    timeout: float
    step_concurrency: int | None
    run_strategy: RunStrategy
    source: str = ""
    base_dir: Path | None = None
    version: int | None = None
    #: Whether any param (the workflow's or a step's) is secret: the engine masks only then.
    has_secrets: bool = False
    #: Fields accepted but not (yet) doing what they say, each at its pointer: `validate` and
    #: `run` print them, so nothing a definition says is silently ignored.
    warnings: list[Problem] = field(default_factory=list)
    #: The workflow's ``timeout`` as written when it holds ``${param}``.
    timeout_template: str | None = None
    #: Ids of the steps with :attr:`StepDef.templates`, at every depth.
    templated: list[str] = field(default_factory=list)
    #: Every step at every depth (loop bodies included) by id; ``steps`` / ``by_id`` are the
    #: top-level DAG only.
    all_by_id: dict[str, StepDef] = field(default_factory=dict)
    #: A loop body's step id -> the id of the loop step whose body holds it (top-level steps absent).
    parent_of: dict[str, str] = field(default_factory=dict)


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


# -- documents -----------------------------------------------------------------------------------


def parse_document(text: str, source: str = "") -> dict[str, Any]:
    """Parse JSON or YAML (1.2, :mod:`legato.yaml12`) text; a syntax error becomes a
    DefinitionError with line:col.

    The document is bounded (:mod:`legato.limits`): its size, its nesting, the size of its strings
    and numbers, and what YAML aliases may expand to; each excess is a located problem."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise DefinitionError([Problem("", f"the document is {len(text)} characters long; the limit is "
                                           f"{MAX_DOCUMENT_BYTES} (MAX_DOCUMENT_BYTES)")], source)
    is_yaml = source.endswith((".yaml", ".yml")) or (not source.endswith(".json") and not text.lstrip().startswith("{"))
    if not is_yaml:
        try:
            document = json.loads(text, object_pairs_hook=_object)
        except json.JSONDecodeError as exc:
            raise DefinitionError([Problem("", f"{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}")], source) from None
        except RecursionError:
            raise DefinitionError([Problem("", f"{_too_deep_at(text)}: invalid JSON: arrays and objects nest deeper "
                                               f"than {MAX_NESTING} levels (MAX_NESTING)")], source) from None
        except ValueError as exc:  # an integer past Python's conversion limit
            raise DefinitionError([Problem("", f"{_long_number_at(text)}: invalid JSON: a number has more than "
                                               f"{MAX_NUMBER_DIGITS} digits (MAX_NUMBER_DIGITS)")], source) from None
    else:
        try:
            document = yaml12.load(text, object_hook=_object)
        except yaml12.YamlError as exc:
            where = f"{exc.line}:{exc.column}: " if exc.line is not None else ""
            raise DefinitionError([Problem("", f"{where}invalid YAML: {exc.problem}")], source) from None
    if not isinstance(document, dict):
        raise DefinitionError([Problem("", "a definition is an object with `workflow` (and optional `properties`)")], source)
    problems = _inspect(document)
    if problems:
        raise DefinitionError(problems, source)
    return document


def _line_col(text: str, index: int) -> str:
    line_start = text.rfind("\n", 0, index) + 1
    return f"{text.count(chr(10), 0, index) + 1}:{index - line_start + 1}"


def _too_deep_at(text: str) -> str:
    """line:col of the bracket that first nests past MAX_NESTING (only called once parsing failed)."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return _line_col(text, i)
        elif ch in "]}":
            depth -= 1
    return "1:1"


_LONG_NUMBER = re.compile(r"\d{%d,}" % (MAX_NUMBER_DIGITS + 1))


def _long_number_at(text: str) -> str:
    m = _LONG_NUMBER.search(text)
    return _line_col(text, m.start()) if m else "1:1"


class _Obj(dict):
    """A parsed object that remembers keys it saw twice (JSON and YAML both allow that silently)."""

    duplicates: tuple = ()


def _object(pairs) -> dict:
    if type(pairs) is not list:  # the YAML loader hands over a generator
        pairs = list(pairs)
    obj = dict(pairs)  # the common case, without a loop in Python
    if len(obj) == len(pairs):
        return obj
    obj = _Obj()
    seen = []
    for key, value in pairs:
        if key in obj:
            seen.append(key)
        obj[key] = value
    obj.duplicates = tuple(seen)
    return obj


_BIG = 10 ** MAX_NUMBER_DIGITS


def _inspect(document: dict) -> list[Problem]:
    """Duplicate keys, nesting past MAX_NESTING, strings past MAX_STRING_BYTES and numbers past
    MAX_NUMBER_DIGITS, each at its pointer. One walk over the document, without recursion; a
    node's pointer is spelt out only for a problem (a chain of (key, parent) links until then)."""
    problems: list[Problem] = []
    stack: list[tuple] = [(document, None, 0)]  # (node, (key, parent link) or None, depth)
    pop, push = stack.pop, stack.append

    def pointer(link) -> str:
        parts = []
        while link is not None:
            key, link = link
            parts.append(_esc(key))
        return "".join("/" + part for part in reversed(parts))

    def leaf_problem(value, link) -> None:
        if type(value) is str:
            if len(value) > MAX_STRING_BYTES:
                problems.append(Problem(pointer(link), f"a string of {len(value)} characters; the limit is "
                                                       f"{MAX_STRING_BYTES} (MAX_STRING_BYTES)"))
            elif not value.isascii() and not _is_unicode(value):
                problems.append(Problem(pointer(link), "the string holds a lone surrogate (JSON's \\ud800 to "
                                                       "\\udfff without its pair): it is not text any process can take"))
        else:
            problems.append(Problem(pointer(link), f"a number of more than {MAX_NUMBER_DIGITS} digits "
                                                   "(MAX_NUMBER_DIGITS)"))

    # Only containers are pushed; the leaves (most nodes) are checked as their container is
    # walked, by a test that fails fast for the usual short ASCII string or small number.
    limit = MAX_STRING_BYTES
    while stack:
        node, link, depth = pop()
        if depth >= MAX_NESTING:
            problems.append(Problem(pointer(link), f"arrays and objects nest deeper than {MAX_NESTING} "
                                                   "levels (MAX_NESTING)"))
            continue
        depth += 1
        if type(node) is list:
            pairs = enumerate(node)
        else:
            for key in getattr(node, "duplicates", ()):
                problems.append(Problem(pointer((key, link)), f"duplicate key {key!r}: a later value would "
                                                              "silently replace an earlier one"))
            pairs = node.items()
        for key, value in pairs:
            kind = type(value)
            if kind is str:
                if len(value) > limit or (not value.isascii() and not _is_unicode(value)):
                    leaf_problem(value, (key, link))
            elif kind is dict or kind is _Obj or kind is list:
                push((value, (key, link), depth))
            elif kind is int and not -_BIG < value < _BIG:
                leaf_problem(value, (key, link))
    problems.sort(key=lambda p: p.pointer)  # stable, whatever the walk's order
    return problems


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Maestro's DurationParser units (d, day(s), h, hour(s), min, minute(s), s, sec, second(s), ms,
# millisecond(s)) plus the short ones Legato has always taken (m, hr, secs, mins); any order, spaces
# between a number and its unit optional, case-insensitive. Unlike Maestro's parser, which skips
# what it cannot read, anything left over is an error: "5 mon" must not quietly mean 0 seconds.
_DURATION = re.compile(
    r"\s*(\d+(?:\.\d+)?)\s*(milliseconds?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)(?![a-z])\s*,?")
_UNITS = {"ms": 0.001, "millisecond": 0.001, "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
          "h": 3600, "hr": 3600, "hour": 3600, "d": 86400, "day": 86400}
_NUMERIC = re.compile(r"\s*[+-]?\d+(?:\.\d+)?\s*")
_DURATION_HINT = "write seconds (a number, or a numeric string), or e.g. '300 seconds', '2 min', '1 hour', '1h30m', '1 day'"


def parse_duration(value: Any, *, allow_zero: bool = False, maximum: float = MAX_TIMEOUT_SECONDS,
                   limit: str = "MAX_TIMEOUT_SECONDS") -> float:
    """Seconds from a duration as Maestro writes one (``DurationParser`` / ``ParsableLong``): a
    number or a numeric string is seconds; otherwise a string such as ``"300 seconds"``, ``"2 min"``,
    ``"1 hour"``, ``"1h30m"``, ``"10 minutes 5 seconds 1 day"``. Raises ValueError.

    At most ``maximum`` (a timeout: Maestro's 120 days); positive unless ``allow_zero`` (a backoff may be 0)."""
    if isinstance(value, bool):
        raise ValueError(f"a duration is not true or false; {_DURATION_HINT}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.lower()
        if _NUMERIC.fullmatch(text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for m in _DURATION.finditer(text):
                if m.start() != pos:
                    break
                unit = m.group(2)
                unit = unit if unit in _UNITS else unit.rstrip("s")
                seconds += float(m.group(1)) * _UNITS[unit]
                pos = m.end()
            if pos != len(text) or pos == 0:
                raise ValueError(f"{value!r:.60} is not a duration; {_DURATION_HINT}")
    else:
        raise ValueError(f"a duration is a number of seconds or a string; {_DURATION_HINT}")
    if not seconds <= maximum:  # NaN and infinity too
        raise ValueError(f"a duration here is at most {maximum:.0f} seconds ({maximum / 86400:g} days, {limit}), "
                         f"got {value!r:.40}")
    if not (seconds >= 0 if allow_zero else seconds > 0):
        raise ValueError("a duration must not be negative" if allow_zero else "a duration must be positive")
    return seconds


def _esc(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


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


# -- the validator -------------------------------------------------------------------------------

_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")  # Maestro's ids have dots: job.1
_WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_STEP_KEYS = {
    "id", "type", "name", "description", "params", "transition", "retry_policy", "timeout",
    "failure_mode", "tags", "signal_dependencies", "signal_outputs",
}
_NOT_YET = {
    "signal_dependencies": "signal dependencies arrive with the signals issue",
    "signal_outputs": "signal outputs arrive with the signals issue",
}
_WRAPPERS = {"step", "foreach", "while", "subworkflow"}
_WORKFLOW_KEYS = {"id", "name", "description", "params", "steps", "timeout", "time_triggers", "signal_triggers", "tags",
                  "criticality", "instance_step_concurrency"}
_PROPERTY_KEYS = {"owner", "run_strategy", "step_concurrency", "workflow_concurrency", "description", "alerting", "tags",
                  "access_control", "alerting_disabled", "signal_trigger_disabled", "time_trigger_disabled"}
# Maestro's PropertiesSnapshot adds these to Properties.
_SNAPSHOT_KEYS = {"workflow_id", "create_time", "author"}
# Maestro's WorkflowCreateRequest (properties, workflow, is_active, git_info, extra_info) and its
# stored WorkflowDefinition (properties_snapshot, metadata, activation and bookkeeping fields).
# Only `properties` / `properties_snapshot` and `workflow` mean something here; the rest is kept
# in Definition.document, unread.
_TOP_KEYS = {"properties", "workflow", "is_active", "git_info", "extra_info", "properties_snapshot", "metadata",
             "activate_time", "activated_by", "is_latest", "is_default", "modify_time", "internal_id",
             "trigger_uuids", "enriched_extras"}
_CRITICALITIES = {"CRITICAL", "HIGH", "MEDIUM", "LOW"}
_RETRY_KEYS = {"error_retry_limit", "platform_retry_limit", "timeout_retry_limit", "backoff"}
_BACKOFF_KEYS = {"type", "base", "exponent", "cap", "jitter"}
_TAG_KEYS = {"name", "namespace", "permit", "attributes"}
_TAG_NAMESPACES = {"SYSTEM", "RUNTIME", "JOB_TEMPLATE", "NOTEBOOK_TEMPLATE", "USER_DEFINED", "PLATFORM"}


def _upper(value: Any) -> Any:
    """Maestro's enums are read case-insensitively (``Rule.create``, ``FailureMode.create`` …)."""
    return value.upper() if isinstance(value, str) else value
_MAESTRO_BACKOFF_KEY = re.compile(r"^(error|platform|timeout)_retry_")


def _is_maestro_backoff(raw: dict) -> bool:
    """Whether a backoff object is written Maestro's way (RetryPolicy.FixedBackoff / ExponentialBackoff)."""
    kind = raw.get("type")
    if isinstance(kind, str) and kind.upper() in ("FIXED_BACKOFF", "EXPONENTIAL_BACKOFF"):
        return True
    return any(isinstance(k, str) and _MAESTRO_BACKOFF_KEY.match(k) for k in raw)
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


class _Validator:
    def __init__(self, step_types: Mapping[str, type[StepType]], compiler: CelCompiler) -> None:
        self.step_types = step_types
        self.compiler = compiler
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.unavailable: dict[str, str | None] = {}  # asked once per step type
        self._folded: dict[str, str] | None = None
        self.workflow_params: dict[str, ParamSpec] = {}  # what `${}` in a timeout or retry policy may name
        self.workflow_id: str | None = None  # what a subworkflow step must not start
        self.step_concurrency: int | None = None  # the workflow's cap, which caps each foreach
        self.dags: list[tuple[list[dict], list[StepDef], dict[str, StepDef]]] = []  # each DAG, as read
        self.parent_of: dict[str, str] = {}  # a body step's id -> its loop's id
        self.known: set[str] | dict[str, StepDef] = set()  # every step id, once all are read
        self._empty_params_valid: set[type] = set()  # step types whose Params accept {}

    def add(self, pointer: str, message: str) -> None:
        self.problems.append(Problem(pointer, message))

    def warn(self, pointer: str, message: str) -> None:
        """Something accepted that does not (yet) do what it says; the CLI prints it."""
        self.warnings.append(Problem(pointer, message))

    def folded_types(self) -> dict[str, str]:
        """Registered step type names by their lower-case form (built once per definition)."""
        if self._folded is None:
            self._folded = {name.lower(): name for name in self.step_types}
        return self._folded

    def tags(self, raw: Any, pointer: str) -> list[str]:
        """Tag names from Maestro's TagList: strings, or objects ``{name, namespace, permit,
        attributes}`` (a tag permit is accepted and warned about: not enforced yet)."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.add(pointer, "tags must be an array of strings or {\"name\": …, \"namespace\": …} objects")
            return []
        names: list[str] = []
        for i, tag in enumerate(raw):
            where = f"{pointer}/{i}"
            if isinstance(tag, str):
                names.append(tag)
            elif isinstance(tag, dict):
                self.unknown_keys(tag, _TAG_KEYS, where, "tag")
                name = tag.get("name")
                if not isinstance(name, str) or not name:
                    self.add(f"{where}/name", "a tag object needs a `name` string")
                    continue
                ns = tag.get("namespace")
                if ns is not None and (not isinstance(ns, str) or ns.upper() not in _TAG_NAMESPACES):
                    self.add(f"{where}/namespace", f"unknown tag namespace {ns!r:.40}; use one of "
                                                   f"{', '.join(sorted(n.lower() for n in _TAG_NAMESPACES))}")
                if "permit" in tag:
                    permit = tag["permit"]
                    if isinstance(permit, bool) or not isinstance(permit, int) or permit < 0:
                        self.add(f"{where}/permit", f"a tag permit is a whole number >= 0, got {permit!r:.40}")
                    else:
                        self.warn(f"{where}/permit", "tag permits are accepted but not enforced yet: steps with "
                                                     "this tag are not limited")
                if "attributes" in tag and not isinstance(tag["attributes"], dict):
                    self.add(f"{where}/attributes", "tag attributes must be an object")
                names.append(name)
            else:
                self.add(where, "a tag is a string or a {\"name\": …, \"namespace\": …} object")
        return names

    def unknown_keys(self, obj: dict, allowed: set[str], pointer: str, what: str) -> None:
        for key in obj:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
                hint = f" (did you mean `{close[0]}`?)" if close else f"; allowed: {', '.join(sorted(allowed))}"
                self.add(f"{pointer}/{_esc(str(key))}", f"unknown {what} field{hint}")

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

    def number(self, obj: dict, key: str, pointer: str, minimum: float = 0.0,
               maximum: float = MAX_DURATION_SECONDS, numeric_string: bool = False) -> float | None:
        if key not in obj:
            return None
        value = obj[key]
        if numeric_string and isinstance(value, str) and _NUMERIC.fullmatch(value):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= maximum:
            self.add(f"{pointer}/{key}", f"expected a number from {minimum:.10g} to {maximum:.10g}, got {value!r:.40}")
            return None
        return float(value)

    def retry_policy(self, raw: Any, pointer: str) -> RetryPolicy:
        """Legato's form ({limits…, backoff: {type: fixed|exponential, base, exponent, cap, jitter}})
        or Maestro's (RetryPolicy: limits up to 99, a backoff of type FIXED_BACKOFF or
        EXPONENTIAL_BACKOFF with a base, exponent and cap per failure class)."""
        if raw is None:
            return RetryPolicy()
        if not isinstance(raw, dict):
            self.add(pointer, "retry_policy must be an object")
            return RetryPolicy()
        self.unknown_keys(raw, _RETRY_KEYS, pointer, "retry_policy")
        kwargs: dict[str, Any] = {}
        for key in ("error_retry_limit", "platform_retry_limit", "timeout_retry_limit"):
            value = self.whole(raw, key, pointer, 0, MAX_RETRY_LIMIT, "MAX_RETRY_LIMIT")
            if value is not None:
                kwargs[key] = value
        backoff = raw.get("backoff")
        if backoff is not None:
            where = f"{pointer}/backoff"
            if not isinstance(backoff, dict):
                self.add(where, "backoff must be an object: {type: fixed|exponential, base, exponent, cap, jitter} "
                                "or Maestro's {type: FIXED_BACKOFF|EXPONENTIAL_BACKOFF, error_retry_backoff_in_secs, …}")
            elif _is_maestro_backoff(backoff):
                kwargs.update(self.maestro_backoff(backoff, where))
            else:
                self.unknown_keys(backoff, _BACKOFF_KEYS, where, "backoff")
                b: dict[str, Any] = {}
                kind = backoff.get("type", "exponential")
                if not isinstance(kind, str) or kind.lower() not in ("fixed", "exponential"):
                    self.add(f"{where}/type", "backoff type must be `fixed` or `exponential` (or Maestro's "
                                              f"FIXED_BACKOFF / EXPONENTIAL_BACKOFF), got {kind!r:.40}")
                else:
                    b["type"] = kind.lower()
                for key, minimum, maximum in (("base", 0.0, MAX_DURATION_SECONDS),
                                              ("exponent", 1.0, MAX_BACKOFF_EXPONENT),
                                              ("cap", 0.0, MAX_DURATION_SECONDS), ("jitter", 0.0, 1.0)):
                    value = self.number(backoff, key, where, minimum, maximum)
                    if value is not None:
                        b[key] = value
                kwargs["backoff"] = Backoff(**b)
        return RetryPolicy(**kwargs)

    def run_strategy(self, raw: Any, pointer: str, concurrency: int | None) -> tuple[RunStrategy, int | None]:
        """Maestro's RunStrategy: a rule name (any case), ``{rule, workflow_concurrency}``, or a
        number (PARALLEL with that concurrency). Returns the rule and the concurrency, if given."""
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"rule": "PARALLEL", "workflow_concurrency": raw}
        if isinstance(raw, dict):
            self.unknown_keys(raw, {"rule", "workflow_concurrency"}, pointer, "run_strategy")
            given = self.whole(raw, "workflow_concurrency", pointer, 1, MAX_CONCURRENCY, "MAX_CONCURRENCY")
            if given is not None:
                if concurrency is not None and concurrency != given:
                    self.add(f"{pointer}/workflow_concurrency", f"workflow_concurrency is {given} here and "
                                                                f"{concurrency} beside run_strategy: give it once")
                concurrency = given
            rule, pointer = raw.get("rule"), f"{pointer}/rule"
        else:
            rule = raw
        try:
            strategy = RunStrategy(rule.lower() if isinstance(rule, str) else rule)
        except ValueError:
            self.add(pointer, f"unknown run_strategy {rule!r:.40}; use one of {', '.join(r.value for r in RunStrategy)}")
            return RunStrategy.SEQUENTIAL, concurrency
        if concurrency is not None and concurrency > 1 and strategy is not RunStrategy.PARALLEL:
            self.add(pointer, f"only the parallel run strategy allows a workflow_concurrency above 1, not "
                              f"{strategy.value} (Maestro's RunStrategy rule)")
        return strategy, concurrency

    def maestro_backoff(self, raw: dict, pointer: str) -> dict[str, Backoff]:
        """Maestro's FixedBackoff / ExponentialBackoff, each field missing taken from Maestro's
        Defaults (mergeWithDefault): 60 s fixed; 60 s × 2^(n-1) capped at 600 s (user errors) or
        3600 s (platform errors, timeouts). Returns RetryPolicy's backoff fields, one per class."""
        kind = raw.get("type", "EXPONENTIAL_BACKOFF")
        fixed = isinstance(kind, str) and kind.upper() == "FIXED_BACKOFF"
        if not fixed and not (isinstance(kind, str) and kind.upper() == "EXPONENTIAL_BACKOFF"):
            self.add(f"{pointer}/type", f"backoff type must be FIXED_BACKOFF or EXPONENTIAL_BACKOFF, got {kind!r:.40}")
        allowed = {"type"} | {f"{c}_retry_backoff_in_secs" for c in RETRY_CLASSES}
        if not fixed:
            allowed |= {f"{c}_retry_{f}" for c in RETRY_CLASSES for f in ("exponent", "limit_in_secs")}
        self.unknown_keys(raw, allowed, pointer, "FIXED_BACKOFF" if fixed else "EXPONENTIAL_BACKOFF")
        out: dict[str, Backoff] = {}
        for cls in RETRY_CLASSES:
            base = self.seconds(raw, f"{cls}_retry_backoff_in_secs", pointer, 60.0)
            if fixed:
                backoff = Backoff("fixed", base, 1.0, MAX_DURATION_SECONDS)
            else:
                exponent = self.number(raw, f"{cls}_retry_exponent", pointer, 1.0, MAX_BACKOFF_EXPONENT,
                                       numeric_string=True)
                cap = self.seconds(raw, f"{cls}_retry_limit_in_secs", pointer, 600.0 if cls == "error" else 3600.0)
                backoff = Backoff("exponential", base, 2.0 if exponent is None else exponent, cap)
            out["backoff" if cls == "error" else f"{cls}_backoff"] = backoff
        return out

    def seconds(self, obj: dict, key: str, pointer: str, default: float) -> float:
        """A backoff field in seconds: a number, a numeric string or a duration string; 0 allowed."""
        if key not in obj:
            return default
        try:
            return parse_duration(obj[key], allow_zero=True, maximum=MAX_DURATION_SECONDS, limit="MAX_DURATION_SECONDS")
        except ValueError as exc:
            self.add(f"{pointer}/{key}", str(exc))
            return default

    def whole(self, obj: dict, key: str, pointer: str, minimum: int, maximum: int, limit: str) -> int | None:
        """A whole number from ``minimum`` to ``maximum``: an integer or a numeric string, as
        Maestro's ParsableLong takes it."""
        if key not in obj:
            return None
        value = obj[key]
        if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= MAX_NUMBER_DIGITS:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            self.add(f"{pointer}/{key}", f"expected a whole number from {minimum} to {maximum} ({limit}), "
                                         f"got {obj[key]!r:.40}")
            return None
        return value

    def duration(self, raw: Any, pointer: str, default: float = DEFAULT_TIMEOUT_SECONDS) -> float:
        """A timeout (Maestro's ParsableLong duration, at most 120 days); ``default`` when absent
        or wrong (Maestro's 10 days)."""
        if raw is None:
            return default
        try:
            return parse_duration(raw)
        except ValueError as exc:
            self.add(pointer, str(exc))
            return default

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

    def step_config(self, cls: type[StepType], params: dict[str, ParamSpec], pointer: str) -> None:
        """Validate literal params against the step type's schema; expressions are checked when evaluated."""
        if cls.Params is None or (not params and cls in self._empty_params_valid):
            return  # the same (empty) params of the same step type were valid a step ago
        import pydantic

        if not params:
            try:
                cls.Params.model_validate({})
            except pydantic.ValidationError:
                pass  # said below, at this step's pointer
            else:
                self._empty_params_valid.add(cls)
                return
        literal = {name: spec.value for name, spec in params.items() if spec.is_literal}
        pending = {name for name, spec in params.items() if not spec.is_literal}
        try:
            cls.Params.model_validate(literal)
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                loc = [str(part) for part in err["loc"]]
                if loc and loc[0] in pending:
                    continue
                if pending and (err["type"] == "missing" or not loc):
                    continue  # a missing field, or a whole-model rule, may hinge on an expression's value
                where = pointer + "".join(f"/{_esc(p)}" for p in loc)
                self.add(where, f"{cls.name}: {_pydantic_message(err)}")

    def ident(self, raw: dict, pointer: str, seen: dict[str, str]) -> bool:
        """Check a step's ``id`` (valid, and unique across the whole definition: ``seen`` maps
        every id so far to its pointer) and its fields not supported yet."""
        for key, why in _NOT_YET.items():
            if key in raw:
                self.add(f"{pointer}/{key}", f"not supported yet: {why}")
        sid = raw.get("id")
        if not isinstance(sid, str) or not _ID_RE.match(sid):
            self.add(f"{pointer}/id", "a step needs an `id`: letters, digits, `_`, `.` and `-`, starting with a letter or `_`"
                     if sid is None else f"step id {sid!r} is not valid: use letters, digits, `_`, `.` and `-`, starting with a letter or `_`")
            return False
        if sid in seen:
            self.add(f"{pointer}/id", f"duplicate step id {sid!r} (first defined at {seen[sid]})")
            return False
        seen[sid] = pointer
        return True

    def step(self, raw: Any, pointer: str, index: int, seen: dict[str, str]) -> StepDef | None:
        if not isinstance(raw, dict):
            self.add(pointer, "a step is an object with an `id` and a `type`")
            return None
        self.unknown_keys(raw, _STEP_KEYS, pointer, "step")
        ok = self.ident(raw, pointer, seen)
        sid = raw.get("id")
        stype = raw.get("type")
        cls = None
        if not isinstance(stype, str):
            self.add(f"{pointer}/type", "a step needs a `type` (e.g. bash, noop, sleep)")
        else:
            cls = self.step_types.get(stype)
            if cls is None:  # Maestro writes step types capitalised: NoOp, Sleep
                canonical = self.folded_types().get(stype.lower())
                if canonical is not None:
                    stype, cls = canonical, self.step_types[canonical]
            if cls is None:
                known = ", ".join(sorted(self.step_types)) or "none"
                close = difflib.get_close_matches(stype.lower(), sorted(self.folded_types()), n=1, cutoff=0.6)
                hint = f" (did you mean {self.folded_types()[close[0]]!r}?)" if close else ""
                self.add(f"{pointer}/type", f"unknown step type {stype!r:.60}{hint}; installed: {known} "
                                            "(see `legato plugins`)")
            else:
                if stype not in self.unavailable:
                    self.unavailable[stype] = cls.unavailable()
                why = self.unavailable[stype]
                if why:
                    self.add(f"{pointer}/type", f"step type {stype!r} cannot run here: {why}")
        params = self.params(raw.get("params"), f"{pointer}/params", cls.raw_params if cls else frozenset(),
                             cls.argv_params if cls else frozenset())
        if cls is not None:
            self.step_config(cls, params, f"{pointer}/params")
            fields = cls.Params.model_fields if cls.Params is not None and params else {}
            for pname, spec in params.items():
                if spec.secret and pname in fields:
                    self.add(f"{pointer}/params/{_esc(pname)}/secret",
                             f"`{pname}` configures the {cls.name} step type and cannot be secret; pass the "
                             "secret as a param of its own")
        if not ok:
            self.attributes(raw, pointer, True)  # still checked, and reported with the rest
            return None
        return StepDef(sid, stype if isinstance(stype, str) else "", index, pointer, params, [],
                       *self.attributes(raw, pointer, True))

    def attributes(self, raw: dict, pointer: str, retries: bool) -> tuple:
        """StepDef's ``retry, timeout, failure_mode, name, description, tags, predecessors,
        templates`` (in that order) from a step's fields; ``retries``: whether it may have a
        ``retry_policy``."""
        failure_mode = FailureMode.FAIL_AFTER_RUNNING
        if "failure_mode" in raw:
            try:
                failure_mode = FailureMode(_upper(raw["failure_mode"]))
            except ValueError:
                self.add(f"{pointer}/failure_mode",
                         f"unknown failure_mode {raw['failure_mode']!r}; use one of {', '.join(m.value for m in FailureMode)}")
        # Absent fields cost no pointer (a 100,000-step definition has mostly absent ones).
        tags = self.tags(raw["tags"], f"{pointer}/tags") if raw.get("tags") is not None else []
        for key in ("name", "description"):
            if key in raw and not isinstance(raw[key], str):
                self.add(f"{pointer}/{key}", f"{key} must be a string")
        templates: dict[str, Any] = {}
        retry_raw, timeout_raw = raw.get("retry_policy") if retries else None, raw.get("timeout")
        if retry_raw is None:
            retry = _DEFAULT_RETRY
        elif isinstance(retry_raw, dict) and self.template(retry_raw, f"{pointer}/retry_policy"):
            templates["retry_policy"], retry = retry_raw, _DEFAULT_RETRY
        else:
            retry = self.retry_policy(retry_raw, f"{pointer}/retry_policy")
        if timeout_raw is None:
            timeout = DEFAULT_TIMEOUT_SECONDS
        elif isinstance(timeout_raw, str) and self.template(timeout_raw, f"{pointer}/timeout"):
            templates["timeout"], timeout = timeout_raw, DEFAULT_TIMEOUT_SECONDS
        else:
            timeout = self.duration(timeout_raw, f"{pointer}/timeout")
        name, description = raw.get("name"), raw.get("description")
        return (retry, timeout, failure_mode, name if isinstance(name, str) else "",
                description if isinstance(description, str) else "", tags, [], templates or None)

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
        if not ok:
            self.attributes(raw, pointer, False)
            return None
        return StepDef(sid, kind if loop is not None else "subworkflow", index, pointer, params, [],
                       *self.attributes(raw, pointer, False), loop=loop)

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

    def triggers(self, raw: Any, pointer: str) -> None:
        if raw is None:
            return
        if not isinstance(raw, list):
            self.add(pointer, "time_triggers must be an array")
            return
        for i, trig in enumerate(raw):
            where = f"{pointer}/{i}"
            if not isinstance(trig, dict) or trig.get("type") != "cron":
                self.add(where, "a time trigger is {\"type\": \"cron\", \"cron\": \"m h dom mon dow\", \"timezone\": …}")
                continue
            self.unknown_keys(trig, {"type", "cron", "timezone", "jitter", "catch_up", "description"}, where, "trigger")
            expr = trig.get("cron")
            if not isinstance(expr, str) or len(expr.split()) != 5:
                self.add(f"{where}/cron", f"expected a 5-field cron expression, got {expr!r}")
            else:
                from croniter import croniter

                if not croniter.is_valid(expr):
                    self.add(f"{where}/cron", f"invalid cron expression {expr!r}")
                else:
                    import datetime

                    from croniter import CroniterBadDateError

                    try:
                        croniter(expr, datetime.datetime(2000, 1, 1)).get_next(datetime.datetime)
                    except CroniterBadDateError:
                        self.add(f"{where}/cron", f"cron expression {expr!r} never fires (no such date)")
            tz = trig.get("timezone")
            if tz is not None:
                import zoneinfo

                try:
                    zoneinfo.ZoneInfo(tz)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
                    self.add(f"{where}/timezone", f"unknown time zone {tz!r}; use an IANA name like Europe/Amsterdam")


# Marks of Maestro's SEL (a Java subset) that CEL never has: statements ended by `;`, `return`,
# `new Type(…)`, Java's static helpers, and validators written as annotations (`@NotNull`).
_SEL_MARKS = re.compile(r";\s*$|^\s*return\b|^\s*@[A-Z][A-Za-z]*\b|\bnew\s+[A-Z][A-Za-z0-9_.]*\s*\(|\b(?:Util|DateTime|DateTimeZone|"
                        r"DateTimeFormat|Math|String|Integer|Long)\.[a-zA-Z]+\s*\(|\bparams\.getFromStep\s*\(")


def _sel_hint(source: str) -> str:
    """A pointer to the docs when a failed CEL expression looks like Maestro's SEL."""
    if not _SEL_MARKS.search(source):
        return ""
    return ("; this looks like Maestro's SEL (Java-like, with `;`, `return`, `new …`): Legato's expressions "
            "are CEL, see docs/maestro.md (\"Expressions\") for how to write it")


def _pydantic_message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    if err.get("type") == "missing":
        return f"`{err['loc'][-1]}` is required" if err.get("loc") else msg
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


# -- references to steps that are not upstream --------------------------------------------------

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


def load_definition(
    source: str | Path | Mapping[str, Any],
    step_types: Mapping[str, type[StepType]],
    compiler: CelCompiler,
) -> Definition:
    """Load a definition from a path, a document text, or an already-parsed document; validate all of it.

    Raises :class:`DefinitionError` with every problem found.
    """
    # Loading allocates many small objects that all live on: the cyclic GC would walk them again
    # and again for nothing (half the time of a 100,000-step definition). Pause it meanwhile.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _load(source, step_types, compiler)
    finally:
        if paused:
            gc.enable()


def _load(source, step_types: Mapping[str, type[StepType]], compiler: CelCompiler) -> Definition:
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
    run_strategy = RunStrategy.SEQUENTIAL
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
        concurrency_at = f"{where}/workflow_concurrency"
        rule = props.get("run_strategy")
        if isinstance(rule, dict) and "workflow_concurrency" in rule and "workflow_concurrency" not in props:
            concurrency_at = f"{where}/run_strategy/workflow_concurrency"
        elif isinstance(rule, int) and not isinstance(rule, bool):
            concurrency_at = f"{where}/run_strategy"
        if "run_strategy" in props:
            run_strategy, concurrency = v.run_strategy(props["run_strategy"], f"{where}/run_strategy", concurrency)
            v.warn(f"{where}/run_strategy", f"run_strategy {run_strategy.value!r} is accepted but not enforced yet: "
                                            "every start runs at once, whatever else runs")
        if concurrency is not None:
            v.warn(concurrency_at, "workflow_concurrency is accepted but not enforced yet: "
                                                    "instances are not limited")
        if step_concurrency is not None:
            v.warn(f"{where}/step_concurrency", "step_concurrency is enforced within each instance only; across "
                                                "instances it is not enforced yet")
        v.tags(props.get("tags"), f"{where}/tags")

    wf = document.get("workflow")
    if not isinstance(wf, dict):
        v.add("/workflow", "missing `workflow` object" if wf is None else "`workflow` must be an object")
        raise DefinitionError(v.problems, name)
    v.unknown_keys(wf, _WORKFLOW_KEYS, "/workflow", "workflow")
    for key in ("signal_triggers",):
        if wf.get(key):  # Maestro writes an empty list when there are none
            v.add(f"/workflow/{key}", "not supported yet: signal triggers arrive with the signals issue")
    wid = wf.get("id")
    if not isinstance(wid, str) or not _WORKFLOW_ID_RE.match(wid):
        v.add("/workflow/id", "a workflow needs an `id`: letters, digits, `_`, `.` and `-`" if wid is None
              else f"workflow id {wid!r} is not valid: use letters, digits, `_`, `.` and `-`")
    for key in ("name", "description"):
        if key in wf and not isinstance(wf[key], str):
            v.add(f"/workflow/{key}", f"{key} must be a string")
    v.tags(wf.get("tags"), "/workflow/tags")
    instance_limit = v.whole(wf, "instance_step_concurrency", "/workflow", 1, MAX_CONCURRENCY, "MAX_CONCURRENCY")
    if instance_limit is not None:  # Maestro's per-instance cap: what Legato enforces
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
    v.triggers(wf.get("time_triggers"), "/workflow/time_triggers")
    if wf.get("time_triggers"):
        v.warn("/workflow/time_triggers", "time_triggers are accepted but not enforced yet: nothing starts this "
                                          "workflow on a schedule")

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
        source=name,
        base_dir=base_dir,
        has_secrets=has_secrets,
        warnings=v.warnings,
        timeout_template=timeout_template,
        templated=[s.id for s in all_by_id.values() if s.templates],
        all_by_id=all_by_id,
        parent_of=v.parent_of,
    )
