"""The ``subworkflow`` step type (issue 11): a stored workflow started as a real child instance,
linked to its parent, idempotent per attempt, stopped with its parent step (Maestro's
SubworkflowStepRuntime, SubworkflowStep, SubworkflowInitiator and StepHelper's depth limit)."""

from __future__ import annotations

from legato.conformance import StepTypeSuite


class TestSubworkflowConformance(StepTypeSuite):
    """The step-type contract, with the child workflows the profile stores first."""

    profile = "subworkflow"
