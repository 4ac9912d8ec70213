"""Legato: a workflow orchestrator for data and ML pipelines.

The kernel (this package) owns definitions, the DAG, the state machines and the trio engine;
everything that touches the outside world is a plugin (``legato.plugins`` and third parties),
loaded through the ``legato`` entry-point group.
"""

from .states import InstanceStatus, StepStatus
from .steptype import Outcome, StepContext, StepResult, StepType

__version__ = "0.1.0"

__all__ = ["InstanceStatus", "StepStatus", "Outcome", "StepContext", "StepResult", "StepType", "__version__"]
