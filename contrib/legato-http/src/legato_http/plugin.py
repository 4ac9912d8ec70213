"""``http``: sends one HTTP request and maps the response to an outcome.

This is the ``legato`` entry point. It stays light: it declares the params schema and the step
type, and imports httpx only when a step runs (``legato_http.client``).

Params (see README.md for the full table):

- ``method`` (default ``GET``; one of GET POST PUT PATCH DELETE HEAD OPTIONS, any case);
- ``url`` (required, ``http://`` or ``https://``);
- ``headers`` (map of string to string), ``json`` (any value) XOR ``body`` (string);
- ``timeout`` (seconds for the whole request, default 30), ``max_body_bytes`` (default 1 MiB);
- ``follow_redirects`` (default false; every hop is checked against the allow-list);
- ``state_expr`` (optional CEL over ``response``: ``status_code``, ``headers``, ``body``,
  ``truncated``) giving "DONE", "USER_ERROR", "PLATFORM_ERROR" or "FATAL_ERROR".

Params are data: headers and the body are sent exactly as given; nothing is pasted into code.

Operator settings (``step_settings={"http": {...}}``, validated by :class:`HttpSettings`):
``allowed_hosts``, a list of exact host names or ``*.suffix`` patterns (``"*"`` allows every
host); a string there is refused (it is not split). When the settings do not say, the
``LEGATO_HTTP_ALLOWED_HOSTS`` environment variable (comma-separated) is read. No allow-list: every
host is allowed; an empty one: none is.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Literal
from urllib.parse import urlsplit

import pydantic
import trio

from legato import StepResult, StepType
from legato.hookspecs import hookimpl

__all__ = ["HttpParams", "HttpSettings", "Http", "ALLOWED_HOSTS_ENV", "METHODS", "OUTCOMES", "host_allowed",
           "parse_allowed_hosts"]

ALLOWED_HOSTS_ENV = "LEGATO_HTTP_ALLOWED_HOSTS"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
OUTCOMES = ("DONE", "USER_ERROR", "PLATFORM_ERROR", "FATAL_ERROR")
MIB = 1024 * 1024

# RFC 9110 `token` for header names; values may not hold CR, LF, NUL or other controls (but TAB).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URL_BAD = re.compile(r"[\x00-\x20\x7f]")

_compiler = None


def cel_compiler():
    """The CEL compiler for ``state_expr`` (one per process: it caches compiled programs)."""
    global _compiler
    if _compiler is None:
        from legato.cel import CelCompiler

        _compiler = CelCompiler()
    return _compiler


class HttpParams(pydantic.BaseModel):
    """The params the ``http`` step type reads. Other params are allowed (and ignored)."""

    model_config = pydantic.ConfigDict(extra="allow", populate_by_name=True)

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    url: str
    headers: dict[str, str] = {}
    # `json` would shadow BaseModel.json; the param is still spelled `json`.
    json_: Any = pydantic.Field(None, alias="json")
    body: str | None = None
    timeout: float = pydantic.Field(30.0, gt=0)
    max_body_bytes: int = pydantic.Field(MIB, ge=0)
    follow_redirects: bool = False
    state_expr: str | None = None

    @pydantic.field_validator("method", mode="before")
    @classmethod
    def _method_upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if _URL_BAD.search(value):
            raise ValueError("the URL contains whitespace or control characters; percent-encode them")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(f"the URL must start with http:// or https://, got {value[:60]!r}")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        return value

    @pydantic.field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if _HEADER_VALUE_BAD.search(value):
                raise ValueError(f"the value of header {name!r} contains a line break or a control character")
        return headers

    @pydantic.field_validator("state_expr")
    @classmethod
    def _state_expr(cls, source: str | None) -> str | None:
        if source is None:
            return None
        from legato.cel import CelError

        try:
            cel_compiler().compile(source)
        except CelError as exc:
            raise ValueError(f"CEL {exc.located()}") from None
        return source

    @pydantic.model_validator(mode="after")
    def _json_xor_body(self) -> "HttpParams":
        if "json_" in self.model_fields_set and self.body is not None:
            raise ValueError("give at most one of `json` or `body`")
        return self

    @property
    def has_json(self) -> bool:
        return "json_" in self.model_fields_set


class HttpSettings(pydantic.BaseModel):
    """The operator's settings of the ``http`` step type (``--settings``: ``http: {…}``)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    allowed_hosts: list[str] | None = pydantic.Field(
        None, description="a list of host names (exact, `*.suffix`, or `*`)")


def parse_allowed_hosts(raw: Any) -> list[str]:
    """Normalize an allow-list (a list, or a comma-separated string). Raises ValueError."""
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, (list, tuple)) or not all(isinstance(h, str) for h in raw):
        raise ValueError(f"`allowed_hosts` must be a list of host names, got {raw!r}")
    return [h.strip().lower().rstrip(".") for h in raw if h.strip()]


def host_allowed(host: str, patterns: list[str]) -> bool:
    """Whether ``host`` matches one of ``patterns`` (exact names, ``*.suffix``, or ``*``)."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return False
    for pattern in patterns:
        if pattern == "*":
            return True
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern.strip("[]"):
            return True
    return False


class Http(StepType):
    """Sends ``method url`` and maps the response's status (or ``state_expr``) to an outcome."""

    name = "http"
    description = "sends an HTTP request; 2xx is DONE, 4xx FATAL, 5xx and network errors retryable"
    Params = HttpParams
    Settings = HttpSettings
    # CEL is code for this step type: `${…}` is never interpolated into it.
    raw_params = frozenset({"state_expr"})

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("httpx") is None:
            return "httpx is not installed: pip install legato-http (or pip install httpx)"
        return None

    def allowed_hosts(self) -> list[str] | None:
        """The operator's allow-list: settings first, then the environment; None when there is none."""
        raw = self.settings.get("allowed_hosts")
        if raw is None:
            raw = os.environ.get(ALLOWED_HOSTS_ENV)
            if raw is None or not raw.strip():
                return None
        return parse_allowed_hosts(raw)

    async def run(self, ctx):
        cfg = ctx.config
        if not isinstance(cfg, HttpParams):  # run directly, not through the kernel
            try:
                cfg = HttpParams.model_validate(ctx.params)
            except pydantic.ValidationError as exc:
                return StepResult.fatal_error(f"invalid http params: {exc}")
        try:
            allowed = self.allowed_hosts()
        except ValueError as exc:
            return StepResult.fatal_error(f"the operator's http settings are wrong: {exc}")

        client = _client_module
        if client is None:
            # The first step imports httpx (~0.1 s): in a worker thread, so the loop stays live.
            try:
                client = await trio.to_thread.run_sync(_import_client)
            except ImportError as exc:  # this worker lacks httpx: another one may have it
                return StepResult.platform_error(f"{self.unavailable() or exc}")
        return await client.send(ctx, cfg, allowed)


_client_module = None


def _import_client():
    global _client_module
    import importlib

    _client_module = importlib.import_module("legato_http.client")
    return _client_module


@hookimpl
def legato_register_step_types(registry):
    registry.add(Http)
