"""The ``legato`` command group and how every command runs and ends: exit codes, errors printed
for people (never a traceback), garbage collection paused during a command's imports."""

from __future__ import annotations

import gc
import sys

import click


EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail(message: str, code: int = EXIT_INVALID) -> None:
    click.echo(f"legato: {message}", err=True)
    sys.exit(code)


def _plugins():
    from ..plugin_manager import PluginError, get_plugins

    try:
        return get_plugins()
    except PluginError as exc:
        _fail(str(exc))


def _print_problems(exc) -> None:
    source = exc.source or "definition"
    click.echo(f"{source}: {len(exc.problems)} problem(s) found", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)


def _print_warnings(definition) -> None:
    """Fields the definition sets that are accepted but not enforced yet, on stderr (issue 9:
    nothing a definition says is validated and then silently ignored)."""
    source = definition.source or "definition"
    for warning in definition.warnings:
        click.echo(f"{source}: warning: {warning}", err=True)


class _Commands(click.Group):
    """The built-in commands plus those installed packages add through the ``legato.commands``
    entry-point group (``legato conformance`` comes from ``legato.conformance`` that way)."""

    def _installed(self) -> dict:
        import importlib.metadata

        return {ep.name: ep for ep in importlib.metadata.entry_points(group="legato.commands")}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._installed()))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None:
            ep = self._installed().get(name)
            if ep is not None:
                _resume_gc()  # another package's command: it may run for long
                command = ep.load()
        return command

    def main(self, *args, **kwargs):
        # A command's imports (trio, pydantic, the plugins) allocate some 10^5 objects that all
        # live on: collecting garbage during them is ~6 % of a short `legato run`. Collection
        # resumes once trio runs the command's work (_trio_run), and in any case on return.
        global _gc_paused
        if gc.isenabled():
            gc.disable()
            _gc_paused = True
        try:
            return super().main(*args, **kwargs)
        finally:
            _resume_gc()
            if not args and kwargs.get("args") is None:
                # The `legato` program itself (its arguments from sys.argv): the interpreter exits
                # next, and its collections over every object at exit cost ~50 ms of a short run.
                # Frozen objects are skipped; their memory goes back with the process.
                gc.freeze()


_gc_paused = False


def _resume_gc() -> None:
    """Collect garbage again if :meth:`_Commands.main` paused it."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.enable()


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="legato", prog_name="legato")
def main() -> None:
    """Legato: workflows of steps (bash, docker, notebooks, SQL, …) with Maestro's semantics.

    Run a workflow in the foreground:  legato run examples/etl.json
    """


class _Refused(Exception):
    """Raised inside a command's trio task for input that names nothing usable: exit 2, the message."""


def _trio_run(fn) -> None:
    """Run ``fn`` under trio; storage errors, a start the engine refuses (a secret it cannot
    resolve on resume) and Legato bugs become messages, not tracebacks."""
    import trio

    from ..engine import StartError
    from ..storage import StorageError

    _resume_gc()
    try:
        try:
            trio.run(fn)
        except BaseExceptionGroup as group:  # the CLI's own nurseries: show what happened, not the group
            leaf = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
    except _Refused as exc:
        _fail(str(exc))
    except StorageError as exc:
        _fail(str(exc), EXIT_FAILED)
    except StartError as exc:
        _fail(str(exc))
    except Exception as exc:  # a bug in Legato or a plugin: say so plainly, keep the details
        _internal_error(exc)


def _internal_error(exc: BaseException) -> None:
    import tempfile
    import traceback

    from ..secrets import mask_known

    # Masked with every secret this process resolved: an exception's message may quote one.
    report = mask_known("".join(traceback.format_exception(exc)))
    with tempfile.NamedTemporaryFile("w", prefix="legato-crash-", suffix=".txt", delete=False) as f:
        f.write(report)
    _fail(mask_known(f"internal error ({type(exc).__name__}: {exc}); this is a bug in Legato or a plugin. "
                     f"Details: {f.name}"), EXIT_FAILED)
