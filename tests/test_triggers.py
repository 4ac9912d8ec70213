"""Triggers (legato.triggers, legato.trigger_host): the host under `legato serve` and `legato
worker`, pausing, `legato triggers`, two hosts on one store, and the TriggerSuite for the cron trigger."""

from __future__ import annotations

from legato.conformance import TriggerSuite


class TestCronTriggerConformance(TriggerSuite):
    profile = "cron"


class TestSignalTriggerConformance(TriggerSuite):
    """The signal trigger type (legato.plugins.signal_trigger) passes the trigger contract."""

    profile = "signal"
