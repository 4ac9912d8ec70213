"""The ``legato`` command line (DESIGN §8).

Exit codes: 0 succeeded, 1 the workflow failed / was stopped / timed out (or the store failed),
2 invalid input (a bad definition, param, option or store URL), 130 interrupted.  Errors are
printed for people, never as a traceback.  Heavy modules (trio, cel-python, pydantic) are imported
inside the commands so that ``legato --help`` stays fast.

The parts, each importing only those above it: ``group`` (the ``legato`` group, exit codes, errors),
``store`` (what a command opens), ``output`` (what several commands print alike), then the commands:
``running`` (run, start, resume), ``acting`` (stop, kill, restart, step …), ``reading`` (status, list, logs, graph), ``versioning``
(push, versions, activate), ``authoring`` (validate, schema, plugins), ``permits`` (permits set, list, unset),
``strategy_cli`` (unblock) and ``triggers_cli`` (triggers, triggers pause, resume).
"""

from __future__ import annotations

from . import acting, authoring, permits, reading, running, strategy_cli, triggers_cli, versioning  # noqa: F401 - each registers its commands on main
from .group import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, _internal_error, main  # noqa: F401
from .reading import INSTANCE_STATES  # noqa: F401
