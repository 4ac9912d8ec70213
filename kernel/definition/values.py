"""Single values as Maestro writes them: durations (``DurationParser``), numbers and whole numbers
(``ParsableLong``), and objects' fields against those allowed."""

from __future__ import annotations

import difflib
import re
from typing import Any

from ..limits import DEFAULT_TIMEOUT_SECONDS, MAX_DURATION_SECONDS, MAX_NUMBER_DIGITS, MAX_TIMEOUT_SECONDS
from .document import _esc


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


class _Values:
    """The part of :class:`~legato.definition.validator._Validator` that reads single values: numbers, whole
    numbers, durations, and an object's fields against those allowed."""

    def unknown_keys(self, obj: dict, allowed: set[str], pointer: str, what: str) -> None:
        for key in obj:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
                hint = f" (did you mean `{close[0]}`?)" if close else f"; allowed: {', '.join(sorted(allowed))}"
                self.add(f"{pointer}/{_esc(str(key))}", f"unknown {what} field{hint}")

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
