"""The conformance suite, driven by the profile this package publishes (``legato.conformance: http``)."""

from legato.conformance import StepTypeSuite


class TestHttpConformance(StepTypeSuite):
    profile = "http"
