"""The child side of the ``python`` step type: imports the callable, calls it, reports the result.

Run as ``python -u <path>/child.py REQUEST`` (``python -m legato_python.child REQUEST`` works too
when the interpreter has legato-python installed). Standard library only and Python 3.8+
syntax, so the step can use another interpreter (a project's virtualenv) that has neither
Legato nor this package installed.

``REQUEST`` is a JSON file: ``{"callable": "pkg.mod:func", "kwargs": {...}, "sys_path": [...],
"result_path": "..."}``. Params are data: they arrive as JSON and become keyword arguments,
never source code. The result file, written atomically, is ``{"outcome": "DONE" | "USER_ERROR"
| "FATAL_ERROR", "outputs": {...}, "message": "..."}``; the exit code repeats the outcome
(0, 1, 2). Tracebacks go to stderr, which the step type streams into the step's log.

SIGTERM (what a cancelled step receives first) raises ``KeyboardInterrupt`` in the callable, so
its ``finally`` blocks and context managers run; the process then exits 143 without a result.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback

EXIT_CODES = {"DONE": 0, "USER_ERROR": 1, "FATAL_ERROR": 2}
#: Exit code when the request or the result file cannot be handled at all.
EXIT_BROKEN = 3
#: Exit code after SIGTERM (128 + 15, what a shell reports).
EXIT_TERMINATED = 143
#: Longest error message reported (the full text is in the log).
MAX_MESSAGE = 2000

_HERE = os.path.dirname(os.path.abspath(__file__))
_terminating = False


class _Report(Exception):
    """Ends the run early with an outcome and a message."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def main(argv: list[str] | None = None) -> int:
    """Run the request named by ``argv[1]``; return the exit code."""
    argv = sys.argv if argv is None else argv
    _utf8_stdio()
    signal.signal(signal.SIGTERM, _on_sigterm)
    if len(argv) != 2:
        print("usage: python -m legato_python.child REQUEST.json", file=sys.stderr)
        return EXIT_BROKEN
    try:
        with open(argv[1], encoding="utf-8") as f:
            request = json.load(f)
        target = request["callable"]
        kwargs = request.get("kwargs") or {}
        extra_path = request.get("sys_path") or []
        result_path = request["result_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"[legato] cannot read the request {argv[1]!r}: {exc}", file=sys.stderr)
        return EXIT_BROKEN

    _set_sys_path(extra_path)
    try:
        outputs = _outputs(_call(_resolve(target), target, kwargs))
        result = {"outcome": "DONE", "outputs": outputs, "message": ""}
    except _Report as report:
        result = {"outcome": report.outcome, "outputs": {}, "message": _clip(report.message)}
    except KeyboardInterrupt:
        if _terminating:
            print("[legato] terminated: the step was cancelled", file=sys.stderr)
            return EXIT_TERMINATED
        raise

    try:
        _write_atomically(result_path, json.dumps(result, allow_nan=False))
    except (OSError, ValueError) as exc:
        print(f"[legato] cannot write the result to {result_path!r}: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    return EXIT_CODES[result["outcome"]]


# -- importing ---------------------------------------------------------------------------------


def _resolve(target: str):
    """Import ``module:attr.path``; anything that stops it is FATAL_ERROR (retrying cannot help),
    except an ordinary exception raised by the module's own top-level code (a USER_ERROR)."""
    module_name, _, attr_path = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise _Report("FATAL_ERROR", f"cannot import {target!r}: no module named {exc.name!r} "
                          f"(is it installed for {sys.executable}, or in a directory listed in `sys_path`?)")
        _print_traceback(exc)
        raise _Report("FATAL_ERROR", f"cannot import {target!r}: importing {module_name!r} failed: "
                      f"{_describe(exc)}") from None
    except (ImportError, SyntaxError) as exc:
        _print_traceback(exc)
        raise _Report("FATAL_ERROR", f"cannot import {target!r}: importing {module_name!r} failed: "
                      f"{_describe(exc)}") from None
    except BaseException as exc:  # the module's own code raised while importing: a user error
        _print_traceback(exc)
        raise _Report("USER_ERROR", f"importing {module_name!r} raised {_describe(exc)}") from None

    where = module_name
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _Report("FATAL_ERROR", f"cannot import {target!r}: {where!r} has no attribute {part!r}") from None
        where = f"{where}.{part}" if where != module_name else f"{module_name}:{part}"
    if not callable(obj):
        raise _Report("FATAL_ERROR", f"{target!r} is not callable (it is a {type(obj).__name__})")
    return obj


def _call(func, target: str, kwargs: dict):
    """Call ``func(**kwargs)``; await what it returns when it is awaitable."""
    import inspect

    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have none: let the call itself decide
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            names = ", ".join(sorted(kwargs)) or "none"
            raise _Report("FATAL_ERROR", f"{target} cannot be called with the step's params "
                          f"(keyword arguments: {names}): {exc}") from None
    try:
        value = func(**kwargs)
        if inspect.isawaitable(value):
            value = _run_awaitable(value)
    except KeyboardInterrupt as exc:
        if _terminating:
            raise
        _print_traceback(exc)
        raise _Report("USER_ERROR", _describe(exc)) from None
    except SystemExit as exc:
        if exc.code in (None, 0):
            return None  # sys.exit() / sys.exit(0): the work is done
        raise _Report("USER_ERROR", f"SystemExit: {exc.code}") from None
    except BaseException as exc:  # noqa: BLE001 - the callable's failure is data
        _print_traceback(exc)
        raise _Report("USER_ERROR", _describe(exc)) from None
    return value


def _run_awaitable(value):
    import asyncio

    if asyncio.iscoroutine(value):
        return asyncio.run(value)

    async def wait():
        return await value

    return asyncio.run(wait())


# -- results -----------------------------------------------------------------------------------


def _outputs(value) -> dict:
    """A returned dict is the outputs map; None is no outputs; anything else is ``{"result": value}``."""
    if value is None:
        return {}
    outputs = value if isinstance(value, dict) else {"result": value}
    for key, item in outputs.items():
        if not isinstance(key, str):
            raise _Report("USER_ERROR", f"the callable returned a dict with the key {key!r} "
                          f"({type(key).__name__}): output names must be strings")
        try:
            json.dumps(item, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _Report("USER_ERROR", f"output {key!r} is not JSON-serialisable: {exc}") from None
    return dict(outputs)


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# -- helpers -----------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """``ExceptionType: message``, the type qualified by its module unless it is a builtin."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    text = str(exc)
    return f"{name}: {text}" if text else name


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _print_traceback(exc: BaseException) -> None:
    """The traceback to stderr, without the frames of this module, importlib and asyncio in front
    of the user's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and _is_plumbing(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    sys.stderr.flush()


def _is_plumbing(filename: str) -> bool:
    if filename.startswith("<frozen"):
        return True
    path = os.path.abspath(filename)
    if path == os.path.abspath(__file__):
        return True
    for package in ("asyncio", "importlib"):
        module = sys.modules.get(package)
        where = getattr(module, "__file__", None)
        if where and path.startswith(os.path.dirname(os.path.abspath(where)) + os.sep):
            return True
    return False


def _set_sys_path(extra: list) -> None:
    """Nothing implicit: drop the directory of this file (what ``python path/child.py`` puts first,
    and which would make this package's modules shadow the user's), prepend ``sys_path``."""
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
        del sys.path[0]
    sys.path[:0] = [str(p) for p in extra]


def _utf8_stdio() -> None:
    # The step type decodes the log as UTF-8, whatever this host's locale says.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")
        except (AttributeError, ValueError):  # replaced or detached streams: leave them be
            pass


def _on_sigterm(signum, frame) -> None:
    global _terminating
    _terminating = True
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
