"""YAML documents whose problems are reported by line and key (the framework, CSV mappings)."""

from __future__ import annotations

from typing import Any

import yaml

Lines = dict[tuple[Any, ...], int]
MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *defaults` merges a mapping: its keys may be written again


class YamlProblem(Exception):
    """The text is not a YAML mapping, or says two things of one key; each of `problems` names its line."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(problems))


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
    twice = keys_written_twice(root)
    if twice:
        raise YamlProblem(*twice)
    return raw, line_index(root)


def keys_written_twice(node: yaml.Node, path: tuple[Any, ...] = (),
                       keys: yaml.constructor.SafeConstructor | None = None) -> list[str]:
    """Every key written again in one mapping, naming both lines. YAML keeps the last without a word, so a
    document with one says two things (a board signs the first tier, the software enforces the last): it is
    refused, not checked as the last, since which was meant is not known."""
    problems: list[str] = []
    keys = keys or yaml.constructor.SafeConstructor()
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != MERGE_TAG:
                key = keys.construct_object(key_node)  # as safe_load reads it: `1` and `0x1` are one key
                if key in first:
                    lines = "on this line" if first[key] == line else f"(lines {first[key]} and {line})"
                    problems.append(f"line {line}, {'.'.join(map(str, child))}: '{key_node.value}' is written twice "
                                    f"{lines}; YAML keeps only the last, without a word, so the file does not say "
                                    "which is meant: remove one")
                first.setdefault(key, line)
            problems += keys_written_twice(value_node, child, keys)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += keys_written_twice(item, (*path, i), keys)
    return problems



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


def line_of(lines: Lines, path: tuple[Any, ...]) -> int | None:
    """The line of a key path, or of its nearest ancestor that the file actually has."""
    for cut in range(len(path), -1, -1):
        found = lines.get(tuple(str(p) if not isinstance(p, int) else p for p in path[:cut]))
        if found is not None:
            return found
    return None


def where(lines: Lines, path: tuple[Any, ...]) -> str:
    """Name a key path with the line of its nearest ancestor that the file actually has."""
    found = line_of(lines, path)
    named = ".".join(str(p) for p in path)
    return named if found is None else f"line {found}, {named or '(top)'}"
