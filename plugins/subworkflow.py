"""``subworkflow``: start another stored workflow as a child instance (Maestro's SubworkflowStep).

Params (Maestro's, default-subworkflow-step-params.yaml and SubworkflowStep):

- ``subworkflow_id`` (required): the stored workflow to start (``legato push`` stores it);
- ``subworkflow_version``: ``active`` (default), ``latest`` or a version number, resolved when
  the step runs; the child is pinned to it;
- ``sync`` (default true): wait for the child and mirror its end (SUCCEEDED: the step succeeds;
  FAILED, STOPPED, TIMED_OUT: the step fails, not retried, naming the child). false: the step
  succeeds once the child is durably created, queued for ``legato resume`` (or a worker) to run;
- ``explicit_params`` (default false): false passes the parent's workflow params down, and the
  step's other params over them; true passes only the step's other params
  (SubworkflowStepRuntime.createSubworkflowRunParam). The child merges them like a start
  request's params (its modes decide what may be overridden).

Outputs: ``subworkflow_id``, ``subworkflow_version``, ``subworkflow_instance_id`` and, for a sync
step, ``subworkflow_status``. Refusals (unknown workflow or version, a workflow already among the
ancestors, the nesting depth limit of 10, a param the child refuses) end the step FATALLY_FAILED,
as Maestro's runtime turns a failed start into FATAL_ERROR.

A crash of the parent never starts a second child: the child's id derives from (parent instance,
run, step, attempt) and is recorded as the step's handle before the child is created; a resumed
parent reattaches and follows that child (resuming it when its worker died too). Store errors
while starting or following the child are retried in place, with the same child (Maestro's
CONTINUE on a MaestroRetryableError); only when they persist (about a minute) does the attempt
fail as a platform error. A parent worker that loses its lease leaves its child running.
"""

from __future__ import annotations

from typing import Any

import pydantic

from legato import Outcome, StepResult, StepType
from legato.hookspecs import hookimpl

#: The params that configure the step; every other param goes down to the child.
CONTROL_PARAMS = frozenset({"subworkflow_id", "subworkflow_version", "sync", "explicit_params"})


class SubworkflowParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    subworkflow_id: str = pydantic.Field(min_length=1)
    subworkflow_version: str | int = "active"
    sync: bool = True
    explicit_params: bool = False

    @pydantic.field_validator("subworkflow_version")
    @classmethod
    def _version(cls, value):
        from legato.storage import parse_version

        return parse_version(value)


class Subworkflow(StepType):
    """Starts ``subworkflow_id`` as a child instance; with ``sync``, follows it to its end."""

    name = "subworkflow"
    description = "starts a stored workflow as a child instance (sync: waits and mirrors its end)"
    Params = SubworkflowParams
    can_reattach = True

    async def run(self, ctx):
        children = ctx.workflows
        if ctx.config.sync:
            earlier = await children.earlier_child()
            if earlier is not None:  # a restarted parent restarts the child of its earlier run
                await ctx.record_handle(earlier.instance_id)
                return await self._again(ctx, children, earlier.instance_id)
        await ctx.record_handle(children.child_id)  # durable before the child exists
        return await self._launch(ctx, children)

    async def reattach(self, ctx, handle):
        children = ctx.workflows
        if isinstance(handle, str) and handle != children.child_id:
            return await self._again(ctx, children, handle)  # the earlier run's child, restarted
        return await self._launch(ctx, children)

    async def _again(self, ctx, children, instance_id: str) -> StepResult:
        """Run the child of an earlier run of the parent again: restarted from its incomplete
        steps when it ended without success, followed when it is still under way (a crash of the
        restarted parent), taken as it is when it succeeded."""
        from legato.children import ChildRefused
        from legato.engine import RestartRefused
        from legato.storage import StorageError

        try:
            child = await children.engine.storage.get_instance(instance_id)
            if child is None:
                raise ChildRefused(f"the child instance {instance_id} of an earlier run is not in the store")
            ctx.log("stdout", f"restarting subworkflow instance {instance_id} ({child.workflow_id} v{child.version})\n")
            if child.status.terminal and child.status.value != "SUCCEEDED":
                final = await children.restart(instance_id)
            else:
                final = await children.follow(instance_id)
        except (ChildRefused, RestartRefused) as exc:
            return StepResult(Outcome.FATAL_ERROR, {}, f"cannot restart subworkflow: {exc}", retryable=False)
        except StorageError as exc:
            return StepResult.platform_error(f"lost track of subworkflow instance {instance_id}: {exc}")
        return _mirror(final)

    async def _launch(self, ctx, children) -> StepResult:
        from legato.children import ChildRefused
        from legato.storage import StorageError

        cfg: SubworkflowParams = ctx.config
        params: dict[str, Any] = {} if cfg.explicit_params else children.parent_params()
        params.update({k: v for k, v in children.step_params().items() if k not in CONTROL_PARAMS})
        try:
            child = await children.start(cfg.subworkflow_id, cfg.subworkflow_version, params, queued=not cfg.sync)
        except ChildRefused as exc:
            return StepResult(Outcome.FATAL_ERROR, {}, f"cannot start subworkflow: {exc}", retryable=False)
        except StorageError as exc:
            return StepResult.platform_error(f"cannot start subworkflow {cfg.subworkflow_id!r}: {exc}")
        what = f"subworkflow instance {child.instance_id} ({child.workflow_id} v{child.version})"
        outputs: dict[str, Any] = {"subworkflow_id": child.workflow_id, "subworkflow_version": child.version,
                                   "subworkflow_instance_id": child.instance_id}
        ctx.log("stdout", f"started {what}\n")
        if not cfg.sync:
            return StepResult.done(outputs, f"started {what} (async; queued: `legato resume {child.instance_id}` "
                                            "runs it)")
        try:
            final = await children.follow(child.instance_id)
        except ChildRefused as exc:
            return StepResult(Outcome.FATAL_ERROR, outputs, str(exc), retryable=False)
        except StorageError as exc:
            return StepResult.platform_error(f"lost track of {what}: {exc}")
        return _mirror(final)


def _mirror(final) -> StepResult:
    """The step's result for its child's end: SUCCEEDED succeeds, anything else is a fatal error
    naming the child (Maestro's trackSubworkflowInstance: no retry, which would start a new child)."""
    what = f"subworkflow instance {final.instance_id} ({final.workflow_id} v{final.version})"
    outputs: dict[str, Any] = {"subworkflow_id": final.workflow_id, "subworkflow_version": final.version,
                               "subworkflow_instance_id": final.instance_id, "subworkflow_status": final.status.value}
    if final.status.value == "SUCCEEDED":
        return StepResult.done(outputs, f"{what} SUCCEEDED")
    why = f": {final.message}" if final.message else ""
    return StepResult(Outcome.FATAL_ERROR, outputs, f"{what} ended {final.status.value}{why}", retryable=False)


@hookimpl
def legato_register_step_types(registry):
    registry.add(Subworkflow)
