"""What several commands print alike: timestamps and the JSON of an instance and its steps."""

from __future__ import annotations

from typing import Any


def _when(ts: float) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(ts))


def _iso(ts: float | None) -> str | None:
    """An ISO-8601 UTC timestamp to the millisecond (``2026-01-05T09:30:12.345+00:00``), or None."""
    import datetime

    if not ts:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds")


def _instance_json(instance, attempts, step_ids=()) -> dict[str, Any]:
    """The instance and every step of its definition (``step_ids``): a step never created is
    NOT_CREATED, attempt 0, as in Maestro's step overview. A foreach or while step holds its
    ``iterations`` (by number, from 1), each with its loop variables and its own ``steps``."""
    from .. import overview

    steps: dict[str, Any] = {
        sid: {"status": "NOT_CREATED", "attempt": 0, "outputs": {}, "message": "", "started_at": None,
              "ended_at": None}
        for sid in step_ids
    }
    steps.update({name: overview.to_json(node, _iso) for name, node in overview.tree(attempts).items()})
    return {
        "instance_id": instance.instance_id, "workflow_id": instance.workflow_id, "version": instance.version,
        "status": instance.status.value, "message": instance.message, "params": instance.params,
        "created_at": _iso(instance.created_at), "started_at": _iso(instance.started_at),
        "ended_at": _iso(instance.ended_at), "parent": instance.parent, "steps": steps,
    }
