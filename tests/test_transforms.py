"""Transforms: phones, e-mails, names, dates, maps."""

from __future__ import annotations

import time

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.mapping.loader import load_source_file
from relay.mapping.transforms import TransformContext, apply_transform, check_transform_arg
from relay.mapping.translate import TranslateContext, translate

CTX = TransformContext(phone_region="RU")


@pytest.mark.parametrize(
    ("raw", "arg", "expected"),
    [
        ("8 (912) 345-67-89", None, "+79123456789"),
        ("+7 (999) 123-45-67", None, "+79991234567"),
        ("(555) 555-5555", {"region": "US"}, "+15555555555"),
        (15550000000, None, "+15550000000"),
        ("555-555-SHIP", None, None),
        ("not a phone", None, None),
        ("", None, None),
    ],
)
def test_phone(raw, arg, expected):
    """Phones become E.164 with the default region; junk becomes None."""
    assert apply_transform("phone", arg, raw, CTX) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("  Ivan.Petrov@Example.COM ", "ivan.petrov@example.com"), ("no-at-sign", None), ("a@b", None), (None, None)],
)
def test_email(raw, expected):
    """E-mails are normalised and lower-cased without DNS; invalid ones become None."""
    assert apply_transform("email", None, raw, CTX) == expected


_atext = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_domains = st.sampled_from(
    [
        "example.com",
        "Example.COM",
        "bücher.de",
        "xn--bcher-kva.de",
        "localhost",
        "a.b",
        "-bad.com",
        "ex ample.com",
        "example.com.",
        "",
        "x" * 64 + ".com",
        "1.2.3.4",
        "[1.2.3.4]",
        "gmail.com",
        "mail.ru",
        "a..b.com",
        "test",
        "invalid",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(
    local=st.one_of(
        st.from_regex(r"[a-zA-Z0-9!#$%&'*+/=?^_`{|}~.-]{0,70}", fullmatch=True),
        st.text(alphabet=_atext + ".", max_size=20),
        st.text(max_size=8),
    ),
    domain=_domains,
)
@example(local="a" * 65, domain="example.com")
@example(local="a" * 250, domain="example.com")  # over the 254 an address may have
@example(local="a" * 64, domain="x" * 40 + ".com")
@example(local="jon.", domain="example.com")
@example(local='"quoted"', domain="example.com")
def test_an_address_reads_as_email_validator_reads_it(local, domain):
    """Relay reads a plain address's domain once (cached) and its local part as it is; the result is the
    library's, lower-cased, for every address, valid or not, plain or not."""
    from relay.mapping.transforms import _normalised_email

    address = f"{local}@{domain}"
    try:
        expected: str | None = str(validate_email(address, check_deliverability=False).normalized).lower()
    except EmailNotValidError:
        expected = None
    assert _normalised_email(address) == expected


@pytest.mark.parametrize(
    ("raw", "order", "expected"),
    [
        ("02.04.1990", "dmy", "1990-04-02"),
        ("04/02/1990", "mdy", "1990-04-02"),
        ("1990-04-02", "dmy", "1990-04-02"),
        ({"year": "1990", "month": "4", "day": "2"}, None, "1990-04-02"),
        ("31.02.1990", "dmy", None),
        ("Mar 14, 1990", None, "1990-03-14"),  # Formstack
        ("March 14, 1990", "dmy", "1990-03-14"),
        ("14 mar 1990", "mdy", "1990-03-14"),
        ("Mar. 14, 1990", None, "1990-03-14"),
        ("Feb 30, 1990", None, None),
        ("March", None, None),
    ],
)
def test_dates(raw, order, expected):
    """Day-first and month-first dates are read as declared."""
    assert apply_transform("date", {"order": order} if order else None, raw, CTX) == expected


@pytest.mark.parametrize("zone", ["America/Sao_Paulo", "Asia/Tokyo"])
def test_epoch_times_read_in_utc_whatever_the_servers_zone(monkeypatch, zone):
    """HubSpot's date of birth is midnight UTC in milliseconds: the same day on a server west or east of UTC."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert apply_transform("date", None, 631152000000, CTX) == "1990-01-01"
        assert apply_transform("datetime", None, 1680448099, CTX) == "2023-04-02T15:08:19Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_name_split_and_map():
    """Full names split into first and the rest; maps translate values."""
    assert apply_transform("first_name", None, "Анна Мария Смирнова", CTX) == "Анна"
    assert apply_transform("last_name", None, "Анна Мария Смирнова", CTX) == "Мария Смирнова"
    assert apply_transform("map", {"yes": True, "no": False}, "Yes", CTX) is True
    assert apply_transform("scale", 0.01, 6099, CTX) == 60.99


@pytest.mark.parametrize(
    ("name", "arg", "raw", "expected"),
    [
        ("number", None, "1 234,5", 1234.5),
        ("number", None, "1e308", 10**308),
        ("number", None, "1e999", None),
        ("number", None, "-1e400", None),
        ("number", None, "9" * 400 + ".5", None),
        ("number", None, "1e5000", None),
        ("number", None, "NaN", None),
        ("number", None, "Infinity", None),
        ("integer", None, "1e999", None),
        ("scale", 1e300, "1e300", None),
        ("scale", 2, "1e300", 2 * 10**300),
    ],
)
def test_numbers_that_json_cannot_carry_become_none(name, arg, raw, expected):
    """A number beyond a float's range becomes None.

    As a float it would be inf, which json writes as `Infinity` (not JSON); as an int of over
    4,300 digits json cannot write it at all.
    """
    assert apply_transform(name, arg, raw, CTX) == expected


@pytest.mark.parametrize(
    ("raw", "arg", "expected"),
    [
        (6099, {"currency": "USD"}, 60.99),
        ("65215", {"currency": "usd"}, 652.15),
        (5000, {"currency": "JPY"}, 5000),
        (5000, {"currency": " krw "}, 5000),
        (6099, {"currency": "KWD"}, 6.099),
        (12345, {"currency": "CLF"}, 1.2345),
        (500, {"currency": "ISK"}, 500),
        (500, {"currency": "isk", "exponents": {"ISK": 2}}, 5),
        (500, {"currency": "MGA", "exponents": {"ISK": 2, "MGA": 0}}, 500),
        ([1000, 250], {"currency": "EUR"}, [10, 2.5]),
        (1000, {"currency": "XAU"}, None),  # gold has no minor unit
        (1000, {"currency": "ZZZ"}, None),
        (1000, {"currency": None}, None),
        (1000, {"currency": ["USD"]}, None),
        ("not a number", {"currency": "USD"}, None),
        (None, {"currency": "USD"}, None),
    ],
)
def test_minor_units_read_the_currencys_decimals(raw, arg, expected):
    """An amount in the smallest unit becomes whole units by ISO 4217: a yen is not a cent.

    An unknown currency leaves the amount out: counted as cents it could be 100 times too much.
    """
    assert apply_transform("minor_units", arg, raw, CTX) == expected


@pytest.mark.parametrize(
    ("arg", "problem"),
    [
        ({"currency_path": "currency"}, None),
        ({"currency": "JPY"}, None),
        ({"currency": "${SHOP_CURRENCY}"}, None),
        ({"currency_path": "currency", "exponents": {"ISK": 2}}, None),
        (None, "minor_units needs the currency"),
        ({}, "minor_units needs the currency"),
        ({"currency": "USD", "currency_path": "c"}, "minor_units needs the currency"),
        ({"currency": "DOLLARS"}, "'DOLLARS' is not an ISO 4217 currency"),
        ({"currency": "XAU"}, "'XAU' is not an ISO 4217 currency"),
        ({"currency_path": "currency["}, "invalid expression"),
        ({"currency_path": "c", "exponent": {"ISK": 2}}, "not exponent"),
        ({"currency_path": "c", "exponents": {"isk": 2}}, "exponents are currency codes"),
        ({"currency_path": "c", "exponents": {"ISK": 5}}, "exponents are currency codes"),
        ({"currency_path": "c", "exponents": {"ISK": True}}, "exponents are currency codes"),
        ({"currency_path": "c", "exponents": [2]}, "exponents are currency codes"),
    ],
)
def test_minor_units_arguments_are_checked_when_the_file_loads(arg, problem):
    found = check_transform_arg("minor_units", arg)
    assert found is None if problem is None else problem in (found or ""), found


CURRENCY_MAPPING = """version: 1
source: shop
auth: {scheme: token, secret: "${SHOP_TOKEN}"}
rules:
  - name: order
    method: profiles/import
    match:
      email: {path: email, transform: email}
    fields:
      revenue: {op: incr, value: {path: total, transform: {minor_units: {currency_path: currency}}}}
      phones: {path: phone, transform: [{phone: {region_path: country}}, list]}
"""


def _translated_fields(tmp_path, payload, env=None):
    path = tmp_path / "shop.yaml"
    path.write_text(CURRENCY_MAPPING)
    source, problems = load_source_file(path)
    assert source is not None, problems
    result = translate(source, payload, context=TranslateContext(env=env or {}, phone_region="RU"))
    return result.calls[0].body["data"]


def test_a_currency_and_a_country_are_read_from_the_payload(tmp_path):
    payload = {"email": "a@example.com", "total": 5000, "currency": "jpy", "phone": "(555) 555-5555", "country": "us"}
    data = _translated_fields(tmp_path, payload)
    assert data["revenue"] == {"action": "incr", "value": 5000}
    assert data["phones"] == ["+15555555555"]


def test_a_payloads_text_never_names_a_setting(tmp_path):
    """A buyer's `${NAME}` in the payload is text, not a reference: no setting decides the amount or the region."""
    payload = {"email": "a@example.com", "total": 5000, "currency": "${CUR}", "phone": "89123456789", "country": "${C}"}
    data = _translated_fields(tmp_path, payload, env={"CUR": "JPY", "C": "US"})
    assert "revenue" not in data  # not a currency: left out, not counted as cents
    assert data["phones"] == ["+79123456789"]  # not a country: the default region
