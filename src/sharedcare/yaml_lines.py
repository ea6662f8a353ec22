"""YAML documents whose problems are reported by line and key (the framework, CSV mappings)."""

from __future__ import annotations

from typing import Any

import yaml

Lines = dict[tuple[Any, ...], int]


class YamlProblem(Exception):
    """The text is not a YAML mapping; `message` names the line."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def read_yaml(text: str, what: str) -> tuple[dict[str, Any], Lines]:
    """Parse a YAML mapping and index the line of every key path in it."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "unknown line"
        raise YamlProblem(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(raw, dict) or root is None:
        raise YamlProblem(f"line 1: {what} must be a mapping of keys")
    return raw, line_index(root)


def line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path in the YAML document to its 1-based line, so errors can name the line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(line_index(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(line_index(item, (*path, i)))
    return lines


def where(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> str:
    """Name a key path with the line of its nearest ancestor that the file actually has."""
    for cut in range(len(path), -1, -1):
        found = lines.get(tuple(str(p) if not isinstance(p, int) else p for p in path[:cut]))
        if found is not None:
            return f"line {found}, {'.'.join(str(p) for p in path) or '(top)'}"
    return ".".join(str(p) for p in path)
