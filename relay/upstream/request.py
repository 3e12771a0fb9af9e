"""The profile update request: a marshmallow schema that enforces the upstream contract.

Translation builds plain dicts; this schema is the last check before a call is
stored or sent, so a mapping that would produce a request the upstream must
refuse fails as a mapping error with the reason, and never reaches it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from relay.upstream.contract import (
    CHANNEL_IDENTITY,
    CHANNELS,
    MATCHING_MODES,
    METHODS,
    OPERATORS,
    SUBSCRIPTION_STATUSES,
)

__all__ = ["UpstreamCall", "request_problems"]


@dataclass(frozen=True)
class UpstreamCall:
    """One call relay makes: the API method and its body (without the token)."""

    method: str
    body: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "body": self.body}


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
    try:
        ipaddress.ip_address(value)
    except (ValueError, TypeError):
        return False
    return True


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


class SubscriptionSchema(Schema):
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

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if "status" in data and not _status_ok(data["status"]):
            raise ValidationError("status must be a known word or a number from -1 to 6", "status")
        for key in CHANNEL_IDENTITY.get(data.get("channel", ""), ()):
            head, _dot, sub = key.partition(".")
            value = (data.get(head) or {}).get(sub) if sub else data.get(head)
            if value in (None, ""):
                raise ValidationError(f"{data['channel']} subscription needs {key}", head)
        if data.get("channel") == "email" and "@" not in str(data.get("email", "")):
            raise ValidationError("email subscription needs a valid address", "email")


class ProfileRequestSchema(Schema):
    """Top level of profiles/update and profiles/import."""

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

    @validates_schema
    def _check(self, body: dict[str, Any], **_: Any) -> None:
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
                _check_operator(name, value)
                if isinstance(value, dict) and "action" in value
                else _check_plain(name, value)
            )
            if problem:
                errors[name] = [problem]
        if errors:
            raise ValidationError({"data": errors})


def _problems(schema: type[Schema], body: Any) -> dict[str, Any]:
    """`schema`'s messages for `body`, from an instance that leaves out the optional fields `body` lacks."""
    keys = frozenset(body) if isinstance(body, dict) else frozenset()
    return _schema_for(schema, keys).validate(body)


@functools.lru_cache(maxsize=256)
def _schema_for(schema: type[Schema], keys: frozenset[str]) -> Schema:
    """An instance per set of keys, which the mapping rules bound. Marshmallow runs every declared field of
    every request, given or not; a profile update gives five to eight of the seventeen, a subscription four
    of thirteen, and running the others took a third of a Shopify order's translation. Same messages:
    required fields stay, a key no field declares is still refused, and schema-level checks see the same
    keys (load defaults are no part of them)."""
    absent = [name for name, field in schema._declared_fields.items() if name not in keys and not field.required]
    return schema(exclude=absent)


def request_problems(method: str, body: dict[str, Any]) -> list[str]:
    """Every reason `body` breaks the contract, as `key.path: message` lines."""
    problems: list[str] = []
    if method not in METHODS:
        problems.append(f"method: {method!r} is not one of {', '.join(METHODS)}")
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
