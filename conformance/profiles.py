"""Profiles: what a plugin declares about itself to the conformance suites (DESIGN §7).

A plugin publishes profiles in the ``legato.conformance`` entry-point group; the entry point
names an object that is a profile, a list of profiles, or a callable returning either. A profile
says which documented capabilities the plugin has (unsupported by default; an unknown name is an
error) and gives sample inputs. Each suite test states the capability it needs and is skipped,
with the reason, when the profile does not declare it.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "STEP_CAPABILITIES",
    "STORAGE_CAPABILITIES",
    "ProfileError",
    "StepTypeProfile",
    "StorageProfile",
    "load_profiles",
]

#: The documented vocabulary for step types: name -> what declaring it promises.
STEP_CAPABILITIES: dict[str, str] = {
    "outputs": "`success` produces outputs, `expected_outputs` is a subset of them",
    "user_failure": "`user_failure` params end the attempt with a user error (USER_FAILED)",
    "fatal_failure": "`fatal_failure` params end the attempt with a fatal error (FATALLY_FAILED)",
    "long_running": "`long_running` params run for at least 10 s unless cancelled",
    "logs": "`long_running` params write to the step's log within its first second",
    "cancellation": "a cancelled `long_running` step ends (a 10 s hang guard: the sample must run longer) and leaves no process or thread behind",
    "invalid_params": "`invalid` params are refused when the definition is loaded, at `invalid_pointer`",
}

#: The documented vocabulary for storage backends.
STORAGE_CAPABILITIES: dict[str, str] = {
    "persistent": "data committed before closing is there after reopening",
    "leases": "leases expire, and a stale generation's writes are rejected",
    "concurrent_writers": "several writers (tasks of one process, or processes) commit without losing data",
    "multiprocess": "several processes may open the same store at once",
}


class ProfileError(ValueError):
    """A profile is malformed (an unknown capability, a missing sample input)."""


def _check_capabilities(kind: str, declared: frozenset[str], vocabulary: dict[str, str]) -> None:
    unknown = sorted(declared - set(vocabulary))
    if unknown:
        raise ProfileError(f"{kind} profile declares unknown capabilities {unknown}; "
                           f"the vocabulary is {sorted(vocabulary)}")


@dataclass(frozen=True)
class StepTypeProfile:
    """How the step-type suite exercises one step type.

    - ``step_type``: the registered name (the ``type`` in definitions);
    - ``entry_point``: the name of the plugin's ``legato`` entry point (checked to load alone and
      cheaply), or None for a step type registered in process through ``plugin``;
    - ``heavy_modules``: modules that loading the entry point must not import;
    - ``plugin``: an object with hook implementations to register in process (instead of the
      entry points), for step types under test that are not installed;
    - ``settings``: the step type's per-worker settings;
    - sample params: ``success`` (required), ``expected_outputs``, ``user_failure``,
      ``fatal_failure``, ``long_running``, ``invalid`` with ``invalid_pointer`` (a JSON pointer
      under the step's params, e.g. ``/url``);
    - ``workflows``: definitions stored (``push_definition``) before each run, for a step type
      that starts other workflows (``subworkflow``).
    """

    step_type: str
    success: dict[str, Any]
    capabilities: frozenset[str] = frozenset()
    entry_point: str | None = None
    heavy_modules: tuple[str, ...] = ()
    plugin: Any = None
    settings: dict[str, Any] | None = None
    expected_outputs: dict[str, Any] | None = None
    user_failure: dict[str, Any] | None = None
    fatal_failure: dict[str, Any] | None = None
    long_running: dict[str, Any] | None = None
    invalid: dict[str, Any] | None = None
    invalid_pointer: str = ""
    workflows: tuple[dict[str, Any], ...] = ()
    name: str = ""

    kind = "step"

    def __post_init__(self) -> None:
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        object.__setattr__(self, "name", self.name or self.step_type)
        _check_capabilities("step type", self.capabilities, STEP_CAPABILITIES)
        needs = {"outputs": "expected_outputs", "user_failure": "user_failure", "fatal_failure": "fatal_failure",
                 "long_running": "long_running", "logs": "long_running", "cancellation": "long_running",
                 "invalid_params": "invalid"}
        for capability, sample in needs.items():
            if capability in self.capabilities and getattr(self, sample) is None:
                raise ProfileError(f"step type profile {self.name!r} declares {capability!r} without `{sample}`")


@dataclass(frozen=True)
class StorageProfile:
    """How the storage suite exercises one backend: ``make_url(directory)`` returns a URL for a
    fresh, empty store whose files (if any) live in ``directory``."""

    scheme: str
    make_url: Callable[[str], str]
    capabilities: frozenset[str] = frozenset()
    entry_point: str | None = None
    heavy_modules: tuple[str, ...] = ()
    plugin: Any = None
    name: str = ""

    kind = "storage"

    def __post_init__(self) -> None:
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        object.__setattr__(self, "name", self.name or self.scheme)
        _check_capabilities("storage", self.capabilities, STORAGE_CAPABILITIES)



@dataclass
class PublishedProfile:
    """A profile with where it came from (for the report)."""

    profile: Any
    distribution: str = "(in process)"
    version: str = ""
    errors: list[str] = field(default_factory=list)


def load_profiles() -> dict[str, PublishedProfile]:
    """Every profile published in the ``legato.conformance`` entry-point group, by name.

    A profile that fails to load is reported as an error for its entry point, not raised.
    """
    found: dict[str, PublishedProfile] = {}
    for ep in importlib.metadata.entry_points(group="legato.conformance"):
        dist = ep.dist
        meta = (dist.name, dist.version) if dist else ("?", "?")
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, (StepTypeProfile, StorageProfile)):
                obj = obj()
            profiles = obj if isinstance(obj, (list, tuple)) else [obj]
            for profile in profiles:
                if not isinstance(profile, (StepTypeProfile, StorageProfile)):
                    raise ProfileError(f"{ep.value} gave {profile!r}, not a StepTypeProfile or StorageProfile")
                found[profile.name] = PublishedProfile(profile, *meta)
        except Exception as exc:  # noqa: BLE001 - a broken profile is a finding, not a crash
            found[ep.name] = PublishedProfile(None, *meta, errors=[f"{type(exc).__name__}: {exc}"])
    return found
