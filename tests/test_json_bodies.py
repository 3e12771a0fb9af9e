"""JSON bodies come out exactly as Python's own parser gives them, whichever parser did the work, except
that a lone surrogate (half of a character) becomes U+FFFD, so that every text can be stored and sent.

Relay parses JSON with orjson (a third of the work) and falls back to the
standard library where orjson would differ: an integer beyond 64 bits (orjson
makes it a float and drops digits), a lone surrogate escape, an error.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.bodies import parse_body

from .conftest import FIXTURES, MAPPINGS


def exact(value):
    """`value` with every number's type made visible: 1 and 1.0, and True and 1, differ here."""
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [exact(item) for item in value]
    return (type(value).__name__, repr(value))


def pythons(text: str):
    """What Python's parser gives for `text`, with each lone surrogate as U+FFFD, as relay gives it."""
    return replaced(json.loads(text))


def replaced(value):
    if isinstance(value, str):
        return re.sub("[\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, dict):
        return {replaced(key): replaced(item) for key, item in value.items()}
    if isinstance(value, list):
        return [replaced(item) for item in value]
    return value


@pytest.mark.parametrize(
    "text",
    [
        "123456789012345678901234567890",
        '{"id": 18446744073709551616, "other": -9223372036854775809}',
        '{"id": 18446744073709551615, "small": -9223372036854775808}',
        '{"order_id": 1234567890123456789012, "note": "x"}',
        '{"phone": "12345678901234567890", "n": 1}',
        '{"lone": "\\ud800", "pair": "\\ud83d\\ude00"}',
        '{"a": 1, "a": 2}',
        '{"zero": -0.0, "tiny": 5e-400, "float": 0.1, "whole": 1.0, "int": -0}',
        '\ufeff{"bom": true}',
        '{"nested": [[[{"deep": null}]]], "text": "é ☃ \\u0000"}',
    ],
)
def test_tricky_json_parses_as_pythons_parser_does(text):
    """Each of these is a body orjson alone would get wrong (big integers as floats) or refuse (a lone
    surrogate escape), or an edge of JSON's grammar; relay's answer is the standard library's."""
    parsed = parse_body(text.encode("utf-8", "surrogatepass"), "application/json")
    assert exact(parsed) == exact(pythons(text.removeprefix("\ufeff")))


def test_big_integer_in_a_body_of_another_charset_keeps_every_digit():
    """The long-number check reads the text, not the raw bytes, when the body is not UTF-8."""
    text = '{"id": 123456789012345678901234567890, "name": "Zoë"}'
    for charset in ("utf-16", "latin-1"):
        parsed = parse_body(text.encode(charset), f"application/json; charset={charset}")
        assert exact(parsed) == exact(json.loads(text))


def test_every_sample_payload_parses_as_pythons_parser_does():
    """Real provider payloads: the built-in mappings' examples and the test fixtures."""
    files = [*MAPPINGS.glob("examples/*/*.json"), *FIXTURES.glob("*.json")]
    assert len(files) > 20
    for path in files:
        body = path.read_bytes()
        assert exact(parse_body(body, "application/json")) == exact(json.loads(body)), path


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, ascii_only=st.booleans())
def test_any_json_document_parses_as_pythons_parser_does(value, ascii_only):
    """Integers of any size, every float, any text (escaped or not, surrogates included)."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    parsed = parse_body(text.encode("utf-8", "surrogatepass"), "application/json")
    assert exact(parsed) == exact(pythons(text))


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"a": "\xff"}', "body is not valid utf-8 text (byte 7)"),
        (b'{"a": "\xed\xa0\x80"}', "body is not valid utf-8 text (byte 7)"),  # a surrogate, encoded
        (b" \n ", "empty JSON body"),
        (b'{"a": 1,}', "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 9 (char 8)"),
        (b'{"a": NaN}', "invalid JSON: NaN is not a JSON number"),
    ],
)
def test_json_that_does_not_parse_is_refused_in_the_same_words(body, detail):
    """Bytes that are not UTF-8, an empty body, a grammar error: the standard library's verdict."""
    from relay.errors import Unparsable

    with pytest.raises(Unparsable) as caught:
        parse_body(body, "application/json")
    assert str(caught.value) == detail


def test_half_a_character_becomes_the_replacement_character_at_any_depth():
    """`\\ud83d` alone (an emoji cut in half, as JavaScript's substring leaves it) becomes U+FFFD in keys and
    values at any depth; a whole pair stays the character it spells."""
    body = b'{"name": "Ivan \\ud83d", "\\udc00k": ["\\ud83d\\ude00", {"n": "\\ud800"}, ["x\\udfff"]], "n": 1}'
    assert parse_body(body, "application/json") == {
        "name": "Ivan \ufffd",
        "\ufffdk": ["\U0001f600", {"n": "\ufffd"}, ["x\ufffd"]],
        "n": 1,
    }
    assert parse_body(b'"\\ud800"', "application/json") == "\ufffd"


def test_json_text_labelled_a_form_is_read_as_json():
    """Google Apps Script's UrlFetchApp labels a `payload: JSON.stringify(...)` form-urlencoded unless the
    script says otherwise; read as a form it was one field named by the whole text. A real form writes a
    brace as %7B, and one whose first field's name begins with a raw brace is still read as a form."""
    form = "application/x-www-form-urlencoded"
    sent = b' {"namedValues": {"Email": ["a@example.com"]}, "n": 12345678901234567890}'
    assert parse_body(sent, form) == json.loads(sent)
    assert parse_body(b"[1, 2]", form + "; charset=utf-8") == [1, 2]
    assert parse_body(b"{x}=1&Email=a%40example.com", form) == {"{x}": "1", "Email": "a@example.com"}
    assert parse_body(b"%7B%22a%22%3A1%7D=", form) == {'{"a":1}': ""}


def nesting(value) -> int:
    """Levels of containers in `value`, the outermost being level 1; a scalar has none."""
    if isinstance(value, dict):
        return 1 + max((nesting(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((nesting(item) for item in value), default=0)
    return 0


def nested(levels: int) -> str:
    """`levels` containers, lists and objects in turn, each beside scalars, texts of brackets and an empty
    sibling, the deepest one last (so that a check which stops early, or looks only at the first child,
    misses it)."""
    text = "[]"
    for level in range(levels - 1):
        if level % 2:
            text = f'{{"a": 1, "b": {{}}, "c": "{{[{{", "z": {text}}}'
        else:
            text = f'["x", [], "]]", {text}]'
    return text


@pytest.mark.parametrize("shape", ["mixed", "objects", "lists"])
def test_sixty_four_levels_are_taken_and_sixty_five_refused(shape):
    """The nesting limit (64 levels) protects the code that walks a payload; brackets inside texts do not count."""
    from relay.errors import Unparsable

    def build(levels: int) -> str:
        if shape == "mixed":
            return nested(levels)
        if shape == "objects":
            return '{"k": ' * (levels - 1) + '{"leaf": "{{{"}' + "}" * (levels - 1)
        return "[" * levels + '"]]]"' + "]" * levels

    taken = build(64)
    assert nesting(json.loads(taken)) == 64
    assert parse_body(taken.encode(), "application/json") == json.loads(taken)
    refused = build(65)
    assert nesting(json.loads(refused)) == 65
    with pytest.raises(Unparsable, match="nested deeper than 64 levels"):
        parse_body(refused.encode(), "application/json")


deep_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=120,
)


@settings(max_examples=300, deadline=None)
@given(value=deep_values, wrap=st.integers(min_value=0, max_value=70))
def test_a_payload_is_refused_exactly_when_deeper_than_the_limit(value, wrap):
    """Any shape, wrapped in up to 70 more levels: taken at 64 levels or fewer, refused beyond."""
    from relay.errors import Unparsable

    for _ in range(wrap):
        value = [value] if wrap % 2 else {"w": value}
    text = json.dumps(value)
    if nesting(value) <= 64:
        assert exact(parse_body(text.encode(), "application/json")) == exact(json.loads(text))
    else:
        with pytest.raises(Unparsable, match="nested deeper than 64 levels"):
            parse_body(text.encode(), "application/json")
