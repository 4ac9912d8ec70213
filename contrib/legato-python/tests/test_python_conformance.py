"""legato-python passes Legato's step-type conformance suite (the same as `legato conformance python`)."""

from legato.conformance import StepTypeSuite


class TestPythonConformance(StepTypeSuite):
    profile = "python"
