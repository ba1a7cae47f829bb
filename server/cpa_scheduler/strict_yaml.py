"""YAML that people write for us (intent catalogs, `cpa submit --todos`): no aliases, bounded depth.

PyYAML's SafeLoader still expands aliases: a few hundred bytes of nested aliases ("billion
laughs") describe hundreds of millions of values, and every later walk over the document (schema
checks, conversion) takes minutes. Deep nesting overflows PyYAML's recursive composer instead.
Our files need neither, so both are refused while the document is composed, before anything is
built, with the line they are on. The server's catalog loader and the CLI share this one loader.
"""

from __future__ import annotations

import yaml

# Deeper than any catalog or todos file needs (a ToDo's params are a few levels), far below the
# depth at which the recursive composer and our own walks reach Python's recursion limit.
MAX_YAML_DEPTH = 64


class YamlRefused(yaml.YAMLError):
    """A document that parses but is refused (an alias, or nesting past MAX_YAML_DEPTH)."""

    def __init__(self, problem: str, *, line: int) -> None:
        super().__init__(f"line {line}: {problem}")
        self.problem = problem
        self.line = line


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (`*name`, hence merge keys `<<: *name`) and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        line = 1 if mark is None else mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise YamlRefused(
                f"alias *{event.anchor} is not allowed: write the value out (aliases let a small "
                "file expand into a huge document)",
                line=line,
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlRefused(
                    f"values nested deeper than {MAX_YAML_DEPTH} levels are not allowed", line=line
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
