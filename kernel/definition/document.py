"""Parsing a document (JSON or YAML) within bounds: its size, nesting, strings, numbers and
duplicate keys, each excess a located problem; JSON pointers into it."""

from __future__ import annotations

import json
import re
from typing import Any

from .. import yaml12
from ..limits import MAX_DOCUMENT_BYTES, MAX_NESTING, MAX_NUMBER_DIGITS, MAX_STRING_BYTES
from .model import DefinitionError, Problem


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


def _esc(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")
