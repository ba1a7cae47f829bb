"""Catalog files as YAML with line numbers: parsing, and errors that name file, line and field.

The catalog's own rules live in intent_catalog; this module knows where in the file each value
was written, so that any problem found later reads `<file>:<line>: <where>: <problem>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import yaml
from pydantic import ValidationError
from yaml.reader import ReaderError

from cpa_scheduler.domain import InvalidArgument, Reason
from cpa_scheduler.strict_yaml import StrictSafeLoader, YamlRefused

YamlPath: TypeAlias = tuple[str | int, ...]


class CatalogError(InvalidArgument):
    """A catalog that cannot be used. The message reads `<file>:<line>: <where>: <problem>`.

    `reason` is TEMPLATE_ERROR for template problems, INVALID_FIELD for schema problems, or the
    domain's own reason when a domain rule rejects a task (e.g. GRAPH_CYCLE, INVALID_RETRY_POLICY).
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str,
        line: int | None,
        where: str = "",
        reason: Reason = Reason.INVALID_FIELD,
        field: str = "",
    ) -> None:
        location = source if line is None else f"{source}:{line}"
        message = f"{location}: {where}: {problem}" if where else f"{location}: {problem}"
        super().__init__(message, reason=reason, field=field)
        self.source = source
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True, kw_only=True)
class LineMap:
    """Where each value of the document sits: the line of its key, or of the sequence item."""

    lines: dict[YamlPath, int]
    # For `key: |` literal blocks: the line the text starts on, so a template's own line adds up.
    literal_starts: dict[YamlPath, int]

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line of `path`, or of its longest prefix present (a missing field: its parent)."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return self.lines.get((), 1)


def parse_yaml(
    text: str,
    *,
    source: str,
    empty: str = "the catalog is empty; expected a mapping with an 'intents' list",
) -> tuple[Any, LineMap]:
    """The document and the line of each of its values; CatalogError for any YAML problem
    (syntax, duplicate keys, aliases, nesting past strict_yaml's bound), or `empty` for a
    document without any value. Policy files (cpa_scheduler.policy) are read with it too."""
    loader: StrictSafeLoader | None = None
    try:
        # Inside the try: the reader refuses control characters as it is made (ReaderError).
        loader = StrictSafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise CatalogError(empty, source=source, line=1)
        _check_duplicate_keys(node, source=source, seen=set())
        data = loader.construct_document(node)
        lines = LineMap(lines={(): node.start_mark.line + 1}, literal_starts={})
        _record_lines(loader, node, (), lines, seen=set())
    except YamlRefused as exc:
        raise CatalogError(exc.problem, source=source, line=exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot parse"
        if exc.context and exc.problem:
            problem = f"{exc.context}: {exc.problem}"
        raise CatalogError(
            f"YAML syntax error: {problem}",
            source=source,
            line=None if mark is None else mark.line + 1,
        ) from None
    except ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        # The reader reports a str's character by its code point.
        character = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise CatalogError(
            f"YAML syntax error: character {character!r} is not allowed",
            source=source,
            line=line,
        ) from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"YAML error: {exc}", source=source, line=None) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _check_duplicate_keys(node: yaml.Node, *, source: str, seen: set[int]) -> None:
    # PyYAML keeps the last of two equal keys silently; a catalog with `name:` twice is a mistake.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in first_lines:
                    raise CatalogError(
                        f"duplicate key {key_node.value!r} (first on line {first_lines[key]})",
                        source=source,
                        line=line,
                    )
                first_lines[key] = line
            _check_duplicate_keys(value_node, source=source, seen=seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, source=source, seen=seen)


def _record_lines(
    loader: yaml.SafeLoader, node: yaml.Node, path: YamlPath, lines: LineMap, *, seen: set[int]
) -> None:
    # Each node is walked once (aliases are refused at load, so this is only defensive).
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = loader.construct_object(key_node)
            if not isinstance(key, str | int):
                continue
            child = (*path, key)
            lines.lines[child] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.ScalarNode) and value_node.style == "|":
                lines.literal_starts[child] = value_node.start_mark.line + 2
            _record_lines(loader, value_node, child, lines, seen=seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines.lines[child] = item.start_mark.line + 1
            _record_lines(loader, item, child, lines, seen=seen)


@dataclass(frozen=True, slots=True, kw_only=True)
class Locator:
    """Turns a path in the document into a CatalogError with line, readable place and field."""

    source: str
    data: Any
    lines: LineMap

    def error(
        self,
        path: Sequence[str | int],
        problem: str,
        *,
        reason: Reason = Reason.INVALID_FIELD,
        line: int | None = None,
    ) -> CatalogError:
        return CatalogError(
            problem,
            source=self.source,
            line=self.lines.line_of(path) if line is None else line,
            where=self.describe(path),
            reason=reason,
            field=dotted(path),
        )

    def describe(self, path: Sequence[str | int]) -> str:
        """`intent 'send_mail' task 'compose' field 'params.to'` for a path into the document."""
        words: list[str] = []
        rest = list(path)
        if len(rest) >= 2 and rest[0] == "intents" and isinstance(rest[1], int):
            intent = self._lookup(path[:2])
            name = intent.get("name") if isinstance(intent, dict) else None
            words.append(f"intent {name!r}" if isinstance(name, str) else f"intents[{rest[1]}]")
            rest = rest[2:]
            if len(rest) >= 2 and rest[0] == "tasks" and isinstance(rest[1], int):
                task = self._lookup([*path[:2], *rest[:2]])
                task_id = task.get("id") if isinstance(task, dict) else None
                words.append(
                    f"task {task_id!r}" if isinstance(task_id, str) else f"tasks[{rest[1]}]"
                )
                rest = rest[2:]
        if rest:
            words.append(f"field {dotted(rest)!r}")
        return " ".join(words)

    def schema_error(self, exc: ValidationError) -> CatalogError:
        errors = exc.errors(include_url=False)
        # Report the problem that comes first in the file; readers fix top to bottom.
        first = min(errors, key=lambda error: self.lines.line_of(error["loc"]))
        if first["type"] == "extra_forbidden":
            problem = "unknown field"
        elif first["type"] == "missing":
            problem = "missing required field"
        else:
            problem = str(first["msg"]).removeprefix("Value error, ")
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return self.error(first["loc"], problem)

    def _lookup(self, path: Sequence[str | int]) -> Any:
        value = self.data
        for part in path:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return None
        return value


def dotted(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
