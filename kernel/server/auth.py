"""The API token: who may change anything through ``legato serve``.

Calls that change anything (every verb but GET) need ``Authorization: Bearer <token>``. The token
is ``LEGATO_API_TOKEN`` when set; otherwise the one stored beside the store (``api-token``, mode
0600), generated at the first start and printed once. ``legato serve --no-auth`` turns the check
off, explicitly.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

__all__ = ["TOKEN_FILE", "token_path", "load_or_create_token", "check"]

TOKEN_FILE = "api-token"


def token_path(storage) -> Path:
    """Where the generated token lives: beside a file store, else in ``.legato/`` here."""
    path = getattr(storage, "path", None)
    where = Path(path).resolve().parent if path else Path(".legato").resolve()
    return where / TOKEN_FILE


def load_or_create_token(storage) -> tuple[str, str, bool]:
    """(token, where it comes from, whether it was generated just now)."""
    given = os.environ.get("LEGATO_API_TOKEN", "")
    if given.strip():
        return given.strip(), "LEGATO_API_TOKEN", False
    path = token_path(storage)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text, str(path), False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    os.chmod(path, 0o600)
    return token, str(path), True


def check(header: str | None, token: str) -> tuple[int, str] | None:
    """None when ``header`` (the Authorization header) carries ``token``; else (401 or 403, why)."""
    if not header:
        return 401, "this call changes something: send `Authorization: Bearer <token>` (LEGATO_API_TOKEN, or the " \
                    "token `legato serve` printed at its first start)"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "the Authorization header must be `Bearer <token>`"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 403, "wrong API token"
    return None
