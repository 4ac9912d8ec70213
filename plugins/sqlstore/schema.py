"""The tables of the SQL store, declared with SQLModel. JSON values are stored as text so the
schema is the same on SQLite and PostgreSQL. Changing a table needs an Alembic migration in
``migrations/versions`` (tests/test_sqlstore.py checks the migrations produce these tables)."""

from __future__ import annotations

from typing import Optional

from sqlalchemy import BigInteger, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata


class DefinitionVersionRow(SQLModel, table=True):
    __tablename__ = "legato_definition_versions"

    workflow_id: str = Field(primary_key=True)
    version: int = Field(primary_key=True)
    document: str = Field(sa_type=Text)
    created_at: float
    active: bool = False


class InstanceRow(SQLModel, table=True):
    __tablename__ = "legato_instances"
    __table_args__ = (
        UniqueConstraint("workflow_id", "request_id", name="uq_legato_instances_request"),
        Index("ix_legato_instances_workflow_created", "workflow_id", "created_at"),
        Index("ix_legato_instances_status", "status"),
        Index("ix_legato_instances_workflow_status", "workflow_id", "status"),
    )

    instance_id: str = Field(primary_key=True)
    workflow_id: str
    version: int
    status: str
    run_id: int = 1
    params: str = Field(sa_type=Text)
    request_id: Optional[str] = None
    initiator: str = "manual"
    created_at: float
    started_at: Optional[float] = None
    ended_at: Optional[float] = None
    message: str = Field(default="", sa_type=Text)
    owner: Optional[str] = None
    lease_expires: Optional[float] = None
    generation: int = 0
    # The lease holder's process (legato.processes.ProcessIdentity): a dead one on the same
    # machine frees the lease at once.
    owner_host: Optional[str] = None
    owner_pid: Optional[int] = None
    owner_started: Optional[int] = Field(default=None, sa_type=BigInteger)
    owner_namespace: Optional[str] = None
    # A subworkflow's parents (legato.model.InstanceRecord.ancestors) as JSON; NULL: none.
    ancestors: Optional[str] = Field(default=None, sa_type=Text)
    # The run strategy it started under (legato.strategy; NULL: none) and, once a STRICT_SEQUENTIAL
    # queue was unblocked past its failure, the run that failed (a later failed run blocks again).
    run_strategy: Optional[str] = None
    workflow_concurrency: Optional[int] = None
    unblocked_run: Optional[int] = None
    # The time the run is for (legato.model.InstanceRecord.run_ts); NULL: created_at.
    run_ts: Optional[float] = None


class AttemptRow(SQLModel, table=True):
    __tablename__ = "legato_attempts"

    instance_id: str = Field(primary_key=True)
    step_id: str = Field(primary_key=True)
    attempt: int = Field(primary_key=True)
    status: str
    run_id: int = 1
    params: Optional[str] = Field(default=None, sa_type=Text)
    outputs: str = Field(default="{}", sa_type=Text)
    message: str = Field(default="", sa_type=Text)
    created_at: float
    started_at: Optional[float] = None
    ended_at: Optional[float] = None
    handle: Optional[str] = Field(default=None, sa_type=Text)


class EventRow(SQLModel, table=True):
    __tablename__ = "legato_events"
    __table_args__ = (Index("ix_legato_events_instance", "instance_id", "id"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    instance_id: str
    step_id: Optional[str] = None
    attempt: int = 0
    status: str
    message: str = Field(default="", sa_type=Text)
    ts: float


class LogRow(SQLModel, table=True):
    __tablename__ = "legato_logs"
    __table_args__ = (Index("ix_legato_logs_instance", "instance_id", "step_id", "attempt", "id"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    instance_id: str
    step_id: str
    attempt: int
    stream: str
    text: str = Field(sa_type=Text)
    ts: float


class ActionRow(SQLModel, table=True):
    """An action asked of an instance or a step (legato.actions): pending while ``applied_at`` is NULL."""

    __tablename__ = "legato_actions"
    __table_args__ = (Index("ix_legato_actions_instance", "instance_id", "id"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    instance_id: str
    step_id: Optional[str] = None
    verb: str
    params: str = Field(sa_type=Text)
    requested_by: str
    requested_at: float
    applied_at: Optional[float] = None
    outcome: str = Field(default="", sa_type=Text)
class PermitRow(SQLModel, table=True):
    """A permit one step attempt holds (legato.permits): ``workflow:<id>``, ``tree:<root
    instance>`` or ``tag:<name>``."""

    __tablename__ = "legato_permits"
    __table_args__ = (Index("ix_legato_permits_holder", "instance_id", "step_id", "attempt"),)

    permit_key: str = Field(primary_key=True)
    instance_id: str = Field(primary_key=True)
    step_id: str = Field(primary_key=True)
    attempt: int = Field(primary_key=True)
    acquired_at: float


class TagPermitRow(SQLModel, table=True):
    """A tag's limit, set with ``legato permits set`` (Maestro's maestro_tag_permit)."""

    __tablename__ = "legato_tag_permits"

    tag: str = Field(primary_key=True)
    max_allowed: int
    set_by: str
    set_at: float


class TriggerCheckpointRow(SQLModel, table=True):
    """What one trigger of one workflow has consumed (legato.triggers), as JSON."""

    __tablename__ = "legato_trigger_checkpoints"

    workflow_id: str = Field(primary_key=True)
    trigger_key: str = Field(primary_key=True)
    value: str = Field(sa_type=Text)
    fired_at: Optional[float] = None
    saved_at: float


class TriggerPauseRow(SQLModel, table=True):
    """A workflow whose triggers are paused (``legato triggers pause``)."""

    __tablename__ = "legato_trigger_pauses"

    workflow_id: str = Field(primary_key=True)
    paused_by: str
    paused_at: float
