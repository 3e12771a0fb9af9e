"""The profile update request: a marshmallow schema that enforces the upstream contract.

Translation builds plain dicts; this schema is the last check before a call is
stored or sent, so a mapping that would produce a request the upstream must
refuse fails as a mapping error with the reason, and never reaches it.
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from relay.upstream.contract import (
    CHANNEL_IDENTITY,
    CHANNELS,
    MATCHING_MODES,
    METHODS,
    OPERATORS,
    ORDER_STATUSES,
    ORDERS_METHOD,
    SUBSCRIPTION_STATUSES,
    missing_match,
)

__all__ = ["UpstreamCall", "request_problems"]


@dataclass(frozen=True)
class UpstreamCall:
    """One call relay makes: the API method and its body (without the token)."""

    method: str
    body: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "body": self.body}

    def shown(self) -> dict[str, Any]:
        """The call as a preview shows it: its body with the token relay adds, written `***`."""
        return {"method": self.method, "body": {"token": "***", **self.body}}


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")

_STRING_FIELDS = {
    "_fname",
    "_lname",
    "_regcity",
    "_regcountry",
    "_regurl",
    "_city",
    "_country",
    "_region",
    "_tz",
    "_vendor",
    "_browser",
}
_DATE_FIELDS = {"_bdate", "_regdate"}
_IP_FIELDS = {"_regip", "_ip"}


def _is_date(value: Any) -> bool:
    return isinstance(value, str) and bool(_DATE.match(value) or _DATETIME.match(value))


def _is_ip(value: Any) -> bool:
    """An IPv4 or IPv6 address written as text. The C parser takes a tenth of `ipaddress`'s time and reads
    the same texts, but for IPv6 scope ids (`fe80::1%eth0`), which no public address has."""
    if not isinstance(value, str):
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
        except (OSError, ValueError):  # ValueError: an embedded NUL
            continue
        return True
    return False


def _check_plain(name: str, value: Any) -> str | None:
    """Why a plain (set) value does not suit system field `name`, or None."""
    if name == "email":
        if not isinstance(value, str) or "@" not in value:
            return "email must be an address with @"
    elif name == "phones":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return "phones must be a list of phone numbers"
    elif name in _STRING_FIELDS:
        if not isinstance(value, str):
            return f"{name} must be text"
    elif name == "_postal_code":
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            return "_postal_code must be text or a whole number"
    elif name in _DATE_FIELDS:
        if not _is_date(value):
            return f"{name} must be a date YYYY-MM-DD or an ISO 8601 date-time"
    elif name in _IP_FIELDS:
        if not _is_ip(value):
            return f"{name} must be an IPv4 or IPv6 address"
    elif name == "_sex":
        if value not in ("male", "female") and (isinstance(value, bool) or not isinstance(value, int)):
            return "_sex must be male, female or a number"
    elif name == "_status":
        if isinstance(value, bool) or not isinstance(value, int):
            return "_status must be a whole number"
    return None


def _check_operator(name: str, value: dict[str, Any]) -> str | None:
    action = value.get("action")
    if action not in OPERATORS:
        return f"unknown action {action!r} (allowed: {', '.join(OPERATORS)})"
    operand = value.get("value")
    if action == "unset":
        return "email cannot be unset" if name == "email" else None
    if action == "incr":
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            return "incr needs a number"
        if name in _STRING_FIELDS | _DATE_FIELDS | _IP_FIELDS | {"email", "phones"}:
            return f"incr does not apply to {name}"
    if action in ("add", "delete"):
        if not isinstance(operand, list):
            return f"{action} needs a list"
        if name in _STRING_FIELDS | _DATE_FIELDS | _IP_FIELDS | {"email"}:
            return f"{action} does not apply to {name}"
    if action == "upsert":
        if not value.get("submatch") or "value" not in value:
            return "upsert needs submatch and value"
    if action == "set":
        return _check_plain(name, operand)
    return None


def _status_ok(value: Any) -> bool:
    if isinstance(value, str):
        return value in SUBSCRIPTION_STATUSES
    return isinstance(value, int) and not isinstance(value, bool) and (value == -1 or 0 <= value <= 6)


class StrictBoolean(fields.Field[Any]):
    """A JSON boolean only: 1, "true" and "yes" are refused."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class _SubscriptionFields(Schema):
    class Meta:
        unknown = RAISE

    resource_id = fields.Integer(required=True, strict=True)
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    email = fields.String()
    phone = fields.String()
    provider = fields.String()
    subscription_id = fields.String()
    cc_data = fields.Dict()
    email_data = fields.Dict()
    phone_data = fields.Dict()
    status = fields.Raw()
    priority = fields.Integer(strict=True)
    custom_fields = fields.Dict()
    cats = fields.List(fields.String())


def _check_subscription(data: dict[str, Any]) -> None:
    """What a subscription's fields must say together, once each passed alone."""
    if "status" in data and not _status_ok(data["status"]):
        raise ValidationError("status must be a known word or a number from -1 to 6", "status")
    for key in CHANNEL_IDENTITY.get(data.get("channel", ""), ()):
        head, _dot, sub = key.partition(".")
        value = (data.get(head) or {}).get(sub) if sub else data.get(head)
        if value in (None, ""):
            raise ValidationError(f"{data['channel']} subscription needs {key}", head)
    if data.get("channel") == "email" and "@" not in str(data.get("email", "")):
        raise ValidationError("email subscription needs a valid address", "email")


class SubscriptionSchema(_SubscriptionFields):
    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        _check_subscription(data)


class _ProfileRequestFields(Schema):
    """Top level of profiles/update and profiles/import: each field alone."""

    class Meta:
        unknown = RAISE

    token = fields.String()
    db_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    matching = fields.String(load_default="email", validate=validate.OneOf(list(MATCHING_MODES)))
    email = fields.String()
    phone = fields.String()
    profile_id = fields.String(validate=validate.Regexp(r"^[0-9a-f]{24}$"))
    provider = fields.String()
    subscription_id = fields.String()
    field_name = fields.String()
    field_value = fields.Raw()
    resource_id = fields.Integer(strict=True)
    skip_triggers = StrictBoolean()
    skip_invalid_subscriptions = StrictBoolean()
    detect_geo = StrictBoolean()
    add_to_segments = fields.List(fields.Integer(strict=True))
    remove_from_segments = fields.List(fields.Integer(strict=True))
    data = fields.Dict(required=True)


def _check_profile_request(body: dict[str, Any]) -> None:
    """What the top level's fields must say together: the matching mode's keys, and each data field."""
    mode = body.get("matching", "email")
    required, one_of = MATCHING_MODES.get(mode, ((), ()))
    for key in required:
        if body.get(key) in (None, ""):
            raise ValidationError(f"matching {mode!r} needs {key}", key)
    if one_of and not any(body.get(key) not in (None, "") for key in one_of):
        raise ValidationError(f"matching {mode!r} needs {' or '.join(one_of)}", one_of[0])
    errors: dict[str, Any] = {}
    for name, value in body.get("data", {}).items():
        if name == "subscriptions":
            if not isinstance(value, list):
                errors[name] = ["subscriptions must be a list"]
                continue
            problems = {
                i: msgs
                for i, item in enumerate(value)
                if (msgs := _problems(SubscriptionSchema, item if isinstance(item, dict) else {}))
            }
            if problems:
                errors[name] = problems
            continue
        problem = (
            _check_operator(name, value) if isinstance(value, dict) and "action" in value else _check_plain(name, value)
        )
        if problem:
            errors[name] = [problem]
    if errors:
        raise ValidationError({"data": errors})


class ProfileRequestSchema(_ProfileRequestFields):
    """Top level of profiles/update and profiles/import."""

    @validates_schema
    def _check(self, body: dict[str, Any], **_: Any) -> None:
        _check_profile_request(body)


@dataclass(frozen=True)
class _Parts:
    """A schema taken apart: its fields alone, what they must say together, and the fields whose values
    the mapping rule sets (`db_id: ${RELAY_DB_ID:-1}`, `matching`, a subscription's channel), which are
    the same few values on every call."""

    fields: type[Schema]
    together: Callable[[dict[str, Any]], None]
    rule_fields: frozenset[str]


_PARTS = {
    ProfileRequestSchema: _Parts(
        _ProfileRequestFields,
        _check_profile_request,
        frozenset({"db_id", "matching", "resource_id", "skip_triggers", "skip_invalid_subscriptions", "detect_geo"}),
    ),
    SubscriptionSchema: _Parts(_SubscriptionFields, _check_subscription, frozenset({"resource_id", "channel"})),
}
# (schema, field, type, value) that passed the field's own validation, which depends on the value alone.
_PASSED: set[tuple[type[Schema], str, type, Any]] = set()
_PASSED_MOST = 4096


def _problems(schema: type[Schema], body: Any) -> dict[str, Any]:
    """`schema`'s messages for `body`.

    Marshmallow runs a field for about 5 µs, and a Shopify order's calls gave it ten; the check was two
    fifths of the translation. So only the fields `body` gives are run (`_schema_for`), less those it can
    only pass (`_free_fields`: an e-mail's text, the data object) and, of a rule's fields, the values seen
    to pass before; the schema's checks across fields still see the whole body, and the messages are the
    whole schema's (a property test compares them).
    """
    if not isinstance(body, dict):
        return _schema_for(schema, frozenset()).validate(body)
    parts = _PARTS[schema]
    given = parts.rule_fields.intersection(body)
    free = _free_fields(parts.fields)
    settled = frozenset(
        name
        for name, value in body.items()
        if (name in free and isinstance(value, free[name]) and value is not None)
        or (name in given and _passed_key(schema, name, value) in _PASSED)
    )
    if settled:
        rest = {key: value for key, value in body.items() if key not in settled}
        if rest or not _required(parts.fields).issubset(body):
            messages = _schema_for(parts.fields, frozenset(rest), settled).validate(rest)
        else:
            messages = {}  # every field settled: marshmallow would run none
        if not messages:  # marshmallow runs the schema's own checks only when every field passed
            messages = _together(parts.together, body)
    else:
        messages = _schema_for(schema, frozenset(body)).validate(body)
    for name in given.difference(settled, messages):
        key = _passed_key(schema, name, body[name])
        if key is not None:
            if len(_PASSED) >= _PASSED_MOST:
                _PASSED.clear()
            _PASSED.add(key)
    return messages


@functools.cache
def _free_fields(schema: type[Schema]) -> dict[str, type]:
    """The fields that take any value of one type as it is, which marshmallow can only pass: a String or a
    Dict with no validator (a profile's e-mail and data, a subscription's e-mail), and Raw (any value but
    None). Read from the schema, so a validator added to one takes it out of here."""
    free: dict[str, type] = {}
    for name, field in schema._declared_fields.items():
        if field.validators or field.pre_load or field.post_load or field.allow_none:
            continue
        if type(field) is fields.String:
            free[name] = str
        elif type(field) is fields.Dict and field.key_field is None and field.value_field is None:
            free[name] = dict
        elif type(field) is fields.Raw:
            free[name] = object
    return free


@functools.cache
def _required(schema: type[Schema]) -> frozenset[str]:
    return frozenset(name for name, field in schema._declared_fields.items() if field.required)


def _passed_key(schema: type[Schema], name: str, value: Any) -> tuple[type[Schema], str, type, Any] | None:
    """The key `_PASSED` knows a field's value by; None for a container. The type is part of it, since
    True == 1 and 1.0 == 1 while a strict integer field refuses two of them."""
    return (schema, name, type(value), value) if value is None or isinstance(value, (str, int, float)) else None


def _together(check: Callable[[dict[str, Any]], None], body: dict[str, Any]) -> dict[str, Any]:
    """The messages of a schema-level check, shaped as marshmallow stores them."""
    try:
        check(body)
    except ValidationError as err:
        if err.field_name == "_schema" and isinstance(err.messages, dict):
            return err.messages
        return {err.field_name: err.messages}
    return {}


@functools.lru_cache(maxsize=256)
def _schema_for(schema: type[Schema], keys: frozenset[str], settled: frozenset[str] = frozenset()) -> Schema:
    """An instance per set of keys, which the mapping rules bound. Marshmallow runs every declared field of
    every request, given or not; a profile update gives five to eight of the seventeen, a subscription four
    of thirteen, and running the others took a third of a Shopify order's translation. Same messages:
    required fields stay (unless `settled`: passed already), a key no field declares is still refused, and
    schema-level checks see the same keys (load defaults are no part of them)."""
    left_out = [
        name
        for name, field in schema._declared_fields.items()
        if name in settled or (name not in keys and not field.required)
    ]
    return schema(exclude=left_out)


_PRICE = validate.Regexp(r"^\d{1,15}(\.\d{1,6})?$", error="a price as text: digits, and a decimal point")


class _OrderLineSchema(Schema):
    class Meta:
        unknown = RAISE

    external_id = fields.String(required=True, validate=validate.Length(min=1, max=255))
    product = fields.String(required=True, validate=validate.Length(min=1, max=255))
    count = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    base_price_per_item = fields.String(validate=_PRICE)
    min_price_per_item = fields.String(validate=_PRICE)
    final_price_per_item = fields.String(validate=_PRICE)
    status = fields.String(validate=validate.Length(min=1, max=255))


class _OrderSchema(Schema):
    """One order of market/orders/import (altcraft-sources.md), with the buyer's matching keys."""

    class Meta:
        unknown = RAISE

    external_id = fields.String(required=True, validate=validate.Length(min=1, max=255))
    matching = fields.String(required=True, validate=validate.OneOf(list(MATCHING_MODES)))
    email = fields.String()
    phone = fields.String()
    profile_id = fields.String()
    provider = fields.String()
    subscription_id = fields.String()
    field_name = fields.String()
    field_value = fields.Raw()
    endpoint = fields.String(required=True, validate=validate.Length(min=1, max=255))
    status = fields.String(required=True, validate=validate.OneOf(ORDER_STATUSES))
    total_price = fields.String(required=True, validate=_PRICE)
    currency = fields.String(required=True, validate=validate.Regexp(r"^[A-Z]{3}$", error="an ISO 4217 code: USD"))
    delivery_cost = fields.String(validate=_PRICE)
    region = fields.String()
    tags = fields.List(fields.String())
    lines = fields.List(fields.Nested(_OrderLineSchema), required=True, validate=validate.Length(min=1))

    @validates_schema
    def _buyer(self, data: dict[str, Any], **_: Any) -> None:
        wanted = missing_match(data.get("matching", ""), data)
        if wanted is not None:
            raise ValidationError(f"matching {data.get('matching')} needs {wanted}")


class _OrdersRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    data = fields.List(fields.Nested(_OrderSchema), required=True, validate=validate.Length(min=1))
    skip_triggers = fields.Boolean()


def request_problems(method: str, body: dict[str, Any]) -> list[str]:
    """Every reason `body` breaks the contract, as `key.path: message` lines."""
    problems: list[str] = []
    if method not in METHODS:
        problems.append(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if method == ORDERS_METHOD:
        return problems + _flatten(_OrdersRequestSchema().validate(body), ())
    if method == "profiles/import" and body.get("matching") == "profile_id":
        problems.append("matching: profile_id works only with profiles/update")
    messages = _problems(ProfileRequestSchema, body)
    problems.extend(_flatten(messages, ()))
    return problems


def _flatten(messages: Any, path: tuple[str, ...]) -> list[str]:
    if isinstance(messages, dict):
        out: list[str] = []
        for key, value in messages.items():
            out.extend(_flatten(value, path if key == "_schema" else (*path, str(key))))
        return out
    if isinstance(messages, list):
        return [line for item in messages for line in _flatten(item, path)]
    return [f"{'.'.join(path) or 'body'}: {messages}"]
