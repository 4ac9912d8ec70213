"""Run by tests/test_conformance.py in its own pytest session: the suite against broken step types."""

from legato.conformance import StepTypeSuite

from tests import broken_steps


class TestIgnoresCancel(StepTypeSuite):
    profile = broken_steps.ignores_cancel


class TestBlocksLoop(StepTypeSuite):
    profile = broken_steps.blocks_loop


class TestLies(StepTypeSuite):
    profile = broken_steps.lies
