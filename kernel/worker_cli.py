"""``legato worker``: the command (registered through the ``legato.commands`` entry point group);
the logic is :mod:`legato.worker`."""

from __future__ import annotations

import sys

import click

from .cli.group import _trio_run
from .cli.store import _engine, _opened, _settings_option, _store_option


def _say(line: str) -> None:
    # Line by line even into a pipe (a supervisor's log, a test reading it).
    click.echo(f"legato worker: {line}")
    sys.stdout.flush()


def _worker_options(command):
    """The options of a process that runs a worker (``legato worker``, ``legato serve``)."""
    for option in reversed((
        click.option("--workspace", type=click.Path(file_okay=False), default=None,
                     help="Where instances get their working directories [default: .legato/runs]."),
        _settings_option,
        click.option("--max-instances", type=click.IntRange(1, 100_000), default=100, show_default=True,
                     help="How many instances this worker runs at once."),
        click.option("--grace", type=click.FloatRange(0, 86400), default=30.0, show_default=True, metavar="SECONDS",
                     help="On SIGTERM or Ctrl-C: how long running steps get to finish before they are cancelled."),
        click.option("--poll", type=click.FloatRange(0.01, 3600), default=1.0, show_default=True, metavar="SECONDS",
                     help="How often to look at the store when nothing wakes the worker (what finds the "
                          "instances of a worker that died), and for newly active workflow versions with triggers."),
        click.option("--triggers/--no-triggers", "triggers", default=True, show_default=True,
                     help="Run the triggers of the active workflow versions (time_triggers, …) in this process. "
                          "Several processes may: each tick starts one instance."),
    )):
        command = option(command)
    return command


@click.command()
@_store_option
@_worker_options
@click.option("--once", is_flag=True, help="Run what is startable now (and what is queued meanwhile), then exit.")
def worker(store: str, workspace: str | None, settings: str | None, max_instances: int, grace: float,
           poll: float, triggers: bool, once: bool) -> None:
    """Run the store's queued instances (`legato start --no-wait`) and those whose worker died,
    many at once, until stopped; and the triggers of the active workflow versions (`legato
    triggers` lists them), which queue instances when they fire (not with --once).

    Several workers may share a store: each instance is run by one at a time. SIGTERM or Ctrl-C
    stops it gracefully: nothing new is claimed nor started, running steps get --grace seconds to
    finish, then the worker exits 0 and its unfinished instances wait, unowned, for the next
    worker (or `legato resume`). A second signal cancels the running steps at once.
    """
    import signal

    import trio

    from .trigger_host import TriggerHost
    from .worker import Worker

    engine = _engine(store, workspace, settings)

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            w = Worker(engine, max_instances=max_instances, grace=grace, poll=poll, once=once, log=_say)
            host = None if once or not triggers else TriggerHost(engine, poll=poll,
                                                                 log=lambda line: _say(f"triggers: {line}"))
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_on_signals, w, signals, grace, None, host.stop if host else None)
                    if host is not None:
                        await nursery.start(host.run)
                    await w.run()
                    nursery.cancel_scope.cancel()
            stats = w.statistics()
            _say(f"stopped: {stats['ended']} instance(s) run to their end, {stats['handed_back']} handed back "
                 f"unfinished, {stats['failed']} failed to run")

    _trio_run(main_task)


async def _on_signals(w, signals, grace: float, say=None, also=None) -> None:
    """Stop the worker ``w`` gracefully on the first signal, at once on the next; ``also`` is
    called on each (``legato serve`` stops its HTTP server)."""
    import signal

    say = say or _say
    async for signum in signals:
        name = signal.Signals(signum).name
        if w.stopping:
            say(f"{name} again: cancelling the running steps now")
        else:
            say(f"{name}: stopping; claiming nothing more, running steps get {grace:g}s to finish "
                f"({len(w.active)} instance(s) running)")
        if also is not None:
            also()
        w.stop()
