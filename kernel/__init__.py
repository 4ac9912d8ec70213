"""Legato: a workflow orchestrator for data and ML pipelines.

The kernel (this package) owns definitions, the DAG, the state machines and the trio engine;
everything that touches the outside world is a plugin (``legato.plugins`` and third parties),
loaded through the ``legato`` entry-point group.

From Python: ``legato.run(definition, params=…)`` runs a workflow and returns the instance with
its steps; ``await legato.arun(…)`` in async code; ``legato.testing.statuses(definition)`` in tests.
Importing ``legato`` stays cheap: the engine, trio and SQLAlchemy load only when something runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .states import InstanceStatus, StepStatus
from .steptype import Outcome, StepContext, StepResult, StepType

if TYPE_CHECKING:  # pragma: no cover
    from .api import DefinitionWarning, Instance, Step, arun, run
    from .definition import Definition, DefinitionError
    from .engine import StartError
    from .plugin_manager import PluginError
    from .steptype import SettingsError
    from .storage import StorageError
    from .triggers import TriggerContext, TriggerDef, TriggerType

__version__ = "0.1.0"

# Names loaded on first use (module __getattr__, PEP 562), so `import legato` imports no engine.
_LAZY = {
    "run": "api", "arun": "api", "Instance": "api", "Step": "api", "DefinitionWarning": "api",
    "Definition": "definition", "DefinitionError": "definition", "StartError": "engine",
    "StorageError": "storage", "SettingsError": "steptype", "PluginError": "plugin_manager",
    "TriggerType": "triggers", "TriggerContext": "triggers", "TriggerDef": "triggers",
}

__all__ = ["InstanceStatus", "StepStatus", "Outcome", "StepContext", "StepResult", "StepType", "__version__",
           *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'legato' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
