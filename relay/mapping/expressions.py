"""Payload expressions: JMESPath, with a few string functions added.

JMESPath does the selecting (`customer.email`, `answers[?type=='email'] | [0]`);
the added functions are the ones form payloads need and JMESPath lacks:
`lower`, `upper`, `trim`, `split`, `from_json`; `matches(text, pattern)`, a
case-insensitive regex test for finding answers by their question's title;
`pick(object, pattern)`, the values of the keys that match a pattern, for
payloads keyed by field ids such as Jotform's `q4_email`; and `get(object, key)`,
the value of a key the payload itself names, such as Wufoo's
`get(@, FieldStructure.Fields[?Type=='email'] | [0].ID)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath import functions

__all__ = ["compile_expression", "expression_problem", "search"]


class _RelayFunctions(functions.Functions):
    @functions.signature({"types": ["string", "null"]})
    def _func_lower(self, value: str | None) -> str | None:
        return value.lower() if value is not None else None

    @functions.signature({"types": ["string", "null"]})
    def _func_upper(self, value: str | None) -> str | None:
        return value.upper() if value is not None else None

    @functions.signature({"types": ["string", "null"]})
    def _func_trim(self, value: str | None) -> str | None:
        return value.strip() if value is not None else None

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_split(self, value: str | None, separator: str) -> list[str] | None:
        return value.split(separator) if value is not None else None

    @functions.signature({"types": ["string", "null"]})
    def _func_from_json(self, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return None

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_matches(self, value: str | None, pattern: str) -> bool:
        if value is None:
            return False
        try:
            return re.search(pattern, value, re.IGNORECASE) is not None
        except re.error:
            return False

    @functions.signature({"types": ["object", "null"]}, {"types": ["string"]})
    def _func_pick(self, value: dict[str, Any] | None, pattern: str) -> list[Any]:
        """Values of the keys that match `pattern` (case-insensitive), in key order."""
        if not value:
            return []
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error:
            return []
        return [item for key, item in value.items() if compiled.search(str(key))]

    @functions.signature({"types": ["object", "null"]}, {"types": ["string", "null"]})
    def _func_get(self, value: dict[str, Any] | None, key: str | None) -> Any:
        """The value of `key`, a key found in the payload (a field id its form's structure names)."""
        if value is None or key is None:
            return None
        return value.get(key)


_OPTIONS = jmespath.Options(custom_functions=_RelayFunctions())


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> Any:
    """Compile once; mapping files are loaded once and reused for every payload."""
    return jmespath.compile(expression)


def _is_false(value: Any) -> bool:
    # JMESPath's falsiness, as its interpreter tests it (0 is true).
    return value == "" or value == [] or value == {} or value is None or value is False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equals(left: Any, right: Any) -> bool:
    # JMESPath's equality: a number never equals a boolean (Python has 0 == False).
    if isinstance(left, bool) != isinstance(right, bool) and (_is_number(left) or _is_number(right)):
        return False
    return bool(left == right)


def _direct(node: dict[str, Any]) -> Callable[[Any], Any] | None:
    """A direct evaluator for a parsed expression JMESPath's interpreter is slow at, else None.

    Covered: fields, dots, `||`, `&&`, `!`, `==`, `!=`, literals and lists of
    expressions, which is what most mapping paths and ping tests are
    (`customer.email || email`, `test == 'test' && !Email`,
    `[phone, customer.phone]`). JMESPath's tree interpreter costs several
    times a plain dictionary walk for them. The semantics are JMESPath's: a
    field of anything but an object is null, a path stops at the first null,
    `||` and `&&` test JMESPath's falsiness, `!0` is false, and a number never
    equals a boolean. Everything else goes to JMESPath itself.
    """
    kind = node["type"]
    if kind == "field":
        name = node["value"]
        return lambda data: data.get(name) if isinstance(data, dict) else None
    if kind == "literal":
        literal = node["value"]
        return lambda _data: literal
    children = [_direct(child) for child in node["children"]]
    if not children or any(child is None for child in children):
        return None
    steps: list[Callable[[Any], Any]] = [child for child in children if child is not None]
    if kind == "multi_select_list":  # `[phone, customer.phone]`: each, nulls kept; of null, null

        def each(data: Any) -> Any:
            return None if data is None else [step(data) for step in steps]

        return each
    if kind == "subexpression":

        def walk(data: Any) -> Any:
            for step in steps:
                data = step(data)
                if data is None:
                    return None
            return data

        return walk
    if kind == "not_expression":
        # JMESPath's `!` is Python's `not` except that `!0` is false: exactly its falsiness test.
        (inner,) = steps
        return lambda data: _is_false(inner(data))
    if kind not in ("or_expression", "and_expression", "comparator"):
        return None
    first, second = steps
    if kind == "or_expression":

        def either(data: Any) -> Any:
            value = first(data)
            return second(data) if _is_false(value) else value

        return either
    if kind == "and_expression":

        def both(data: Any) -> Any:
            value = first(data)
            return value if _is_false(value) else second(data)

        return both
    if node["value"] == "eq":
        return lambda data: _equals(first(data), second(data))
    if node["value"] == "ne":
        return lambda data: not _equals(first(data), second(data))
    return None  # ordering comparators: JMESPath's rules for non-numbers stay with JMESPath


@lru_cache(maxsize=4096)
def _evaluator(expression: str) -> Callable[[Any], Any]:
    compiled = compile_expression(expression)
    direct = _direct(compiled.parsed)
    if direct is not None:
        return direct
    return lambda data: compiled.search(data, options=_OPTIONS)


def expression_problem(expression: str) -> str | None:
    """Why `expression` is not valid JMESPath, or None."""
    try:
        compile_expression(expression)
    except jmespath_errors.JMESPathError as exc:
        return f"invalid expression {expression!r}: {str(exc).splitlines()[0]}"
    return None


def search(expression: str, data: Any) -> Any:
    """Evaluate `expression` over `data`; a runtime type clash yields None."""
    try:
        return _evaluator(expression)(data)
    except (jmespath_errors.JMESPathError, TypeError, ValueError, KeyError):
        return None
