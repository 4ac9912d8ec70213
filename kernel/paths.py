"""Where a param may point Legato at the filesystem (DESIGN §10: params are data; a workflow
cannot widen what the operator allows).

A path a step type writes or opens on a param's say (a SQL ``database`` or ``result_path``, a
notebook's ``output_path``) is confined: a relative path resolves in the instance's working
directory, and the real path (symlinks and ``..`` resolved) must lie in that directory or under
one of the roots the operator allows in the step type's settings (``allowed_paths``). The docker
step type checks its bind mounts against ``allowed_mounts`` with the same :func:`is_under`.
Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["PathRefused", "absolute_paths", "confine", "is_under"]


class PathRefused(ValueError):
    """A path lies outside the places a step may use; the message says where it resolved to
    and which setting would allow it."""


def absolute_paths(values: Iterable[str]) -> list[str]:
    """Check a settings list of roots: every entry an absolute path (a relative one would depend
    on the worker's current directory). For a ``Settings`` model's field validator; raises
    ``ValueError``."""
    out = []
    for value in values:
        if not value or not os.path.isabs(value):
            raise ValueError(f"must be a list of absolute paths: {value!r} is not absolute")
        if "\0" in value:
            raise ValueError(f"must be a list of absolute paths: {value!r} contains a NUL byte")
        out.append(value)
    return out


def is_under(real: str, roots: Iterable[str]) -> bool:
    """Whether the real path ``real`` is one of ``roots`` or lies beneath one (each root's own
    symlinks resolved), comparing whole path components."""
    for root in roots:
        root = os.path.realpath(root)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return True
    return False


def confine(path: str, base: Path, allowed: Sequence[str], *, what: str, setting: str) -> Path:
    """The real path of ``path`` (relative to ``base``, the instance's working directory),
    provided it lies in ``base`` or under one of the ``allowed`` roots. ``what`` names the param
    in messages (``"database"``), ``setting`` the operator's setting (``"sql.allowed_paths"``).
    Raises :class:`PathRefused`."""
    try:
        joined = os.path.join(base, path)  # an absolute ``path`` stays itself
        real = os.path.realpath(joined)
    except ValueError:  # an embedded NUL byte
        raise PathRefused(f"{what} {path!r} contains a NUL byte, which no path can hold") from None
    if is_under(real, [str(base)]) or is_under(real, allowed):
        return Path(real)
    where = ", ".join(allowed) if allowed else "none is allowed"
    shown = repr(path) if real == path else f"{path!r} (resolved: {real!r})"
    raise PathRefused(
        f"{what} {shown} is refused: it is outside the instance's working directory and not under a "
        f"directory the operator allows (settings `{setting}`: {where}); use a relative path, or ask the "
        f"operator to allow the directory")
