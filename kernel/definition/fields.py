"""A step's fields: its id and type, its params against its step type's schema, its retry policy,
timeout, failure mode and tags; and the workflow's run strategy."""

from __future__ import annotations

import difflib
from typing import Any

from ..limits import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_BACKOFF_EXPONENT,
    MAX_CONCURRENCY,
    MAX_DURATION_SECONDS,
    MAX_RETRY_LIMIT,
)
from ..params import ParamSpec
from ..steptype import StepType
from .model import _DEFAULT_RETRY, Backoff, FailureMode, RetryPolicy, RunStrategy, StepDef
from .document import _esc
from .vocabulary import _BACKOFF_KEYS, _ID_RE, _NOT_YET, _RETRY_KEYS, _STEP_KEYS, _TAG_KEYS, _TAG_NAMESPACES
from .maestro import _is_maestro_backoff, _upper


def _pydantic_message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    if err.get("type") == "missing":
        return f"`{err['loc'][-1]}` is required" if err.get("loc") else msg
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


class _Fields:
    """The part of :class:`~legato.definition.validator._Validator` that reads a step's fields (id, type, params
    against its step type, retry policy, timeout, tags, …) and the workflow's run strategy."""

    def folded_types(self) -> dict[str, str]:
        """Registered step type names by their lower-case form (built once per definition)."""
        if self._folded is None:
            self._folded = {name.lower(): name for name in self.step_types}
        return self._folded

    def tags(self, raw: Any, pointer: str, permits: dict[str, int] | None = None) -> list[str]:
        """Tag names from Maestro's TagList: strings, or objects ``{name, namespace, permit,
        attributes}``. A step's tag permits go into ``permits`` (tag -> permit: how many steps
        carrying the tag may run at once, :mod:`legato.permits`); elsewhere (``permits`` None) a
        permit limits nothing and is warned about."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.add(pointer, "tags must be an array of strings or {\"name\": …, \"namespace\": …} objects")
            return []
        names: list[str] = []
        for i, tag in enumerate(raw):
            where = f"{pointer}/{i}"
            if isinstance(tag, str):
                names.append(tag)
            elif isinstance(tag, dict):
                self.unknown_keys(tag, _TAG_KEYS, where, "tag")
                name = tag.get("name")
                if not isinstance(name, str) or not name:
                    self.add(f"{where}/name", "a tag object needs a `name` string")
                    continue
                ns = tag.get("namespace")
                if ns is not None and (not isinstance(ns, str) or ns.upper() not in _TAG_NAMESPACES):
                    self.add(f"{where}/namespace", f"unknown tag namespace {ns!r:.40}; use one of "
                                                   f"{', '.join(sorted(n.lower() for n in _TAG_NAMESPACES))}")
                if "permit" in tag:
                    permit = tag["permit"]
                    if isinstance(permit, bool) or not isinstance(permit, int) or permit < 0:
                        self.add(f"{where}/permit", f"a tag permit is a whole number >= 0, got {permit!r:.40}")
                    elif permits is not None:
                        permits[name] = permit if name not in permits else min(permits[name], permit)
                    else:
                        self.warn(f"{where}/permit", "a permit on a workflow's tag limits nothing: put the tag, "
                                                     "with its permit, on the steps it should limit")
                if "attributes" in tag and not isinstance(tag["attributes"], dict):
                    self.add(f"{where}/attributes", "tag attributes must be an object")
                names.append(name)
            else:
                self.add(where, "a tag is a string or a {\"name\": …, \"namespace\": …} object")
        return names

    def retry_policy(self, raw: Any, pointer: str) -> RetryPolicy:
        """Legato's form ({limits…, backoff: {type: fixed|exponential, base, exponent, cap, jitter}})
        or Maestro's (RetryPolicy: limits up to 99, a backoff of type FIXED_BACKOFF or
        EXPONENTIAL_BACKOFF with a base, exponent and cap per failure class)."""
        if raw is None:
            return RetryPolicy()
        if not isinstance(raw, dict):
            self.add(pointer, "retry_policy must be an object")
            return RetryPolicy()
        self.unknown_keys(raw, _RETRY_KEYS, pointer, "retry_policy")
        kwargs: dict[str, Any] = {}
        for key in ("error_retry_limit", "platform_retry_limit", "timeout_retry_limit"):
            value = self.whole(raw, key, pointer, 0, MAX_RETRY_LIMIT, "MAX_RETRY_LIMIT")
            if value is not None:
                kwargs[key] = value
        backoff = raw.get("backoff")
        if backoff is not None:
            where = f"{pointer}/backoff"
            if not isinstance(backoff, dict):
                self.add(where, "backoff must be an object: {type: fixed|exponential, base, exponent, cap, jitter} "
                                "or Maestro's {type: FIXED_BACKOFF|EXPONENTIAL_BACKOFF, error_retry_backoff_in_secs, …}")
            elif _is_maestro_backoff(backoff):
                kwargs.update(self.maestro_backoff(backoff, where))
            else:
                self.unknown_keys(backoff, _BACKOFF_KEYS, where, "backoff")
                b: dict[str, Any] = {}
                kind = backoff.get("type", "exponential")
                if not isinstance(kind, str) or kind.lower() not in ("fixed", "exponential"):
                    self.add(f"{where}/type", "backoff type must be `fixed` or `exponential` (or Maestro's "
                                              f"FIXED_BACKOFF / EXPONENTIAL_BACKOFF), got {kind!r:.40}")
                else:
                    b["type"] = kind.lower()
                for key, minimum, maximum in (("base", 0.0, MAX_DURATION_SECONDS),
                                              ("exponent", 1.0, MAX_BACKOFF_EXPONENT),
                                              ("cap", 0.0, MAX_DURATION_SECONDS), ("jitter", 0.0, 1.0)):
                    value = self.number(backoff, key, where, minimum, maximum)
                    if value is not None:
                        b[key] = value
                kwargs["backoff"] = Backoff(**b)
        return RetryPolicy(**kwargs)

    def run_strategy(self, raw: Any, pointer: str, concurrency: int | None) -> tuple[RunStrategy, int | None]:
        """Maestro's RunStrategy: a rule name (any case), ``{rule, workflow_concurrency}``, or a
        number (PARALLEL with that concurrency). Returns the rule and the concurrency, if given."""
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"rule": "PARALLEL", "workflow_concurrency": raw}
        if isinstance(raw, dict):
            self.unknown_keys(raw, {"rule", "workflow_concurrency"}, pointer, "run_strategy")
            given = self.whole(raw, "workflow_concurrency", pointer, 1, MAX_CONCURRENCY, "MAX_CONCURRENCY")
            if given is not None:
                if concurrency is not None and concurrency != given:
                    self.add(f"{pointer}/workflow_concurrency", f"workflow_concurrency is {given} here and "
                                                                f"{concurrency} beside run_strategy: give it once")
                concurrency = given
            rule, pointer = raw.get("rule"), f"{pointer}/rule"
        else:
            rule = raw
        try:
            strategy = RunStrategy(rule.lower() if isinstance(rule, str) else rule)
        except ValueError:
            self.add(pointer, f"unknown run_strategy {rule!r:.40}; use one of {', '.join(r.value for r in RunStrategy)}")
            return RunStrategy.SEQUENTIAL, concurrency
        if concurrency is not None and concurrency > 1 and strategy is not RunStrategy.PARALLEL:
            self.add(pointer, f"only the parallel run strategy allows a workflow_concurrency above 1, not "
                              f"{strategy.value} (Maestro's RunStrategy rule)")
        return strategy, concurrency

    def step_config(self, cls: type[StepType], params: dict[str, ParamSpec], pointer: str) -> None:
        """Validate literal params against the step type's schema; expressions are checked when evaluated."""
        if cls.Params is None or (not params and cls in self._empty_params_valid):
            return  # the same (empty) params of the same step type were valid a step ago
        import pydantic

        if not params:
            try:
                cls.Params.model_validate({})
            except pydantic.ValidationError:
                pass  # said below, at this step's pointer
            else:
                self._empty_params_valid.add(cls)
                return
        literal = {name: spec.value for name, spec in params.items() if spec.is_literal}
        pending = {name for name, spec in params.items() if not spec.is_literal}
        try:
            cls.Params.model_validate(literal)
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                loc = [str(part) for part in err["loc"]]
                if loc and loc[0] in pending:
                    continue
                if pending and (err["type"] == "missing" or not loc):
                    continue  # a missing field, or a whole-model rule, may hinge on an expression's value
                where = pointer + "".join(f"/{_esc(p)}" for p in loc)
                self.add(where, f"{cls.name}: {_pydantic_message(err)}")

    def ident(self, raw: dict, pointer: str, seen: dict[str, str]) -> bool:
        """Check a step's ``id`` (valid, and unique across the whole definition: ``seen`` maps
        every id so far to its pointer) and its fields not supported yet."""
        for key, why in _NOT_YET.items():
            if key in raw:
                self.add(f"{pointer}/{key}", f"not supported yet: {why}")
        sid = raw.get("id")
        if not isinstance(sid, str) or not _ID_RE.match(sid):
            self.add(f"{pointer}/id", "a step needs an `id`: letters, digits, `_`, `.` and `-`, starting with a letter or `_`"
                     if sid is None else f"step id {sid!r} is not valid: use letters, digits, `_`, `.` and `-`, starting with a letter or `_`")
            return False
        if sid in seen:
            self.add(f"{pointer}/id", f"duplicate step id {sid!r} (first defined at {seen[sid]})")
            return False
        seen[sid] = pointer
        return True

    def step(self, raw: Any, pointer: str, index: int, seen: dict[str, str]) -> StepDef | None:
        if not isinstance(raw, dict):
            self.add(pointer, "a step is an object with an `id` and a `type`")
            return None
        self.unknown_keys(raw, _STEP_KEYS, pointer, "step")
        ok = self.ident(raw, pointer, seen)
        sid = raw.get("id")
        stype = raw.get("type")
        cls = None
        if not isinstance(stype, str):
            self.add(f"{pointer}/type", "a step needs a `type` (e.g. bash, noop, sleep)")
        else:
            cls = self.step_types.get(stype)
            if cls is None:  # Maestro writes step types capitalised: NoOp, Sleep
                canonical = self.folded_types().get(stype.lower())
                if canonical is not None:
                    stype, cls = canonical, self.step_types[canonical]
            if cls is None:
                known = ", ".join(sorted(self.step_types)) or "none"
                close = difflib.get_close_matches(stype.lower(), sorted(self.folded_types()), n=1, cutoff=0.6)
                hint = f" (did you mean {self.folded_types()[close[0]]!r}?)" if close else ""
                self.add(f"{pointer}/type", f"unknown step type {stype!r:.60}{hint}; installed: {known} "
                                            "(see `legato plugins`)")
            else:
                if stype not in self.unavailable:
                    self.unavailable[stype] = cls.unavailable()
                why = self.unavailable[stype]
                if why:
                    self.add(f"{pointer}/type", f"step type {stype!r} cannot run here: {why}")
        params = self.params(raw.get("params"), f"{pointer}/params", cls.raw_params if cls else frozenset(),
                             cls.argv_params if cls else frozenset())
        if cls is not None:
            self.step_config(cls, params, f"{pointer}/params")
            fields = cls.Params.model_fields if cls.Params is not None and params else {}
            for pname, spec in params.items():
                if spec.secret and pname in fields:
                    self.add(f"{pointer}/params/{_esc(pname)}/secret",
                             f"`{pname}` configures the {cls.name} step type and cannot be secret; pass the "
                             "secret as a param of its own")
        if not ok:
            self.attributes(raw, pointer, True)  # still checked, and reported with the rest
            self.signal_fields(raw, pointer)
            return None
        deps, outs = self.signal_fields(raw, pointer)
        return StepDef(sid, stype if isinstance(stype, str) else "", index, pointer, params, [],
                       *self.attributes(raw, pointer, True), signal_dependencies=deps, signal_outputs=outs)

    def signal_fields(self, raw: dict, pointer: str, outputs: bool = True) -> tuple[tuple, tuple]:
        """The step's ``signal_dependencies`` and (``outputs``: when it may have them) ``signal_outputs``."""
        deps = self.signal_dependencies(raw["signal_dependencies"], f"{pointer}/signal_dependencies") \
            if raw.get("signal_dependencies") is not None else ()
        outs = ()
        if raw.get("signal_outputs") is not None:
            if outputs:
                outs = self.signal_outputs(raw["signal_outputs"], f"{pointer}/signal_outputs")
            elif raw["signal_outputs"]:
                self.add(f"{pointer}/signal_outputs", "not supported yet on a foreach or while step: announce "
                                                      "the signal from a step after it (or in its body)")
        return deps, outs

    def attributes(self, raw: dict, pointer: str, retries: bool) -> tuple:
        """StepDef's ``retry, timeout, failure_mode, name, description, tags, predecessors,
        templates, permits`` (in that order) from a step's fields; ``retries``: whether it may have a
        ``retry_policy``."""
        failure_mode = FailureMode.FAIL_AFTER_RUNNING
        if "failure_mode" in raw:
            try:
                failure_mode = FailureMode(_upper(raw["failure_mode"]))
            except ValueError:
                self.add(f"{pointer}/failure_mode",
                         f"unknown failure_mode {raw['failure_mode']!r}; use one of {', '.join(m.value for m in FailureMode)}")
        # Absent fields cost no pointer (a 100,000-step definition has mostly absent ones).
        permits: dict[str, int] = {}
        tags = self.tags(raw["tags"], f"{pointer}/tags", permits) if raw.get("tags") is not None else []
        for key in ("name", "description"):
            if key in raw and not isinstance(raw[key], str):
                self.add(f"{pointer}/{key}", f"{key} must be a string")
        templates: dict[str, Any] = {}
        retry_raw, timeout_raw = raw.get("retry_policy") if retries else None, raw.get("timeout")
        if retry_raw is None:
            retry = _DEFAULT_RETRY
        elif isinstance(retry_raw, dict) and self.template(retry_raw, f"{pointer}/retry_policy"):
            templates["retry_policy"], retry = retry_raw, _DEFAULT_RETRY
        else:
            retry = self.retry_policy(retry_raw, f"{pointer}/retry_policy")
        if timeout_raw is None:
            timeout = DEFAULT_TIMEOUT_SECONDS
        elif isinstance(timeout_raw, str) and self.template(timeout_raw, f"{pointer}/timeout"):
            templates["timeout"], timeout = timeout_raw, DEFAULT_TIMEOUT_SECONDS
        else:
            timeout = self.duration(timeout_raw, f"{pointer}/timeout")
        name, description = raw.get("name"), raw.get("description")
        return (retry, timeout, failure_mode, name if isinstance(name, str) else "",
                description if isinstance(description, str) else "", tags, [], templates or None, permits or None)
