"""String templates: `order_{financial_status}` fills `{...}` with a JMESPath result.

`{{` and `}}` stand for literal braces; `${NAME}` is a setting reference, not a
placeholder. A placeholder whose value is empty makes the whole result None,
so that a tag like `form_{formid}` is left out rather than sent as `form_`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from relay.mapping import envrefs
from relay.mapping.transforms import scalar_text

__all__ = ["render", "template_expressions", "template_pieces"]


@functools.lru_cache(maxsize=1024)
def _parts(template: str) -> tuple[tuple[bool, str], ...]:
    """Split into (is_expression, text) pieces; once per template, which mapping files bound (every
    tag and templated value of every webhook is rendered from one)."""
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if template.startswith("{{", i) or template.startswith("}}", i):
            literal.append(char)
            i += 2
            continue
        if char == "$" and template.startswith("${", i):
            end = template.find("}", i)
            if end < 0:
                raise ValueError("unclosed ${ in template")
            literal.append(template[i : end + 1])
            i = end + 1
            continue
        if char == "{":
            end = template.find("}", i)
            if end < 0:
                raise ValueError("unclosed { in template")
            expression = template[i + 1 : end].strip()
            if not expression:
                raise ValueError("empty {} in template")
            if literal:
                parts.append((False, "".join(literal)))
                literal = []
            parts.append((True, expression))
            i = end + 1
            continue
        if char == "}":
            raise ValueError("unmatched } in template (write }} for a literal brace)")
        literal.append(char)
        i += 1
    if literal:
        parts.append((False, "".join(literal)))
    return tuple(parts)


def template_pieces(template: str) -> tuple[tuple[bool, str], ...]:
    """(is_expression, text) pieces: literal text (which may hold `${NAME}` references) and expressions."""
    return _parts(template)


def template_expressions(template: str) -> list[str]:
    return [text for is_expression, text in _parts(template) if is_expression]


def render(
    template: str,
    data: Any,
    *,
    search: Callable[[str, Any], Any],
    env: Mapping[str, str],
) -> str | None:
    pieces: list[str] = []
    for is_expression, text in _parts(template):
        if not is_expression:
            pieces.append(envrefs.resolve_text(text, env))
            continue
        value = scalar_text(search(text, data))
        if not value:
            return None
        pieces.append(value)
    return "".join(pieces)
