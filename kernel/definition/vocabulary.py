"""The names the definition format knows: the fields allowed at each level, the id patterns and
the enumerations (the JSON Schema, :mod:`legato.schema`, is checked against these)."""

from __future__ import annotations

import re


_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")  # Maestro's ids have dots: job.1
_WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_STEP_KEYS = {
    "id", "type", "name", "description", "params", "transition", "retry_policy", "timeout",
    "failure_mode", "tags", "signal_dependencies", "signal_outputs",
}
_NOT_YET: dict[str, str] = {}  # step fields accepted by the format but not supported yet (none now)
_WRAPPERS = {"step", "foreach", "while", "subworkflow"}
_WORKFLOW_KEYS = {"id", "name", "description", "params", "steps", "timeout", "time_triggers", "signal_triggers", "tags",
                  "criticality", "instance_step_concurrency"}
_PROPERTY_KEYS = {"owner", "run_strategy", "step_concurrency", "workflow_concurrency", "description", "alerting", "tags",
                  "access_control", "alerting_disabled", "signal_trigger_disabled", "time_trigger_disabled"}
# Maestro's PropertiesSnapshot adds these to Properties.
_SNAPSHOT_KEYS = {"workflow_id", "create_time", "author"}
# Maestro's WorkflowCreateRequest (properties, workflow, is_active, git_info, extra_info) and its
# stored WorkflowDefinition (properties_snapshot, metadata, activation and bookkeeping fields).
# Only `properties` / `properties_snapshot` and `workflow` mean something here; the rest is kept
# in Definition.document, unread.
_TOP_KEYS = {"properties", "workflow", "is_active", "git_info", "extra_info", "properties_snapshot", "metadata",
             "activate_time", "activated_by", "is_latest", "is_default", "modify_time", "internal_id",
             "trigger_uuids", "enriched_extras"}
_CRITICALITIES = {"CRITICAL", "HIGH", "MEDIUM", "LOW"}
_RETRY_KEYS = {"error_retry_limit", "platform_retry_limit", "timeout_retry_limit", "backoff"}
_BACKOFF_KEYS = {"type", "base", "exponent", "cap", "jitter"}
_TAG_KEYS = {"name", "namespace", "permit", "attributes"}
_TAG_NAMESPACES = {"SYSTEM", "RUNTIME", "JOB_TEMPLATE", "NOTEBOOK_TEMPLATE", "USER_DEFINED", "PLATFORM"}
