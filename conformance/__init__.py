"""The conformance suites every plugin passes (DESIGN §7).

- :class:`StepTypeSuite` and :class:`StorageSuite`: subclass one in a plugin's tests, set
  ``profile`` (a published profile's name, or a profile object), run plain pytest;
- profiles (:class:`StepTypeProfile`, :class:`StorageProfile`) declare capabilities from one
  vocabulary (:data:`STEP_CAPABILITIES`, :data:`STORAGE_CAPABILITIES`) and sample inputs, and are
  published in the ``legato.conformance`` entry-point group;
- ``legato conformance [NAME …]`` runs the same suites for every installed plugin.

Importing this package imports pytest: it is for tests and the ``conformance`` command only.
"""

import pytest

# Assertion messages in the suites are what plugin authors read: let pytest rewrite them.
pytest.register_assert_rewrite("legato.conformance.suites")

from .profiles import (  # noqa: E402
    STEP_CAPABILITIES,
    STORAGE_CAPABILITIES,
    ProfileError,
    StepTypeProfile,
    StorageProfile,
    load_profiles,
)
from .suites import StepTypeSuite, StorageSuite, requires  # noqa: E402

__all__ = [
    "STEP_CAPABILITIES",
    "STORAGE_CAPABILITIES",
    "ProfileError",
    "StepTypeProfile",
    "StorageProfile",
    "StepTypeSuite",
    "StorageSuite",
    "load_profiles",
    "requires",
]
