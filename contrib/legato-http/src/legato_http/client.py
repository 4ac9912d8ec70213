"""The request itself (imports httpx; loaded only when an ``http`` step runs).

httpx's ``AsyncClient`` runs under trio (through anyio/httpcore's trio backend), so the request is
plain trio I/O: cancelling the step's scope ends it at once, with no thread to abandon.
"""

from __future__ import annotations

import codecs
import json
import ssl
import time
from typing import Any

import httpx
import trio

from legato import Outcome, StepResult
from legato.cel import CelError, to_cel

from .plugin import OUTCOMES, HttpParams, cel_compiler, host_allowed

__all__ = ["send", "decode_body"]

_MESSAGE_BODY_CHARS = 200


class _HostRefused(Exception):
    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


def _refusal(host: str) -> str:
    return f"host {host!r} is not on the operator's allow-list (allowed_hosts / LEGATO_HTTP_ALLOWED_HOSTS)"


_ssl_context = None


async def _tls() -> "ssl.SSLContext":
    """One TLS context for every request (building one reads the CA bundle: ~20 ms, in a thread)."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = await trio.to_thread.run_sync(httpx.create_ssl_context)
    return _ssl_context


def _shown(url: httpx.URL) -> str:
    """The URL as logged: credentials in it are masked."""
    if url.userinfo:
        url = url.copy_with(username="***", password=None)
    return str(url)


async def send(ctx, cfg: HttpParams, allowed: list[str] | None) -> StepResult:
    """Send the request ``cfg`` describes and map the response to a StepResult."""
    try:
        url = httpx.URL(cfg.url)
    except (httpx.InvalidURL, ValueError) as exc:
        return StepResult.fatal_error(f"invalid url {cfg.url!r}: {exc}")
    method, shown = cfg.method, _shown(url)
    if allowed is not None and not host_allowed(url.host, allowed):
        ctx.log("stdout", f"{method} {shown} -> not sent: {_refusal(url.host)}\n")
        return StepResult.fatal_error(_refusal(url.host))

    async def check_hop(request: httpx.Request) -> None:
        # Runs before every request the client sends, redirects included, on httpx's own parse
        # of the URL: what is checked is what is sent.
        if allowed is not None and not host_allowed(request.url.host, allowed):
            raise _HostRefused(request.url.host)

    headers = {name: value.encode("utf-8") for name, value in cfg.headers.items()}
    kwargs: dict[str, Any] = {"headers": headers}
    if cfg.has_json:
        kwargs["json"] = cfg.json_
    elif cfg.body is not None:
        kwargs["content"] = cfg.body.encode("utf-8")

    ctx.log("stdout", f"{method} {shown} sending\n")
    started = time.monotonic()
    try:
        tls = await _tls()
    except (OSError, ssl.SSLError, ValueError) as exc:  # a broken CA bundle (SSL_CERT_FILE, …)
        return _platform(ctx, method, shown, started, f"cannot set up TLS: {exc}")
    response = None
    data, truncated = b"", False
    try:
        # httpx's timeout bounds each phase (connect, each read); this bounds the whole exchange,
        # so a server dripping bytes cannot hold the step past `timeout` either.
        with trio.move_on_after(cfg.timeout) as overall:
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(cfg.timeout),
                verify=tls,
                follow_redirects=cfg.follow_redirects,
                event_hooks={"request": [check_hop]},
            ) as client:
                request = client.build_request(method, url, **kwargs)
                response = await client.send(request, stream=True)
                try:
                    data, truncated = await _read_capped(response, cfg.max_body_bytes)
                finally:
                    await response.aclose()
        if overall.cancelled_caught:
            return _platform(ctx, method, shown, started, f"timed out after {cfg.timeout:g}s")
    except _HostRefused as exc:
        ctx.log("stdout", f"{method} {shown} -> refused: {_refusal(exc.host)}\n")
        return StepResult.fatal_error(_refusal(exc.host))
    except httpx.TooManyRedirects as exc:
        return _fatal(ctx, method, shown, started, f"too many redirects: {exc}")
    except httpx.TimeoutException as exc:
        return _platform(ctx, method, shown, started, f"timed out ({type(exc).__name__}): {exc}")
    except httpx.UnsupportedProtocol as exc:
        return _fatal(ctx, method, shown, started, f"unsupported protocol: {exc}")
    except httpx.LocalProtocolError as exc:  # we could not express the request (a bad header, …)
        return _fatal(ctx, method, shown, started, f"cannot send the request: {exc}")
    except (httpx.TransportError, httpx.StreamError, httpx.DecodingError, OSError) as exc:
        return _platform(ctx, method, shown, started, f"{type(exc).__name__}: {_reason(exc)}")
    except (ValueError, TypeError, UnicodeError) as exc:  # e.g. a `json` value that is not JSON
        return _fatal(ctx, method, shown, started, f"cannot send the request: {exc}")

    elapsed = time.monotonic() - started
    status = response.status_code
    ctx.log("stdout", f"{method} {shown} -> {status} ({len(data)} bytes{', truncated' if truncated else ''}, "
                      f"{elapsed:.2f}s)\n")
    content_type = response.headers.get("content-type", "")
    body, text = decode_body(data, content_type, truncated)
    outputs = {
        "status_code": status,
        "headers": _headers(response.headers),
        "body": body,
        "truncated": truncated,
    }
    head = " ".join(text[: _MESSAGE_BODY_CHARS * 4].split())[:_MESSAGE_BODY_CHARS]  # one line
    what = f"HTTP {status}{' ' + response.reason_phrase if response.reason_phrase else ''} from {method} {shown}"

    if cfg.state_expr is not None:
        return _by_state_expr(cfg.state_expr, outputs, what, head)

    if 200 <= status < 300:
        return StepResult.done(outputs)
    if status >= 500 or status in (408, 429):  # the server's trouble, or "try again later"
        return StepResult(Outcome.PLATFORM_ERROR, outputs, _with(what, head))
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        hint = "" if cfg.follow_redirects else " (redirects are not followed: set `follow_redirects: true`)"
        return StepResult.fatal_error(f"{what}{hint}; location: {location!r}", outputs)
    return StepResult.fatal_error(_with(what, head), outputs)


def _by_state_expr(source: str, outputs: dict[str, Any], what: str, head: str) -> StepResult:
    response = {k: outputs[k] for k in ("status_code", "headers", "body", "truncated")}
    try:
        value = cel_compiler().compile(source).evaluate({"response": to_cel(response)})
    except CelError as exc:
        return StepResult.fatal_error(f"state_expr failed on {what}: {exc.located()}", outputs)
    if value not in OUTCOMES:
        return StepResult.fatal_error(
            f"state_expr must evaluate to one of {', '.join(repr(o) for o in OUTCOMES)}; "
            f"it gave {value!r} for {what}", outputs)
    outcome = Outcome(value)
    if outcome is Outcome.DONE:
        return StepResult.done(outputs)
    message = _with(f"state_expr mapped {what} to {value}", head)
    return StepResult(outcome, outputs, message)


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """Read at most ``cap`` bytes of the (decoded) body, streaming; say whether there was more."""
    buf = bytearray()
    async for chunk in response.aiter_bytes():
        room = cap - len(buf)
        if len(chunk) > room:
            buf += chunk[:room]
            return bytes(buf), True
        buf += chunk
    return bytes(buf), False


def decode_body(data: bytes, content_type: str, truncated: bool) -> tuple[Any, str]:
    """The body as an output (JSON-decoded when the response says JSON and it parses, else text)
    and as text (for messages)."""
    media, _, rest = content_type.partition(";")
    media = media.strip().lower()
    charset = None
    for part in rest.split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    encoding = "utf-8"
    if charset:
        try:
            encoding = codecs.lookup(charset).name
        except LookupError:
            pass
    text = data.decode(encoding, errors="replace")
    if not truncated and (media == "application/json" or media.endswith("+json")) and data.strip():
        try:
            return json.loads(text), text
        except ValueError:
            pass
    return text, text


def _headers(headers: httpx.Headers) -> dict[str, str]:
    """Lower-cased names; a repeated header's values joined with ", " (Set-Cookie too)."""
    out: dict[str, str] = {}
    for name, value in headers.multi_items():
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _reason(exc: BaseException) -> str:
    """The first non-empty message along an exception's causes (under trio, httpcore's errors
    wrap the real one: a ConnectError with no text caused by an SSL certificate error)."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text:
            return text if current is exc else f"{type(current).__name__}: {text}"
        current = current.__cause__ or current.__context__
    return "no details"


def _with(what: str, head: str) -> str:
    return f"{what}: {head}" if head.strip() else what


def _platform(ctx, method: str, shown: str, started: float, reason: str) -> StepResult:
    ctx.log("stdout", f"{method} {shown} -> failed after {time.monotonic() - started:.2f}s: {reason}\n")
    return StepResult.platform_error(f"{method} {shown}: {reason}")


def _fatal(ctx, method: str, shown: str, started: float, reason: str) -> StepResult:
    ctx.log("stdout", f"{method} {shown} -> failed after {time.monotonic() - started:.2f}s: {reason}\n")
    return StepResult.fatal_error(f"{method} {shown}: {reason}")
