"""Serialise a request body as the upstream's XML: root `<xml>`, arrays marked.

Each key is a child element and objects nest. A list is written as one
repetition of its element per item, each carrying `array='true'`, so a
one-item list still reads back as a list.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

__all__ = ["to_xml"]


def to_xml(body: dict[str, Any]) -> str:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>', "<xml>"]
    for key, value in body.items():
        _element(parts, key, value)
    parts.append("</xml>")
    return "".join(parts)


def _element(parts: list[str], key: str, value: Any, *, array: bool = False) -> None:
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
    return str(value)
