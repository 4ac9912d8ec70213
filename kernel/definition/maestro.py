"""Maestro's own ways of writing what Legato reads too (enums in any case, per-class backoffs), and
the hint for an expression written in Maestro's SEL instead of CEL."""

from __future__ import annotations

import re
from typing import Any

from ..limits import MAX_BACKOFF_EXPONENT, MAX_DURATION_SECONDS
from .model import RETRY_CLASSES, Backoff


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


class _MaestroForms:
    """The part of :class:`~legato.definition.validator._Validator` that reads what Maestro writes its own way
    (its per-class backoffs)."""

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
