"""CEL expressions: compiled once, evaluated under bounds, converted to and from plain values.

cel-python is the engine.  What this module adds:

- a compile cache per :class:`CelCompiler` (one per plugin set), so a definition's expressions
  are parsed once whatever the number of instances;
- bounds: source size, nesting depth, evaluation time (checked as the tree is walked), and sizes
  of the lists our own functions build; exceeding one is a :class:`CelError`, never a hang;
- isolation: building a cel-python ``Environment`` raises the interpreter's recursion limit;
  we put it back, so using CEL never changes process-wide state;
- errors for people: :class:`CelError` carries ``line`` and ``column`` (1-based) when known.

Literal ``true`` / ``false`` conditions never reach cel-python (they dominate real DAGs).
"""

from __future__ import annotations

import datetime
import operator
import re
import sys
import time
from typing import Any, Callable, Mapping

__all__ = ["CelError", "CelProgram", "CelCompiler", "to_cel", "to_python", "unconvertible", "INT_MIN", "INT_MAX",
           "MAX_VALUE_DEPTH"]

from .limits import MAX_CEL_DEPTH as MAX_DEPTH
from .limits import MAX_CEL_EVAL_SECONDS as MAX_EVAL_SECONDS
from .limits import MAX_CEL_LIST as MAX_LIST
from .limits import MAX_CEL_SOURCE as MAX_SOURCE
from .limits import MAX_CEL_TREE_DEPTH as MAX_TREE_DEPTH
from .limits import INT_MAX, INT_MIN, MAX_VALUE_BYTES, MAX_VALUE_DEPTH


class CelError(Exception):
    """An expression failed to compile or evaluate. ``line``/``column`` are 1-based when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def located(self) -> str:
        if self.line is not None:
            return f"{self.line}:{self.column}: {self.message}"
        return self.message


_celpy = None
_environment = None


def _cel():
    """Import cel-python lazily (it costs ~50 ms) and build the shared Environment once."""
    global _celpy, _environment
    if _celpy is None:
        limit = sys.getrecursionlimit()
        try:
            import celpy
            import celpy.celparser
            import celpy.evaluation

            # cel-python builds its Lark LALR tables from the grammar in every process (0.3-0.9 s,
            # the bulk of a small `legato run`). Lark can keep them in a file: built once per user
            # and installation, loaded in ~10 ms after that. The file's first line is a digest of
            # the grammar, the options and the Lark and Python versions; Lark rebuilds (and
            # rewrites) a file that does not match or does not load, so a stale or corrupt cache
            # costs one rebuild, never an error.
            lark_class = celpy.celparser.Lark
            cache = _parser_cache_file()
            if cache is not None:
                celpy.celparser.Lark = lambda *args, **options: lark_class(*args, cache=cache, **options)
            try:
                _environment = celpy.Environment()
            finally:
                celpy.celparser.Lark = lark_class
        finally:
            sys.setrecursionlimit(limit)  # cel-python raises it process-wide; put it back
        _celpy = celpy
    return _celpy


def _parser_cache_file() -> str | None:
    """Where the CEL parser's tables are kept: the per-user cache directory (``$XDG_CACHE_HOME``,
    else ``~/.cache``), ``legato/``; None (build them in memory) when it cannot be made."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "legato")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    import lark

    return os.path.join(folder, f"cel-parser-lark{lark.__version__}-py{sys.version_info[0]}{sys.version_info[1]}.cache")


class _Timeout(Exception):
    pass


def _deadline_runner():
    """An InterpretedRunner whose evaluator checks a deadline as it walks the tree."""
    celpy = _cel()
    Evaluator = celpy.evaluation.Evaluator

    class BoundedEvaluator(Evaluator):
        deadline = 0.0

        def visit_children(self, tree):
            if time.monotonic() > self.deadline:
                raise _Timeout()
            return super().visit_children(tree)

        def sub_evaluator(self, ast):
            sub = BoundedEvaluator(ast, activation=self.activation)
            sub.deadline = self.deadline
            return sub

    class BoundedRunner(celpy.InterpretedRunner):
        def evaluate(self, context):
            e = BoundedEvaluator(ast=self.ast, activation=self.new_activation())
            e.deadline = time.monotonic() + MAX_EVAL_SECONDS
            return e.evaluate(context)

    return BoundedRunner


def unconvertible(value: Any) -> tuple[str, str] | None:
    """Why a plain JSON-like value (a param's, a step's outputs) cannot be given to CEL and kept:
    ``(path, reason)`` for the first problem (``path`` like ``/rows/3``), or None when it can.

    Checked where values enter (params, step outputs) so that conversion never fails later,
    in the middle of scheduling or on every resume. Iterative: a deep value cannot overflow the
    stack here."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, (str, float)):
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                digits = str(item) if abs(item) < 10**60 else f"an integer of {len(str(abs(item)))} digits"
                return path, (f"{digits} is outside the range of a 64-bit integer ({INT_MIN} to {INT_MAX}); "
                              "give it as a string or a DOUBLE")
            continue
        if isinstance(item, (dict, list, tuple)):
            if depth >= MAX_VALUE_DEPTH:
                return path, f"maps and arrays nest deeper than {MAX_VALUE_DEPTH} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(item, dict) and not isinstance(key, str):
                    return path, f"the map key {key!r:.40} is not a string"
                stack.append((child, f"{path}/{key}", depth + 1))
            continue
        if isinstance(item, (datetime.datetime, datetime.timedelta)):
            continue
        return path, f"a {type(item).__name__} is not a JSON value"
    return None


def to_cel(value: Any):
    """Convert a plain JSON-like value (plus datetimes) to CEL values."""
    celtypes = _cel().celtypes
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:  # IntType() checks the same range forty times slower
            return int.__new__(celtypes.IntType, value)
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if value is None:
        return None
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(k): to_cel(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return celtypes.ListType([to_cel(v) for v in value])
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return celtypes.TimestampType(value)
    if isinstance(value, datetime.timedelta):
        return celtypes.DurationType(value)
    return value  # already a CEL value


class _TooBig(Exception):
    pass


def to_python(value: Any, limit: int | None = None) -> Any:
    """Convert a CEL result to plain JSON-like Python values. With ``limit``, raise CelError as
    soon as the result outgrows it (counted like :func:`legato.limits.value_size`): a list of a
    million references to one long string is small in CEL and huge as copies."""
    if limit is None:
        return _plain(value, None)
    try:
        return _plain(value, [limit])
    except _TooBig:
        raise CelError(f"the result is larger than {limit} characters (MAX_VALUE_BYTES); "
                       "build smaller values or split them into several params") from None


def _plain(value: Any, budget: list[int] | None) -> Any:
    celtypes = _cel().celtypes
    if budget is not None:
        budget[0] -= len(value) if isinstance(value, (str, bytes)) else 1
        if budget[0] < 0:
            raise _TooBig()
    if value is None:
        return None
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.TimestampType):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, celtypes.DurationType):
        return value.total_seconds()
    if isinstance(value, (celtypes.IntType, celtypes.UintType)):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.BytesType):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): _plain(v, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, budget) for v in value]
    return value


def _check_source(source: str) -> None:
    if len(source) > MAX_SOURCE:
        raise CelError(f"expression is {len(source)} characters long; the limit is {MAX_SOURCE}")
    depth = 0
    line, column = 1, 0
    quote = None
    for ch in source:
        column += 1
        if ch == "\n":
            line, column = line + 1, 0
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                raise CelError(f"expression nests deeper than {MAX_DEPTH} levels", line, column)
        elif ch in ")]}":
            depth -= 1


class CelProgram:
    """A compiled expression. ``evaluate(activation)`` returns a plain Python value."""

    __slots__ = ("source", "_runner")

    def __init__(self, source: str, runner) -> None:
        self.source = source
        self._runner = runner

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        """Evaluate with ``activation`` (names to CEL values, see :func:`to_cel`). Raises CelError."""
        celpy = _celpy
        try:
            result = self._runner.evaluate(activation)
        except _Timeout:
            raise CelError(f"evaluation took longer than {MAX_EVAL_SECONDS}s; simplify the expression") from None
        except celpy.CELEvalError as exc:
            raise CelError(_eval_message(exc)) from None
        except RecursionError:
            raise CelError("expression is too deeply nested to evaluate") from None
        except CelError:
            raise
        except Exception as exc:  # cel-python's own bugs surface as plain exceptions
            raise CelError(f"evaluation failed: {type(exc).__name__}: {exc}") from None
        return to_python(result, MAX_VALUE_BYTES)


def _parse_reason(exc: Exception) -> str:
    """What lark saw, in words (cel-python's own message is just the source line)."""
    cause = exc.__context__
    token = getattr(cause, "token", None)
    if token is not None:
        if token.type == "$END":
            return "unexpected end of expression"
        return f"unexpected {str(token)!r}"
    char = getattr(cause, "char", None)
    if char is not None:
        return f"unexpected character {char!r}" + (" (unterminated string?)" if char in "'\"" else "")
    return "invalid expression"


_OPERATORS = {
    "addition_add": "+", "addition_sub": "-", "multiplication_mul": "*", "multiplication_div": "/",
    "multiplication_mod": "%", "relation_lt": "<", "relation_le": "<=", "relation_gt": ">",
    "relation_ge": ">=", "relation_eq": "==", "relation_ne": "!=", "relation_in": "in",
    "unary_neg": "-", "unary_not": "!",
}
# The rule is a Token('RULE', …) in a parser built from the grammar, a plain string in one loaded
# from the cache.
_OVERLOAD = re.compile(r"found no matching overload for (?:Token\('RULE', )?'(\w+)'\)? applied to '\((.*)\)'")
_CEL_TYPE = re.compile(r"celtypes\.(\w+?)Type")


def _eval_message(exc: Exception) -> str:
    args = exc.args
    message = str(args[0]) if args else str(exc)
    message = message.split(" (in activation", 1)[0]  # cel-python appends its whole activation
    overload = _OVERLOAD.search(message)
    if overload:  # cel-python names grammar rules and Python classes; say it in CEL's terms
        op = _OPERATORS.get(overload.group(1), overload.group(1))
        kinds = [k.lower() for k in _CEL_TYPE.findall(overload.group(2))] or ["these values"]
        return f"no `{op}` for {' and '.join(kinds)}"
    if len(args) > 2 and args[2]:
        detail = args[2][0] if isinstance(args[2], tuple) and args[2] else args[2]
        if str(detail) not in message:
            message = f"{message} ({detail})"
    return message


def _tree_depth(tree) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in getattr(node, "children", ()) if hasattr(child, "children"))
    return deepest


class CelCompiler:
    """Compiles and caches CEL programs with Legato's functions and any registered by plugins."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self._extra = dict(functions or {})
        self._functions: dict[str, Callable[..., Any]] | None = None
        self._cache: dict[str, CelProgram] = {}
        self._runner = None

    def compile(self, source: str) -> CelProgram:
        """Parse ``source`` once (cached). Raises CelError with line and column on bad syntax."""
        program = self._cache.get(source)
        if program is not None:
            return program
        if not isinstance(source, str) or not source.strip():
            raise CelError("expression is empty")
        _check_source(source)
        celpy = _cel()
        if self._runner is None:
            self._runner = _deadline_runner()
            self._functions = {**builtin_functions(), **self._extra}
        try:
            ast = _environment.cel_parser.parse(source)
        except celpy.CELParseError as exc:
            raise CelError(f"syntax error: {_parse_reason(exc)}", exc.line, exc.column) from None
        except RecursionError:
            raise CelError("expression is too deeply nested") from None
        if _tree_depth(ast) > MAX_TREE_DEPTH:
            raise CelError("expression is too deeply nested (split it into several params)")
        program = CelProgram(source, self._runner(_environment, ast, self._functions))
        self._cache[source] = program
        return program


# -- Legato's CEL functions ------------------------------------------------------------------


def builtin_functions() -> dict[str, Callable[..., Any]]:
    """``intsBetween``, ``dateIntsBetween``, ``dateIntToTs``, ``tsToDateInt``, and a bounded ``+``."""
    celtypes = _cel().celtypes

    def _bounded(n: int) -> None:
        if n > MAX_LIST:
            raise ValueError(f"would build {n} elements; the limit is {MAX_LIST}")

    def ints_between(start, end, step=1):
        """[start, end) by step, like Maestro's Util.intsBetween."""
        start, end, step = int(start), int(end), int(step)
        if step == 0:
            raise ValueError("step must not be 0")
        _bounded(max(0, (end - start) // step))
        return celtypes.ListType([celtypes.IntType(i) for i in range(start, end, step)])

    def _date(value: int) -> datetime.date:
        value = int(value)
        return datetime.date(value // 10000, value // 100 % 100, value % 100)

    def date_ints_between(start, end, step=1):
        """yyyymmdd ints from start (inclusive) to end (exclusive), every `step` days."""
        first, last, step = _date(start), _date(end), int(step)
        if step <= 0:
            raise ValueError("step must be positive")
        days = (last - first).days
        _bounded(max(0, days // step))
        out = []
        for offset in range(0, max(0, days), step):
            d = first + datetime.timedelta(days=offset)
            out.append(celtypes.IntType(d.year * 10000 + d.month * 100 + d.day))
        return celtypes.ListType(out)

    def date_int_to_ts(value):
        """yyyymmdd int -> timestamp at midnight UTC."""
        d = _date(value)
        return celtypes.TimestampType(datetime.datetime(d.year, d.month, d.day, tzinfo=datetime.timezone.utc))

    def ts_to_date_int(ts, tz=None):
        """timestamp -> yyyymmdd int, in `tz` (an IANA name) or UTC."""
        moment = ts
        if tz is not None:
            import zoneinfo

            moment = ts.astimezone(zoneinfo.ZoneInfo(str(tz)))
        return celtypes.IntType(moment.year * 10000 + moment.month * 100 + moment.day)

    def wrap(name, fn):
        def call(*args):
            try:
                return fn(*args)
            except (ValueError, TypeError, OverflowError) as exc:
                return _celpy.CELEvalError(f"{name}: {exc}", type(exc), None)

        call.__name__ = name
        return call

    def add(left, right):
        """CEL's ``+``, refusing to build a string, bytes or list past MAX_VALUE_BYTES (doubling a
        string thirty times would take gigabytes well within the time bound)."""
        if isinstance(left, (str, bytes, list)) and isinstance(right, (str, bytes, list)):
            size = len(left) + len(right)
            if size > MAX_VALUE_BYTES:
                return _celpy.CELEvalError(f"`+` would build a value of {size} characters or elements; "
                                           f"the limit is {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)", ValueError, None)
        return operator.add(left, right)

    return {
        "_+_": add,
        "intsBetween": wrap("intsBetween", ints_between),
        "dateIntsBetween": wrap("dateIntsBetween", date_ints_between),
        "dateIntToTs": wrap("dateIntToTs", date_int_to_ts),
        "tsToDateInt": wrap("tsToDateInt", ts_to_date_int),
    }
