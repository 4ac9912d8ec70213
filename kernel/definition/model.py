"""What a loaded definition is: its steps, retry policies, conditions, and the error that lists
every problem of an invalid one."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cel import CelProgram
from ..loopdef import LoopDef
from ..params import ParamSpec


@dataclass(slots=True, frozen=True)
class Problem:
    """One thing wrong with a definition, at ``pointer`` (a JSON pointer, "" for the document)."""

    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.pointer or '/'}: {self.message}"


class DefinitionError(Exception):
    """A definition is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + f"{len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


class FailureMode(str, enum.Enum):
    FAIL_AFTER_RUNNING = "FAIL_AFTER_RUNNING"
    FAIL_IMMEDIATELY = "FAIL_IMMEDIATELY"
    IGNORE_FAILURE = "IGNORE_FAILURE"


class RunStrategy(str, enum.Enum):
    SEQUENTIAL = "sequential"
    STRICT_SEQUENTIAL = "strict_sequential"
    PARALLEL = "parallel"
    FIRST_ONLY = "first_only"
    LAST_ONLY = "last_only"
    SERIAL_LATEST_ONLY = "serial_latest_only"


@dataclass(slots=True, frozen=True)
class Backoff:
    """Delay before retry ``n`` (1-based): fixed ``base``, or ``base * exponent**(n-1)``, capped,
    plus up to ``jitter`` × delay of random extra."""

    type: str = "exponential"
    base: float = 1.0
    exponent: float = 2.0
    cap: float = 600.0
    jitter: float = 0.0

    def delay(self, n: int, rand: float = 0.0) -> float:
        try:
            raw = self.base if self.type == "fixed" else self.base * self.exponent ** (n - 1)
        except OverflowError:  # the hundredth retry of a steep backoff: the cap applies
            raw = self.cap
        raw = min(raw, self.cap)
        return raw + raw * self.jitter * rand


#: The failure classes a retry policy counts separately, as Maestro's RetryPolicy names them.
RETRY_CLASSES = ("error", "platform", "timeout")


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Separate limits per failure class (DESIGN §3), and the backoff before each retry.

    ``backoff`` applies to every class unless the class has its own (``platform_backoff``,
    ``timeout_backoff``: Maestro's backoffs are per class, ``error_`` / ``platform_`` /
    ``timeout_retry_backoff_in_secs`` …); :meth:`backoff_for` picks the one that applies."""

    error_retry_limit: int = 2
    platform_retry_limit: int = 10
    timeout_retry_limit: int = 0
    backoff: Backoff = Backoff()
    platform_backoff: Backoff | None = None
    timeout_backoff: Backoff | None = None

    def backoff_for(self, kind: str) -> Backoff:
        """The backoff for failure class ``kind``: ``"error"`` (user), ``"platform"`` or ``"timeout"``."""
        own = self.platform_backoff if kind == "platform" else self.timeout_backoff if kind == "timeout" else None
        return own or self.backoff


@dataclass(slots=True)
class Condition:
    """An edge condition: a literal (``constant``) or a compiled CEL program."""

    source: str
    constant: bool | None
    program: CelProgram | None = None


_ALWAYS = Condition("true", True)  # the unconditional edge, shared (conditions are never changed)
_DEFAULT_RETRY = RetryPolicy()  # frozen: shared by every step that sets none


@dataclass(slots=True)
class StepDef:
    """One step of a definition: a leaf of some ``type``, a subworkflow (a leaf of type
    ``subworkflow``), or a foreach / while (``type`` "foreach" / "while", with its :attr:`loop`)."""

    id: str
    type: str
    index: int
    pointer: str
    params: dict[str, ParamSpec]
    successors: list[tuple[str, Condition]]
    retry: RetryPolicy
    timeout: float
    failure_mode: FailureMode
    name: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    predecessors: list[str] = field(default_factory=list)
    #: ``timeout`` / ``retry_policy`` as written when they hold ``${param}`` (Maestro's
    #: ParsableLong with a param): :func:`resolve_attributes` reads them with each instance's
    #: workflow params; ``timeout`` and ``retry`` above hold the defaults until then.
    templates: dict[str, Any] | None = None
    #: The permits of the step's tags (tag -> how many steps carrying it may run at once, across
    #: every instance; :mod:`legato.permits`); None when no tag has one.
    permits: dict[str, int] | None = None
    #: The loop of a foreach or while step (its variables, body DAG and settings); None otherwise.
    loop: LoopDef | None = None


@dataclass(slots=True)
class Definition:
    """A validated definition: the raw document plus everything the engine needs, precomputed."""

    document: dict[str, Any]
    workflow_id: str
    name: str
    params: dict[str, ParamSpec]
    steps: list[StepDef]
    by_id: dict[str, StepDef]
    timeout: float
    step_concurrency: int | None
    run_strategy: RunStrategy
    source: str = ""
    #: How many instances the run strategy lets run at once (Maestro's
    #: RunStrategy.workflowConcurrency: PARALLEL's, default 20; 1 for every other rule).
    workflow_concurrency: int = 1
    base_dir: Path | None = None
    version: int | None = None
    #: ``properties.step_concurrency``: leaf steps running at once across every instance of the
    #: workflow; ``workflow.instance_step_concurrency``: across one instance tree (a root and
    #: the subworkflows below it). ``step_concurrency`` above is the smaller, what one instance
    #: counts for itself (:mod:`legato.permits`).
    shared_step_concurrency: int | None = None
    instance_step_concurrency: int | None = None
    #: Whether any step (at any depth) carries a tag: only then may a step need a tag permit.
    tagged: bool = False
    #: Whether any param (the workflow's or a step's) is secret: the engine masks only then.
    has_secrets: bool = False
    #: Fields accepted but not (yet) doing what they say, each at its pointer: `validate` and
    #: `run` print them, so nothing a definition says is silently ignored.
    warnings: list[Problem] = field(default_factory=list)
    #: The workflow's ``timeout`` as written when it holds ``${param}``.
    timeout_template: str | None = None
    #: Ids of the steps with :attr:`StepDef.templates`, at every depth.
    templated: list[str] = field(default_factory=list)
    #: Every step at every depth (loop bodies included) by id; ``steps`` / ``by_id`` are the
    #: top-level DAG only.
    all_by_id: dict[str, StepDef] = field(default_factory=dict)
    #: A loop body's step id -> the id of the loop step whose body holds it (top-level steps absent).
    parent_of: dict[str, str] = field(default_factory=dict)
    #: The workflow's triggers as their types read them (legato.triggers): trigger type name ->
    #: its :class:`legato.triggers.TriggerDef` objects; only types the workflow uses.
    triggers: dict[str, list[Any]] = field(default_factory=dict)
