"""Transforms: phones, e-mails, names, dates, maps."""

from __future__ import annotations

import time

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.mapping.transforms import TransformContext, apply_transform

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
