"""Signals (DESIGN §3): named events with params, what they may hold and how they are matched.

Modelled on Maestro's signal model: a signal's params are LONG or STRING values
(``SignalParamValue``); a dependency or a trigger matches a signal when each of its
``match_params`` holds (``SignalMatchParam.isSatisfied``): the signal has the param, of the same
kind (a number never matches a string), and ``signal value <operator> given value`` is true, with
the operators ``= > >= < <=`` (``SignalOperator``; strings compare lexicographically).

This module is pure: the store keeps signals (:meth:`legato.storage.Storage.send_signal`), the
instance run waits for them (:mod:`legato.signalwait`), the ``signal`` trigger type starts
workflows from them (``legato.plugins.signal_trigger``).
"""

from __future__ import annotations

import json
import operator
import re
from typing import Any, Mapping

__all__ = ["OPERATORS", "SignalError", "check_signal", "satisfied", "parse_cli_params", "describe_match",
           "MAX_NAME", "MAX_PARAMS", "Match"]

#: Maestro's SignalOperator codes.
OPERATORS = {"=": operator.eq, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
#: A signal's name: at most this many characters (Maestro's signal names are table-like paths).
MAX_NAME = 255
#: At most this many params, each value a string of at most MAX_VALUE characters or a 64-bit integer.
MAX_PARAMS = 64
MAX_VALUE = 4096
_LONG = (-(2 ** 63), 2 ** 63 - 1)
_WHOLE = re.compile(r"-?(0|[1-9][0-9]{0,18})")

#: One condition: (param name, operator code, value).
Match = tuple[str, str, Any]


class SignalError(ValueError):
    """A signal (or a match) that is not valid; ``pointer`` says where, the message what to do."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(f"{pointer}: {message}" if pointer else message)
        self.message = message
        self.pointer = pointer


def check_name(name: Any, pointer: str = "/name") -> str:
    """A signal name as given, or SignalError."""
    if not isinstance(name, str) or not name.strip():
        raise SignalError("a signal needs a name (a non-empty string)", pointer)
    if len(name) > MAX_NAME:
        raise SignalError(f"a signal name has at most {MAX_NAME} characters, got {len(name)}", pointer)
    if any(ord(c) < 32 for c in name):
        raise SignalError("a signal name has no control characters", pointer)
    return name


def check_value(value: Any, pointer: str) -> Any:
    """A signal param value: a whole number (LONG) or a string (STRING), Maestro's SignalParamValue."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SignalError(f"a signal param is a whole number or a string, got {json.dumps(value)[:40]}", pointer)
    if isinstance(value, int) and not _LONG[0] <= value <= _LONG[1]:
        raise SignalError("a signal param number fits in 64 bits", pointer)
    if isinstance(value, str) and len(value) > MAX_VALUE:
        raise SignalError(f"a signal param string has at most {MAX_VALUE} characters", pointer)
    return value


def check_signal(name: Any, params: Any) -> tuple[str, dict[str, Any]]:
    """``(name, params)`` checked (SignalError naming the place otherwise)."""
    name = check_name(name)
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise SignalError("a signal's params are an object of name -> number or string", "/params")
    if len(params) > MAX_PARAMS:
        raise SignalError(f"a signal has at most {MAX_PARAMS} params, got {len(params)}", "/params")
    out = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise SignalError("a signal param's name is a non-empty string", "/params")
        out[key] = check_value(value, f"/params/{key.replace('~', '~0').replace('/', '~1')}")
    return name, out


def satisfied(params: Mapping[str, Any], match: list[Match] | tuple[Match, ...]) -> bool:
    """Whether a signal with ``params`` meets every condition of ``match`` (SignalMatchParam.isSatisfied:
    the signal's value on the left, the condition's on the right, of the same kind)."""
    for name, code, want in match:
        have = params.get(name)
        if have is None or isinstance(have, bool) or isinstance(want, bool):
            return False
        if isinstance(have, int) != isinstance(want, int) or isinstance(have, str) != isinstance(want, str):
            return False
        if not OPERATORS[code](have, want):
            return False
    return True


def describe_match(name: str, match: list[Match] | tuple[Match, ...]) -> str:
    """``table_ready(date >= 20260101, region = "eu")`` for people."""
    if not match:
        return name
    return f"{name}({', '.join(f'{p} {op} {json.dumps(v)}' for p, op, v in match)})"


def parse_cli_params(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``-p k=v`` pairs: a value written as a whole number is a LONG, anything else a STRING
    (quote it as JSON, ``-p 'id="007"'``, to send digits as a string)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SignalError(f"-p expects name=value, got {pair!r:.60}")
        value: Any = raw
        if _WHOLE.fullmatch(raw):
            value = int(raw)
        elif len(raw) >= 2 and raw[0] == raw[-1] == '"':
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        out[key] = value
    return out


def signal_json(record, created: bool | None = None) -> dict[str, Any]:
    """A stored signal as the CLI's ``--json`` and the API answer it (``created``: whether this
    send stored it, False for a replayed request id)."""
    import datetime

    out = {"name": record.name, "seq": record.seq, "params": record.params, "request_id": record.request_id,
           "created_at": datetime.datetime.fromtimestamp(record.created_at, datetime.timezone.utc)
           .isoformat(timespec="milliseconds")}
    if created is not None:
        out["created"] = created
    return out
