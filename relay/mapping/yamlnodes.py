"""Read YAML safely and remember the line of every key and item.

The loader composes nodes with PyYAML's safe loader (no tags, no objects), then
builds plain data alongside a table from key path to line number, so that a
marshmallow error on `rules.0.fields.phone` can be reported as
`mappings/tilda.yaml:14 rules.0.fields.phone: ...`.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["LineTable", "load_with_lines"]

LineTable = dict[tuple[str, ...], int]
# libyaml's parser when PyYAML was built with it (the wheels are): the same nodes, lines and safe tags, five
# times faster than PyYAML's own, which was two thirds of every command's start (28 mapping files).
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MERGE_TAG = "tag:yaml.org,2002:merge"


def load_with_lines(text: str) -> tuple[Any, LineTable]:
    """Parse one YAML document, returning its data and the line of each path.

    Raises:
        yaml.YAMLError: the text is not YAML, or uses a tag the safe loader refuses.
    """
    node = yaml.compose(text, Loader=_COMPOSER)
    lines: LineTable = {}
    if node is None:
        return None, lines
    return _build(node, (), lines), lines


_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _build(node: yaml.Node, path: tuple[str, ...], lines: LineTable) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise yaml.constructor.ConstructorError(
            None, None, f"tag {node.tag!r} is not allowed in a mapping file", node.start_mark
        )
    if isinstance(node, yaml.MappingNode):
        data: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                _merge(value_node, path, lines, merged)
                continue
            key = _scalar(key_node)
            child = (*path, str(key))
            lines[child] = key_node.start_mark.line + 1
            data[key] = _build(value_node, child, lines)
        return {**{key: value for key, value in merged.items() if key not in data}, **data} if merged else data
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, str(i)), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _merge(node: yaml.Node, path: tuple[str, ...], lines: LineTable, merged: dict[Any, Any]) -> None:
    """YAML's merge key: `<<: *rule` (or a list of anchors) gives the keys of those mappings that the mapping
    does not give itself, the first anchor's first; a merged key's line is its anchor's."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, "<< merges a mapping (<<: *anchor) or a list of them", source.start_mark
            )
        scratch: LineTable = {}
        for key, value in _build(source, path, scratch).items():
            if key not in merged:
                merged[key] = value
        for at, line in scratch.items():
            lines.setdefault(at, line)


def _scalar(node: yaml.Node) -> Any:
    # construct_object on a lone scalar node applies the safe loader's resolvers
    # (ints, bools, nulls...) without any of the unsafe constructors.
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def line_of(lines: LineTable, path: tuple[str, ...]) -> int:
    """The line of `path`, or of its nearest ancestor the table knows."""
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)
