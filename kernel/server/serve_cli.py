"""``legato serve``: the command (registered through the ``legato.commands`` entry point group).
The routes are :mod:`legato.server.app`; the worker is :class:`legato.worker.Worker`."""

from __future__ import annotations

import sys

import click

from ..cli.group import _Refused, _trio_run
from ..cli.store import _engine, _opened, _store_option
from ..worker_cli import _on_signals, _worker_options


def _say(line: str, err: bool = False) -> None:
    # Line by line even into a pipe (a supervisor's log, a test reading it).
    click.echo(f"legato serve: {line}", err=err)
    (sys.stderr if err else sys.stdout).flush()


@click.command()
@_store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="The port to listen on; 0 picks a free one (the URL is printed).")
@click.option("--no-auth", is_flag=True,
              help="Accept changes without a token: anyone who reaches the port may start, stop and push.")
@_worker_options
def serve(store: str, host: str, port: int, no_auth: bool, workspace: str | None, settings: str | None,
          max_instances: int, grace: float, poll: float, triggers: bool) -> None:
    """Run a worker, the triggers of the active workflow versions (`legato triggers` lists them)
    and the REST API (Maestro's paths under /api/v3) in one process, until stopped.

    The API documents itself at /openapi.json and /docs. Calls that change anything need
    `Authorization: Bearer <token>`: LEGATO_API_TOKEN, or a token generated at the first start,
    stored beside the store (mode 0600) and printed once. --no-auth turns that off.

    Instances started through the API are queued in the store and run by this server's worker
    (or any `legato worker` on the same store). SIGTERM or Ctrl-C stops it gracefully, as
    `legato worker`: no new request nor claim, running steps get --grace seconds, nothing is lost.
    """
    try:
        import hypercorn  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"legato serve needs the `serve` extra ({exc.name} is missing): "
                                   "pip install 'legato[serve]'") from None
    from ..cli.group import _plugins
    from .ui.live import LiveEvents

    # Registered before the engine is built (it asks once whether anyone observes events): the
    # web UI's open pages hear of this process's transitions as soon as they are durable.
    live = LiveEvents()
    _plugins().pm.register(live, name="legato-serve-live")
    engine = _engine(store, workspace, settings)
    _trio_run(lambda: _main(engine, store, host, port, no_auth, max_instances, grace, poll, triggers, live))


async def _main(engine, store: str, host: str, port: int, no_auth: bool, max_instances: int, grace: float,
                poll: float, triggers: bool = True, live=None) -> None:
    import signal
    from functools import partial

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    from .. import __version__
    from ..trigger_host import TriggerHost
    from ..worker import Worker
    from . import auth
    from .app import Service, build_app

    async with _opened(engine.storage, store):
        if no_auth:
            token = None
            _say("WARNING: --no-auth: anyone who can reach this port can push, start, stop and kill "
                 "without a token", err=True)
        else:
            token, where, generated = auth.load_or_create_token(engine.storage)
            if generated:
                _say(f"API token (generated now, stored in {where}, shown only this once): {token}")
            else:
                _say(f"API token: the one in {where}")
        service = Service(engine, token=token, version=__version__)
        service.live = live
        app = build_app(service)
        config = Config()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.graceful_timeout = 5.0
        config.accesslog = None
        config.errorlog = None
        worker = Worker(engine, max_instances=max_instances, grace=grace, poll=poll,
                        log=lambda line: _say(f"worker: {line}"))
        shutdown = trio.Event()
        trigger_host = TriggerHost(engine, poll=poll, log=lambda line: _say(f"triggers: {line}")) if triggers else None

        def stopping() -> None:
            shutdown.set()
            if trigger_host is not None:
                trigger_host.stop()

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as outer:
                outer.start_soon(partial(_on_signals, worker, signals, grace, say=_say, also=stopping))
                async with trio.open_nursery() as nursery:
                    await nursery.start(worker.run)
                    if trigger_host is not None:
                        await nursery.start(trigger_host.run)
                    try:
                        binds = await nursery.start(partial(hypercorn_serve, app, config,
                                                            shutdown_trigger=shutdown.wait))
                    except* OSError as group:  # the port is taken, the address is not this machine's
                        worker.stop(0)
                        if trigger_host is not None:
                            trigger_host.stop()
                        exc = group.exceptions[0]
                        while isinstance(exc, BaseExceptionGroup):  # hypercorn's own nurseries nest it
                            exc = exc.exceptions[0]
                        raise _Refused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
                    for url in binds:
                        _say(f"listening on {url} (web UI: {url}/ · API docs: {url}/docs)")
                outer.cancel_scope.cancel()
        stats = worker.statistics()
        _say(f"stopped: {stats['ended']} instance(s) run to their end, {stats['handed_back']} handed back "
             f"unfinished, {stats['failed']} failed to run")
