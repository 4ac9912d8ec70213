"""Helpers for code running inside a notebook that Legato executes (the ``notebook`` step type).

::

    from legato.notebook import output

    output("rows", len(df))          # becomes steps.<id>.outputs.rows downstream
    output("summary", {"mean": 1.5, "tags": ["a", "b"]})

Each call appends one JSON line ``{key: value}`` to the file named by ``$LEGATO_OUTPUT``, which
Legato sets for the notebook's kernel; later calls for the same key win. Values must be JSON
(``str``, numbers, ``bool``, ``None``, lists, string-keyed maps); NumPy scalars and arrays are
converted through ``.item()`` / ``.tolist()``. Writing ``{"key": value}`` lines (or
``key=value`` lines) to ``$LEGATO_OUTPUT`` directly works just as well.

This module imports nothing but the standard library's ``json`` and ``os``: it is cheap to import
in a kernel.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["output", "OUTPUT_VARIABLE"]

#: The environment variable naming the outputs file.
OUTPUT_VARIABLE = "LEGATO_OUTPUT"


def _plain(value: Any) -> Any:
    """``json.dumps``'s fallback: NumPy/pandas-like values, else a clear TypeError."""
    for method in ("tolist", "item"):  # arrays first (an array's .item() fails unless it has one element)
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                return convert()
            except (TypeError, ValueError):
                continue
    raise TypeError(f"{type(value).__name__} is not JSON: pass str, int, float, bool, None, list or dict")


def output(key: str, value: Any) -> None:
    """Record the step output ``key`` = ``value`` (a JSON value) for downstream steps."""
    if not isinstance(key, str) or not key:
        raise TypeError(f"an output key must be a non-empty string, not {key!r}")
    path = os.environ.get(OUTPUT_VARIABLE)
    if not path:
        raise RuntimeError(
            f"legato.notebook.output() needs ${OUTPUT_VARIABLE}, which Legato sets when it runs this "
            f"notebook as a `notebook` step; outside Legato, set {OUTPUT_VARIABLE} to a file path to try it"
        )
    try:
        line = json.dumps({key: value}, ensure_ascii=False, allow_nan=False, default=_plain)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"output {key!r}: {exc}") from None
    # One write of one line, appended: outputs from several calls never interleave mid-line.
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
