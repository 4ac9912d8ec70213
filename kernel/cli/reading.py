"""Reading what ran: ``legato status``, ``list``, ``logs`` and ``graph``."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import click

from .group import EXIT_FAILED, EXIT_INVALID, _Refused, _fail, main, _print_problems, _trio_run
from .store import _engine, _opened, _read_engine, _resolve_instance, _store_option, _unloadable
from .output import _instance_json, _iso


INSTANCE_STATES = ("CREATED", "IN_PROGRESS", "PAUSED", "SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT")  # legato.states, unimported


@main.command()
@click.argument("instance", required=False)
@click.argument("step", required=False)
@click.option("--iteration", type=click.IntRange(min=1), metavar="N",
              help="With STEP (a foreach or while): show iteration N's steps (iterations count from 1).")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(instance: str | None, step: str | None, iteration: int | None, store: str, as_json: bool) -> None:
    """Show an instance (default: the newest) and the latest attempt of each of its steps.

    INSTANCE is an instance id or a unique prefix of one. A foreach or while step shows as one
    row with its iterations counted by state; STEP --iteration N shows one iteration's steps
    (STEP is a path for a loop inside a loop: `outer/2/inner`).
    """
    from .. import overview
    from ..strategy import FOR_A_WORKER, why_waiting

    if iteration is not None and step is None:
        _fail("--iteration needs a STEP: legato status INSTANCE STEP --iteration N", EXIT_INVALID)
    engine = _read_engine(store)
    found: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            record = await _resolve_instance(engine.storage, instance, store) if instance is not None else \
                next(iter(await engine.storage.list_instances(limit=1)), None)
            if record is not None:
                found["instance"] = record
                found["attempts"] = await engine.storage.get_attempts(record.instance_id)
                found["actions"] = await engine.storage.list_actions(record.instance_id)
                if as_json:
                    found["steps"] = await _step_ids(engine, record)
                else:
                    found["retries"] = await _pending_retries(engine, record, found["attempts"])
                if record.queued:
                    found["waiting"] = await why_waiting(engine.storage, record) or FOR_A_WORKER

    _trio_run(main_task)
    if "instance" not in found:
        _fail(f"no instances in {store} yet", EXIT_FAILED)
    record, attempts = found["instance"], found["attempts"]
    top = overview.tree(attempts)
    nodes = top
    if step is not None:
        path = f"{step.strip('/')}/{iteration}" if iteration is not None else step.strip("/")
        node = overview.find(top, path)
        if node is None:
            what = f"iteration {iteration} of step {step!r}" if iteration is not None else f"step {step!r}"
            known = ", ".join(sorted(top)[:20]) or "none yet"
            _fail(f"instance {record.instance_id} has no {what} (its steps: {known})", EXIT_INVALID)
        nodes = {step: node} if iteration is None else node.children
    if as_json:
        out = _instance_json(record, [], found["steps"] if step is None else ())
        out["steps"].update({name: overview.to_json(n, _iso) for name, n in nodes.items()})
        if iteration is not None:
            out["iteration"] = {"step": step, "number": iteration}
        from .acting import _action_json

        out["actions"] = [_action_json(a) for a in found["actions"]]
        if "waiting" in found:
            out["waiting"] = found["waiting"]
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"{record.workflow_id} v{record.version} [{record.instance_id}] {record.status.value}"
               + (f": {record.message}" if record.message else ""))
    if "waiting" in found:
        click.echo(f"  queued: {found['waiting']}")
    if record.parent:
        p = record.parent
        click.echo(f"  subworkflow of instance {p['instance_id']} ({p['workflow_id']}), step {p['step_id']} "
                   f"attempt {p['attempt']}")
    if iteration is not None:
        click.echo(f"  iteration {iteration} of {step}: " + (node.record.status.value if node.record else "?")
                   + (f" {json.dumps(node.record.params)[:100]}" if node.record and node.record.params else ""))
    for name, n in nodes.items():
        a = n.record
        if a is None:
            continue
        took = f"{a.ended_at - a.started_at:.2f}s" if a.ended_at and a.started_at else ""
        first = a.message.strip().splitlines()[0] if a.message.strip() else ""
        state = found["retries"].get(a.step_id) or a.status.value
        if n.children and not n.is_iteration:
            kind = "foreach" if overview.loop_total(a) is not None else "while"
            first = overview.loop_summary(kind, n) + (f"  {first}" if first else "")
        click.echo(f"  {name:<24} {state:<22} attempt {a.attempt:<3} {took:>9}  {first[:100]}")
    if found["actions"] and step is None:
        from .output import _when

        click.echo("actions:")
        for act in found["actions"]:
            what = f"{act.verb} {act.step_id}" if act.step_id else act.verb
            if act.params.get("mode"):
                what += f" ({act.params['mode']}{' ' + act.params['step_id'] if act.params.get('step_id') else ''})"
            click.echo(f"  {_when(act.requested_at)}  {what:<24} by {act.requested_by:<20} "
                       f"{act.outcome or 'pending'}")


async def _pending_retries(engine, record, attempts) -> dict[str, str]:
    """``RETRYING in 4s (attempt 2/3)`` for each step of a running instance whose latest attempt
    failed and will be retried (counted as the engine counts, per failure class), so that
    ``status`` does not show a failure the engine is about to retry as final."""
    import time

    from ..definition import RETRY_CLASSES, DefinitionError

    last: dict[str, Any] = {}
    for a in attempts:
        last[a.step_id] = a
    failed = [a for a in last.values() if a.status.value in _MAY_RETRY]
    if record.status.terminal or not failed:
        return {}
    version = await engine.storage.get_definition(record.workflow_id, record.version)
    try:
        steps = {s.id: s for s in engine.load(version.document).steps} if version is not None else {}
    except DefinitionError:  # it no longer loads here: show the stored states as they are
        return {}
    out = {}
    for a in failed:
        sdef = steps.get(a.step_id)
        if sdef is None:
            continue
        policy, kind = sdef.retry, _MAY_RETRY.index(a.status.value)
        limit = (policy.error_retry_limit, policy.platform_retry_limit, policy.timeout_retry_limit)[kind]
        n = sum(b.step_id == a.step_id and b.status is a.status for b in attempts)
        if n > limit:
            continue
        backoff = policy.backoff_for(RETRY_CLASSES[kind])
        left = max(0, math.ceil((a.ended_at or time.time()) + backoff.delay(n) - time.time()))
        when = (f"in {left}s" + ("+" if backoff.jitter else "")) if left else "now"
        out[a.step_id] = f"RETRYING {when} (attempt {a.attempt + 1}/{a.attempt + 1 + limit - n})"
    return out


@main.command(name="list")
@_store_option
@click.option("--workflow", default=None, help="Only instances of this workflow id.")
@click.option("--state", type=click.Choice(INSTANCE_STATES, case_sensitive=False), default=None,
              help="Only instances in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1_000_000), help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_instances(store: str, workflow: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List instances, newest first (only those of --workflow and in --state when given)."""
    from ..states import InstanceStatus
    from ..strategy import FOR_A_WORKER, why_waiting

    engine = _read_engine(store)
    rows: list[Any] = []
    status = InstanceStatus(state.upper()) if state else None

    waiting: dict[str, str] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            rows.extend(await engine.storage.list_instances(workflow, limit, status))
            for r in rows:
                if r.queued:
                    waiting[r.instance_id] = await why_waiting(engine.storage, r) or FOR_A_WORKER

    _trio_run(main_task)
    if as_json:
        out = [_instance_json(r, []) for r in rows]
        for item in out:
            if item["instance_id"] in waiting:
                item["waiting"] = waiting[item["instance_id"]]
        click.echo(json.dumps(out, indent=2, default=str))
        return
    import time as _time

    for r in rows:
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(r.created_at))
        why = f"  queued: {waiting[r.instance_id]}" if r.instance_id in waiting else ""
        click.echo(f"{r.instance_id}  {when}  {r.workflow_id:<24} v{r.version:<3} {r.status.value}{why}")


FOLLOW_EVERY = 0.2  # seconds between `legato logs -f` reads of the store
_MAY_RETRY = ("USER_FAILED", "PLATFORM_FAILED", "TIMEOUT_FAILED")  # a retry may follow these


@main.command()
@click.argument("instance")
@click.argument("step", required=False)
@click.option("--attempt", type=click.IntRange(1, 2**31), default=None, help="Only this attempt.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new output as it is written, until the instance (or STEP) ends.")
@_store_option
def logs(instance: str, step: str | None, attempt: int | None, follow: bool, store: str) -> None:
    """Print the logs (stdout and stderr) of an instance's steps, or of one STEP.

    INSTANCE is an instance id or a unique prefix of one. With -f, output is printed as the
    instance writes it (from any process using the same store) and the command ends by itself when
    the instance ends, or STEP does (its attempt ends and no retry can follow it).
    """
    engine = _read_engine(store)
    said: dict[str, str] = {}
    current: list[Any] = [None]

    def echo(chunks) -> None:
        for chunk in chunks:
            key = (chunk.step_id, chunk.attempt)
            if step is None and key != current[0]:
                click.echo(f"== {chunk.step_id} #{chunk.attempt}")
                current[0] = key
            click.echo(chunk.text, nl=False)
        sys.stdout.flush()

    async def main_task() -> None:
        import trio

        async with _opened(engine.storage, store):
            record = await _resolve_instance(engine.storage, instance, store)
            iid, offset = record.instance_id, 0
            while True:
                # The state first, then the output: everything written before that state is read.
                record = await engine.storage.get_instance(iid)
                attempts = await engine.storage.get_attempts(iid)
                ended = record.status.terminal or (step is not None and _step_ended(attempts, step, attempt))
                if follow and not ended:
                    lease = await engine.storage.get_lease(iid)
                    gone = lease is None or not lease.live
                    if gone and not (await engine.storage.get_instance(iid)).status.terminal:
                        said["orphan"] = (f"instance {iid} ({record.workflow_id}) is {record.status.value} but no live "
                                          f"worker runs it (its worker died or its lease expired): `legato resume "
                                          f"{iid}` continues it. Stopped following")
                    elif gone:
                        continue  # it ended just now: read its last state and output
                if not follow or ended:
                    _check_attempt(record, attempts, step, attempt)
                elif not offset and step is not None:  # following waits for a step yet to start
                    await _check_step_defined(engine, record, step)
                chunks = await engine.storage.get_logs_since(iid, offset, step, attempt)
                offset += len(chunks)
                echo(chunks)
                if not follow or ended or "orphan" in said:
                    break
                await trio.sleep(FOLLOW_EVERY)
            if not offset:
                which = f"step {step}" + (f" attempt {attempt}" if attempt else "") if step else \
                    (f"attempt {attempt} of its steps" if attempt else "its steps")
                said["empty"] = f"instance {iid}: {which} logged nothing"

    _trio_run(main_task)
    if "empty" in said:  # not silence: say that there is nothing (on stderr, so output stays the log)
        click.echo(f"legato: {said['empty']}", err=True)
    if "orphan" in said:
        _fail(said["orphan"], EXIT_FAILED)


async def _check_step_defined(engine, record, step: str) -> None:
    """Refuse (exit 2) following a STEP that the instance's definition does not have."""
    from ..definition import DefinitionError

    version = await engine.storage.get_definition(record.workflow_id, record.version)
    try:
        ids = [s.id for s in engine.load(version.document).steps] if version is not None else []
    except DefinitionError:  # it no longer loads here: the instance's end settles it
        return
    if ids and step not in ids:
        raise _Refused(f"instance {record.instance_id} ({record.workflow_id}) has no step {step!r}; "
                       f"its steps: {', '.join(ids)}")


def _step_ended(attempts, step: str, attempt: int | None) -> bool:
    """Whether ``step`` (or that attempt of it) has ended for good while its instance runs on: its
    latest attempt ended in a state no retry follows (after a retryable failure, a retry may)."""
    mine = [a for a in attempts if a.step_id == step and (attempt is None or a.attempt == attempt)]
    if not mine or not mine[-1].status.terminal:
        return False
    return attempt is not None or mine[-1].status.value not in _MAY_RETRY


def _check_attempt(record, attempts, step: str | None, attempt: int | None) -> None:
    """Refuse (exit 2) a STEP or --attempt that instance ``record`` does not have, naming what it has."""
    iid = record.instance_id
    steps = list(dict.fromkeys(a.step_id for a in attempts))
    if step is not None:
        tries = [a.attempt for a in attempts if a.step_id == step]
        if not tries:
            have = f"steps that have started: {', '.join(steps)}" if steps else "none of its steps has started"
            raise _Refused(f"instance {iid} ({record.workflow_id}) has no step {step!r} with an attempt; {have}")
        if attempt is not None and attempt not in tries:
            raise _Refused(f"step {step!r} of instance {iid} has no attempt {attempt}; it has attempt"
                           f"{'s' if len(tries) > 1 else ''} {', '.join(map(str, tries))}")
    elif attempt is not None and all(a.attempt != attempt for a in attempts):
        most = max((a.attempt for a in attempts), default=0)
        raise _Refused(f"no step of instance {iid} has an attempt {attempt}"
                       + (f"; the most any step has is {most}" if most else "; none of its steps has started"))


async def _step_ids(engine, record) -> list[str]:
    """The step ids of the instance's definition version, in order; none if it no longer loads
    here (the JSON then lists the steps that have attempts)."""
    from ..definition import DefinitionError

    version = await engine.storage.get_definition(record.workflow_id, record.version)
    if version is None:
        return []
    try:
        return [s.id for s in engine.load(version.document).steps]
    except DefinitionError:
        return []


@main.command()
@click.argument("target", metavar="FILE|INSTANCE")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True,
              help="Mermaid (rendered by GitHub and most Markdown viewers) or Graphviz DOT (`| dot -Tsvg`).")
@_store_option
def graph(target: str, fmt: str, store: str) -> None:
    """Print the DAG of a definition FILE, or of an INSTANCE with each step coloured by its state.

    INSTANCE is an instance id or a unique prefix of one (read from --store).
    """
    from ..definition import DefinitionError
    from ..graph import FORMATS

    draw = FORMATS[fmt]
    if os.path.exists(target) or target.endswith((".json", ".yaml", ".yml")):
        engine = _engine(store)
        try:
            definition = engine.load(target)
        except DefinitionError as exc:
            _print_problems(exc)
            sys.exit(EXIT_INVALID)
        click.echo(draw(definition), nl=False)
        return
    from ..storage import StorageError

    engine = _read_engine(store)
    found: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            record = await _resolve_instance(engine.storage, target, store)
            version = await engine.storage.get_definition(record.workflow_id, record.version)
            try:
                if version is None:
                    raise StorageError(f"its definition {record.workflow_id} v{record.version} is missing from the store")
                found["definition"] = engine.load(version.document)
            except (DefinitionError, StorageError) as exc:
                raise _Refused(f"cannot draw instance {record.instance_id}: {_unloadable(record, exc)}") from None
            found["record"] = record
            found["attempts"] = await engine.storage.get_attempts(record.instance_id)

    _trio_run(main_task)
    record, statuses, attempts = found["record"], {}, {}
    for a in sorted(found["attempts"], key=lambda a: (a.run_id, a.attempt)):  # the latest attempt is the state
        statuses[a.step_id], attempts[a.step_id] = a.status.value, a.attempt
    title = f"{record.workflow_id} v{record.version} [{record.instance_id}] {record.status.value}"
    click.echo(draw(found["definition"], statuses, attempts, title=title), nl=False)
