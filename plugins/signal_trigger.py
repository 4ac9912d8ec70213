"""The ``signal`` trigger type: Maestro's ``signal_triggers`` (DESIGN §3 signals, §6 TriggerType).

A signal trigger names one or more signals (``definitions``: signal name -> ``match_params``,
``join_keys``), an optional CEL ``condition`` and ``dedup_expr``, and ``params`` for the run
(:mod:`legato.definition.signaldefs` reads them). It starts the workflow once per signal, or per
joined set: one signal of each name, each meeting its ``match_params``, whose ``join_keys`` values
are equal position by position (Maestro's SignalTriggerEntry.joinKeys, like a SQL join).

How it fires, as Maestro's MaestroSignalBrokerDao.tryExecuteTrigger does: each signal of a
trigger's names that is new (numbered above the trigger's checkpoint for that name) and matches
its entry is joined with the latest matching signal of every other name, also above its
checkpoint, with the same join values. A complete set fires: the checkpoint moves to the set's
numbers (older unmatched signals of those names are passed over for good), ``condition`` (CEL over
``signal`` and ``params``) decides whether it starts a run (false: consumed all the same), and
the run starts through the idempotent start with a request id made of the set's numbers
(``signal_a#3+signal_b#7``) or of ``dedup_expr``'s value: a restart of the host, or a second
host on the same store, fires the same id and starts nothing new. The checkpoint is saved after
the start, so a crash in between repeats the id (and starts nothing).

A new trigger (no checkpoint yet) fires for the signals sent since its workflow version was
stored; one unchanged across versions keeps its checkpoint.

The run sees the matched signals as ``signal.<name>.<param>`` in its workflow params' CEL, and
``signal:<key>`` as ``workflow.initiator``. The trigger watches the store's wake-ups (a send
commits, then wakes it) and looks every :data:`POLL` seconds when nothing wakes it (a send on
another machine).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import trio

from legato.hookspecs import hookimpl
from legato.triggers import TriggerDef, TriggerType

__all__ = ["SignalTrigger", "POLL", "firing_id"]

#: Seconds between looks at the store when no wake-up comes.
POLL = 1.0
#: Signals read per name per look.
PAGE = 200


def trigger_key(raw: Any) -> str:
    """A trigger's key: a digest of the item as written (an unchanged trigger keeps its checkpoint)."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "signal-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def firing_id(matched: list) -> str:
    """The request id of a joined set: its signals' names and numbers (a digest when long)."""
    text = "+".join(f"{s.name}#{s.seq}" for s in matched)
    return text if len(text) <= 160 else "set-" + hashlib.sha256(text.encode()).hexdigest()[:32]


class SignalTrigger(TriggerType):
    """Maestro's signal triggers (SignalTrigger): one start per signal or joined set of signals."""

    name = "signal"
    field = "signal_triggers"
    description = "Maestro's signal triggers: signals matched, joined on join_keys, a CEL condition and dedup_expr"

    @classmethod
    def parse(cls, items: Any, pointer: str) -> tuple[list[TriggerDef], list[tuple[str, str]]]:
        from legato.definition.signaldefs import parse_signal_triggers

        found, problems = parse_signal_triggers(items, pointer)
        raws = items if isinstance(items, list) else []
        defs = [TriggerDef(trigger_key(raws[int(t.pointer.rsplit("/", 1)[1])]), t.pointer, t,
                           raws[int(t.pointer.rsplit("/", 1)[1])]) for t in found]
        return defs, problems

    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from legato.cel import CelCompiler

        spec = ctx.trigger.spec
        storage = ctx.storage
        compiler = CelCompiler()
        names = [e.name for e in spec.entries]
        state = await ctx.load()
        if state is None:  # a new trigger: it fires for the signals sent since its version was pushed
            version = await storage.get_definition(ctx.workflow_id, ctx.version)
            since = version.created_at if version is not None else ctx.now()
            state = {"seqs": {name: await _sent_by(storage, name, since) for name in names}}
            await ctx.save(state)
        seqs = _seqs(state, names)
        scanned = dict(seqs)  # signals read so far, per name (each is joined once, when it is new)
        with storage.wakeups().listen() as listener:
            task_status.started()
            while True:
                if await ctx.paused():  # hold what arrives: it fires once the triggers resume
                    await ctx.wait_resumed()
                stored = _seqs(await ctx.load(), names)  # another host may have fired meanwhile
                for name in names:
                    if stored[name] > seqs[name]:
                        seqs[name] = stored[name]
                        scanned[name] = max(scanned[name], stored[name])
                more = False
                for entry in spec.entries:
                    page = await storage.list_signals(entry.name, scanned[entry.name], PAGE)
                    more = more or len(page) == PAGE
                    for sig in page:
                        scanned[entry.name] = sig.seq
                        if sig.seq <= seqs[entry.name]:
                            continue  # consumed by a set that fired meanwhile
                        matched = await self._join(storage, spec, entry, sig, seqs)
                        if matched is not None:
                            await self._fire(ctx, compiler, spec, matched)
                            for s in matched:
                                seqs[s.name] = max(seqs[s.name], s.seq)
                            await ctx.save({"seqs": seqs})  # after the start: a crash repeats the id
                if not more:
                    await listener.wait(POLL)

    @staticmethod
    async def _join(storage, spec, entry, sig, seqs) -> list | None:
        from legato.signals import satisfied

        if not satisfied(sig.params, entry.match):
            return None
        values = []
        for key in entry.join_keys:
            if key not in sig.params:
                return None  # it cannot join
            values.append(sig.params[key])
        matched = []
        for other in spec.entries:
            if other is entry:
                matched.append(sig)
                continue
            conditions = [*other.match, *((key, "=", value) for key, value in zip(other.join_keys, values))]
            found = await storage.match_signal(other.name, conditions)
            if found is None or found.seq <= seqs[other.name]:
                return None
            matched.append(found)
        return matched

    @staticmethod
    async def _fire(ctx, compiler, spec, matched) -> None:
        from legato.cel import CelError, to_cel
        from legato.instance import StartError

        values = {s.name: dict(s.params) for s in matched}
        activation = {"signal": to_cel(values), "params": to_cel(spec.params)}
        described = firing_id(matched)
        try:
            if spec.condition is not None and compiler.compile(spec.condition).evaluate(activation) is not True:
                ctx.log(f"{described}: condition is not true, nothing started (the signals are consumed)")
                return
            request_id = described
            if spec.dedup_expr is not None:
                request_id = "dedup:" + str(compiler.compile(spec.dedup_expr).evaluate(activation))[:200]
        except CelError as exc:
            ctx.log(f"{described}: {spec.pointer}: CEL {exc}: nothing started (the signals are consumed)")
            return
        try:
            await ctx.start(request_id=request_id, params=dict(spec.params) or None,
                            initiator=f"signal:{ctx.trigger.key}", signal=values)
        except StartError as exc:  # the workflow refuses the start: this set is spent
            ctx.log(f"{described} started nothing: {exc}")


async def _sent_by(storage, name: str, ts: float) -> int:
    """The number of the last signal of ``name`` stored at or before ``ts`` (0: none), found in
    a few reads (numbers are dense and follow the order signals were stored)."""
    latest = await storage.get_signal(name)
    if latest is None or latest.created_at <= ts:
        return 0 if latest is None else latest.seq
    lo, hi = 0, latest.seq  # the answer is in [lo, hi): signal hi is after ts
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = await storage.get_signal(name, mid)
        if found is not None and found.created_at <= ts:
            lo = mid
        else:
            hi = mid
    return lo


def _seqs(state: Any, names: list[str]) -> dict[str, int]:
    got = state.get("seqs") if isinstance(state, dict) else None
    got = got if isinstance(got, dict) else {}
    return {name: got[name] if isinstance(got.get(name), int) else 0 for name in names}


@hookimpl
def legato_register_triggers(registry):
    registry.add(SignalTrigger)
