"""The validator of one definition: its parts together, its record of problems and warnings,
and the workflow's time triggers."""

from __future__ import annotations

from typing import Any, Mapping

from ..cel import CelCompiler
from ..params import ParamSpec
from ..steptype import StepType
from .model import Problem, StepDef
from .values import _Values
from .maestro import _MaestroForms
from .references import _References
from .fields import _Fields
from .dags import _Dags
from .signaldefs import _SignalFields


class _Validator(_Dags, _Fields, _References, _MaestroForms, _Values, _SignalFields):
    """Every check of one definition, each problem and warning recorded at its pointer; the checks
    are its parts, one module each (values, maestro, references, fields, dags)."""

    def __init__(self, step_types: Mapping[str, type[StepType]], compiler: CelCompiler) -> None:
        self.step_types = step_types
        self.compiler = compiler
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.unavailable: dict[str, str | None] = {}  # asked once per step type
        self._folded: dict[str, str] | None = None
        self.workflow_params: dict[str, ParamSpec] = {}  # what `${}` in a timeout or retry policy may name
        self.workflow_id: str | None = None  # what a subworkflow step must not start
        self.step_concurrency: int | None = None  # the workflow's cap, which caps each foreach
        self.dags: list[tuple[list[dict], list[StepDef], dict[str, StepDef]]] = []  # each DAG, as read
        self.parent_of: dict[str, str] = {}  # a body step's id -> its loop's id
        self.known: set[str] | dict[str, StepDef] = set()  # every step id, once all are read
        self._empty_params_valid: set[type] = set()  # step types whose Params accept {}

    def add(self, pointer: str, message: str) -> None:
        self.problems.append(Problem(pointer, message))

    def warn(self, pointer: str, message: str) -> None:
        """Something accepted that does not (yet) do what it says; the CLI prints it."""
        self.warnings.append(Problem(pointer, message))

    def triggers(self, raw: Any, pointer: str) -> None:
        if raw is None:
            return
        if not isinstance(raw, list):
            self.add(pointer, "time_triggers must be an array")
            return
        for i, trig in enumerate(raw):
            where = f"{pointer}/{i}"
            if not isinstance(trig, dict) or trig.get("type") != "cron":
                self.add(where, "a time trigger is {\"type\": \"cron\", \"cron\": \"m h dom mon dow\", \"timezone\": …}")
                continue
            self.unknown_keys(trig, {"type", "cron", "timezone", "jitter", "catch_up", "description"}, where, "trigger")
            expr = trig.get("cron")
            if not isinstance(expr, str) or len(expr.split()) != 5:
                self.add(f"{where}/cron", f"expected a 5-field cron expression, got {expr!r}")
            else:
                from croniter import croniter

                if not croniter.is_valid(expr):
                    self.add(f"{where}/cron", f"invalid cron expression {expr!r}")
                else:
                    import datetime

                    from croniter import CroniterBadDateError

                    try:
                        croniter(expr, datetime.datetime(2000, 1, 1)).get_next(datetime.datetime)
                    except CroniterBadDateError:
                        self.add(f"{where}/cron", f"cron expression {expr!r} never fires (no such date)")
            tz = trig.get("timezone")
            if tz is not None:
                import zoneinfo

                try:
                    zoneinfo.ZoneInfo(tz)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
                    self.add(f"{where}/timezone", f"unknown time zone {tz!r}; use an IANA name like Europe/Amsterdam")
