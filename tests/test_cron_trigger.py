"""The ``cron`` trigger type (legato.plugins.cron): Maestro's time triggers (TimeTrigger,
CronTimeTrigger, PredefinedTimeTrigger, IntervalTimeTrigger and TimeTriggerWithJitter's
fuzzy_max_delay; TriggerHelper's Unix-then-Quartz parsing), walked in virtual time
(``trio.testing.MockClock(autojump_threshold=0)``) over two simulated years in zones whose DST
rules are awkward, against an oracle that knows nothing of cron: it walks UTC in quarter hours and
asks the zone what the wall clock says.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import trio

from legato.plugins.cron import CronTrigger, MISFIRE_GRACE, TimeSchedule, parse_time_trigger
from legato.plugins.memory import MemoryStorage
from legato.triggers import TriggerClock, TriggerContext

from .conftest import legato_cli

ROOT = Path(__file__).resolve().parent.parent
UTC = dt.timezone.utc
QUARTER = 900
# Europe/Dublin has a negative DST in tzdata (winter is the "summer" offset), Lord Howe moves by
# 30 minutes, Sao Paulo moved at midnight (until 2019), Kathmandu is +05:45, Chatham +12:45/+13:45,
# St John's -03:30, Tehran had DST until 2022, Troll moves by two hours.
# LEGATO_CRON_ZONES=Europe/Paris,Pacific/Apia,… walks more zones (each costs about 2 s).
ZONES = ["Europe/Dublin", "Australia/Lord_Howe", "America/Sao_Paulo", "Asia/Kathmandu", "America/New_York",
         "Pacific/Chatham", "Asia/Tehran", "Antarctica/Troll",
         *filter(None, os.environ.get("LEGATO_CRON_ZONES", "").split(","))]
START = dt.datetime(2018, 1, 1, tzinfo=UTC).timestamp()
END = dt.datetime(2020, 1, 1, tzinfo=UTC).timestamp()  # two years, Sao Paulo's and Tehran's DST included

# Each schedule under test and the wall times it names (minutes a multiple of 15: every zone's offset
# is a whole number of quarter hours, so the oracle's quarter-hour walk sees every one).
SCHEDULES = {
    "0 * * * *": lambda w: w.minute == 0,
    "0 0 * * *": lambda w: (w.hour, w.minute) == (0, 0),
    "30 2 * * *": lambda w: (w.hour, w.minute) == (2, 30),
}


def oracle(zone: str, matches, start: float, end: float) -> list[float]:
    """The instants in (start, end] a schedule fires at, from the zone alone: a wall time that
    exists fires at its first occurrence; wall times a DST change skips fire at the change (the
    first instant after them), once however many of them there were."""
    z = ZoneInfo(zone)
    fired = []
    u = start - start % QUARTER
    prev = dt.datetime.fromtimestamp(u, z)
    while u < end:
        u += QUARTER
        now = dt.datetime.fromtimestamp(u, z)
        wall, last = prev.replace(tzinfo=None) + dt.timedelta(seconds=QUARTER), now.replace(tzinfo=None)
        hit = False
        while wall <= last and not hit:
            # the wall time now, unless it is a repeat (fold=1); or one skipped just before it
            hit = matches(wall) and (wall < last or now.fold == 0)
            wall += dt.timedelta(seconds=QUARTER)
        if hit and u > start:
            fired.append(float(u))
        prev = now
    return fired


def schedule(cron: str, zone: str, **extra) -> TimeSchedule:
    found, problems = parse_time_trigger({"type": "CRON", "cron": cron, "timezone": zone, **extra}, "/t")
    assert problems == []
    return found


class Recorder:
    """What a trigger's ``ctx.start`` reaches in these tests: the store's request-id dedup, and
    for each instance it would create, when it was scheduled for and when it was asked for."""

    def __init__(self) -> None:
        self.instances: dict[str, float] = {}
        self.fired: list[tuple[str, float, float]] = []  # (trigger key, run_ts, virtual now)
        self.repeated = 0

    async def __call__(self, ctx, request_id, params, run_ts, initiator):
        if request_id in self.instances:
            self.repeated += 1
            return self.instances[request_id], False
        self.instances[request_id] = run_ts
        self.fired.append((ctx.trigger.key, run_ts, ctx.now()))
        return run_ts, True


def contexts(items: list[dict], storage, recorder, clock, workflow_id="wf"):
    triggers, problems = CronTrigger.parse(items, "/workflow/time_triggers")
    assert problems == []
    return [TriggerContext(workflow_id=workflow_id, version=1, trigger=t, triggers=triggers, definition=None,
                           storage=storage, type_name="cron", start=recorder, clock=clock) for t in triggers]


async def run_for(seconds: float, ctxs, trigger=None) -> None:
    """Run the triggers of ``ctxs`` for ``seconds`` of virtual time, then cancel them (a host going down)."""
    trigger = trigger or CronTrigger()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for ctx in ctxs:
                await nursery.start(trigger.run, ctx)


@pytest.mark.parametrize("zone", ZONES)
async def test_two_years_of_ticks_in_virtual_time_none_missed_none_doubled(zone, autojump_clock):
    """CronTrigger.run on a MockClock over 2018–2019: an hourly, a midnight and a 02:30 cron in
    one zone each fire exactly the oracle's instants, each once and on time, across every DST
    change (a skipped wall time fires at the change, a repeated one once)."""
    storage, recorder = MemoryStorage(), Recorder()
    items = [{"type": "CRON", "cron": cron, "timezone": zone} for cron in SCHEDULES]
    ctxs = contexts(items, storage, recorder, TriggerClock(epoch=START))
    await run_for(END - START + 1, ctxs)
    for ctx, (cron, matches) in zip(ctxs, SCHEDULES.items()):
        fired = [(run_ts, at) for key, run_ts, at in recorder.fired if key == ctx.trigger.key]
        assert [run_ts for run_ts, _ in fired] == oracle(zone, matches, START, END), (zone, cron)
        assert all(abs(at - run_ts) < 0.01 for run_ts, at in fired)  # on time, to the (virtual) second
    assert recorder.repeated == 0


DAY = 86400.0
HOURLY_DUBLIN = {"type": "CRON", "cron": "0 * * * *", "timezone": "Europe/Dublin"}


@pytest.mark.parametrize("policy", ["all", "latest", "none"])
async def test_a_three_hour_outage_is_caught_up_as_the_policy_says(policy, autojump_clock):
    """The host runs a day, is down from 00:10 to 03:10 (three hourly ticks missed), then runs
    another day. all: the three fire at once when it is back (their run_ts their scheduled times);
    latest: only 03:00 does; none: none does. Every other tick fires once, on time."""
    storage, recorder = MemoryStorage(), Recorder()
    clock = TriggerClock(epoch=START)
    item = {**HOURLY_DUBLIN, "catch_up": policy}
    await run_for(DAY + 600, contexts([item], storage, recorder, clock))
    await trio.sleep(3 * 3600)  # nothing runs: the outage
    back = clock.now()
    await run_for(DAY, contexts([item], storage, recorder, clock))  # a new host, the same store
    missed = [START + DAY + h * 3600 for h in (1, 2, 3)]
    caught = {"all": missed, "latest": missed[-1:], "none": []}[policy]
    expected = [t for t in oracle("Europe/Dublin", SCHEDULES["0 * * * *"], START, back + DAY)
                if t not in missed or t in caught]
    assert [run_ts for _, run_ts, _ in recorder.fired] == sorted(expected)
    for _, run_ts, at in recorder.fired:
        assert abs(at - (back if run_ts in missed else run_ts)) < 0.01
    assert recorder.repeated == 0


async def test_ticks_older_than_the_window_never_fire(autojump_clock):
    """Down for three days with a one-hour window: of the missed ticks only those of the last hour
    fire (all of them: an every-quarter-hour cron), then the schedule goes on."""
    storage, recorder = MemoryStorage(), Recorder()
    clock = TriggerClock(epoch=START)
    item = {"type": "CRON", "cron": "*/15 * * * *", "catch_up": {"policy": "all", "window": "1h"}}
    await run_for(3600 + 60, contexts([item], storage, recorder, clock))
    await trio.sleep(3 * DAY)
    back = clock.now()
    await run_for(1800, contexts([item], storage, recorder, clock))
    fired = [run_ts for _, run_ts, _ in recorder.fired]
    first_hour = [START + 900 * k for k in range(1, 5)]
    in_window = [t for t in (START + 900 * k for k in range(400)) if back - 3600 < t <= back]
    after = [t for t in (START + 900 * k for k in range(400)) if back < t <= back + 1800]
    assert fired == first_hour + in_window + after and len(in_window) == 4


async def test_fuzzy_max_delay_delays_every_firing_by_the_same_amount_per_workflow(autojump_clock):
    """Maestro's fuzzy_max_delay (TimeTriggerWithJitter, TriggerHelper.getDelayInSeconds): a
    deterministic delay below the bound, the same for every tick of one workflow, another for
    another workflow; run_ts stays the scheduled time."""
    item = {"type": "PREDEFINED", "expression": "@hourly", "fuzzy_max_delay": "30 min"}
    delays = {}
    for wid in ("orders", "invoices"):
        recorder = Recorder()
        await run_for(DAY, contexts([item], MemoryStorage(), recorder, TriggerClock(epoch=START), workflow_id=wid))
        assert [run_ts for _, run_ts, _ in recorder.fired] == [START + 3600 * h for h in range(1, 24)] + \
            ([START + DAY] if recorder.fired[-1][1] == START + DAY else [])
        offsets = {round(at - run_ts, 3) for _, run_ts, at in recorder.fired}
        assert len(offsets) == 1 and 0 <= next(iter(offsets)) < 1800
        delays[wid] = offsets.pop()
    assert delays["orders"] != delays["invoices"]


class CrashAfterStart(MemoryStorage):
    """A store whose checkpoint write fails once, after the instance of tick ``at`` was created: a
    host that dies between the two."""

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at, self.crashed = at, False

    async def save_trigger_checkpoint(self, workflow_id, key, value, *, fired_at=None):
        if not self.crashed and value == {"last": self.at}:
            self.crashed = True
            raise RuntimeError("the host died here")
        await super().save_trigger_checkpoint(workflow_id, key, value, fired_at=fired_at)


async def test_a_crash_between_start_and_checkpoint_repeats_nothing(autojump_clock):
    """The instance of 05:00 is created, then the host dies before saving the checkpoint. The next
    host fires 05:00 again with the same request id: the store answers with the instance it has
    (created False), so 05:00 started once, and the ticks after it fire as usual."""
    storage, recorder = CrashAfterStart(START + 5 * 3600), Recorder()
    clock = TriggerClock(epoch=START)
    try:
        await run_for(DAY, contexts([HOURLY_DUBLIN], storage, recorder, clock))
    except* RuntimeError:  # the host died
        pass
    assert storage.crashed and recorder.fired[-1][1] == START + 5 * 3600
    await run_for(3 * 3600 + 1, contexts([HOURLY_DUBLIN], storage, recorder, clock))
    fired = [run_ts for _, run_ts, _ in recorder.fired]
    assert fired == [START + 3600 * h for h in range(1, 9)]
    assert recorder.repeated == 1


# -- reading Maestro's time triggers ----------------------------------------------------------------

MAESTRO_SAMPLE = ROOT / "tests" / "maestro" / "sample-time-trigger-wf.json"


def test_maestros_time_trigger_samples_validate(engine):
    """maestro-server's sample-time-trigger-wf.json (a Quartz 7-field CRON, a PREDEFINED @daily,
    a CRON with fuzzy_max_delay) loads, and each fixture of maestro-common's time_triggers reads."""
    definition = engine.load(MAESTRO_SAMPLE)
    schedules = [t.spec for t in definition.triggers["cron"]]
    assert [(s.kind, s.timezone) for s in schedules] == [("CRON", "US/Pacific"), ("PREDEFINED", "Asia/Tokyo"),
                                                           ("CRON", "US/Pacific")]
    assert schedules[2].fuzzy_max_delay == 30 and definition.warnings == []
    noon = schedules[0].next_after(dt.datetime(2024, 7, 1, 20, tzinfo=UTC).timestamp())  # 13:00 PDT
    assert dt.datetime.fromtimestamp(noon, ZoneInfo("US/Pacific")).isoformat() == "2024-07-02T12:00:00-07:00"
    for fixture in ({"cron": "0 0 12 1/1 * ? *", "timezone": "US/Pacific", "type": "CRON"},
                    {"interval": "3H", "start": "2021-03-26 16:00:18.089PST", "type": "INTERVAL"},
                    {"expression": "@daily", "timezone": "US/Pacific", "type": "PREDEFINED"}):
        assert parse_time_trigger(fixture, "/t")[1] == []


@pytest.mark.parametrize("cron, first_three", [
    # Quartz counts days of the week from 1 = Sunday: 2 is Monday, 6#3 the third Friday
    ("0 0 12 ? * 2 *", ["2024-01-01T12:00", "2024-01-08T12:00", "2024-01-15T12:00"]),
    ("0 15 10 ? * 6#3", ["2024-01-19T10:15", "2024-02-16T10:15", "2024-03-15T10:15"]),
    ("0 0 9 ? * 2-6 2030", ["2030-01-01T09:00", "2030-01-02T09:00", "2030-01-03T09:00"]),
    ("30 */20 * * * ?", ["2024-01-01T00:00:30", "2024-01-01T00:20:30", "2024-01-01T00:40:30"]),
    ("0 12 * * 1", ["2024-01-01T12:00", "2024-01-08T12:00", "2024-01-15T12:00"]),  # Unix: 1 is Monday
])
def test_unix_and_quartz_expressions_fire_when_they_say(cron, first_three):
    s = schedule(cron, "UTC")
    it = s.ticks(dt.datetime(2024, 1, 1, tzinfo=UTC).timestamp() - 1)
    got = [dt.datetime.fromtimestamp(next(it), UTC).strftime("%Y-%m-%dT%H:%M:%S") for _ in range(3)]
    assert got == [t if t.count(":") == 2 else t + ":00" for t in first_three]


def test_an_interval_ticks_from_its_start_in_utc():
    """Maestro's IntervalTimeTrigger: every interval from start, whatever the zones' DST."""
    s, problems = parse_time_trigger({"type": "INTERVAL", "interval": "90 min", "start": "2024-03-31T00:30:00Z"}, "/t")
    assert problems == []
    it = s.ticks(dt.datetime(2024, 3, 31, tzinfo=UTC).timestamp())
    assert [next(it) - dt.datetime(2024, 3, 31, tzinfo=UTC).timestamp() for _ in range(3)] == [1800, 7200, 12600]


BAD = {
    "a cron hour of 25": ({"type": "CRON", "cron": "0 25 * * *"}, "/workflow/time_triggers/0/cron",
                          "invalid cron expression '0 25 * * *'"),
    "four fields": ({"type": "CRON", "cron": "0 6 * *"}, "/workflow/time_triggers/0/cron",
                    "expected a cron expression of 5 fields (m h dom mon dow) or Quartz's 6 or 7"),
    "last weekday": ({"type": "CRON", "cron": "0 0 12 ? * 6L *"}, "/workflow/time_triggers/0/cron",
                     "`L` in the day of week"),
    "31 February": ({"type": "CRON", "cron": "0 6 31 2 *"}, "/workflow/time_triggers/0/cron", "never fires"),
    "an unknown zone": ({"type": "CRON", "cron": "0 6 * * *", "timezone": "Europe/Amsterdm"},
                        "/workflow/time_triggers/0/timezone", "unknown time zone 'Europe/Amsterdm'"),
    "a bad policy": ({"type": "CRON", "cron": "0 6 * * *", "catch_up": "sometimes"},
                     "/workflow/time_triggers/0/catch_up", "a catch-up policy is all, latest or none"),
    "a bad window": ({"type": "CRON", "cron": "0 6 * * *", "catch_up": {"policy": "all", "window": "5 parsecs"}},
                     "/workflow/time_triggers/0/catch_up/window", "is not a duration"),
    "an unknown schedule": ({"type": "PREDEFINED", "expression": "@fortnightly"},
                            "/workflow/time_triggers/0/expression", "one of @hourly, @daily"),
    "an unknown kind": ({"type": "LUNAR"}, "/workflow/time_triggers/0/type", "CRON, PREDEFINED or INTERVAL"),
    "a timezone on an interval": ({"type": "INTERVAL", "interval": "1h", "timezone": "UTC"},
                                  "/workflow/time_triggers/0/timezone", "unknown field of a time trigger"),
    "a misspelt field": ({"type": "CRON", "cron": "0 6 * * *", "time_zone": "UTC"},
                         "/workflow/time_triggers/0/time_zone", "did you mean `timezone`?"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_time_triggers_are_refused_at_their_pointer(name, engine):
    from legato.definition import DefinitionError

    item, pointer, message = BAD[name]
    with pytest.raises(DefinitionError) as caught:
        engine.load({"workflow": {"id": "wf", "time_triggers": [item], "steps": [{"step": {"id": "a", "type": "noop"}}]}})
    assert [(p.pointer, message in p.message) for p in caught.value.problems] == [(pointer, True)], caught.value.problems


def test_legato_validate_reports_every_bad_trigger_with_exit_2(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"workflow": {"id": "wf", "steps": [{"step": {"id": "a", "type": "noop"}}],
                                             "time_triggers": [BAD["a cron hour of 25"][0], BAD["an unknown zone"][0],
                                                               BAD["a bad policy"][0]]}}))
    proc = legato_cli("validate", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    out = proc.stdout + proc.stderr
    for pointer in ("/workflow/time_triggers/0/cron", "/workflow/time_triggers/1/timezone",
                    "/workflow/time_triggers/2/catch_up"):
        assert pointer in out
