"""Turn a raw webhook body into plain data (dicts, lists, strings, numbers).

Every parser works on bytes that were already read (and, for signed sources,
verified), and every failure is an `Unparsable` or `UnsupportedContentType`,
never another exception: bad input is the sender's problem, not a 500.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from typing import Any
from urllib.parse import parse_qsl, unquote_plus
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeElementTree
import orjson
from defusedxml import DefusedXmlException
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from relay.errors import Unparsable, UnsupportedContentType

__all__ = ["Limits", "parse_body", "nest_pairs", "media_type", "read_field"]

JSON_TYPES = {"application/json", "text/json", "application/javascript", "text/plain"}
FORM_TYPES = {"application/x-www-form-urlencoded"}
MULTIPART_TYPES = {"multipart/form-data"}
XML_TYPES = {"application/xml", "text/xml"}


class Limits:
    """Bounds on what a body may hold once parsed."""

    max_depth = 64
    max_form_fields = 1000
    max_multipart_parts = 1000


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """`('application/json', {'charset': 'utf-8'})` from a Content-Type header."""
    mimetype, options = parse_options_header(content_type or "")
    return mimetype.lower(), options


def parse_body(body: bytes, content_type: str | None, *, check_depth: bool = True) -> Any:
    """Parse `body` by its content type (sniffed when the header is missing).

    `check_depth=False` skips the JSON nesting limit, for a body that passed it
    when it was received (the worker re-parses every stored body).

    Raises:
        UnsupportedContentType: the type is none relay reads.
        Unparsable: the body does not parse as its type says.
    """
    return _read(body, content_type, check_depth=check_depth)[1]


def _read(body: bytes, content_type: str | None, *, check_depth: bool = True) -> tuple[str, Any]:
    """(how the body was read: json, form, multipart or xml; what it holds): the one place that decides."""
    mimetype, options = media_type(content_type)
    if not mimetype:
        mimetype = _sniff(body)
    if mimetype in JSON_TYPES or mimetype.endswith("+json"):
        return "json", _parse_json(body, options.get("charset"), check_depth=check_depth)
    if mimetype in FORM_TYPES:
        if body[:64].lstrip()[:1] in (b"{", b"["):  # a form encoder writes a brace as %7B
            try:
                # JSON text labelled a form: what Google Apps Script's UrlFetchApp sends for `payload:
                # JSON.stringify(...)` without `contentType`, whose default is form-urlencoded. Read as a
                # form it was one field named by the whole text, and every such webhook failed its mapping.
                return "json", _parse_json(body, options.get("charset"), check_depth=check_depth)
            except Unparsable:
                pass  # a form after all, whose first field's name begins with a brace
        return "form", _parse_form(body, options.get("charset"))
    if mimetype in MULTIPART_TYPES:
        return "multipart", _parse_multipart(body, mimetype, options)
    if mimetype in XML_TYPES or mimetype.endswith("+xml"):
        return "xml", _parse_xml(body)
    raise UnsupportedContentType(
        f"content type {mimetype!r} is not supported; send JSON, form-urlencoded, multipart/form-data or XML"
    )


def read_field(body: bytes, content_type: str | None, name: str) -> tuple[Any, bytes]:
    """(the top-level field `name` of a JSON or form body, the body without it), for a secret a provider
    puts in the body (Wufoo's and Formstack's HandshakeKey), which must be neither stored nor forwarded.

    A form keeps every other byte as sent (its pairs are cut out: `name`, `name[...]`); a JSON object is
    written again without the key, which parses to the same data (Python's encoder, which keeps every
    digit of an integer, and ASCII escapes, which any charset takes). The field is None when absent.

    Raises:
        UnsupportedContentType: a multipart or XML body (relay cannot cut a part out of it).
        Unparsable: the body does not parse as its type says.
    """
    kind, data = _read(body, content_type)
    if kind not in ("json", "form"):
        raise UnsupportedContentType(f"this source reads its token from a JSON or form-encoded body, not {kind}")
    if not isinstance(data, dict) or name not in data:
        return None, body
    value = data[name]
    charset = media_type(content_type)[1].get("charset") or "utf-8"
    if kind == "json":
        rest = {key: item for key, item in data.items() if key != name}
        return value, json.dumps(rest, separators=(",", ":")).encode(charset)
    return value, _form_without(body, charset, name)


def _form_without(body: bytes, charset: str, name: str) -> bytes:
    """A form body without the pairs whose key is `name` or `name[...]`, every other byte as sent."""
    nested = name + "["
    kept = []
    for pair in body.split(b"&"):
        key = unquote_plus(pair.split(b"=", 1)[0].decode(charset, "replace"), encoding=charset, errors="replace")
        if key != name and not key.startswith(nested):
            kept.append(pair)
    return b"&".join(kept)


def _sniff(body: bytes) -> str:
    head = body.lstrip()[:1]
    if head in (b"{", b"["):
        return "application/json"
    if head == b"<":
        return "application/xml"
    return "application/x-www-form-urlencoded"


def _decode(body: bytes, charset: str | None) -> str:
    encoding = (charset or "utf-8").lower()
    try:
        text = body.decode(encoding)
    except LookupError as exc:
        raise Unparsable(f"unknown charset {charset!r}") from exc
    except UnicodeDecodeError as exc:
        raise Unparsable(f"body is not valid {encoding} text (byte {exc.start})") from exc
    return text.removeprefix("\ufeff")


def _refuse_constant(name: str) -> Any:
    raise Unparsable(f"invalid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise Unparsable(f"invalid JSON: {text[:40]} is too large for a number")
    return number


# Python's parser takes NaN and Infinity, which JSON has not, and turns 1e999 into
# infinity: each would reach the upstream as invalid JSON, so they are refused here.
_JSON_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)

# orjson parses a body with a third of the standard library's work (a 7 KB Shopify order: 230,000
# instructions against 615,000, two fifths of its whole translation) and refuses NaN, Infinity and
# 1e999 itself. But it turns an integer beyond 64 bits into a float, dropping digits, so a body with
# 19 digits in a row anywhere (strings too: that only costs speed) goes to the standard library, and
# so does everything orjson refuses (a lone surrogate escape, which Python takes; a byte order mark;
# bytes that are not UTF-8; a real error, whose message is then Python's). The answer is the
# standard library's for every body. orjson reads a UTF-8 body as it came, without decoding it first;
# runs of digits are found on the bytes with every other byte blanked (re's search took as long as
# the parse itself).
_DIGITS_AS_ZERO = bytes(48 if byte in b"0123456789" else 32 for byte in range(256))  # 48 is "0", 32 " "
_LONG_NUMBER = b"0" * 19
_NOT_PARSED = object()


def _parse_with_orjson(utf8: bytes) -> Any:
    """`utf8`'s data, or _NOT_PARSED where the standard library must decide."""
    if _LONG_NUMBER in utf8.translate(_DIGITS_AS_ZERO):
        return _NOT_PARSED
    try:
        return orjson.loads(utf8)
    except orjson.JSONDecodeError:
        return _NOT_PARSED


def _parse_json(body: bytes, charset: str | None, *, check_depth: bool = True) -> Any:
    utf8 = (charset or "utf-8").lower() in ("utf-8", "utf8")
    data = _parse_with_orjson(body) if utf8 else _NOT_PARSED
    lone_surrogates = False
    if data is _NOT_PARSED:
        text = _decode(body, charset)
        if not text.strip():
            raise Unparsable("empty JSON body")
        if not utf8:  # another charset: its text, as UTF-8
            data = _parse_with_orjson(text.encode("utf-8", "surrogatepass"))
        if data is _NOT_PARSED:
            data = _parse_with_python(text)
            lone_surrogates = _SURROGATE_ESCAPE.search(text) is not None
    if check_depth and isinstance(data, (dict, list)):
        _check_depth(data)
    return _replace_lone_surrogates(data) if lone_surrogates else data


# Python's parser turns an escaped half of a character (`"\ud83d"` alone: text cut in the middle of an emoji,
# as JavaScript's substring does) into a lone surrogate, which no UTF-8 encoder takes: such a value in a
# de-duplication path failed the store's write (a 500, and the provider's retries with it), and in a field it
# failed every try to send the delivery. It becomes U+FFFD, the replacement character; the lead goes through.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_lone_surrogates(data: Any) -> Any:
    """`data` with each lone surrogate, in keys and values at any depth, replaced by U+FFFD (in place)."""
    if isinstance(data, str):
        return _LONE_SURROGATE.sub("\ufffd", data)
    stack: list[Any] = [data] if isinstance(data, (dict, list)) else []

    def fixed(item: Any) -> Any:
        if isinstance(item, str):
            return _LONE_SURROGATE.sub("\ufffd", item)
        if isinstance(item, (dict, list)):
            stack.append(item)
        return item

    while stack:
        container = stack.pop()
        if isinstance(container, list):
            container[:] = [fixed(item) for item in container]
        else:
            pairs = list(container.items())
            container.clear()
            container.update((_LONE_SURROGATE.sub("\ufffd", key), fixed(item)) for key, item in pairs)
    return data


def _parse_with_python(text: str) -> Any:
    try:
        return _JSON_DECODER.decode(text)
    except RecursionError as exc:
        raise Unparsable("JSON nested too deeply") from exc
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's guard against quadratic int parsing
            raise Unparsable(f"invalid JSON: a number has more than {sys.get_int_max_str_digits()} digits") from exc
        raise Unparsable(f"invalid JSON: {exc}") from exc


_CONTAINER_TYPES = frozenset((dict, list))


def _check_depth(data: Any) -> None:
    """Refuse payloads nested deeper than the limit (the root is level 1).

    Level by level, each value's type looked up in a set: a shop's order is hundreds of scalars under
    objects, and a stack of (container, depth) pairs with an `isinstance` a value cost two to three times
    as much, more than orjson's whole parse of it. Parsers give plain dicts and lists, never subclasses.
    """
    level = [data]
    depth = 1
    while True:
        below = []
        for value in level:
            for child in value.values() if type(value) is dict else value:
                if type(child) in _CONTAINER_TYPES:
                    below.append(child)
        if not below:
            return
        depth += 1
        if depth > Limits.max_depth:
            raise Unparsable(f"payload nested deeper than {Limits.max_depth} levels")
        level = below


def _parse_form(body: bytes, charset: str | None) -> dict[str, Any]:
    text = _decode(body, charset)
    if not text.strip():
        # Never a submission. It is what arrives when a sender posts without a Content-Length (gunicorn
        # then reads no body): answered 202, the lead it meant to send would have been lost unseen.
        raise Unparsable("empty form body")
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            max_num_fields=Limits.max_form_fields,
            encoding=charset or "utf-8",
            errors="strict",
        )
    except ValueError as exc:
        raise Unparsable(f"form body: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise Unparsable("form body has percent-escapes that are not valid text") from exc
    return nest_pairs(pairs)


def _parse_multipart(body: bytes, mimetype: str, options: dict[str, str]) -> dict[str, Any]:
    boundary = options.get("boundary")
    if not boundary:
        raise Unparsable("multipart body without a boundary")
    closing = f"--{boundary}--"
    # werkzeug reads a body that stops mid-part as if it were whole; relaying the parts
    # that arrived would forward half a lead.
    if closing.encode("latin-1", "replace") not in body:
        raise Unparsable(f"multipart body ends before its closing boundary {closing!r}; it was cut short")
    # Not silent: werkzeug's default swallows a broken part (one without Content-Disposition) and answers
    # an empty form, which relay took as a webhook with nothing in it.
    parser = FormDataParser(max_form_parts=Limits.max_multipart_parts, max_content_length=len(body) + 1, silent=False)
    try:
        _stream, form, files = parser.parse(io.BytesIO(body), mimetype, len(body), options)
    except (ValueError, RequestEntityTooLarge) as exc:
        raise Unparsable(f"multipart body: {exc}") from exc
    pairs: list[tuple[str, Any]] = list(_multidict_items(form))
    # Uploaded files are not relayed; their names are, so a mapping can mention them.
    pairs.extend((name, upload.filename or "") for name, upload in _multidict_items(files))
    # A part without a name (`nam^="Email"`) no mapping can refer to; the named ones are the lead (a part
    # named None made the whole request a 500).
    return nest_pairs([(name, value) for name, value in pairs if name is not None])


def _multidict_items(data: MultiDict[str, Any]) -> list[tuple[str, Any]]:
    return list(data.items(multi=True))


_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def nest_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Fold form pairs into nested data the way PHP and Rails read them.

    `fields[email][value]=a` becomes `{"fields": {"email": {"value": "a"}}}`,
    `tag[]=a&tag[]=b` and a repeated plain key both become a list.
    """
    result: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        path = [head] + _BRACKETS.findall("[" + rest) if rest and rest.endswith("]") else [key]
        if not head:
            path = [key]
        _insert(result, path, value)
    return result


def _insert(target: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = target
    for index, part in enumerate(path):
        last = index == len(path) - 1
        if part == "" and isinstance(node, list):
            if last:
                node.append(value)
                return
            child: Any = {}
            node.append(child)
            node = child
            continue
        if not isinstance(node, dict):
            return  # a scalar was already stored here: keep the first shape
        if last:
            if part in node:
                existing = node[part]
                node[part] = existing + [value] if isinstance(existing, list) else [existing, value]
            else:
                node[part] = value
            return
        following = path[index + 1]
        if part not in node or not isinstance(node[part], (dict, list)):
            node[part] = [] if following == "" else {}
        node = node[part]


def _parse_xml(body: bytes) -> Any:
    try:
        root = SafeElementTree.fromstring(body, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise Unparsable(f"XML with DTDs or entities is refused ({type(exc).__name__})") from exc
    except SafeElementTree.ParseError as exc:
        raise Unparsable(f"invalid XML: {exc}") from exc
    return _element_to_data(root, depth=1)


_RAILS_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_RAILS_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def _leaf_value(element: Element) -> Any:
    """A childless element's value. Rails' `to_xml` (InSales' XML webhooks) marks what text cannot say:
    `nil="true"` an absent value, `type="boolean"` and `type="integer"` a value that is not text, and
    `type="array"` a list, empty here; read as Rails reads them back, so that `client.subscribe` of
    `false` is false, as in the same webhook sent as JSON. Decimals and times stay text, digits intact."""
    text = (element.text or "").strip()
    if element.get("nil") == "true" and not text:
        return None
    kind = element.get("type")
    if kind == "array":
        return []
    if kind == "boolean" and text.lower() in _RAILS_BOOLEANS:
        return _RAILS_BOOLEANS[text.lower()]
    if kind == "integer" and _RAILS_INTEGER.fullmatch(text):
        return int(text)
    return text


def _element_to_data(element: Element, *, depth: int) -> Any:
    if depth > Limits.max_depth:
        raise Unparsable(f"XML nested deeper than {Limits.max_depth} levels")
    children = list(element)
    if not children:
        return _leaf_value(element)
    data: dict[str, Any] = {}
    for child in children:
        tag = child.tag.rsplit("}", 1)[-1]
        value = _element_to_data(child, depth=depth + 1)
        if child.get("array") == "true" or child.get("type") == "array":
            if isinstance(value, dict) and len(value) == 1 and child.get("type") == "array":
                # Rails-style <items type="array"><item>..</item></items>
                inner = next(iter(value.values()))
                data[tag] = inner if isinstance(inner, list) else [inner]
                continue
            if value == [] and tag not in data:  # <items type="array"/>: none
                data[tag] = []
                continue
            data.setdefault(tag, [])
            if not isinstance(data[tag], list):
                data[tag] = [data[tag]]
            data[tag].append(value)
        elif tag in data:
            existing = data[tag]
            data[tag] = existing + [value] if isinstance(existing, list) else [existing, value]
        else:
            data[tag] = value
    return data
