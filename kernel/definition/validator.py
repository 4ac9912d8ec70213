"""The validator of one definition: its parts together, its record of problems and warnings,
and the workflow's triggers (read by their trigger types)."""

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


class _Validator(_Dags, _Fields, _References, _MaestroForms, _Values):
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
        self.trigger_types: Mapping[str, type] | None = None  # None: the process's plugins
        self.trigger_defs: dict[str, list] = {}  # trigger type name -> its TriggerDefs

    def add(self, pointer: str, message: str) -> None:
        self.problems.append(Problem(pointer, message))

    def warn(self, pointer: str, message: str) -> None:
        """Something accepted that does not (yet) do what it says; the CLI prints it."""
        self.warnings.append(Problem(pointer, message))

    def triggers(self, wf: dict) -> None:
        """The workflow's triggers, each field read by the trigger type that owns it
        (:data:`legato.triggers.WORKFLOW_FIELDS`: ``time_triggers`` by ``cron``, …); an empty
        list (what Maestro writes when there are none) asks nobody."""
        from ..triggers import WORKFLOW_FIELDS

        for key, type_name in WORKFLOW_FIELDS.items():
            items = wf.get(key)
            if items is None or items == []:
                continue
            pointer = f"/workflow/{key}"
            types = self.trigger_types
            if types is None:
                from ..plugin_manager import get_plugins

                types = get_plugins().triggers.types
            cls = types.get(type_name)
            if cls is None:
                self.add(pointer, f"not supported: {key} need the `{type_name}` trigger type, which no installed "
                                  "plugin provides (`legato plugins` lists them)")
                continue
            try:
                parsed, problems = cls.parse(items, pointer)
            except Exception as exc:  # a plugin's bug must read as one, not as the user's mistake
                self.add(pointer, f"the `{type_name}` trigger type failed to read {key} (a bug in its plugin): "
                                  f"{type(exc).__name__}: {exc}")
                continue
            for where, message in problems:
                self.add(where, message)
            if parsed:
                self.trigger_defs[type_name] = parsed
