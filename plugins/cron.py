"""The ``cron`` trigger type: Maestro's ``time_triggers`` (DESIGN §6 TriggerType).

One item of a workflow's ``time_triggers`` is one of Maestro's TimeTrigger kinds (``type``, any case):

- ``CRON``: ``cron`` (Maestro's TriggerHelper: a 5-field Unix expression ``m h dom mon dow``, else
  Quartz: 6 fields ``s m h dom mon dow`` or 7 with a year) and ``timezone``;
- ``PREDEFINED``: ``expression`` ``@hourly @daily @weekly @monthly @yearly`` (Maestro's
  PredefinedSchedule: ``0 * * * *`` … ``0 0 1 1 *``) and ``timezone``;
- ``INTERVAL``: ``interval`` (a duration: ``"3H"``, ``"15 min"``, seconds) from ``start`` (an
  ISO 8601 time, or Maestro's ``yyyy-MM-dd HH:mm:ss.SSSz``; default the Unix epoch), in UTC.

Each takes ``fuzzy_max_delay`` (a duration: Maestro's TimeTriggerWithJitter): every firing is delayed
by the same deterministic amount below it, drawn from the workflow's id and the trigger (so many
workflows on one schedule spread out, and each always fires at the same offset). Legato adds
``catch_up``: what happens to ticks missed while no host ran (more than ``MISFIRE_GRACE`` late):
``"all"`` (default: each fires, oldest first, as Maestro's planner does from its watermark),
``"latest"`` (only the newest) or ``"none"``, or ``{"policy": …, "window": DURATION}``: ticks
older than the window (default 1 day) never fire, and at most ``CATCH_UP_MAX`` do.

Expressions are parsed by croniter, in the zone's wall-clock time; the plugin only maps wall
times to instants (zoneinfo): a wall time a DST change skips fires at the next valid instant
(the change itself), one it repeats fires once (its first occurrence), and two wall times that
land on one instant are one tick. ``timezone`` is an IANA name (default UTC, Maestro's).

Quartz expressions are translated for croniter: ``?`` is ``*``, and a numeric day of week
(Quartz counts 1 = Sunday … 7 = Saturday) becomes croniter's (0 = Sunday), in lists, ranges and
``#`` (``6#3``: the third Friday). ``L`` in the day of week (``6L``) is refused; ``L`` and ``W``
in the day of month are croniter's.

A tick's request id is ``<tick as UTC ISO 8601>``, under the trigger's key (a digest of the item):
the same tick never starts two instances, whatever restarts or how many hosts. Runs read the
tick (before jitter) as ``workflow.run_ts`` and ``cron:<key>`` as ``workflow.initiator``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

import trio

from legato.hookspecs import hookimpl
from legato.instance import StartError
from legato.triggers import TriggerDef, TriggerType

__all__ = ["CronTrigger", "TimeSchedule", "parse_time_trigger", "MISFIRE_GRACE", "CATCH_UP_MAX"]

#: Seconds a tick may be late and still count as on time (it always fires); later, it was missed
#: and ``catch_up`` decides.
MISFIRE_GRACE = 60.0
#: The most missed ticks one catch-up fires (the newest ones).
CATCH_UP_MAX = 1000
DEFAULT_WINDOW = 86400.0
POLICIES = ("all", "latest", "none")
KINDS = ("CRON", "PREDEFINED", "INTERVAL")
PREDEFINED = {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 0", "monthly": "0 0 1 * *",
              "yearly": "0 0 1 1 *"}
_KEYS = {"CRON": {"cron", "timezone"}, "PREDEFINED": {"expression", "timezone"}, "INTERVAL": {"interval", "start"}}
_COMMON = {"type", "fuzzy_max_delay", "catch_up", "description"}
_LOOKBACK = dt.timedelta(hours=3)  # more than any DST shift (Antarctica/Troll: 2 h)
_UTC = dt.timezone.utc
_EPSILON = 1e-3  # seconds: a clock read just after sleeping until a tick may round to just before it


@dataclass(frozen=True)
class TimeSchedule:
    """One time trigger, read: when it ticks (:meth:`ticks`), its jitter and its catch-up policy."""

    kind: str
    cron: str | None  # the expression croniter reads (translated from Quartz); None for INTERVAL
    seconds: bool  # the expression has a seconds field first (Quartz)
    timezone: str
    interval: float | None
    start: float
    fuzzy_max_delay: float
    policy: str
    window: float

    def ticks(self, after: float) -> Iterator[float]:
        """The ticks strictly after ``after`` (epoch seconds), as epoch seconds, increasing. Pure."""
        if self.interval is not None:
            k = max(0, int((after - self.start) // self.interval))
            while True:
                t = self.start + k * self.interval
                if t > after:
                    yield t
                k += 1
            return
        from zoneinfo import ZoneInfo

        from croniter import CroniterBadDateError, croniter

        zone = ZoneInfo(self.timezone)
        local = dt.datetime.fromtimestamp(after, zone).replace(tzinfo=None)
        it = croniter(self.cron, local - _LOOKBACK, second_at_beginning=self.seconds)
        last = None
        while True:
            try:
                wall = it.get_next(dt.datetime)
            except CroniterBadDateError:  # a year field that has run out
                return
            ts = _instant(wall, zone)
            if ts > after and ts != last:
                last = ts
                yield ts

    def next_after(self, after: float) -> float | None:
        return next(self.ticks(after), None)

    def jitter(self, salt: str) -> float:
        """The deterministic delay of every firing for ``salt`` (the workflow id and trigger key):
        whole seconds in [0, fuzzy_max_delay) (Maestro's TriggerHelper.getDelayInSeconds)."""
        bound = int(self.fuzzy_max_delay)
        if bound <= 0:
            return 0.0
        digest = hashlib.sha256(f"{salt}\0{self.fuzzy_max_delay}".encode()).digest()
        return float(int.from_bytes(digest[:8], "big") % bound)


def _instant(wall: dt.datetime, zone) -> float:
    """The instant of the naive wall time ``wall`` in ``zone``: its first occurrence when a DST
    change repeats it, the change itself (the next valid instant) when one skips it."""
    ts = wall.replace(tzinfo=zone).timestamp()  # fold=0: the earlier offset
    if dt.datetime.fromtimestamp(ts, zone).replace(tzinfo=None) == wall:
        return ts
    # Skipped: the change lies in (wall read with the later offset, wall read with the earlier];
    # find the first whole second whose wall time is at or past ``wall``.
    lo, hi = int(wall.replace(tzinfo=zone, fold=1).timestamp()), int(ts)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return float(hi)


# -- reading a time trigger ------------------------------------------------------------------------

_QUARTZ_DOW = re.compile(r"(?<![A-Za-z#])([1-7])(?![0-9])")


def _quartz(fields: list[str]) -> tuple[str | None, str | None]:
    """A Quartz expression (6 or 7 fields) as croniter reads it, or (None, why)."""
    fields = ["*" if f == "?" else f for f in fields]
    dow = fields[5]
    if "L" in dow.upper():
        return None, ("`L` in the day of week (the last given weekday of the month) is not supported; "
                      "name the weekday with `#` (`6#4`) or use the day of month")
    if not re.fullmatch(r"[0-9A-Za-z,\-*/#]+", dow):
        return None, f"day of week {dow!r} is not valid"
    # Quartz: 1 = SUN … 7 = SAT; croniter (Unix): 0 = SUN … 6 = SAT. A step after `/` is a count.
    parts = []
    for item in dow.split(","):
        base, slash, step = item.partition("/")
        base, hash_, nth = base.partition("#")
        base = _QUARTZ_DOW.sub(lambda m: str(int(m.group(1)) - 1), base)
        parts.append(base + hash_ + nth + slash + step)
    fields[5] = ",".join(parts)
    return " ".join(fields), None


def _cron_expression(text: Any) -> tuple[str | None, bool, str | None]:
    """(croniter's expression, has seconds, None) or (None, False, why)."""
    if not isinstance(text, str) or not text.strip():
        return None, False, "a cron expression is a string: 5 fields (m h dom mon dow) or Quartz's 6 or 7 (s m h dom mon dow [year])"
    fields = text.split()
    from croniter import croniter

    if len(fields) == 5:
        expr, seconds = " ".join(fields), False
    elif len(fields) in (6, 7):
        expr, why = _quartz(fields)
        if expr is None:
            return None, False, f"cron {text!r:.80}: {why}"
        seconds = True
    else:
        return None, False, (f"expected a cron expression of 5 fields (m h dom mon dow) or Quartz's 6 or 7 "
                             f"(s m h dom mon dow [year]), got {len(fields)} field(s) in {text!r:.80}")
    try:
        ok = croniter.is_valid(expr, second_at_beginning=seconds)
    except Exception:  # croniter raises on some malformed inputs instead of answering False
        ok = False
    if not ok:
        return None, False, f"invalid cron expression {text!r:.80}"
    return expr, seconds, None


def _parse_start(raw: Any) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw) / 1000.0 if raw > 1e11 else float(raw)  # Maestro's epoch milliseconds
    if not isinstance(raw, str):
        raise ValueError("start is an ISO 8601 time (e.g. 2024-03-26T16:00:00Z) or epoch seconds")
    text = raw.strip()
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = None
        # Maestro writes e.g. "2021-03-26 16:00:18.089PST" (a zone abbreviation: read as its IANA zone)
        m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s*([A-Za-z]{2,5})", text)
        abbreviations = {"UTC": "UTC", "GMT": "UTC", "Z": "UTC", "PST": "America/Los_Angeles",
                         "PDT": "America/Los_Angeles", "EST": "America/New_York", "EDT": "America/New_York",
                         "CST": "America/Chicago", "CDT": "America/Chicago", "MST": "America/Denver",
                         "MDT": "America/Denver"}
        if m and m.group(2).upper() in abbreviations:
            from zoneinfo import ZoneInfo

            when = dt.datetime.fromisoformat(m.group(1).replace(" ", "T")).replace(
                tzinfo=ZoneInfo(abbreviations[m.group(2).upper()]))
        if when is None:
            raise ValueError(f"start {raw!r:.60} is not a time: write ISO 8601, e.g. 2024-03-26T16:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_UTC)
    return when.timestamp()


def parse_time_trigger(raw: Any, pointer: str) -> tuple[TimeSchedule | None, list[tuple[str, str]]]:
    """One item of ``time_triggers`` read, or None and the problems, each ``(pointer, message)``."""
    from legato.definition.values import parse_duration

    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        return None, [(pointer, 'a time trigger is an object, e.g. {"type": "CRON", "cron": "0 6 * * *", '
                                '"timezone": "Europe/Amsterdam"}')]
    kind = raw.get("type")
    kind = kind.upper() if isinstance(kind, str) else kind
    if kind not in KINDS:
        return None, [(f"{pointer}/type", f"a time trigger's type is CRON, PREDEFINED or INTERVAL, got {raw.get('type')!r:.40}")]
    allowed = _KEYS[kind] | _COMMON
    for key in raw:
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f" (did you mean `{close[0]}`?)" if close else f"; a {kind} trigger takes {', '.join(sorted(allowed))}"
            problems.append((f"{pointer}/{key}", f"unknown field of a time trigger{hint}"))
    cron, seconds, interval, start, tz = None, False, None, 0.0, "UTC"
    if kind == "CRON":
        cron, seconds, why = _cron_expression(raw.get("cron"))
        if why:
            problems.append((f"{pointer}/cron", why))
    elif kind == "PREDEFINED":
        expression = raw.get("expression")
        name = expression.lower().lstrip("@") if isinstance(expression, str) else None
        if name not in PREDEFINED:
            problems.append((f"{pointer}/expression", f"a predefined schedule is one of "
                             f"{', '.join('@' + n for n in PREDEFINED)}, got {expression!r:.40}"))
        else:
            cron = PREDEFINED[name]
    else:
        try:
            interval = parse_duration(raw.get("interval"), maximum=366 * 86400.0, limit="a year")
        except ValueError as exc:
            problems.append((f"{pointer}/interval", f"interval: {exc}"))
        if raw.get("start") is not None:
            try:
                start = _parse_start(raw["start"])
            except ValueError as exc:
                problems.append((f"{pointer}/start", str(exc)))
    if kind != "INTERVAL" and raw.get("timezone") is not None:
        tz = raw["timezone"]
        import zoneinfo

        try:
            if not isinstance(tz, str):
                raise TypeError
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
            problems.append((f"{pointer}/timezone", f"unknown time zone {tz!r:.60}; use an IANA name like "
                                                    "Europe/Amsterdam or UTC"))
            tz = "UTC"
    fuzzy = 0.0
    if raw.get("fuzzy_max_delay") is not None:
        try:
            fuzzy = parse_duration(raw["fuzzy_max_delay"], allow_zero=True, maximum=86400.0, limit="a day")
        except ValueError as exc:
            problems.append((f"{pointer}/fuzzy_max_delay", f"fuzzy_max_delay: {exc}"))
    policy, window = "all", DEFAULT_WINDOW
    catch_up = raw.get("catch_up")
    if isinstance(catch_up, str) or catch_up is None:
        catch_up = {} if catch_up is None else {"policy": catch_up}
    if not isinstance(catch_up, dict):
        problems.append((f"{pointer}/catch_up", 'catch_up is "all", "latest", "none" or {"policy": …, "window": DURATION}'))
    else:
        for key in catch_up:
            if key not in ("policy", "window"):
                problems.append((f"{pointer}/catch_up/{key}", "unknown field of catch_up: it takes policy and window"))
        if "policy" in catch_up:
            p = catch_up["policy"]
            if not isinstance(p, str) or p.lower() not in POLICIES:
                where = f"{pointer}/catch_up" if isinstance(raw.get("catch_up"), str) else f"{pointer}/catch_up/policy"
                problems.append((where, f"a catch-up policy is all, latest or none, got {p!r:.40}"))
            else:
                policy = p.lower()
        if catch_up.get("window") is not None:
            try:
                window = parse_duration(catch_up["window"], maximum=366 * 86400.0, limit="a year")
            except ValueError as exc:
                problems.append((f"{pointer}/catch_up/window", f"window: {exc}"))
    if problems:
        return None, problems
    schedule = TimeSchedule(kind, cron, seconds, tz, interval, start, fuzzy, policy, window)
    if cron is not None:
        import time

        from croniter import CroniterBadDateError

        try:  # an expression that matches no real date (31 February), or only past years
            never = schedule.next_after(time.time()) is None
        except (CroniterBadDateError, ValueError, OverflowError):
            never = True
        if never:
            return None, [(f"{pointer}/cron", f"cron expression {raw.get('cron')!r:.80} never fires (no such date)")]
    return schedule, []


def trigger_key(raw: Any) -> str:
    """A trigger's key: a digest of the item as written (an unchanged trigger keeps its checkpoint)."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "time-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, _UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def select_due(due: list[float], now: float, jitter: float, policy: str) -> list[float]:
    """Of the ticks ``due`` (oldest first, none older than the window), those that fire: every
    on-time one (at most MISFIRE_GRACE late), and of the missed ones as ``policy`` says."""
    on_time = [t for t in due if now - (t + jitter) <= MISFIRE_GRACE]
    missed = [t for t in due if now - (t + jitter) > MISFIRE_GRACE]  # oldest first, as due
    if policy == "all":
        missed = missed[-CATCH_UP_MAX:]
    elif policy == "latest":
        missed = missed[-1:]
    else:
        missed = []
    return missed + on_time


class CronTrigger(TriggerType):
    """Maestro's time triggers (CronTimeTrigger, PredefinedTimeTrigger, IntervalTimeTrigger)."""

    name = "cron"
    field = "time_triggers"
    description = "Maestro's time triggers: CRON (Unix and Quartz), PREDEFINED, INTERVAL; IANA zones, DST-correct"

    @classmethod
    def parse(cls, items: Any, pointer: str) -> tuple[list[TriggerDef], list[tuple[str, str]]]:
        if items is None:
            return [], []
        if not isinstance(items, list):
            return [], [(pointer, "time_triggers must be an array")]
        triggers, problems = [], []
        for i, raw in enumerate(items):
            schedule, found = parse_time_trigger(raw, f"{pointer}/{i}")
            problems += found
            if schedule is not None:
                triggers.append(TriggerDef(trigger_key(raw), f"{pointer}/{i}", schedule, raw))
        return triggers, problems

    def next_due(self, trigger: TriggerDef, checkpoint: Any, now: float, *, workflow_id: str = "") -> float | None:
        """The next firing: the first tick after the checkpoint (overdue when no host ran it), plus the jitter."""
        schedule: TimeSchedule = trigger.spec
        jitter = schedule.jitter(f"{workflow_id}\0{trigger.key}")
        last = checkpoint.get("last") if isinstance(checkpoint, dict) else None
        after = now if not isinstance(last, (int, float)) else max(float(last), now - schedule.window - jitter)
        nxt = schedule.next_after(after)
        return None if nxt is None else nxt + jitter

    async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        schedule: TimeSchedule = ctx.trigger.spec
        jitter = schedule.jitter(f"{ctx.workflow_id}\0{ctx.trigger.key}")
        state = await ctx.load()
        if isinstance(state, dict) and isinstance(state.get("last"), (int, float)):
            last = float(state["last"])
        else:  # a new trigger owes nothing from before it was first watched
            last = ctx.now()
            await ctx.save({"last": last})
        task_status.started()
        ticks = schedule.ticks(max(last, ctx.now() - schedule.window - jitter))
        pending = next(ticks, None)
        while pending is not None:
            now = ctx.now()
            if pending + jitter > now + _EPSILON:
                await ctx.sleep_until(pending + jitter)
                continue
            floor = now - schedule.window - jitter  # ticks older than the window never fire
            if pending <= floor:  # woken after a long outage (a suspended machine): skip what is too old
                ticks = schedule.ticks(max(last, floor))
                pending = next(ticks, None)
                continue
            due, pending = [pending], None
            for n, t in enumerate(ticks):
                if t + jitter > now + _EPSILON:
                    pending = t
                    break
                due.append(t)
                if len(due) > 4 * CATCH_UP_MAX:  # an every-second cron after a long outage
                    due = due[-CATCH_UP_MAX:]
                if n % 1000 == 999:
                    await trio.lowlevel.checkpoint()  # stay live while walking a long outage
            for t in select_due(due, now, jitter, schedule.policy):
                try:
                    await ctx.start(request_id=_iso(t), run_ts=t, initiator=f"cron:{ctx.trigger.key}")
                except StartError as exc:  # the workflow refuses its default params: this tick is spent
                    ctx.log(f"tick {_iso(t)} started nothing: {exc}")
                last = t
                await ctx.save({"last": t})  # after the start committed: a crash in between repeats the same id
            if due[-1] > last:
                last = due[-1]
                await ctx.save({"last": last})
        await trio.sleep_forever()  # a schedule that has ended (a year field): nothing more to fire


@hookimpl
def legato_register_triggers(registry):
    registry.add(CronTrigger)
