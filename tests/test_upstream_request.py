"""The profile update schema enforces the upstream contract; XML bodies follow the seed."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.bodies import parse_body
from relay.upstream.request import ProfileRequestSchema, SubscriptionSchema, request_problems
from relay.upstream.xmlbody import to_xml

OK = {"db_id": 1, "matching": "email", "email": "a@example.com", "data": {"email": "a@example.com"}}


def test_valid_request_has_no_problems():
    """A well-formed import passes."""
    assert request_problems("profiles/import", OK) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"matching": "phone"}, "matching 'phone' needs phone"),
        ({"matching": "custom", "field_name": "x"}, "needs field_value"),
        ({"matching": "nope"}, "matching"),
        ({"db_id": "1"}, "db_id"),
        ({"detect_geo": "yes"}, "detect_geo"),
        ({"data": {"email": "no-at"}}, "data.email"),
        ({"data": {"_bdate": "02.04.1990"}}, "data._bdate"),
        ({"data": {"_ip": "999.1.1.1"}}, "data._ip"),
        ({"data": {"n": {"action": "incr", "value": "1"}}}, "incr needs a number"),
        ({"data": {"tags": {"action": "add", "value": "x"}}}, "add needs a list"),
        ({"data": {"email": {"action": "unset"}}}, "email cannot be unset"),
        ({"data": {"o": {"action": "upsert", "value": 1}}}, "upsert needs submatch"),
        ({"data": {"x": {"action": "frobnicate"}}}, "unknown action"),
        ({"data": {"subscriptions": [{"resource_id": 1, "channel": "sms"}]}}, "sms subscription needs phone"),
        ({"data": {"subscriptions": [{"resource_id": 1, "channel": "pigeon", "email": "a@b.c"}]}}, "channel"),
        (
            {"data": {"subscriptions": [{"resource_id": 1, "channel": "email", "email": "a@b.c", "status": "gone"}]}},
            "status",
        ),
        ({"add_to_segments": ["a"]}, "add_to_segments"),
    ],
)
def test_contract_violations(change, fragment):
    """Each breach of the contract is named."""
    problems = request_problems("profiles/update", {**OK, **change})
    assert any(fragment in p for p in problems), problems


def test_profile_id_matching_only_on_update():
    """matching=profile_id is refused for profiles/import."""
    body = {"db_id": 1, "matching": "profile_id", "profile_id": "0" * 24, "data": {}}
    assert request_problems("profiles/update", body) == []
    assert request_problems("profiles/import", body)


def test_every_channel_and_operator_accepted():
    """All seven channels and six operators are accepted in their valid forms."""
    body = {
        **OK,
        "data": {
            "a": {"action": "set", "value": 1},
            "b": {"action": "unset"},
            "c": {"action": "incr", "value": -2},
            "tags": {"action": "add", "value": ["x"]},
            "t2": {"action": "delete", "value": ["y"]},
            "o": {"action": "upsert", "submatch": "k", "value": 1},
            "subscriptions": [
                {
                    "resource_id": 1,
                    "channel": "email",
                    "email": "a@b.co",
                    "status": "subscribed",
                    "priority": 1,
                    "custom_fields": {"k": 1},
                    "cats": ["news"],
                },
                {"resource_id": 1, "channel": "sms", "phone": "+79123456789", "status": 0},
                {"resource_id": 1, "channel": "push", "provider": "fcm", "subscription_id": "s"},
                {"resource_id": 1, "channel": "telegram_bot", "cc_data": {"id": 5}},
                {"resource_id": 1, "channel": "whatsapp", "cc_data": {"phone": "+79123456789"}},
                {"resource_id": 1, "channel": "viber", "cc_data": {"phone": "+79123456789"}},
                {"resource_id": 1, "channel": "notify", "cc_data": {"phone": "+79123456789"}, "status": -1},
            ],
        },
    }
    assert request_problems("profiles/update", body) == []


def test_xml_body_round_trips():
    """The XML form has root <xml>, marks arrays, and parses back to the same data."""
    body = {
        "db_id": 1,
        "email": "a&b@example.com",
        "data": {"phones": ["+1", "+2"], "tags": {"action": "add", "value": ["x"]}},
    }
    text = to_xml(body)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?><xml>')
    assert '<phones array="true">+1</phones><phones array="true">+2</phones>' in text
    back = parse_body(text.encode(), "application/xml")
    assert back == {
        "db_id": "1",
        "email": "a&b@example.com",
        "data": {"phones": ["+1", "+2"], "tags": {"action": "add", "value": ["x"]}},
    }


def test_names_xml_cannot_spell_are_found_and_never_written():
    """A field named as a form's author wrote it (`Lead Source`, `1st`) has no XML element spelling: found
    at any depth, and `to_xml` refuses it rather than write malformed XML (`<Lead Source>`)."""
    from relay.upstream.xmlbody import name_problems

    body = {"db_id": 1, "data": {"Lead Source": "x", "ok_name": [{"1st": 1}], "имя": "Иван", "a.b-c_d": 2}}
    assert sorted(name_problems(body)) == [
        "'1st' cannot be an XML element name",
        "'Lead Source' cannot be an XML element name",
    ]
    with pytest.raises(ValueError, match="'Lead Source' cannot be an XML element name"):
        to_xml(body)
    assert name_problems({"db_id": 1, "data": {"имя": "Иван", "a.b-c_d": 2, "_fname": "A"}}) == []


def test_characters_xml_cannot_carry_become_the_replacement_character():
    """A JSON body may carry `\\u0001` in a comment; XML 1.0 has no spelling for it, not even escaped, and
    the whole request was malformed. Tabs and line breaks stay."""
    text = to_xml({"data": {"comment": "a\x01b\x0bc\ufffed\te\nf"}})
    assert "<comment>a\ufffdb\ufffdc\ufffdd\te\nf</comment>" in text
    assert parse_body(text.encode(), "application/xml") == {"data": {"comment": "a\ufffdb\ufffdc\ufffdd\te\nf"}}


def test_unknown_and_missing_keys_are_named():
    """A key the contract does not know, and a required one left out, at both levels."""
    assert any("frobnicate" in p for p in request_problems("profiles/update", {**OK, "frobnicate": 1}))
    without_db = {key: value for key, value in OK.items() if key != "db_id"}
    assert any(p.startswith("db_id:") for p in request_problems("profiles/update", without_db))
    subscription = {"channel": "email", "email": "a@b.c", "colour": "red"}
    problems = request_problems("profiles/update", {**OK, "data": {"subscriptions": [subscription]}})
    assert any("resource_id" in p for p in problems), problems
    assert any("colour" in p for p in problems), problems


_request_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 3),
    st.sampled_from(["", "email", "a@b.c", "x", "0" * 24]),
    st.just([1]),
    st.sampled_from([{}, {"a": 1}, {"subscriptions": []}]),
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from([*ProfileRequestSchema._declared_fields, "frobnicate"]), _request_values, max_size=8
    ),
    subscription=st.dictionaries(
        st.sampled_from([*SubscriptionSchema._declared_fields, "colour"]),
        st.one_of(_request_values, st.sampled_from(["email", "sms", "subscribed"])),
        max_size=6,
    ),
)
@example(body={"db_id": 1, "matching": "phone"}, subscription={"resource_id": 1, "channel": "email"})
@example(body={"db_id": 1, "email": "a@b.c", "data": None}, subscription={"email": None, "status": None})
@example(body={"db_id": 1, "token": 1, "field_value": None}, subscription={"cc_data": [1], "email": "a@b.c"})
def test_checking_only_the_given_keys_finds_what_the_whole_schema_finds(body, subscription):
    """The check leaves out the optional fields a request lacks, the fields that take any text or object as
    it is (an e-mail, the data), and the rule's fields (db_id, matching, channel...) whose values passed
    before (for speed); its messages are the whole schema's, whatever keys are given, left out or unknown,
    the first time a value is seen and the next."""
    from relay.upstream.request import _PASSED, _problems

    if "data" not in body or body["data"] == {}:
        body = {**body, "data": {"subscriptions": [subscription]}}
    _PASSED.clear()
    for _time in ("first", "again"):
        assert _problems(SubscriptionSchema, subscription) == SubscriptionSchema().validate(subscription)
        assert _problems(ProfileRequestSchema, body) == ProfileRequestSchema().validate(body)


def test_a_value_that_passed_does_not_pass_a_look_alike_of_another_type():
    """True == 1 and 1.0 == 1 in Python, but a strict integer field refuses True and 1.0: a db_id of 1 seen
    to pass does not let True or 1.0 through afterwards, nor a channel "email" the channel " email"."""
    from relay.upstream.request import _PASSED

    _PASSED.clear()
    subscription = {"resource_id": 1, "channel": "email", "email": "a@b.c"}
    for _time in ("first", "again"):
        assert request_problems("profiles/update", {**OK, "db_id": 1, "data": {"subscriptions": [subscription]}}) == []
    for db_id in (True, 1.0):
        assert any(p.startswith("db_id:") for p in request_problems("profiles/update", {**OK, "db_id": db_id}))
    for resource_id, channel in ((True, "email"), (1.0, "email"), (1, " email")):
        odd = {**subscription, "resource_id": resource_id, "channel": channel}
        problems = request_problems("profiles/update", {**OK, "data": {"subscriptions": [odd]}})
        assert any(p.startswith("data.subscriptions.0.") for p in problems), (odd, problems)


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(
        st.ip_addresses().map(str),
        st.text(alphabet="0123456789abcdefABCDEF.:%x ", max_size=45),
        st.lists(st.integers(0, 300).map(str), min_size=3, max_size=5).map(".".join),
    )
)
def test_an_ip_is_what_the_ipaddress_module_reads_as_one(text):
    """`_ip` and `_regip` are checked with the C parser; it reads an address where `ipaddress` does (leading
    zeros, short forms, embedded IPv4 alike), except scope ids, which no public address carries."""
    import ipaddress

    from relay.upstream.request import _is_ip

    try:
        ipaddress.ip_address(text)
    except ValueError:
        expected = False
    else:
        expected = "%" not in text
    assert _is_ip(text) is expected


def test_a_number_is_not_an_ip():
    """`ipaddress` reads 5 as 0.0.0.5; the upstream's `_ip` is text, so a mapping that gives a number is told."""
    problems = request_problems("profiles/update", {**OK, "data": {"_ip": 5, "_regip": "81.2.69.142"}})
    assert problems == ["data._ip: _ip must be an IPv4 or IPv6 address"], problems
