"""An instance's steps as a tree: loops as one node with their iterations counted by state.

Storage keeps one row per attempt, a loop's iterations and their steps under the loop's path
(``loop/3/job``: step ``job`` of iteration 3 of ``loop``; see :mod:`legato.scope`). The views read
it through :func:`tree`: the latest attempt of every step of a scope, each loop step with its
iterations (by number) and :func:`loop_summary`'s one line (``foreach 1,240/2,200 · 3 failed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from .model import AttemptRecord

__all__ = ["Node", "tree", "find", "loop_summary", "loop_total"]

_RUNNING = {"CREATED", "INITIALIZED", "WAITING_FOR_SIGNALS", "EVALUATING_PARAMS", "WAITING_FOR_PERMITS",
            "STARTING", "RUNNING", "FINISHING"}


@dataclass
class Node:
    """One step of a scope (its latest attempt), or one iteration of a loop."""

    key: str
    record: AttemptRecord | None = None
    children: dict[str, "Node"] = field(default_factory=dict)  # a loop's iterations / an iteration's steps

    @property
    def is_iteration(self) -> bool:
        return self.key.rpartition("/")[2].isdigit()

    def iterations(self) -> list["Node"]:
        return sorted((n for n in self.children.values() if n.is_iteration), key=lambda n: int(n.key.rpartition("/")[2]))


def tree(attempts: Iterable[AttemptRecord]) -> dict[str, Node]:
    """The top-level steps by id, each loop holding its iterations, each iteration its steps."""
    nodes: dict[str, Node] = {}
    top: dict[str, Node] = {}
    for record in attempts:
        key = record.step_id
        node = nodes.get(key)
        if node is None:
            node = nodes[key] = Node(key)
            parent, _, name = key.rpartition("/")
            if not parent:
                top[name] = node
            else:
                holder = nodes.get(parent)
                if holder is None:
                    holder = nodes[parent] = _orphan(parent, nodes, top)
                holder.children[name] = node
        if node.record is None or record.attempt >= node.record.attempt:
            node.record = record
    return top


def _orphan(key: str, nodes: dict[str, Node], top: dict[str, Node]) -> Node:
    """A node for a path whose own row was not seen (yet): its descendants still hang under it."""
    node = Node(key)
    parent, _, name = key.rpartition("/")
    if not parent:
        top[name] = node
    else:
        holder = nodes.get(parent) or _orphan(parent, nodes, top)
        nodes[parent] = holder
        holder.children[name] = node
    return node


def find(top: dict[str, Node], path: str) -> Node | None:
    """The node at ``path`` (``loop``, ``loop/3``, ``loop/3/inner``)."""
    parts = path.strip("/").split("/")
    node = top.get(parts[0])
    for part in parts[1:]:
        if node is None:
            return None
        node = node.children.get(part)
    return node


def loop_total(record: AttemptRecord | None) -> int | None:
    """A foreach's number of iterations, from its evaluated loop params (None for a while, or
    before its params are evaluated)."""
    if record is None or not isinstance(record.params, dict):
        return None
    if isinstance(record.outputs, dict) and isinstance(record.outputs.get("iterations"), int) \
            and record.status.terminal:
        return record.outputs["iterations"]
    loop = record.params.get("loop_params")
    if not isinstance(loop, dict) or not loop or not all(isinstance(v, list) for v in loop.values()):
        return None
    return math.prod(len(v) for v in loop.values())


def counts(node: Node) -> dict[str, int]:
    """The node's iterations by state."""
    out: dict[str, int] = {}
    for it in node.children.values():
        if it.is_iteration and it.record is not None:
            out[it.record.status.value] = out.get(it.record.status.value, 0) + 1
    return out


def loop_summary(kind: str, node: Node) -> str:
    """``foreach 1,240/2,200 · 3 failed · 100 running``: the iterations ended of how many, and
    the states that are not plain success."""
    by_state = counts(node)
    ended = sum(n for s, n in by_state.items() if s not in _RUNNING)
    total = loop_total(node.record)
    parts = [f"{kind} {ended:,}/{total:,}" if total is not None else f"{kind} {ended:,} done"]
    failed = sum(n for s, n in by_state.items() if s in ("FATALLY_FAILED", "INTERNALLY_FAILED"))
    if failed:
        parts.append(f"{failed:,} failed")
    for state in ("TIMED_OUT", "STOPPED"):
        if by_state.get(state):
            parts.append(f"{by_state[state]:,} {state.lower().replace('_', ' ')}")
    running = sum(n for s, n in by_state.items() if s in _RUNNING)
    if running:
        parts.append(f"{running:,} running")
    return " · ".join(parts)


def to_json(node: Node, iso) -> dict[str, Any]:
    """A node as ``status --json`` prints it: a loop's iterations (and theirs) nested in it."""
    a = node.record
    out: dict[str, Any] = {"status": a.status.value if a else "NOT_CREATED", "attempt": a.attempt if a else 0,
                           "outputs": a.outputs if a else {}, "message": a.message if a else "",
                           "started_at": iso(a.started_at) if a else None, "ended_at": iso(a.ended_at) if a else None}
    if node.is_iteration:
        out = {"status": out["status"], "loop_params": a.params if a else {}, "message": out["message"],
               "started_at": out["started_at"], "ended_at": out["ended_at"],
               "steps": {name: to_json(child, iso) for name, child in node.children.items()}}
    elif node.children:
        out["iterations"] = {n.key.rpartition("/")[2]: to_json(n, iso) for n in node.iterations()}
    return out
