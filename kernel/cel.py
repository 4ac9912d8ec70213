"""CEL expressions: compiled once, evaluated under bounds, converted to and from plain values.

cel-python is the engine.  What this module adds:

- a compile cache per :class:`CelCompiler` (one per plugin set), so a definition's expressions
  are parsed once whatever the number of instances;
- bounds: source size, nesting depth, evaluation time (checked as the tree is walked), and sizes
  of the lists our own functions build; exceeding one is a :class:`CelError`, never a hang;
- isolation: building a cel-python ``Environment`` raises the interpreter's recursion limit;
  we put it back, so using CEL never changes process-wide state;
- errors for people: :class:`CelError` carries ``line`` and ``column`` (1-based) when known; an
  evaluation error names the sub-expression that failed, as written, and its operands' CEL types
  (``steps.load.outputs.rows[0]` is a list; use `rows[0][1]` or `records[0].total``), never
  cel-python's classes. To find it the expression is evaluated once more, only when it failed.

Literal ``true`` / ``false`` conditions never reach cel-python (they dominate real DAGs).
"""

from __future__ import annotations

import contextvars
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
        Evaluator = BoundedEvaluator

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
            raise CelError(_explain(self, activation) or _eval_message(exc)) from None
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


# -- errors in the user's terms -------------------------------------------------------------------
#
# cel-python's evaluation errors name its Python classes and grammar rules ("ListType(...) with type
# '<class 'celpy.celtypes.ListType'>' does not support field selection"). When one happens, the
# expression is evaluated again, off the hot path, by an evaluator that notes where the error was
# born and what the operands there were; the message then names that sub-expression, as the user
# wrote it, and the operands' CEL types.

_CEL_TYPES = (("BoolType", "bool"), ("IntType", "int"), ("UintType", "uint"), ("DoubleType", "double"),
              ("StringType", "string"), ("BytesType", "bytes"), ("ListType", "list"), ("MapType", "map"),
              ("TimestampType", "timestamp"), ("DurationType", "duration"))
_ARTICLE = {"int": "an int", "uint": "a uint", "list": "a list", "map": "a map", "error": "an error"}
#: What CEL's string and list methods apply to, for "`x.startsWith()` needs a string".
_METHOD_TARGETS = {"startsWith": "string", "endsWith": "string", "contains": "string", "matches": "string",
                   "lowerAscii": "string", "upperAscii": "string", "size": "string, list or map",
                   "getFullYear": "timestamp", "getMonth": "timestamp", "getDate": "timestamp",
                   "getDayOfMonth": "timestamp", "getDayOfWeek": "timestamp", "getDayOfYear": "timestamp",
                   "getHours": "timestamp or duration", "getMinutes": "timestamp or duration",
                   "getSeconds": "timestamp or duration", "getMilliseconds": "timestamp or duration",
                   "map": "list or map", "filter": "list or map", "exists": "list or map", "all": "list or map",
                   "exists_one": "list or map"}
_OPS = {"relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=", "relation_eq": "==",
        "relation_ne": "!=", "relation_in": "in", "addition_add": "+", "addition_sub": "-",
        "multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%"}
_NO_VALUE = object()


def _type_name(value: Any) -> str:
    """A value's type in CEL's words: int, double, string, bool, list, map, null, …"""
    if value is None:
        return "null"
    if isinstance(value, _celpy.CELEvalError):
        return "error"
    for cls in type(value).__mro__:
        for name, cel in _CEL_TYPES:
            if cls.__name__ == name:
                return cel
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _a(value: Any) -> str:
    name = _type_name(value)
    return _ARTICLE.get(name, f"a {name}")


def _trace(program: "CelProgram", context: Mapping[str, Any]):
    """Evaluate again, noting for each error value the node it was born at and the values of that
    node's children then. Returns ``(error, {id(error): (node, child values, error)}, {id(node):
    value})`` for the error the evaluation ends with, or None."""
    runner = program._runner
    errors: dict[int, tuple] = {}
    values: dict[int, Any] = {}
    CELEvalError = _celpy.CELEvalError

    class Tracing(runner.Evaluator):
        def _visit_tree(self, tree):
            try:
                value = super()._visit_tree(tree)
            except CELEvalError as err:
                value = err
                errors.setdefault(id(err), (tree, [values.get(id(c), _NO_VALUE) for c in tree.children], err))
                raise
            values[id(tree)] = value
            if isinstance(value, CELEvalError):
                errors.setdefault(id(value), (tree, [values.get(id(c), _NO_VALUE) for c in tree.children], value))
            return value

        def sub_evaluator(self, ast):
            sub = Tracing(ast, activation=self.activation)
            sub.deadline = self.deadline
            return sub

    evaluator = Tracing(ast=runner.ast, activation=runner.new_activation())
    evaluator.deadline = time.monotonic() + MAX_EVAL_SECONDS
    try:
        evaluator.evaluate(context)
    except CELEvalError as err:
        return err, errors, values
    return None


def _text(source: str, tree: Any) -> str:
    """The part of ``source`` a node was parsed from, as the user wrote it."""
    meta = getattr(tree, "meta", None)
    start, end = getattr(meta, "start_pos", None), getattr(meta, "end_pos", None)
    if start is not None and end is not None and not getattr(meta, "empty", False):
        return " ".join(source[start:end].split())
    return _celpy.celparser.tree_dump(tree)


def _explain(program: "CelProgram", context: Mapping[str, Any]) -> str | None:
    """The failed evaluation's error in the user's terms, or None to fall back to cel-python's."""
    try:
        found = _trace(program, context)
        if found is None:
            return None
        err, errors, values = found
        seen = set()
        while id(err) in errors and id(err) not in seen:  # an error made of another: explain the first
            if getattr(err, "legato", False):
                return _eval_message(err)
            seen.add(id(err))
            tree, children, _ = errors[id(err)]
            inner = next((c for c in children if isinstance(c, _celpy.CELEvalError) and id(c) in errors), None)
            if inner is None:
                return _describe(program.source, tree, children, values, context)
            err = inner
        return None
    except Exception:  # noqa: BLE001 - an explanation is a courtesy; the plain message remains
        return None


def _keys(value: Any, limit: int = 12) -> str:
    keys = sorted(str(k) for k in value.keys())
    shown = ", ".join(keys[:limit]) + (", …" if len(keys) > limit else "")
    return shown or "none"


def _did_you_mean(name: str, value: Any) -> str:
    import difflib

    close = difflib.get_close_matches(name, [str(k) for k in value.keys()], n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _row_hint(source: str, tree: Any, values: dict, column: Any) -> str:
    """For ``X.rows[i].name`` or ``X.rows[i]['name']`` where ``X`` has ``columns`` (a sql step's
    outputs): the two ways to write it (``rows[i][k]``, ``records[i].name``), or the columns."""
    member = tree.children[0] if tree.children else None
    inner = member.children[0] if getattr(member, "children", None) else None
    while getattr(inner, "data", None) == "member" and inner.children:
        inner = inner.children[0]
    if getattr(inner, "data", None) != "member_index":
        return ""
    rows_tree, index_tree = inner.children[0], inner.children[1]
    rows_node = rows_tree
    while getattr(rows_node, "data", None) == "member" and rows_node.children:
        rows_node = rows_node.children[0]
    if getattr(rows_node, "data", None) != "member_dot" or rows_node.children[1].value != "rows":
        return ""
    outputs = values.get(id(rows_node.children[0]), _NO_VALUE)
    if not isinstance(outputs, Mapping) or "columns" not in outputs:
        return ""
    columns = [str(c) for c in outputs["columns"]]
    if str(column) not in columns:
        return f"; its columns, in order: {', '.join(columns)}"
    index = _text(source, index_tree)
    hint = f"`rows[{index}][{columns.index(str(column))}]`"
    if "records" in outputs:
        hint += f" or `records[{index}].{column}`"
    return f"; use {hint}"


def _describe(source: str, tree: Any, children: list, values: dict, context: Mapping[str, Any]) -> str | None:
    kind = tree.data
    whole = _text(source, tree)
    if kind == "member_dot":
        operand, field = children[0], tree.children[1].value
        what = _text(source, tree.children[0])
        if isinstance(operand, Mapping):
            if what == "steps":
                done = _keys(operand)
                return (f"`steps.{field}`: no step `{field}` has finished at this point (finished: {done}); "
                        "read steps upstream of this one")
            return f"`{what}` has no `{field}`{_did_you_mean(field, operand)}; its keys: {_keys(operand)}"
        if _type_name(operand) == "list":
            hint = _row_hint(source, tree, values, field)
            if hint.startswith("; use"):
                return f"`{what}` is a list{hint}"
            return (f"`{what}` is a list, which has no fields: `.{field}` needs a map; index a list by position "
                    f"(`{what}[0]`){hint}")
        return f"`{what}` is {_a(operand)}, which has no field `{field}`"
    if kind == "member_index":
        operand, index = children[0], children[1]
        what = _text(source, tree.children[0])
        if _type_name(operand) == "list":
            if _type_name(index) != "int":
                hint = _row_hint(source, tree, values, index)
                if hint.startswith("; use"):
                    return f"`{what}` is a list, indexed by position{hint}"
                return (f"`{what}` is a list: index it by position with an int, not {_a(index)} "
                        f"(`{_text(source, tree.children[1])}`){hint}")
            return f"`{whole}`: index {int(index)} is out of range; `{what}` has {len(operand)} element(s)"
        if isinstance(operand, Mapping):
            key = _text(source, tree.children[1])
            return f"`{what}` has no key {key}{_did_you_mean(str(index), operand)}; its keys: {_keys(operand)}"
        return f"`{what}` is {_a(operand)}: it cannot be indexed with `[…]`"
    if kind in ("relation", "addition", "multiplication") and len(tree.children) == 2:
        op_tree, right = tree.children
        op = _OPS.get(op_tree.data)
        if op is None or not op_tree.children:
            return None
        left_value = values.get(id(op_tree.children[0]), _NO_VALUE)
        right_value = children[1]
        if left_value is _NO_VALUE or right_value is _NO_VALUE:
            return None
        lt, rt = _type_name(left_value), _type_name(right_value)
        if op in ("/", "%") and rt in ("int", "uint", "double") and not right_value:
            return f"`{whole}`: cannot divide by zero"
        left_text, right_text = _text(source, op_tree.children[0]), _text(source, right)
        hint = ""
        if {lt, rt} == {"int", "string"} or {lt, rt} == {"double", "string"}:
            number = "int" if "int" in (lt, rt) else "double"
            text_side, number_side = (left_text, right_text) if lt == "string" else (right_text, left_text)
            if op == "+":
                hint = f"; convert one side: `string({number_side})` to join text, `{number}({text_side})` to add"
            else:
                hint = f"; convert one side: `{number}({text_side})`"
        elif {lt, rt} == {"int", "double"}:
            int_side = left_text if lt == "int" else right_text
            hint = f"; convert the int: `double({int_side})`"
        if op in ("<", "<=", ">", ">=", "==", "!="):
            return f"`{whole}` compares {_a(left_value)} (`{left_text}`) with {_a(right_value)} (`{right_text}`){hint}"
        if op == "in":
            if rt in ("list", "map"):
                return (f"`{whole}`: `{right_text}` holds values that cannot be compared with {_a(left_value)} "
                        f"(`{left_text}`)")
            return f"`{whole}`: `in` needs a list or a map on its right, and `{right_text}` is {_a(right_value)}"
        return (f"`{whole}`: no `{op}` between {_a(left_value)} (`{left_text}`) and {_a(right_value)} "
                f"(`{right_text}`){hint}")
    if kind == "unary" and len(tree.children) == 2:
        sign = "!" if tree.children[0].data == "unary_not" else "-"
        operand = children[1]
        need = "a bool" if sign == "!" else "a number"
        return f"`{whole}`: `{sign}` needs {need}, and `{_text(source, tree.children[1])}` is {_a(operand)}"
    if kind == "expr" and len(tree.children) == 3:
        condition = children[0]
        if _type_name(condition) != "bool":
            return (f"`{whole}`: the condition before `?` must be a bool, and "
                    f"`{_text(source, tree.children[0])}` is {_a(condition)}")
        return None
    if kind == "member_dot_arg":
        target, method = children[0], tree.children[1].value
        err = values.get(id(tree))
        cause = _cause(err)
        if "undeclared reference" in str(err.args[0] if err is not None and err.args else ""):
            return f"`{whole}`: there is no method `{method}`"
        what = _text(source, tree.children[0])
        wants = _METHOD_TARGETS.get(method)
        if wants and _type_name(target) not in wants.split(" or ") and _type_name(target) not in wants.split(", "):
            return f"`{whole}`: `{method}()` applies to {_article_list(wants)}, and `{what}` is {_a(target)}"
        args = children[2] if len(children) > 2 and isinstance(children[2], list) else []
        types = ", ".join(_type_name(a) for a in args)
        return f"`{whole}`: `{method}()` of {_a(target)} does not take ({types}){cause}"
    if kind == "primary" and tree.children and getattr(tree.children[0], "data", None) == "ident_arg":
        call = tree.children[0]  # a function call, evaluated by its `primary` node
        name = call.children[0].value
        err = values.get(id(tree))
        if err is not None and err.args and "undeclared reference" in str(err.args[0]):
            return f"`{whole}`: there is no function `{name}`"
        args = [values.get(id(c), _NO_VALUE) for c in call.children[1].children] if len(call.children) > 1 else []
        if _NO_VALUE in args:
            return None
        if err is not None and len(err.args) > 1 and err.args[1] is ValueError and len(args) == 1 \
                and name in ("int", "uint", "double", "bool", "timestamp", "duration"):
            shown = f"{str(args[0])[:40]!r}" if isinstance(args[0], str) else _text(source, call.children[1])
            return f"`{whole}`: {shown} is not {_ARTICLE.get(name, 'a ' + name)}"
        types = ", ".join(_type_name(a) for a in args)
        return f"`{whole}`: `{name}()` does not take ({types}){_cause(err)}"
    if kind in ("ident", "primary"):
        name = whole
        err = values.get(id(tree))
        if err is not None and err.args and "undeclared reference" in str(err.args[0]):
            known = sorted(k for k in context if isinstance(k, str))
            return (f"`{name}` is not defined; the names here: {', '.join(known[:12])}"
                    f"{', …' if len(known) > 12 else ''}")
    return None


def _article_list(types: str) -> str:
    first, *rest = types.split(", ")
    return _ARTICLE.get(first, f"a {first}") + ("" if not rest else ", " + ", ".join(rest))


def _cause(err: Any) -> str:
    """The Python exception's own words when they say something about the value (int('abc'))."""
    if err is None or len(err.args) < 3 or not err.args[2]:
        return ""
    detail = err.args[2][0] if isinstance(err.args[2], tuple) else err.args[2]
    text = str(detail)
    if "Type" in text or "NotImplemented" in text or "object" in text:
        return ""  # Python classes: nothing the user wrote
    return f": {text}"


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
        self._extra = functions if functions is not None else {}  # read at the first compile: plugins load then
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


def _own_error(message: str, kind: type) -> Any:
    """An evaluation error raised by Legato's own functions: its message is already for people."""
    err = _celpy.CELEvalError(message, kind, None)
    err.legato = True
    return err


#: What ``getFromForeach`` reads while the engine evaluates a step's params: (foreach step id, body
#: step id, name) -> one value per iteration. The engine loads it from storage before the
#: evaluation of a step whose params call the function (legato.loops), and sets it around it.
FOREACH_VALUES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("legato_foreach_values", default=None)


def builtin_functions() -> dict[str, Callable[..., Any]]:
    """``intsBetween``, ``dateIntsBetween``, ``dateIntToTs``, ``tsToDateInt``,
    ``getFromForeach``, and a bounded ``+``."""
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

    def get_from_foreach(foreach, step, name):
        """Maestro's getFromForeach: the value of the body step's output (or else param) ``name``
        in each iteration of the foreach step, in iteration order (null where it has none)."""
        values = (FOREACH_VALUES.get() or {}).get((str(foreach), str(step), str(name)))
        if values is None:
            raise ValueError(f"{str(foreach)!r} is not a foreach step that ended upstream of this step "
                             f"(or {str(step)!r} is not a step of its body)")
        return to_cel(values)

    def wrap(name, fn):
        def call(*args):
            try:
                return fn(*args)
            except (ValueError, TypeError, OverflowError) as exc:
                return _own_error(f"{name}: {exc}", type(exc))

        call.__name__ = name
        return call

    def add(left, right):
        """CEL's ``+``, refusing to build a string, bytes or list past MAX_VALUE_BYTES (doubling a
        string thirty times would take gigabytes well within the time bound)."""
        if isinstance(left, (str, bytes, list)) and isinstance(right, (str, bytes, list)):
            size = len(left) + len(right)
            if size > MAX_VALUE_BYTES:
                return _own_error(f"`+` would build a value of {size} characters or elements; "
                                  f"the limit is {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)", ValueError)
        return operator.add(left, right)

    return {
        "_+_": add,
        "intsBetween": wrap("intsBetween", ints_between),
        "dateIntsBetween": wrap("dateIntsBetween", date_ints_between),
        "dateIntToTs": wrap("dateIntToTs", date_int_to_ts),
        "tsToDateInt": wrap("tsToDateInt", ts_to_date_int),
        "getFromForeach": wrap("getFromForeach", get_from_foreach),
    }
