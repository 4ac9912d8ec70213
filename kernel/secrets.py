"""Secret params: references resolved at run time, and masking every surface (DESIGN §10).

A secret param is a STRING declared with ``"secret": true`` whose value is a *reference*, never
the secret itself::

    "token": {"type": "STRING", "secret": true, "value": "env:WAREHOUSE_TOKEN"}
    "key":   {"type": "STRING", "secret": true, "value": "file:/run/secrets/warehouse_key"}

``env:NAME`` reads the worker's environment variable ``NAME``; ``file:PATH`` reads the file at the
absolute ``PATH`` (UTF-8, one trailing newline dropped). What is stored (instance and attempt
params, the definition) is the reference; the value is resolved by the worker that runs the
instance, again after a resume, and lives only in memory and in the step's process.

:class:`Secrets` is the masker of one instance: it knows the resolved values and replaces each of
them, and its common encodings (JSON and Python escapes, URL quoting, base64), by ``***`` in any
text, also inside a longer string. The engine applies it where text reaches storage (log chunks,
messages, outputs), so a step type cannot forget; a workflow without secrets has no masker at all.

Standard library only: step types' child processes import it too.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
from typing import Any, Iterable

__all__ = ["MASK", "Secrets", "StreamMasker", "parse_reference", "resolve_reference", "mask_known", "REFERENCE_HELP"]

#: What a secret value is replaced by.
MASK = "***"

#: How a secret's value is written, for error messages.
REFERENCE_HELP = "`env:NAME` (a variable of the worker's environment) or `file:/absolute/path`"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_FILE = 64 * 1024  # a secret is a token or a key, not a data set
_MIN_LINE = 8  # lines of a multi-line secret (a PEM key) shorter than this are not masked alone


def parse_reference(text: Any) -> tuple[str, str]:
    """``("env", NAME)`` or ``("file", PATH)`` from a reference; raises ValueError saying how to write one."""
    if isinstance(text, str):
        kind, sep, target = text.partition(":")
        if sep and kind == "env":
            if _ENV_NAME.match(target):
                return kind, target
            raise ValueError(f"`env:{target}` does not name an environment variable (letters, digits, _)")
        if sep and kind == "file":
            if os.path.isabs(target):
                return kind, target
            raise ValueError(f"`file:{target}` needs an absolute path (e.g. file:/run/secrets/token)")
    raise ValueError(f"a secret's value is a reference, {REFERENCE_HELP}, never the secret itself "
                     "(a literal would be stored with the definition or the instance)")


def resolve_reference(reference: str) -> str:
    """Read the secret ``reference`` names. Raises ValueError saying what is missing and what to do."""
    kind, target = parse_reference(reference)
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise ValueError(f"environment variable {target} is not set in the worker's environment: export it "
                             "where Legato runs (or point the param at file:PATH)")
    else:
        try:
            with open(target, "rb") as f:
                data = f.read(_MAX_FILE + 1)
        except OSError as exc:
            raise ValueError(f"cannot read {target}: {exc.strerror or exc}; make the file readable by the worker "
                             "(or point the param at env:NAME)") from None
        if len(data) > _MAX_FILE:
            raise ValueError(f"{target} is larger than {_MAX_FILE} bytes; a secret file holds one token or key")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{target} is not UTF-8 text") from None
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        raise ValueError(f"{reference} is empty; a secret needs a value")
    if "\0" in value:
        raise ValueError(f"{reference} holds a NUL byte, which no environment can carry")
    _known.add(value)
    return value


def _encodings(value: str) -> set[str]:
    """``value`` and the ways it commonly appears when quoted or encoded."""
    forms = {value}
    json_inner = json.dumps(value)[1:-1]
    forms.add(json_inner)
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    escaped = value.replace("\\", "\\\\")
    python = {repr(value)[1:-1], escaped.replace('"', '\\"'), escaped.replace("'", "\\'")}  # Python literals
    forms |= python
    forms.update(json.dumps(p)[1:-1] for p in python)  # a Python literal inside JSON (a notebook's source)
    forms.add(urllib.parse.quote(value, safe=""))
    forms.add(urllib.parse.quote_plus(value, safe=""))
    raw = value.encode("utf-8")
    for b64 in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = b64.decode("ascii")
        forms.add(text)
        forms.add(text.rstrip("="))
    forms.add(raw.hex())
    if "\n" in value:  # a PEM key prints line by line
        forms.update(line.strip() for line in value.splitlines() if len(line.strip()) >= _MIN_LINE)
    forms.discard("")
    return forms


class Secrets:
    """The secret values of one instance and how to mask them.

    ``mask(text)`` replaces every occurrence of each value (and of its encodings, see the module
    docstring) by ``***``; ``mask_value(obj)`` does it to every string inside a JSON value (keys
    included); ``stream()`` masks text that arrives in pieces. Falsy while it knows no value.
    """

    __slots__ = ("_values", "_pattern", "_firsts", "_longest")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern | None = None
        self._firsts: dict[str, list[str]] = {}  # first character -> the forms that start with it
        self._longest = 0
        self.add(*values)

    def add(self, *values: str) -> None:
        """Mask these values too (empty ones are ignored)."""
        new = {v for v in values if isinstance(v, str) and v and v not in self._values}
        if not new:
            return
        self._values |= new
        _known.update(new)
        forms: set[str] = set()
        for value in self._values:
            forms |= _encodings(value)
        ordered = sorted(forms, key=len, reverse=True)  # the longest match first
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered))
        self._firsts = {}
        for form in ordered:
            self._firsts.setdefault(form[0], []).append(form)
        self._longest = len(ordered[0])

    @property
    def values(self) -> frozenset[str]:
        """The secret values (for a step type that must mask what it writes itself)."""
        return frozenset(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def __repr__(self) -> str:  # never the values
        return f"Secrets({len(self._values)} value(s))"

    def mask(self, text: str) -> str:
        """``text`` with every secret (and encoding of one) replaced by ``***``."""
        if self._pattern is None or not isinstance(text, str) or not text:
            return text
        return self._pattern.sub(MASK, text)

    def mask_value(self, value: Any) -> Any:
        """A JSON value with :meth:`mask` applied to every string in it, map keys included."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self.mask(k) if isinstance(k, str) else k: self.mask_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.mask_value(v) for v in value]
        return value

    def stream(self) -> "StreamMasker":
        """A masker for text that arrives in chunks (a log stream): a secret split across two
        chunks is still masked."""
        return StreamMasker(self)

    def _pending(self, text: str) -> int:
        """How many trailing characters of ``text`` could begin a secret (and must wait for more)."""
        firsts, end = self._firsts, len(text)
        for p in range(max(0, end - self._longest + 1), end):
            forms = firsts.get(text[p])
            if forms:
                tail = text[p:]
                if any(len(f) > len(tail) and f.startswith(tail) for f in forms):
                    return end - p  # the earliest such start: hold back the most
        return 0


class StreamMasker:
    """Masks a stream of text chunks: holds back the few trailing characters that could be the
    start of a secret until the next chunk (or :meth:`flush`) shows whether they are."""

    __slots__ = ("_secrets", "_carry")

    def __init__(self, secrets: Secrets) -> None:
        self._secrets = secrets
        self._carry = ""

    def feed(self, text: str) -> str:
        """The masked text that is safe to emit now."""
        secrets = self._secrets
        data = self._carry + text
        if secrets._pattern is None:
            self._carry = ""
            return data
        cut = len(data) - secrets._pending(data)
        if cut < len(data):
            for m in secrets._pattern.finditer(data):
                if m.start() < cut < m.end():  # never split a match that is already whole
                    cut = m.start()
                    break
        self._carry = data[cut:]
        return secrets.mask(data[:cut])

    def flush(self) -> str:
        """Whatever was held back, masked: call when the stream ends."""
        data, self._carry = self._carry, ""
        return self._secrets.mask(data)


#: Every secret value this process resolved or was told about: crash reports are masked with it.
_known: set[str] = set()


def mask_known(text: str) -> str:
    """``text`` masked with every secret this process has seen (for crash reports and other
    process-wide last resorts that cannot know which instance a text belongs to)."""
    if not _known:
        return text
    return Secrets(_known).mask(text)
