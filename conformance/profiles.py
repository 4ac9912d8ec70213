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
    "TRIGGER_CAPABILITIES",
    "TriggerProfile",
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


#: The documented vocabulary for trigger types.
TRIGGER_CAPABILITIES: dict[str, str] = {
    "fires": "the `workflow` sample starts an instance within 10 s of its host watching (after `fire` is called, "
             "when the profile gives one), through the idempotent start (a `trigger:` request id)",
    "exactly_once": "a host restarted with the trigger's checkpoint rewound (a crash before it was saved) fires "
                    "again only with the same request ids: nothing starts twice",
    "cancellation": "a cancelled host's triggers end within 10 s (a hang guard) leaving no thread working",
    "event_loop": "a watching and firing trigger never holds the event loop for more than 0.25 s",
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



@dataclass(frozen=True)
class TriggerProfile:
    """How the trigger suite exercises one trigger type.

    - ``trigger_type``: the registered name; ``entry_point``, ``heavy_modules``, ``plugin`` as for
      step types;
    - ``workflow``: a definition whose triggers are of this type and fire soon (every second);
    - ``fire``: None for a trigger that fires by itself (a schedule), else ``async fire(storage,
      n)``, called before the suite waits for the ``n``-th firing (0-based; e.g. send a signal);
    - ``workflows``: other definitions stored first (what ``workflow`` needs).
    """

    trigger_type: str
    workflow: dict[str, Any]
    capabilities: frozenset[str] = frozenset()
    entry_point: str | None = None
    heavy_modules: tuple[str, ...] = ()
    plugin: Any = None
    fire: Callable[..., Any] | None = None
    workflows: tuple[dict[str, Any], ...] = ()
    name: str = ""

    kind = "trigger"

    def __post_init__(self) -> None:
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        object.__setattr__(self, "name", self.name or self.trigger_type)
        _check_capabilities("trigger", self.capabilities, TRIGGER_CAPABILITIES)


_PROFILE_TYPES = (StepTypeProfile, StorageProfile, TriggerProfile)


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
            if callable(obj) and not isinstance(obj, _PROFILE_TYPES):
                obj = obj()
            profiles = obj if isinstance(obj, (list, tuple)) else [obj]
            for profile in profiles:
                if not isinstance(profile, _PROFILE_TYPES):
                    raise ProfileError(f"{ep.value} gave {profile!r}, not a StepTypeProfile, StorageProfile "
                                       "or TriggerProfile")
                found[profile.name] = PublishedProfile(profile, *meta)
        except Exception as exc:  # noqa: BLE001 - a broken profile is a finding, not a crash
            found[ep.name] = PublishedProfile(None, *meta, errors=[f"{type(exc).__name__}: {exc}"])
    return found
