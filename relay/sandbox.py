"""`python -m relay sandbox`: a stand-in for the upstream API, in memory.

It follows the upstream contract draft (`profiles/update`, `profiles/import`,
`profiles/get`; tokens, databases, matching, field types and operators,
subscriptions, segments; the error answers) and adds test-only controls
under `/_fake/` to inject faults. Tests use it through `SandboxServer`, a
real HTTP server on loopback; the README uses it to show relay end to end.

`Sandbox.handle()` holds all the behaviour and does no I/O; the server is a
thin `http.server` wrapper, so that a fault can really drop a connection.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import random
import re
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from relay.bodies import parse_body
from relay.errors import RequestRejected
from relay.upstream.contract import (
    CHANNELS,
    MATCHING_MODES,
    ORDER_STATUSES,
    ORDERS_METHOD,
    SUBSCRIPTION_STATUSES,
    missing_match,
)
from relay.upstream.xmlbody import to_xml

__all__ = ["Sandbox", "SandboxServer", "cmd_sandbox", "default_config"]

DROP = object()  # handle() result: close the connection without answering

SYSTEM_FIELDS: dict[str, str] = {
    "email": "email",
    "phones": "phones",
    "_fname": "string",
    "_lname": "string",
    "_regcity": "string",
    "_regcountry": "string",
    "_regurl": "string",
    "_city": "string",
    "_country": "string",
    "_region": "string",
    "_postal_code": "postal",
    "_tz": "string",
    "_vendor": "string",
    "_browser": "string",
    "_bdate": "date",
    "_regdate": "date",
    "_regip": "ip",
    "_ip": "ip",
    "_sex": "sex",
    "_status": "int",
}
READ_ONLY = {"_createtime", "_md5", "_emaildomain", "id", "db_id"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$")
_COUNTRIES = {"81.2.69.": "United Kingdom", "8.8.8.": "United States", "77.88.55.": "Russia"}


def default_config(tokens: list[str] | None = None) -> dict[str, Any]:
    """One database with the fields the built-in mappings write, one resource, two segments."""
    return {
        "databases": {
            "1": {
                "fields": {
                    "tags": {"type": "tags"},
                    "orders_count": {"type": "int"},
                    "revenue": {"type": "float"},
                }
            }
        },
        "resources": {"1": {"channels": list(CHANNELS)}},
        "segments": [1, 2],
        "tokens": {token: {"dbs": [1], "market": True} for token in (tokens or ["sandbox-token"])},
        "unknown_fields": "reject",
        # The market module's currencies: an order in any other is refused, as the account's would be.
        "currencies": ["USD", "EUR", "GBP", "CAD", "RUB", "JPY", "KZT"],
    }


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class Profile:
    id: str
    db_id: int
    fields: dict[str, Any] = field(default_factory=dict)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    segments: set[int] = field(default_factory=set)


class Sandbox:
    """The upstream's state and behaviour; thread-safe."""

    def __init__(self, config: dict[str, Any] | None = None, *, echo: bool = False) -> None:
        self.lock = threading.RLock()
        self.echo = echo
        self.configure(config or default_config())

    # -- controls ---------------------------------------------------------
    def configure(self, config: dict[str, Any]) -> None:
        with self.lock:
            self.config = config
            self.reset()

    def reset(self) -> None:
        with self.lock:
            self.profiles: dict[str, Profile] = {}
            # Lookup indexes (lower-cased e-mail / normalised phone -> profile ids), so a big
            # sandbox answers as fast as an empty one.
            self.by_email: dict[str, set[str]] = {}
            self.by_phone: dict[str, set[str]] = {}
            self.keys_of: dict[str, tuple[set[str], set[str]]] = {}
            self.requests: list[dict[str, Any]] = []
            self.faults: list[dict[str, Any]] = []
            self.chaos: dict[str, Any] = {}
            self.tariff_exhausted = False
            self.applied = 0
            self.orders: dict[str, dict[str, Any]] = {}  # market/orders/import, by external_id
            self.rng = random.Random(self.config.get("seed", 0))  # noqa: S311 - fault injection, not crypto

    # -- entry point ------------------------------------------------------
    def handle(self, verb: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        """Answer one request: (status, headers, body bytes), (status, headers, body bytes, seconds
        between its bytes) for an answer that drips, or DROP."""
        split = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        if split.path.startswith("/_fake/"):
            return self._control(verb, split.path[len("/_fake/") :], body)
        if not split.path.startswith("/api/v1.1/"):
            return _json(404, {"error": 404, "error_text": "Not found"})
        method = split.path[len("/api/v1.1/") :]
        want_xml = query.get("format") == "xml" or "xml" in headers.get("accept", "").lower()
        latency = float(self.chaos.get("latency_ms", 0))
        if latency:
            time.sleep(latency / 1000)
        fault = self._next_fault()
        if fault is not None:
            delay = fault.get("delay_ms")
            if delay:
                time.sleep(delay / 1000)
            if fault.get("drop"):
                self._log(method, None, "drop")
                return DROP
            status = fault.get("status")
            if status:
                self._log(method, None, f"fault {status}")
                extra = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
                if "location" in fault:  # a redirect, as a web server in front of the API may answer
                    extra["Location"] = str(fault["location"])
                if status == 429:
                    return _json(429, {"error": 429, "error_text": "Too many requests"}, extra)
                if fault.get("body") is not None:
                    return status, {"Content-Type": "text/plain", **extra}, str(fault["body"]).encode()
                return status, {"Content-Type": "text/html", **extra}, b"<html><body>502 Bad Gateway</body></html>"
        if verb != "POST":
            return _answer(405, {"error": 400, "error_text": "Only POST is allowed"}, want_xml)
        try:
            # XML's text stays text for orders, whose ids and prices the API takes as text (`30.00`).
            request = self._parse(headers, body, typed=method != ORDERS_METHOD)
            want_xml = want_xml or request.get("format") == "xml"
            token = request.get("token") or _bearer(headers) or query.get("token")
            result = self._call(method, request, token, from_xml="xml" in headers.get("content-type", ""))
            self._log(method, request, "ok")
            answer = _answer(200, {"error": 0, "error_text": "Successful operation", **result}, want_xml)
            return _shaped(answer, fault)
        except _Refused as exc:
            self._log(method, None, f"{exc.status} {exc.text}")
            return _answer(exc.status, {"error": exc.status, "error_text": exc.text}, want_xml)

    def _next_fault(self) -> dict[str, Any] | None:
        with self.lock:
            if self.faults:
                return self.faults.pop(0)
            rate = float(self.chaos.get("fail_rate", 0))
            if rate and self.rng.random() < rate:
                kind = self.rng.choice(self.chaos.get("kinds", ["500", "503", "429", "drop"]))
                if kind == "drop":
                    return {"drop": True}
                if kind == "timeout":
                    return {"delay_ms": int(self.chaos.get("delay_ms", 3000)), "status": 504}
                fault: dict[str, Any] = {"status": int(kind)}
                if kind == "429":
                    fault["retry_after"] = 1
                return fault
        return None

    def _log(self, method: str, request: dict[str, Any] | None, outcome: str) -> None:
        shown = None
        if request is not None:
            shown = {k: v for k, v in request.items() if k != "token"}
        with self.lock:
            self.requests.append({"method": method, "body": shown, "outcome": outcome, "at": time.time()})
        if self.echo:
            print(json.dumps({"method": method, "outcome": outcome, "body": shown}, ensure_ascii=False), flush=True)

    def _parse(self, headers: dict[str, str], body: bytes, *, typed: bool = True) -> dict[str, Any]:
        content_type = headers.get("content-type", "")
        if "json" not in content_type and "xml" not in content_type:
            raise _Refused(400, "Incorrect request: Content-Type must be application/json or application/xml")
        try:
            data = parse_body(body, content_type)
        except RequestRejected as exc:
            raise _Refused(400, f"Incorrect request: {exc.detail}") from None
        if not isinstance(data, dict):
            raise _Refused(400, "Incorrect request: body must be an object")
        if "xml" in content_type:
            data = _coerce_xml(data) if typed else data
        return dict(data)

    # -- the API ----------------------------------------------------------
    def _call(self, method: str, request: dict[str, Any], token: Any, *, from_xml: bool = False) -> dict[str, Any]:
        if method not in ("profiles/update", "profiles/import", "profiles/get", ORDERS_METHOD):
            raise _Refused(404, f"Unknown method {method}")
        if not token:
            raise _Refused(401, "API token required")
        grant = self.config["tokens"].get(str(token))
        if grant is None:
            raise _Refused(403, "Access denied")
        if self.tariff_exhausted:
            raise _Refused(402, "Tariff limit reached")
        if method == ORDERS_METHOD:
            if not grant.get("market"):
                raise _Refused(403, "Access denied: the token has no market role")
            return self._import_orders(request, grant, from_xml)
        db_id = request.get("db_id")
        if isinstance(db_id, bool) or not isinstance(db_id, int):
            raise _Refused(400, "Incorrect request: db_id must be an integer")
        if str(db_id) not in self.config["databases"]:
            raise _Refused(404, "Database not found")
        if db_id not in grant.get("dbs", []):
            raise _Refused(403, "Access denied")
        matching = request.get("matching")
        if matching is None:
            matching = "profile_id" if request.get("profile_id") and not request.get("email") else "email"
        if matching not in MATCHING_MODES:
            raise _Refused(400, f"Incorrect request: unknown matching {matching!r}")
        required, one_of = MATCHING_MODES[matching]
        for key in required:
            if request.get(key) in (None, ""):
                raise _Refused(400, f"Incorrect request: {key} is required for matching {matching}")
        if one_of and not any(request.get(key) not in (None, "") for key in one_of):
            raise _Refused(400, f"Incorrect request: {' or '.join(one_of)} is required for matching {matching}")
        with self.lock:
            found = self._find(db_id, matching, request)
            if len(found) > 1:
                raise _Refused(409, "More than one profile matches")
            if method == "profiles/get":
                if not found:
                    raise _Refused(404, "Profile not found")
                return {"data": self._export(found[0])}
            if method == "profiles/import" and matching == "profile_id":
                raise _Refused(400, "Incorrect request: matching profile_id works only on update")
            data = request.get("data")
            if not isinstance(data, dict):
                raise _Refused(400, "Incorrect request: data is required")
            profile = found[0] if found else None
            if profile is None and method == "profiles/update":
                raise _Refused(404, "Profile not found")
            changes = self._validate(db_id, data, request)
            if profile is None:
                profile = Profile(id=secrets.token_hex(12), db_id=db_id)
                self.profiles[profile.id] = profile
            self._apply(profile, changes, request)
            self.applied += 1
            return {"profile_id": profile.id}

    # -- market/orders/import ----------------------------------------------
    def _import_orders(self, request: dict[str, Any], grant: dict[str, Any], from_xml: bool) -> dict[str, Any]:
        """Store each order by its external_id (a repeat replaces it), tied to the profile its matching keys
        find in the token's databases; every order is checked before any is kept."""
        unknown = set(request) - {"token", "data", "skip_triggers", "custom_fields", "custom_line_statuses"}
        if unknown:
            raise _Refused(400, f"Incorrect request: unknown parameter {sorted(unknown)[0]}")
        orders = _listed(request.get("data"), from_xml)
        if not isinstance(orders, list) or not orders:
            raise _Refused(400, "Incorrect request: data must be a list of orders")
        checked = [self._order(order, n, from_xml) for n, order in enumerate(orders)]
        with self.lock:
            for order in checked:
                found = [
                    profile
                    for db_id in grant.get("dbs", [])
                    if str(db_id) in self.config["databases"]
                    for profile in self._find(db_id, order["matching"], order)
                ]
                order["profile_id"] = found[0].id if len(found) == 1 else None
                self.orders[order["external_id"]] = order
        return {"error_text": ""}

    def _order(self, given: Any, n: int, from_xml: bool) -> dict[str, Any]:
        where = f"data.{n}"
        if not isinstance(given, dict):
            raise _Refused(400, f"Incorrect request: {where} must be an order object")
        order: dict[str, Any] = dict(given)
        _require_texts(order, ("external_id", "endpoint", "total_price", "currency", "status"), where)
        if order["status"] not in ORDER_STATUSES:
            raise _Refused(400, f"Incorrect request: {where}.status must be one of {', '.join(ORDER_STATUSES)}")
        _check_prices(order, ("total_price", "delivery_cost"), where)
        if order["currency"] not in self.config.get("currencies", []):
            raise _Refused(400, f"Incorrect request: currency {order['currency']} is not configured")
        matching = order.setdefault("matching", "email")
        if matching not in MATCHING_MODES:
            raise _Refused(400, f"Incorrect request: {where}: unknown matching {matching!r}")
        wanted = missing_match(matching, order)
        if wanted is not None:
            raise _Refused(400, f"Incorrect request: {where}: {wanted} is required for matching {matching}")
        lines = _listed(order.get("lines"), from_xml)
        if not isinstance(lines, list) or not lines:
            raise _Refused(400, f"Incorrect request: {where}.lines must hold at least one line")
        order["lines"] = [self._line(line, f"{where}.lines.{i}", from_xml) for i, line in enumerate(lines)]
        return order

    def _line(self, given: Any, where: str, from_xml: bool) -> dict[str, Any]:
        if not isinstance(given, dict):
            raise _Refused(400, f"Incorrect request: {where} must be a line object")
        line: dict[str, Any] = dict(given)
        count = line.get("count")
        if from_xml and isinstance(count, str) and count.isdigit():
            line["count"] = count = int(count)  # XML has no numbers: a count is its digits
        _require_texts(line, ("external_id", "product"), where)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise _Refused(400, f"Incorrect request: {where}.count must be a whole number of at least 1")
        _check_prices(line, ("base_price_per_item", "min_price_per_item", "final_price_per_item"), where)
        return line

    def _find(self, db_id: int, matching: str, request: dict[str, Any]) -> list[Profile]:
        email = str(request.get("email", "")).strip().lower()
        phone = _phone_key(request.get("phone", "")) if request.get("phone") else ""
        resource = request.get("resource_id")
        found = []
        candidates: Any = self.profiles.values()
        if matching in ("email", "email_profile", "email_sub", "phone", "phone_sub", "email_phone", "email_phone_sub"):
            ids = self.by_email.get(email, set()) | self.by_phone.get(phone, set())
            candidates = [self.profiles[i] for i in ids]
        for profile in candidates:
            if profile.db_id != db_id:
                continue
            subs = [s for s in profile.subscriptions if resource is None or s["resource_id"] == resource]
            sub_emails = {str(s.get("email", "")).lower() for s in subs if s["channel"] == "email"}
            sub_phones = {_phone_key(s.get("phone", "")) for s in subs if s["channel"] == "sms"}
            own_email = str(profile.fields.get("email", "")).lower()
            own_phones = {_phone_key(p) for p in profile.fields.get("phones", [])}
            hit = False
            if matching == "email":
                hit = bool(email) and (email == own_email or email in sub_emails)
            elif matching == "email_profile":
                hit = bool(email) and email == own_email
            elif matching == "email_sub":
                hit = bool(email) and email in sub_emails
            elif matching == "phone":
                hit = bool(phone) and (phone in own_phones or phone in sub_phones)
            elif matching == "phone_sub":
                hit = bool(phone) and phone in sub_phones
            elif matching == "profile_id":
                hit = profile.id == request.get("profile_id")
            elif matching == "push_sub":
                hit = any(
                    s["channel"] == "push"
                    and s.get("provider") == request.get("provider")
                    and s.get("subscription_id") == request.get("subscription_id")
                    for s in profile.subscriptions
                )
            elif matching in ("custom", "custom_sub"):
                hit = self._custom_match(profile, request)
            elif matching == "email_phone":
                hit = (bool(email) and email == own_email) or (bool(phone) and phone in own_phones)
            elif matching == "email_phone_sub":
                hit = (bool(email) and email in sub_emails) or (bool(phone) and phone in sub_phones)
            if hit:
                found.append(profile)
        return found

    def _custom_match(self, profile: Profile, request: dict[str, Any]) -> bool:
        value = profile.fields.get(str(request.get("field_name")))
        wanted = str(request.get("field_value", "")).strip()
        if isinstance(value, list):
            return all(tag.strip() in value for tag in wanted.split(","))
        return value is not None and str(value).strip() == wanted

    def _field_type(self, db_id: int, name: str) -> str | None:
        if name in SYSTEM_FIELDS:
            return SYSTEM_FIELDS[name]
        spec = self.config["databases"][str(db_id)]["fields"].get(name)
        return spec["type"] if spec else None

    def _validate(self, db_id: int, data: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        """Check everything before writing anything; returns what to apply."""
        changes: dict[str, Any] = {"fields": [], "subscriptions": []}
        for name, value in data.items():
            if name == "subscriptions":
                changes["subscriptions"] = self._subscriptions(value, request)
                continue
            if name in READ_ONLY:
                continue
            kind = self._field_type(db_id, name)
            if kind is None:
                if self.config.get("unknown_fields") == "ignore":
                    continue
                raise _Refused(400, f"Incorrect request: unknown field {name}")
            if isinstance(value, dict) and "action" in value and kind != "object":
                changes["fields"].append((name, kind, self._operator(name, kind, value)))
            else:
                changes["fields"].append((name, kind, ("set", self._typed(name, kind, value))))
        for key in ("add_to_segments", "remove_from_segments"):
            for segment in request.get(key) or []:
                if segment not in self.config.get("segments", []):
                    raise _Refused(400, f"Incorrect request: unknown segment {segment}")
        for flag in ("skip_triggers", "skip_invalid_subscriptions", "detect_geo"):
            if flag in request and not isinstance(request[flag], bool):
                raise _Refused(400, f"Incorrect request: {flag} must be a boolean")
        return changes

    def _typed(self, name: str, kind: str, value: Any) -> Any:
        ok = True
        if kind == "email":
            ok = isinstance(value, str) and "@" in value
        elif kind == "phones":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif kind == "string":
            ok = isinstance(value, str)
        elif kind == "postal":
            ok = isinstance(value, (str, int)) and not isinstance(value, bool)
        elif kind == "date":
            ok = isinstance(value, str) and bool(_DATE.match(value))
        elif kind == "ip":
            try:
                ipaddress.ip_address(value)
            except (ValueError, TypeError):
                ok = False
        elif kind == "sex":
            ok = value in ("male", "female") or (isinstance(value, int) and not isinstance(value, bool))
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == "boolean":
            ok = isinstance(value, bool)
        elif kind == "tags":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok:
            raise _Refused(400, f"Incorrect request: wrong type of field {name}")
        return value

    def _operator(self, name: str, kind: str, value: dict[str, Any]) -> tuple[str, Any]:
        action = value.get("action")
        operand = value.get("value")
        if action == "set":
            return "set", self._typed(name, kind, operand)
        if action == "unset":
            if name == "email":
                raise _Refused(400, "Incorrect request: email cannot be unset")
            return "unset", None
        if action == "incr":
            if kind not in ("int", "float") or isinstance(operand, bool) or not isinstance(operand, (int, float)):
                raise _Refused(400, f"Incorrect request: incr does not apply to {name}")
            return "incr", operand
        if action in ("add", "delete"):
            if kind not in ("tags", "arr_object") or not isinstance(operand, list):
                raise _Refused(400, f"Incorrect request: {action} does not apply to {name}")
            return action, operand
        if action == "upsert":
            if "submatch" not in value or "value" not in value:
                raise _Refused(400, "Incorrect request: upsert needs submatch and value")
            return "upsert", (value["submatch"], operand)
        raise _Refused(400, f"Incorrect request: unknown action {action!r}")

    def _subscriptions(self, value: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise _Refused(400, "Incorrect request: subscriptions must be a list")
        valid = []
        for item in value:
            problem = self._subscription_problem(item)
            if problem is None:
                valid.append(item)
            elif not request.get("skip_invalid_subscriptions"):
                raise _Refused(400, f"Incorrect request: invalid subscription: {problem}")
        return valid

    def _subscription_problem(self, item: Any) -> str | None:
        if not isinstance(item, dict):
            return "not an object"
        resource = self.config.get("resources", {}).get(str(item.get("resource_id")))
        channel = item.get("channel")
        if resource is None:
            return "unknown resource_id"
        if channel not in CHANNELS or channel not in resource.get("channels", CHANNELS):
            return f"unknown channel {channel!r}"
        if channel == "email" and "@" not in str(item.get("email") or (item.get("email_data") or {}).get("email", "")):
            return "email subscription without a valid email"
        if channel == "sms" and not (item.get("phone") or (item.get("phone_data") or {}).get("phone")):
            return "sms subscription without a phone"
        status = item.get("status")
        if status is not None and status not in SUBSCRIPTION_STATUSES and status not in (-1, 0, 1, 2, 3, 4, 5, 6):
            return f"unknown status {status!r}"
        return None

    def _apply(self, profile: Profile, changes: dict[str, Any], request: dict[str, Any]) -> None:
        for name, _kind, (action, operand) in changes["fields"]:
            if action == "set":
                profile.fields[name] = copy.deepcopy(operand)
            elif action == "unset":
                profile.fields.pop(name, None)
            elif action == "incr":
                profile.fields[name] = profile.fields.get(name, 0) + operand
            elif action == "add":
                current = list(profile.fields.get(name, []))
                current.extend(item for item in operand if item not in current)
                profile.fields[name] = current
            elif action == "delete":
                profile.fields[name] = [item for item in profile.fields.get(name, []) if item not in operand]
            elif action == "upsert":
                submatch, value = operand
                target = profile.fields.setdefault(name, {})
                if isinstance(target, dict):
                    target[submatch] = value
        for item in changes["subscriptions"]:
            self._upsert_subscription(profile, item)
        self._index(profile)
        profile.segments.update(request.get("add_to_segments") or [])
        profile.segments.difference_update(request.get("remove_from_segments") or [])
        if request.get("detect_geo"):
            ip = profile.fields.get("_ip") or profile.fields.get("_regip")
            for prefix, country in _COUNTRIES.items():
                if isinstance(ip, str) and ip.startswith(prefix):
                    profile.fields.setdefault("_country", country)

    def _index(self, profile: Profile) -> None:
        old_emails, old_phones = self.keys_of.get(profile.id, (set(), set()))
        for email in old_emails:
            self.by_email.get(email, set()).discard(profile.id)
        for phone in old_phones:
            self.by_phone.get(phone, set()).discard(profile.id)
        emails = {str(profile.fields.get("email", "")).lower()}
        emails |= {str(s.get("email", "")).lower() for s in profile.subscriptions if s["channel"] == "email"}
        phones = {_phone_key(p) for p in profile.fields.get("phones", [])}
        phones |= {_phone_key(s.get("phone", "")) for s in profile.subscriptions if s["channel"] == "sms"}
        emails.discard("")
        phones.discard("")
        self.keys_of[profile.id] = (emails, phones)
        for email in emails:
            self.by_email.setdefault(email, set()).add(profile.id)
        for phone in phones:
            self.by_phone.setdefault(phone, set()).add(profile.id)

    def _upsert_subscription(self, profile: Profile, item: dict[str, Any]) -> None:
        identity = (
            item.get("email")
            or (item.get("email_data") or {}).get("email")
            or item.get("phone")
            or (item.get("phone_data") or {}).get("phone")
            or json.dumps(item.get("cc_data"), sort_keys=True)
            or f"{item.get('provider')}:{item.get('subscription_id')}"
        )
        key = (item["resource_id"], item["channel"], identity)
        for existing in profile.subscriptions:
            if (existing["resource_id"], existing["channel"], existing["_identity"]) == key:
                if item.get("status") not in (None, -1):
                    existing["status"] = item["status"]
                if item.get("priority") not in (None, -1):
                    existing["priority"] = item["priority"]
                return
        stored = {k: v for k, v in item.items()}
        stored.setdefault("status", "subscribed")
        stored["_identity"] = identity
        profile.subscriptions.append(stored)

    def _export(self, profile: Profile) -> dict[str, Any]:
        subscriptions = []
        for sub in profile.subscriptions:
            shown = {k: v for k, v in sub.items() if not k.startswith("_") and k not in ("email", "phone")}
            if sub.get("email"):
                shown["email_data"] = {"email": sub["email"]}
            if sub.get("phone"):
                shown["phone_data"] = {"phone": sub["phone"]}
            subscriptions.append(shown)
        return {
            **profile.fields,
            "id": profile.id,
            "subscriptions": subscriptions,
            "segments": sorted(profile.segments),
        }

    # -- /_fake/ controls -------------------------------------------------
    def _control(self, verb: str, name: str, body: bytes) -> Any:
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return _json(400, {"error": 400, "error_text": "control bodies are JSON"})
        with self.lock:
            if name == "reset" and verb == "POST":
                self.reset()
                return _json(200, {"ok": True})
            if name == "config" and verb == "POST":
                self.configure(data)
                return _json(200, {"ok": True})
            if name == "faults" and verb == "POST":
                self.faults.extend(data if isinstance(data, list) else data.get("faults", []))
                return _json(200, {"queued": len(self.faults)})
            if name == "chaos" and verb == "POST":
                self.chaos = dict(data)
                return _json(200, {"ok": True})
            if name == "tariff" and verb == "POST":
                self.tariff_exhausted = bool(data.get("exhausted"))
                return _json(200, {"ok": True})
            if name == "requests" and verb == "GET":
                return _json(200, {"requests": self.requests, "applied": self.applied})
            if name == "profiles" and verb == "GET":
                return _json(200, {"profiles": [self._export(p) for p in self.profiles.values()]})
            if name == "orders" and verb == "GET":
                return _json(200, {"orders": list(self.orders.values())})
        return _json(404, {"error": 404, "error_text": "unknown control"})


def _shaped(answer: tuple[int, dict[str, str], bytes], fault: dict[str, Any] | None) -> Any:
    """A successful answer as a fault asks for it after the call was applied: `pad_bytes` of trailing
    whitespace (still the API's JSON, only huge), `drip_ms` between its bytes (an answer that never stops
    arriving, yet never pauses long enough for a read timeout)."""
    if fault is None:
        return answer
    status, headers, payload = answer
    payload += b" " * int(fault.get("pad_bytes", 0))
    drip = float(fault.get("drip_ms", 0)) / 1000
    return (status, headers, payload, drip) if drip else (status, headers, payload)


def _phone_key(value: Any) -> str:
    """Phones compare after stripping spaces, dashes and brackets; a leading + is kept."""
    return re.sub(r"[\s()\-]", "", str(value))


def _bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else None


_PRICE = re.compile(r"\d{1,15}(\.\d{1,6})?")


def _listed(value: Any, from_xml: bool) -> Any:
    """A list an order gives: XML writes a list of one as its one element."""
    return [value] if from_xml and isinstance(value, dict) else value


def _require_texts(item: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if not isinstance(item.get(key), str) or not item[key]:
            raise _Refused(400, f"Incorrect request: {where}.{key} is required, as text")


def _check_prices(item: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """The prices `item` gives of `keys` are text: digits, and a decimal point."""
    for key in keys:
        if key in item and not (isinstance(item[key], str) and _PRICE.fullmatch(item[key])):
            raise _Refused(400, f"Incorrect request: {where}.{key} must be a price as text")


def _coerce_xml(data: Any) -> Any:
    """XML scalars are text: turn what looks like a number or boolean back into one."""
    if isinstance(data, dict):
        return {k: _coerce_xml(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_coerce_xml(v) for v in data]
    if data in ("true", "false"):
        return data == "true"
    if isinstance(data, str) and re.fullmatch(r"-?\d+", data) and len(data) < 16:
        return int(data)
    if isinstance(data, str) and re.fullmatch(r"-?\d+\.\d+", data):
        return float(data)
    return data


def _json(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def _answer(status: int, body: dict[str, Any], want_xml: bool) -> tuple[int, dict[str, str], bytes]:
    if want_xml:
        return status, {"Content-Type": "application/xml"}, to_xml(body).encode()
    return _json(status, body)


class SandboxServer:
    """The sandbox on a real loopback HTTP server, in a background thread."""

    def __init__(self, sandbox: Sandbox | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sandbox = sandbox or Sandbox()
        owner = self.sandbox

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm and
                # the client's delayed ACK hold every keep-alive answer for 40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                result = owner.handle(self.command, self.path, headers, body)
                if result is DROP:
                    self.close_connection = True
                    self.connection.close()
                    return
                status, out_headers, payload, *drip = result
                self.send_response(status)
                for name, value in out_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if not drip:
                    self.wfile.write(payload)
                    return
                for index in range(len(payload)):
                    self.wfile.write(payload[index : index + 1])
                    self.wfile.flush()
                    time.sleep(drip[0])

            do_POST = do_GET = do_PUT = do_DELETE = _serve  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that hangs up mid-answer (a relay killed in a test) is not our fault.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v1.1"

    def start(self) -> SandboxServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cmd_sandbox(args: Any, _settings: Any) -> int:
    config = default_config(args.token or None)
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    server = SandboxServer(Sandbox(config, echo=not args.quiet), host=args.host, port=args.port)
    default = "" if args.token or args.config else " (the default token is sandbox-token)"
    print(
        f"sandbox upstream on {server.api_url}: {len(config['tokens'])} token(s){default}, "
        f"databases {', '.join(config['databases'])}\n"
        f"  point relay at it: RELAY_UPSTREAM_URL={server.api_url} RELAY_UPSTREAM_TOKEN=<token>",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server.server_close()
    return 0
