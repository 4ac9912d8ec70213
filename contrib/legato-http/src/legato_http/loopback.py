"""A tiny HTTP server on 127.0.0.1 for the conformance profile's sample URLs.

It runs an asyncio loop in ONE daemon thread, started once per process on first use, so a request
it is serving never adds a thread (the conformance suite counts busy threads after cancelling a
step). Endpoints:

- ``/ok``: 200, ``{"ok": true, "items": [1, 2]}``;
- ``/fail``: 200, ``{"ok": false, "error": "quota exceeded"}`` (a failure only ``state_expr`` sees);
- ``/missing``: 404, a text body;
- ``/slow``: answers after :data:`SLOW_SECONDS`, or stops as soon as the client goes away.

Anything else is a 404. Every response closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import threading

__all__ = ["base_url", "SLOW_SECONDS"]

SLOW_SECONDS = 60.0

_lock = threading.Lock()
_base: str | None = None

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


def base_url() -> str:
    """``http://127.0.0.1:PORT`` of this process's loopback server (started on first call)."""
    global _base
    with _lock:
        if _base is None:
            loop = asyncio.new_event_loop()
            server = loop.run_until_complete(asyncio.start_server(_handle, "127.0.0.1", 0))
            port = server.sockets[0].getsockname()[1]
            threading.Thread(target=loop.run_forever, name="legato-http-loopback", daemon=True).start()
            _base = f"http://127.0.0.1:{port}"
        return _base


def _route(path: str) -> tuple[int, str, bytes]:
    if path == "/ok":
        return 200, "application/json", json.dumps({"ok": True, "items": [1, 2]}).encode()
    if path == "/fail":
        return 200, "application/json", json.dumps({"ok": False, "error": "quota exceeded"}).encode()
    return 404, "text/plain; charset=utf-8", f"no such thing: {path}".encode()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length:
            await reader.readexactly(length)
        path = target.split("?", 1)[0]
        if path == "/slow":
            try:
                # The client sends nothing more: a read returns only when it hangs up.
                await asyncio.wait_for(reader.read(1), SLOW_SECONDS)
                return
            except asyncio.TimeoutError:
                status, ctype, body = 200, "application/json", b'{"slow": true}'
        else:
            status, ctype, body = _route(path)
        if method == "HEAD":
            body_out = b""
        else:
            body_out = body
        writer.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1") + body_out)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()
