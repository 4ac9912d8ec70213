"""The conformance suites every plugin passes (DESIGN §7).

- :class:`StepTypeSuite`, :class:`StorageSuite` and :class:`TriggerSuite`: subclass one in a
  plugin's tests, set ``profile`` (a published profile's name, or a profile object), run plain pytest;
- profiles (:class:`StepTypeProfile`, :class:`StorageProfile`, :class:`TriggerProfile`) declare
  capabilities from one vocabulary (:data:`STEP_CAPABILITIES`, :data:`STORAGE_CAPABILITIES`,
  :data:`TRIGGER_CAPABILITIES`) and sample inputs, and are published in the
  ``legato.conformance`` entry-point group;
- ``legato conformance [NAME …]`` runs the same suites for every installed plugin.

The suites import pytest when first used; profiles do not.
"""

from .profiles import (
    STEP_CAPABILITIES,
    STORAGE_CAPABILITIES,
    TRIGGER_CAPABILITIES,
    ProfileError,
    StepTypeProfile,
    StorageProfile,
    TriggerProfile,
    load_profiles,
)

__all__ = [
    "STEP_CAPABILITIES",
    "STORAGE_CAPABILITIES",
    "ProfileError",
    "StepTypeProfile",
    "StorageProfile",
    "StepTypeSuite",
    "StorageSuite",
    "TRIGGER_CAPABILITIES",
    "TriggerProfile",
    "TriggerSuite",
    "load_profiles",
    "requires",
]


def __getattr__(name: str):
    """The suites import pytest: load them on first use only (profiles and the CLI stay light)."""
    if name in ("StepTypeSuite", "StorageSuite", "TriggerSuite", "requires"):
        import pytest

        # Assertion messages in the suites are what plugin authors read: let pytest rewrite them.
        pytest.register_assert_rewrite("legato.conformance.suites")
        from . import suites

        return getattr(suites, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
