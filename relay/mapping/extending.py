"""A mapping file that extends another: a second account of the same provider in a file of a few lines.

An agency with two Shopify stores, a brand with a Tilda site per country: each account is a source of its own
(its own hook, signing secret, deliveries), translated by the same rules, maybe into another database.
Copying the provider's file would leave two sets of rules to keep in step; instead

    version: 1
    source: shopify_eu
    extends: shopify
    settings:
      SHOPIFY_WEBHOOK_SECRET: ${SHOPIFY_EU_WEBHOOK_SECRET}
      RELAY_DB_ID: 7

is the base file read with each `${NAME}` the `settings` name replaced by what they give: another setting's
reference, or a value. A fix to the base applies to every source extending it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from relay.mapping import envrefs
from relay.mapping.schema import SOURCE_NAME

__all__ = ["EXTENDING_KEYS", "Extension", "ExtendingFileSchema", "base_settings", "rebind", "secret_settings"]

EXTENDING_KEYS = ("version", "source", "extends", "description", "settings")


class _SettingValue(fields.Field[Any]):
    """Text (with or without `${NAME}` references) or a whole number, as YAML gives it: a number stays one
    where the base's value is the reference alone (`db_id: ${RELAY_DB_ID:-1}` then reads `db_id: 7`)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str | int:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError("text, a whole number or a ${NAME} reference")
        if isinstance(value, str) and "${" in value and envrefs.broken_ref(value):
            raise ValidationError("malformed reference; write ${NAME} or ${NAME:-default}")
        return value


class ExtendingFileSchema(Schema):
    """The keys a file that extends another may have; anything else is the base file's to say."""

    class Meta:
        ordered = True

    version = fields.Integer(required=True, validate=validate.Equal(1, error="only version 1 exists"))
    source = fields.String(
        required=True, validate=validate.Regexp(SOURCE_NAME, error="lower-case letters, digits and _, at most 64")
    )
    extends = fields.String(
        required=True, validate=validate.Regexp(SOURCE_NAME, error="the name of another mapping file's source")
    )
    description = fields.String(load_default=None)
    settings = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$", error="a setting's name")),
        values=_SettingValue(),
        load_default=dict,
    )

    @validates_schema
    def _not_itself(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("extends") is not None and data.get("extends") == data.get("source"):
            raise ValidationError("a file cannot extend itself", "extends")

    def handle_error(self, error: ValidationError, data: Any, **kwargs: Any) -> None:
        unknown = [key for key in (data or {}) if key not in EXTENDING_KEYS]
        if unknown:
            # marshmallow says "Unknown field."; say why the key is not taken here.
            messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
            for key in unknown:
                messages[key] = [
                    "a file that extends another takes only version, source, extends, description and settings; "
                    "for other rules, copy the base file instead"
                ]
            raise ValidationError(messages) from error
        raise error


@dataclass(frozen=True)
class Extension:
    """What a source's file says on top of its base, for `relay sources`."""

    base: str  # the base's source name
    file: str  # the base's file (`shopify.yaml`, or `.yml`)
    settings: tuple[tuple[str, str | int], ...]


def base_settings(data: Any) -> set[str]:
    """Every setting name the base file's keys and values reference, and those the schema's defaults name."""
    return _referenced(data) | envrefs.implied_names()


def secret_settings(data: Any) -> set[str]:
    """The settings the base reads as secrets or credentials: its `auth` and its `fetch` (an API's token).
    Extending them with a value would write a secret into a file; only another reference is taken."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key in ("auth", "fetch"):
            found |= _referenced(data.get(key))
    return found


def rebind(data: Any, settings: Mapping[str, str | int]) -> Any:
    """`data` with every reference to a setting `settings` names replaced by what it gives (keys too: a
    field's name may be a setting)."""
    if isinstance(data, dict):
        return {rebind(key, settings): rebind(value, settings) for key, value in data.items()}
    if isinstance(data, list):
        return [rebind(item, settings) for item in data]
    if isinstance(data, str):
        return envrefs.rebind_text(data, settings)
    return data


def _referenced(data: Any) -> set[str]:
    return {ref.name for text in _texts(data) for ref in envrefs.find_refs(text)}


def _texts(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _texts(key)
            yield from _texts(value)
    elif isinstance(data, list):
        for item in data:
            yield from _texts(item)
    elif isinstance(data, str):
        yield data
