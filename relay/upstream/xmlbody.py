"""Serialise a request body as the upstream's XML: root `<xml>`, arrays marked.

Each key is a child element and objects nest. A list is written as one
repetition of its element per item, each carrying `array='true'`, so a
one-item list still reads back as a list.
"""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape, quoteattr

__all__ = ["name_problems", "to_xml"]

# An XML element name: a letter (of any script) or `_`, then letters, digits, `_`, `.` or `-`. A field named
# `Lead Source` or `1st` (form builders name fields as the form's author wrote them) has no XML spelling.
_NAME = re.compile(r"[^\W\d][\w.\-]*")


def name_problems(body: dict[str, Any]) -> list[str]:
    """The keys of `body`, at any depth, that cannot be XML element names."""
    problems: list[str] = []
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            problems.extend(f"{key!r} cannot be an XML element name" for key in value if not _NAME.fullmatch(key))
            stack.extend(value.values())
    return problems


def to_xml(body: dict[str, Any]) -> str:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>', "<xml>"]
    for key, value in body.items():
        _element(parts, key, value)
    parts.append("</xml>")
    return "".join(parts)


def _element(parts: list[str], key: str, value: Any, *, array: bool = False) -> None:
    if not _NAME.fullmatch(key):  # never malformed XML; translation refuses such a body first (name_problems)
        raise ValueError(f"{key!r} cannot be an XML element name")
    if isinstance(value, list):
        for item in value:
            _element(parts, key, item, array=True)
        return
    attrs = " array=" + quoteattr("true") if array else ""
    if isinstance(value, dict):
        parts.append(f"<{key}{attrs}>")
        for child_key, child in value.items():
            _element(parts, child_key, child)
        parts.append(f"</{key}>")
        return
    parts.append(f"<{key}{attrs}>{escape(_text(value))}</{key}>")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _NOT_IN_XML.sub("\ufffd", str(value))


# Characters XML 1.0 has no spelling for, not even escaped: a JSON body may carry them (`\u0001`), and one
# in a comment field made the whole request malformed XML, refused by the upstream.
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
