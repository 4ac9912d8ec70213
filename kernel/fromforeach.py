"""Body outputs read downstream: Maestro's ``getFromForeach(loop, step, name)``.

A step whose params call it waits in EVALUATING_PARAMS while the values are read from storage:
each iteration's latest attempt of the body step, its output of that name (or else its param), in
iteration order (null where an iteration has none). They are read once per run and attempt, then
handed to the CEL function (:data:`legato.cel.FOREACH_VALUES`) while the step's params are
evaluated. Nothing is kept for a foreach no expression reads.
"""

from __future__ import annotations

import re
from typing import Any

from .cel import FOREACH_VALUES

__all__ = ["FromForeach", "foreach_refs"]

# getFromForeach('loop', 'step', 'name') in a param's expression: what to load before evaluating it.
_FROM_FOREACH = re.compile(r"""getFromForeach\(\s*(["'])([^"']+)\1\s*,\s*(["'])([^"']+)\3\s*,\s*(["'])([^"']+)\5\s*\)""")


class FromForeach:
    """What getFromForeach reads (a mixin of :class:`legato.instance.InstanceRun`)."""

    def needs_iterations(self, st) -> bool:
        """Whether ``st``'s params read a foreach's iterations that are not loaded yet: if so
        they are read from storage first (:meth:`load_iterations`) and ``st`` waits for them in
        EVALUATING_PARAMS."""
        refs = self.refs_of(st.sdef)
        if not refs or (st.key, st.attempt) in self.foreach_loaded:
            return False
        return any(ref not in self.foreach_values for ref in refs)

    def refs_of(self, sdef) -> tuple:
        """:func:`foreach_refs` of ``sdef``, found once per run (a body's steps are shared by
        all iterations)."""
        refs = self.foreach_refs.get(id(sdef))
        if refs is None:
            refs = self.foreach_refs[id(sdef)] = foreach_refs(sdef) if sdef.params else ()
        return refs

    async def load_iterations(self, st) -> None:
        """Read what ``st``'s getFromForeach calls ask for: each iteration's latest attempt of the
        body step, its output of that name (or else its param), in iteration order."""
        wanted = [ref for ref in self.refs_of(st.sdef) if ref not in self.foreach_values]
        attempts = await self.engine.storage.get_attempts(self.iid)
        latest: dict[str, Any] = {}
        for a in attempts:
            old = latest.get(a.step_id)
            if old is None or a.attempt >= old.attempt:
                latest[a.step_id] = a
        for ref in wanted:
            foreach, step, name = ref
            scope = st.scope
            while scope is not None and foreach not in scope.steps:
                scope = scope.parent
            loop = scope.steps[foreach] if scope is not None else None
            if loop is None or loop.sdef.loop is None or loop.sdef.loop.kind != "foreach" or not loop.finished \
                    or step not in loop.sdef.loop.by_id:
                continue  # getFromForeach says why when it is evaluated
            n = (loop.record.outputs or {}).get("iterations", 0)
            values = []
            for number in range(1, n + 1):
                a = latest.get(f"{loop.key}/{number}/{step}")
                if a is not None and name in (a.outputs or {}):
                    values.append(a.outputs[name])
                elif a is not None and name in (a.params or {}):
                    values.append(a.params[name])
                else:
                    values.append(None)
            self.foreach_values[ref] = values
        self.foreach_loaded.add((st.key, st.attempt))  # loaded once: what is missing stays missing
        self.post(("loaded", st))

    def evaluating_with_iterations(self, st):
        """A context manager: what getFromForeach reads while ``st``'s params are evaluated."""
        return _Values(self.foreach_values if self.refs_of(st.sdef) else None)


class _Values:
    __slots__ = ("values", "token")

    def __init__(self, values) -> None:
        self.values = values

    def __enter__(self):
        self.token = FOREACH_VALUES.set(self.values) if self.values is not None else None

    def __exit__(self, *exc) -> None:
        if self.token is not None:
            FOREACH_VALUES.reset(self.token)


def foreach_refs(sdef) -> tuple:
    """The (foreach step, body step, name) triples ``sdef``'s params read with getFromForeach."""
    refs = []
    specs = list(sdef.params.values())
    while specs:
        spec = specs.pop()
        if spec is None:
            continue
        if spec.expression and "getFromForeach" in spec.expression:
            refs.extend((m.group(2), m.group(4), m.group(6)) for m in _FROM_FOREACH.finditer(spec.expression))
        if spec.entries:
            specs.extend(sub for _, sub in spec.entries)
    return tuple(dict.fromkeys(refs))
