"""A definition's DAG as text a diagram tool draws: Mermaid (GitHub, GitLab and most Markdown
viewers render it) or Graphviz DOT. Given step statuses (an instance's), each step shows its
state and is coloured by it. Used by ``legato graph``.
"""

from __future__ import annotations

import json
from typing import Mapping

__all__ = ["mermaid", "dot", "FORMATS", "COLOURS"]

# state -> (fill, stroke): green done, red failed, blue running, yellow waiting, grey not run.
_GREEN, _RED, _BLUE, _YELLOW, _GREY, _ORANGE = (
    ("#c8e6c9", "#2e7d32"), ("#ffcdd2", "#c62828"), ("#bbdefb", "#1565c0"), ("#fff9c4", "#f9a825"),
    ("#eeeeee", "#9e9e9e"), ("#ffe0b2", "#ef6c00"))
COLOURS: dict[str, tuple[str, str]] = {
    "SUCCEEDED": _GREEN,
    "COMPLETED_WITH_ERROR": _ORANGE, "STOPPED": _ORANGE,
    "USER_FAILED": _RED, "PLATFORM_FAILED": _RED, "TIMEOUT_FAILED": _RED, "FATALLY_FAILED": _RED,
    "INTERNALLY_FAILED": _RED, "TIMED_OUT": _RED,
    "STARTING": _BLUE, "RUNNING": _BLUE, "FINISHING": _BLUE,
    "CREATED": _YELLOW, "INITIALIZED": _YELLOW, "PAUSED": _YELLOW, "WAITING_FOR_SIGNALS": _YELLOW,
    "EVALUATING_PARAMS": _YELLOW, "WAITING_FOR_PERMITS": _YELLOW,
    "SKIPPED": _GREY, "UNSATISFIED": _GREY, "NOT_CREATED": _GREY, "DISABLED": _GREY,
}


def _edges(definition):
    """(source, target, condition or "" when it is always true), in definition order."""
    for step in definition.steps:
        for target, condition in step.successors:
            yield step.id, target, "" if condition.constant is True else condition.source


def _node_text(step, statuses: Mapping[str, str] | None, attempts: Mapping[str, int] | None) -> list[str]:
    lines = [step.id, step.type]
    if statuses is not None:
        state = statuses.get(step.id, "NOT_CREATED")
        tries = (attempts or {}).get(step.id, 0)
        lines.append(f"{state} (attempt {tries})" if tries > 1 else state)
    return lines


def _mermaid_text(text: str) -> str:
    # Inside a quoted Mermaid label only these need entity codes ('#' first: it starts them).
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return " ".join(text.split())


def mermaid(definition, statuses: Mapping[str, str] | None = None, attempts: Mapping[str, int] | None = None,
            title: str = "") -> str:
    """The DAG as a Mermaid flowchart. With ``statuses`` (step id -> state), each step shows and
    is coloured by its state (a step missing from it is NOT_CREATED); ``attempts`` (step id ->
    latest attempt) adds the attempt number of steps that were retried."""
    ids = {step.id: f"s{i}" for i, step in enumerate(definition.steps)}
    # The title goes in Mermaid's front matter, as a YAML double-quoted (that is, JSON) string.
    out = ["---", f"title: {json.dumps(title or definition.workflow_id)}", "---", "flowchart LR"]
    for step in definition.steps:
        label = "<br/>".join(_mermaid_text(line) for line in _node_text(step, statuses, attempts))
        out.append(f'    {ids[step.id]}["{label}"]')
    for source, target, condition in _edges(definition):
        arrow = f'-->|"{_mermaid_text(condition)}"|' if condition else "-->"
        out.append(f"    {ids[source]} {arrow} {ids[target]}")
    if statuses is not None:
        by_state: dict[str, list[str]] = {}
        for step in definition.steps:
            by_state.setdefault(statuses.get(step.id, "NOT_CREATED"), []).append(ids[step.id])
        for state, nodes in by_state.items():
            fill, stroke = COLOURS.get(state, _GREY)
            out.append(f"    classDef {state} fill:{fill},stroke:{stroke},color:#000")
            out.append(f"    class {','.join(nodes)} {state}")
    return "\n".join(out) + "\n"


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(definition, statuses: Mapping[str, str] | None = None, attempts: Mapping[str, int] | None = None,
        title: str = "") -> str:
    """The DAG as a Graphviz DOT digraph (``legato graph … --format dot | dot -Tsvg``); ``statuses``
    and ``attempts`` as for :func:`mermaid`."""
    out = [f"digraph {_dot_text(definition.workflow_id)} {{",
           "    rankdir=LR;",
           f"    label={_dot_text(title or definition.workflow_id)}; labelloc=t;",
           '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
           '    edge [fontname="Helvetica", fontsize=10];']
    for step in definition.steps:
        attrs = f"label={_dot_text(chr(10).join(_node_text(step, statuses, attempts)))}"
        if statuses is not None:
            fill, stroke = COLOURS.get(statuses.get(step.id, "NOT_CREATED"), _GREY)
            attrs += f', fillcolor="{fill}", color="{stroke}"'
        out.append(f"    {_dot_text(step.id)} [{attrs}];")
    for source, target, condition in _edges(definition):
        label = f" [label={_dot_text(condition)}]" if condition else ""
        out.append(f"    {_dot_text(source)} -> {_dot_text(target)}{label};")
    out.append("}")
    return "\n".join(out) + "\n"


FORMATS = {"mermaid": mermaid, "dot": dot}
