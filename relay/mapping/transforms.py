"""Value transforms a mapping file can name: trim, lower, phone, email, date...

A transform takes one value and returns the new value, or None when the value
is absent or unusable (an e-mail that is not one, a phone that is not a phone).
None drops the field from the call; when that field is the matching key, the
translator reports a mapping error instead. Each transform also has a checker
for its argument, run when the mapping file is loaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from iso4217 import Currency

__all__ = [
    "PATH_ARGUMENTS",
    "TRANSFORMS",
    "TransformContext",
    "apply_transform",
    "check_transform_arg",
    "parse_when",
    "scalar_text",
]


@dataclass(frozen=True)
class TransformContext:
    """What transforms may depend on besides their value."""

    phone_region: str = "RU"


Transform = Callable[[Any, Any, TransformContext], Any]


def _each(function: Callable[[Any, Any, TransformContext], Any]) -> Transform:
    """Apply a scalar transform to every item of a list (dropping Nones)."""

    def apply(value: Any, arg: Any, ctx: TransformContext) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            items = [function(item, arg, ctx) for item in value if item is not None]
            items = [item for item in items if item not in (None, "")]
            return items or None
        return function(value, arg, ctx)

    return apply


def scalar_text(value: Any) -> str | None:
    """A payload scalar as the text the upstream gets (`true`, `15550000000`); None for containers."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _trim(value: Any, _arg: Any, _ctx: TransformContext) -> Any:
    if isinstance(value, str):
        return " ".join(value.split()) or None
    return value


def _lower(value: Any, _arg: Any, _ctx: TransformContext) -> Any:
    return value.lower() if isinstance(value, str) else value


def _upper(value: Any, _arg: Any, _ctx: TransformContext) -> Any:
    return value.upper() if isinstance(value, str) else value


def _string(value: Any, _arg: Any, _ctx: TransformContext) -> Any:
    return scalar_text(value)


def _email(value: Any, _arg: Any, _ctx: TransformContext) -> str | None:
    text = scalar_text(value)
    return _normalised_email(text.strip()) if text else None


# A local part made of ASCII letters, digits and the symbols RFC 5322 allows unquoted, in dot-separated runs.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_PLAIN_LONGEST = 100  # far below the 254 characters an address may have


@lru_cache(maxsize=8192)
def _normalised_email(text: str) -> str | None:
    # A mapping often reads the same address three times (match key, field, subscription).
    local, at, domain = text.rpartition("@")
    if at and len(text) <= _PLAIN_LONGEST and _PLAIN_LOCAL.fullmatch(local):
        # Most addresses: email-validator reads such a local part as it is and its domain alone, and a shop's
        # customers share a few domains, whose check was two thirds of the library's time (a test compares
        # this with the library on generated addresses).
        checked = _email_domain(domain)
        return f"{local}@{checked}".lower() if checked is not None else None
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return None
    return str(result.normalized).lower()


@lru_cache(maxsize=1024)
def _email_domain(domain: str) -> str | None:
    """The domain as email-validator writes it in a valid address, or None when no address may have it."""
    try:
        result = validate_email(f"x@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return str(result.normalized).rpartition("@")[2]


_LETTERS_IN_PHONE = re.compile(r"[A-Za-z]")


def _phone(value: Any, arg: Any, ctx: TransformContext) -> str | None:
    text = scalar_text(value)
    if not text or _LETTERS_IN_PHONE.search(text.replace("ext", "")):
        return None
    region = (arg or {}).get("region") if isinstance(arg, dict) else arg
    if not (isinstance(region, str) and len(region) == 2 and region.isalpha()):
        region = None  # the payload's country is missing or not a code: the default region, not a lost phone
    if isinstance(value, (int, float)) and len(text) >= 11:
        text = "+" + text  # a JSON number such as 15550000000 carries its country code
    return _e164(text, (region or ctx.phone_region).upper())


@lru_cache(maxsize=8192)
def _e164(text: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _name_part(index: int) -> Transform:
    def split(value: Any, _arg: Any, _ctx: TransformContext) -> str | None:
        text = scalar_text(value)
        if not text:
            return None
        words = text.split()
        if not words:
            return None
        if index == 0:
            return words[0]
        return " ".join(words[1:]) or None

    return split


_DATE_ORDERS = {
    "dmy": ("%d.%m.%Y", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%y", "%d/%m/%y"),
    "mdy": ("%m/%d/%Y", "%m-%d-%Y", "%m.%d.%Y", "%m/%d/%y"),
    "ymd": ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d"),
}
# English month names, whatever the order: `Mar 14, 1990` (Formstack), `14 March 1990`. Python never sets
# the process's locale, so %b and %B read English names.
_NAMED_MONTH = ("%b %d, %Y", "%B %d, %Y", "%b %d %Y", "%B %d %Y", "%d %b %Y", "%d %B %Y", "%d %b, %Y", "%d %B, %Y")


def _date(value: Any, arg: Any, _ctx: TransformContext) -> str | None:
    parsed = parse_when(value, arg)
    return parsed.date().isoformat() if parsed else None


def _datetime(value: Any, arg: Any, _ctx: TransformContext) -> str | None:
    parsed = parse_when(value, arg)
    if parsed is None:
        return None
    text = parsed.isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def parse_when(value: Any, arg: Any = None) -> datetime | None:
    """Read a date or date-time as the field declares (`order: dmy|mdy|ymd`)."""
    if value is None or isinstance(value, (bool, list)):
        return None
    if isinstance(value, dict):
        # Jotform-style {"year": .., "month": .., "day": ..}
        try:
            return datetime(int(value["year"]), int(value["month"]), int(value["day"]))
        except (KeyError, TypeError, ValueError):
            return None
    if isinstance(value, (int, float)):
        seconds = value / 1000 if value > 10**11 else value  # milliseconds or seconds
        try:
            # In UTC, not the server's zone: HubSpot's dates are midnight UTC, and the same payload must
            # translate the same on every machine (a server west of UTC gave the day before).
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip()
    if not text:
        return None
    order = (arg or {}).get("order", "ymd") if isinstance(arg, dict) else (arg or "ymd")
    formats = _DATE_ORDERS[order] + (_DATE_ORDERS["ymd"] if order != "ymd" else ())
    candidate = text.replace("Z", "+00:00") if text.endswith("Z") else text
    try:
        return datetime.fromisoformat(candidate)
    except ValueError:
        pass
    head = text.split()[0].split("T")[0]
    for fmt in formats:
        try:
            return datetime.strptime(head, fmt)
        except ValueError:
            continue
    if any(char.isalpha() for char in text):
        words = " ".join(text.replace(".", " ").split())  # `Mar. 14, 1990`, doubled spaces
        for fmt in _NAMED_MONTH:
            try:
                return datetime.strptime(words, fmt)
            except ValueError:
                continue
    return None


def _number(value: Any, _arg: Any, _ctx: TransformContext) -> int | float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    text = scalar_text(value)
    if text is None:
        return None
    text = text.strip().replace(" ", "").replace(",", ".")
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return _plain_number(number)


_LARGEST_EXPONENT = 308  # a float's range: beyond it a value is inf or an int json may not write


def _plain_number(number: Decimal) -> int | float | None:
    if not number.is_finite() or number.adjusted() > _LARGEST_EXPONENT:
        return None
    return int(number) if number == number.to_integral_value() else float(number)


def _integer(value: Any, arg: Any, ctx: TransformContext) -> int | None:
    number = _number(value, arg, ctx)
    return None if number is None else int(number)


_TRUE = {"true", "yes", "on", "1", "y", "да", "checked", "agree", "accepted"}
_FALSE = {"false", "no", "off", "0", "n", "нет", ""}


def _boolean(value: Any, _arg: Any, _ctx: TransformContext) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, list):
        return bool(value)
    text = scalar_text(value)
    if text is None:
        return None
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _map(value: Any, arg: Any, _ctx: TransformContext) -> Any:
    table: Mapping[str, Any] = arg.get("values", arg) if "values" in arg else arg
    key = scalar_text(value)
    if key is not None and key in table:
        return table[key]
    if key is not None and key.lower() in table:
        return table[key.lower()]
    return arg.get("default") if "values" in arg else None


def _json(value: Any, _arg: Any, _ctx: TransformContext) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return None


def _split(value: Any, arg: Any, _ctx: TransformContext) -> list[str] | None:
    if isinstance(value, list):
        return [str(v) for v in value] or None
    text = scalar_text(value)
    if not text:
        return None
    parts = [part.strip() for part in text.split(arg or ",")]
    return [part for part in parts if part] or None


def _join(value: Any, arg: Any, _ctx: TransformContext) -> str | None:
    if isinstance(value, list):
        parts = [scalar_text(item) for item in value]
        return (arg if arg is not None else ", ").join(p for p in parts if p) or None
    return scalar_text(value)


def _first(value: Any, _arg: Any, _ctx: TransformContext) -> Any:
    if isinstance(value, list):
        return next((item for item in value if item not in (None, "", [], {})), None)
    return value


def _list(value: Any, _arg: Any, _ctx: TransformContext) -> list[Any] | None:
    if value is None:
        return None
    return value if isinstance(value, list) else [value]


def _unique(value: Any, _arg: Any, _ctx: TransformContext) -> Any:
    if not isinstance(value, list):
        return value
    seen: list[Any] = []
    for item in value:
        if item not in seen:
            seen.append(item)
    return seen or None


def _scale(value: Any, arg: Any, ctx: TransformContext) -> Any:
    number = _number(value, None, ctx)
    if number is None:
        return None
    return _plain_number(Decimal(str(number)) * Decimal(str(arg)))


def _minor_units(value: Any, arg: Any, ctx: TransformContext) -> Any:
    """An amount in the currency's smallest unit (cents for USD, yen for JPY, fils for KWD) in whole units."""
    number = _number(value, None, ctx)
    exponent = _currency_exponent(arg.get("currency"), arg.get("exponents") or {})
    if number is None or exponent is None:
        return None
    return _plain_number(Decimal(str(number)).scaleb(-exponent))


def _currency_exponent(code: Any, exponents: Mapping[str, int]) -> int | None:
    """How many decimals the currency's minor unit has: the mapping's own word first, then ISO 4217's."""
    if not isinstance(code, str):
        return None
    code = code.strip().upper()
    if code in exponents:
        return exponents[code]
    try:
        exponent: int | None = Currency(code).exponent
    except ValueError:
        return None  # not an ISO 4217 code: no guess, the amount is left out rather than counted 100 times over
    return exponent


def _prefix(value: Any, arg: Any, _ctx: TransformContext) -> Any:
    text = scalar_text(value)
    return f"{arg}{text}" if text else None


TRANSFORMS: dict[str, Transform] = {
    "trim": _each(_trim),
    "lower": _each(_lower),
    "upper": _each(_upper),
    "string": _each(_string),
    "email": _each(_email),
    "phone": _each(_phone),
    "first_name": _name_part(0),
    "last_name": _name_part(1),
    "date": _each(_date),
    "datetime": _each(_datetime),
    "number": _each(_number),
    "integer": _each(_integer),
    "boolean": _boolean,
    "map": _each(_map),
    "json": _json,
    "split": _split,
    "join": _join,
    "first": _first,
    "prefix": _each(_prefix),
    "list": _list,
    "unique": _unique,
    "scale": _each(_scale),
    "minor_units": _each(_minor_units),
}

# Arguments that name a payload expression: the translator reads `<name>_path` and passes its value as `<name>`.
PATH_ARGUMENTS: dict[str, str] = {"phone": "region_path", "minor_units": "currency_path"}


def _arg_problem(name: str, arg: Any) -> str | None:
    """Why `arg` does not suit transform `name`, or None when it does."""
    if name == "map":
        if not isinstance(arg, dict) or not arg:
            return "map needs a table of values, e.g. {map: {yes: true, no: false}}"
        return None
    if name in ("date", "datetime"):
        order = arg.get("order") if isinstance(arg, dict) else arg
        if order is not None and order not in _DATE_ORDERS:
            return f"date order must be one of {', '.join(_DATE_ORDERS)}, not {order!r}"
        return None
    if name == "phone":
        if isinstance(arg, dict) and "region_path" in arg:
            from relay.mapping.expressions import expression_problem

            return expression_problem(str(arg["region_path"]))
        region = arg.get("region") if isinstance(arg, dict) else arg
        if region is not None and not (isinstance(region, str) and len(region) == 2):
            if not (isinstance(region, str) and region.startswith("${")):
                return f"phone region must be a two-letter country code, not {region!r}"
        return None
    if name == "scale":
        if isinstance(arg, bool) or not isinstance(arg, (int, float)):
            return "scale takes a number, e.g. {scale: 0.01} for cents"
        return None
    if name == "minor_units":
        return _minor_units_problem(arg)
    if name in ("split", "join", "prefix"):
        if arg is not None and not isinstance(arg, str):
            return f"{name} takes a text argument"
        return None
    if arg is not None:
        return f"{name} takes no argument"
    return None


_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
_MINOR_UNITS_USE = "minor_units needs the currency: {minor_units: {currency_path: data.currency}} or {currency: JPY}"


def _minor_units_problem(arg: Any) -> str | None:
    if not isinstance(arg, dict) or len({"currency", "currency_path"} & arg.keys()) != 1:
        return _MINOR_UNITS_USE
    unknown = arg.keys() - {"currency", "currency_path", "exponents"}
    if unknown:
        return f"minor_units takes currency or currency_path, and exponents; not {', '.join(sorted(unknown))}"
    exponents = arg.get("exponents", {})
    if not isinstance(exponents, dict) or not all(
        isinstance(code, str) and _CURRENCY_CODE.fullmatch(code) and type(digits) is int and 0 <= digits <= 4
        for code, digits in exponents.items()
    ):
        return "minor_units exponents are currency codes with their decimals, e.g. {exponents: {ISK: 2, MGA: 0}}"
    if "currency_path" in arg:
        from relay.mapping.expressions import expression_problem

        return expression_problem(str(arg["currency_path"]))
    currency = arg["currency"]
    if isinstance(currency, str) and currency.startswith("${"):
        return None
    if _currency_exponent(currency, exponents) is None:
        return f"minor_units: {currency!r} is not an ISO 4217 currency with a minor unit"
    return None


def check_transform_arg(name: str, arg: Any) -> str | None:
    """A load-time check of one transform step: None when it is fine."""
    if name not in TRANSFORMS:
        return f"unknown transform {name!r} (known: {', '.join(sorted(TRANSFORMS))})"
    return _arg_problem(name, arg)


def apply_transform(name: str, arg: Any, value: Any, ctx: TransformContext) -> Any:
    return TRANSFORMS[name](value, arg, ctx)


_ = date  # date is part of the documented formats; kept for readers of _DATE_ORDERS
