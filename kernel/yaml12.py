"""YAML as YAML 1.2 (ruamel.yaml, safe and pure Python), bounded before anything is built.

YAML 1.2 is what a reader of a definition expects: ``country: NO``, ``on``, ``off``, ``yes`` stay
strings (YAML 1.1, PyYAML's dialect, reads them as booleans), ``0755`` is the number 755 and
``0o755`` is octal. What Legato adds to ruamel.yaml's safe loader:

- dates stay strings (``2025-01-01`` is text, as in JSON);
- duplicate keys are recorded on the mapping (``object_hook`` decides what a mapping is), so the
  caller reports each at its pointer instead of one keeping the other silently;
- bounds (:mod:`legato.limits`): nesting, the nodes aliases may stand for in all (a "billion
  laughs" is refused at the alias that crosses the bound, a recursive alias at once), the digits
  of an integer; keys must be scalars.

A document may still ask for YAML 1.1 with a ``%YAML 1.1`` directive.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .limits import MAX_NESTING, MAX_NUMBER_DIGITS, MAX_YAML_ALIAS_NODES

__all__ = ["YamlError", "load"]


class YamlError(ValueError):
    """The text is not YAML, or asks for more than the bounds allow. ``line``/``column`` are
    1-based when known."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.column = column

    def located(self) -> str:
        return f"{self.line}:{self.column}: {self.problem}" if self.line is not None else self.problem


_CLASSES: tuple | None = None


def _classes():
    """The composer and constructor, built once (ruamel.yaml is imported only when YAML is read)."""
    global _CLASSES
    if _CLASSES is None:
        from ruamel.yaml.composer import Composer, ComposerError
        from ruamel.yaml.constructor import ConstructorError, SafeConstructor
        from ruamel.yaml.events import AliasEvent
        from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

        class BoundedComposer(Composer):
            def __init__(self, loader: Any = None) -> None:
                super().__init__(loader)
                self.warn_double_anchors = False  # a reused anchor is legal YAML: no stderr noise
                self._depth = 0
                self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, once composed
                self._aliased = 0

            def compose_node(self, parent: Any, index: Any) -> Any:
                parser = self.parser
                if parser.check_event(AliasEvent):
                    event = parser.peek_event()
                    node = self.anchors.get(event.anchor)
                    if node is not None:
                        size = self._sizes.get(id(node))
                        if size is None:
                            raise ComposerError(None, None, f"alias *{event.anchor} refers to a node that contains "
                                                "it (a recursive alias)", event.start_mark)
                        self._aliased += size
                        if self._aliased > MAX_YAML_ALIAS_NODES:
                            raise ComposerError(None, None, f"aliases expand to more than {MAX_YAML_ALIAS_NODES} "
                                                "nodes (MAX_YAML_ALIAS_NODES)", event.start_mark)
                    return super().compose_node(parent, index)
                self._depth += 1
                if self._depth > MAX_NESTING:
                    raise ComposerError(None, None, f"sequences and mappings nest deeper than {MAX_NESTING} "
                                        "levels (MAX_NESTING)", parser.peek_event().start_mark)
                try:
                    node = super().compose_node(parent, index)
                finally:
                    self._depth -= 1
                value, sizes = node.value, self._sizes
                if isinstance(node, SequenceNode):
                    sizes[id(node)] = 1 + sum(sizes.get(id(child), 1) for child in value)
                elif isinstance(node, MappingNode):
                    sizes[id(node)] = 1 + sum(sizes.get(id(k), 1) + sizes.get(id(v), 1) for k, v in value)
                else:
                    sizes[id(node)] = 1
                return node

        class BoundedConstructor(SafeConstructor):
            object_hook: Callable[[Iterable[tuple[Any, Any]]], dict] = dict

            def construct_mapping(self, node: Any, deep: bool = False) -> Any:
                self.flatten_mapping(node)
                for key, _ in node.value:
                    if not isinstance(key, ScalarNode):
                        kind = "sequence" if isinstance(key, SequenceNode) else "mapping"
                        raise ConstructorError(None, None, f"a key must be a plain value, not a {kind}",
                                               key.start_mark)
                return self.object_hook((self.construct_object(k, deep=deep), self.construct_object(v, deep=deep))
                                        for k, v in node.value)

            def construct_yaml_int(self, node: Any) -> int:
                digits = sum(ch.isdigit() for ch in node.value)
                if digits > MAX_NUMBER_DIGITS:
                    raise ConstructorError(None, None, f"a number has more than {MAX_NUMBER_DIGITS} digits "
                                           "(MAX_NUMBER_DIGITS)", node.start_mark)
                return super().construct_yaml_int(node)

        BoundedConstructor.add_constructor("tag:yaml.org,2002:map",
                                           lambda c, node: c.construct_mapping(node, deep=True))
        BoundedConstructor.add_constructor("tag:yaml.org,2002:int", BoundedConstructor.construct_yaml_int)
        BoundedConstructor.add_constructor("tag:yaml.org,2002:timestamp", SafeConstructor.construct_yaml_str)
        _CLASSES = (BoundedComposer, BoundedConstructor)
    return _CLASSES


_HOOKED: dict[Callable, type] = {}


def load(text: str, object_hook: Callable[[Iterable[tuple[Any, Any]]], dict] = dict) -> Any:
    """Parse one YAML 1.2 document (safe types only). ``object_hook`` builds each mapping from its
    ``(key, value)`` pairs, in order. Raises :class:`YamlError`."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    composer, constructor = _classes()
    yaml = YAML(typ="safe", pure=True)
    yaml.Composer = composer
    yaml.Constructor = _HOOKED.get(object_hook)
    if yaml.Constructor is None:
        yaml.Constructor = _HOOKED[object_hook] = type("Constructor", (constructor,),
                                                        {"object_hook": staticmethod(object_hook)})
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or str(exc)
        if exc.context and problem.startswith("but "):  # "…, but found another document"
            problem = f"{exc.context}, {problem}"
        if mark is None:
            raise YamlError(problem) from None
        raise YamlError(problem, mark.line + 1, mark.column + 1) from None
    except (YAMLError, RecursionError) as exc:
        raise YamlError(str(exc).strip() or type(exc).__name__) from None
