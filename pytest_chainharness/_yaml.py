"""YAML that remembers where things are: every mapping and list knows its lines.

Scenario files and client spec files both report errors as ``file:line: key: what``;
this loader gives them the lines, and refuses duplicate keys (YAML keeps the last of two
equal keys, so a second ``steps:`` once silently dropped the first list).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["LineDict", "LineList", "YAMLError", "error_line", "item_lines", "load", "value_line"]

YAMLError = yaml.YAMLError


class LineDict(dict[Any, Any]):
    line = 0
    value_lines: dict[Any, int]


class LineList(list[Any]):
    line = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    pairs = loader.construct_pairs(node, deep=True)
    first_line: dict[Any, int] = {}
    for (key, _), (key_node, _) in zip(pairs, node.value, strict=True):
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {first_line[key]})",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line + 1
    result = LineDict(pairs)
    result.line = node.start_mark.line + 1
    result.value_lines = {
        loader.construct_object(k, deep=True): v.start_mark.line + 1 for k, v in node.value
    }
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_sequence(node, deep=True))
    result.line = node.start_mark.line + 1
    result.item_lines = [item.start_mark.line + 1 for item in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load(text: str) -> Any:
    """Parse ``text``; ``yaml.MarkedYAMLError`` (with the line) when it is not YAML."""
    return yaml.load(text, Loader=_Loader)


def error_line(exc: yaml.YAMLError) -> int:
    """The 1-based line a YAML error points at (0 when it points nowhere)."""
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else 0


def value_line(mapping: Any, key: Any, default: int) -> int:
    """The line of ``mapping[key]``'s value, or ``default``."""
    lines: dict[Any, int] = getattr(mapping, "value_lines", {})
    return lines.get(key, default)


def item_lines(items: Any, default: int) -> list[int]:
    """The line of each item of a list (``default`` for each when unknown)."""
    lines: list[int] | None = getattr(items, "item_lines", None)
    return list(lines) if lines is not None else [default] * len(items)
