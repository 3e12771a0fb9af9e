"""The loaded form of a mapping file: frozen dataclasses, no loose dicts."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marshmallow import Schema

if TYPE_CHECKING:
    from relay.mapping.extending import Extension

__all__ = [
    "ONCE_KEY_LENGTH",
    "SIGNED_PLACEHOLDER",
    "MAX_DELAY_SECONDS",
    "AuthSpec",
    "DelaySpec",
    "FieldSpec",
    "PingSpec",
    "Rule",
    "Source",
    "SubscriptionSpec",
    "TagsSpec",
    "ValueSpec",
    "signed_parts",
]

# What an HMAC may sign, around the raw body: `{timestamp}`, `{method}`, `{url}`, `{header:<name>}`, and
# `{field:<name>}`, a top-level field of a JSON body, for a provider that signs fields rather than the body (Ecwid).
SIGNED_PLACEHOLDER = re.compile(
    r"\{(body|timestamp|method|url|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|field:[A-Za-z_][A-Za-z0-9_]{0,63})\}"
)


@functools.lru_cache(maxsize=64)
def signed_parts(template: str) -> tuple[tuple[str, str], ...]:
    """`template` as (literal text, placeholder) pairs; the last placeholder is "" when text ends it."""
    parts: list[tuple[str, str]] = []
    start = 0
    for match in SIGNED_PLACEHOLDER.finditer(template):
        parts.append((template[start : match.start()], match.group(1)))
        start = match.end()
    if start < len(template):
        parts.append((template[start:], ""))
    return tuple(parts)


@dataclass(frozen=True)
class ValueSpec:
    """Where a value comes from (a payload expression, a literal or a template)
    and the transforms applied to it, in order."""

    path: str | None = None
    value: Any = None
    template: str | None = None
    transforms: tuple[tuple[str, Any], ...] = ()
    default: Any = None


@dataclass(frozen=True)
class FieldSpec:
    """One profile field: its value and the upstream operator that writes it."""

    value: ValueSpec
    op: str = "set"
    submatch: str | None = None


@dataclass(frozen=True)
class SubscriptionSpec:
    channel: str
    resource_id: int | str
    identity: dict[str, ValueSpec]
    status: ValueSpec | None = None
    priority: ValueSpec | None = None
    custom_fields: dict[str, ValueSpec] = field(default_factory=dict)
    cats: ValueSpec | None = None
    when: str | None = None


@dataclass(frozen=True)
class TagsSpec:
    field: str
    add: tuple[ValueSpec, ...] = ()
    remove: tuple[ValueSpec, ...] = ()


@dataclass(frozen=True)
class LinesSpec:
    """An order's lines: one for each item of the list at `path`, whose expressions read that item as `@`,
    with `shared`'s values (expressions over the whole payload, such as the order's currency) added to it."""

    path: str
    values: dict[str, ValueSpec]
    shared: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OrderSpec:
    """A shop's order for the market module, sent after the rule's profile call (`market/orders/import`).

    Sent only when `endpoint` comes out non-empty, so `${RELAY_MARKET_ENDPOINT:-}` left unset turns it off,
    and `when` (an expression), if given, is true.
    """

    values: dict[str, ValueSpec]
    lines: LinesSpec
    when: str | None = None


# The longest key a rule's `once` may give (the store's column): an order's id and a word or two.
ONCE_KEY_LENGTH = 200


@dataclass(frozen=True)
class Rule:
    """What to do with one kind of event: forward it as a call, ignore it, or keep it unsent (`keep`: stored,
    failed for its mapping with the reason, to replay once a rule forwards it)."""

    name: str
    events: tuple[str, ...] = ()
    when: str | None = None
    ignore: str | None = None
    keep: str | None = None
    # An erasure request (Shopify's customers/redact): relay forgets the stored deliveries naming this e-mail
    # and phone, from every source, and makes no call.
    forget: dict[str, ValueSpec] | None = None
    method: str = "profiles/import"
    matching: tuple[str, ...] = ("email",)  # in order of preference: the first the payload gives keys for
    match: dict[str, ValueSpec] = field(default_factory=dict)
    db_id: int | str = "${RELAY_DB_ID:-1}"
    resource_id: int | str | None = None
    skip_triggers: bool = False
    skip_invalid_subscriptions: bool = True
    detect_geo: bool = True
    new_profile: bool = False
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    full_name: ValueSpec | None = None
    tags: TagsSpec | None = None
    subscriptions: tuple[SubscriptionSpec, ...] = ()
    add_to_segments: tuple[int | str, ...] = ()
    remove_from_segments: tuple[int | str, ...] = ()
    order: OrderSpec | None = None
    # The rule applies once per key (`order {id} paid`): a later delivery that gives a key an earlier one took
    # passes it over for the rules after it, so an order is counted once whichever of its hooks says it first.
    once: ValueSpec | None = None

    @property
    def forwards(self) -> bool:
        """Whether the rule makes calls (not `ignore`, `keep` or `forget`)."""
        return self.ignore is None and self.keep is None and self.forget is None


@dataclass(frozen=True)
class AuthSpec:
    """How a source proves a request is genuine.

    `hmac`: a keyed digest of `signed` (a template over `{body}`, `{timestamp}`,
    `{method}`, `{url}`, `{header:<name>}` and `{field:<name>}`, a top-level
    field of a JSON body) in `header`, keyed with the
    secret as written (`key_encoding` text) or decoded from hex or base64;
    `token`: a shared token in `?token=`, `X-Relay-Token`, the `header` named
    (after its `prefix`) or the `body_field` named (taken out of the body
    before it is stored); `none`: nothing (only for sources that are trusted by
    the network they sit on); `rsa`: RSA-SHA256 signatures of the body by keys the
    provider publishes (Adobe I/O Events), and a field of the body that names the
    recipient, which must equal the secret (the registration's client id).
    """

    scheme: str
    secrets: tuple[str, ...] = ()
    header: str | None = None
    algorithm: str = "sha256"
    encoding: str = "base64"
    prefix: str = ""
    signed: str = "{body}"
    signature_format: str = "plain"
    field_separator: str = ","
    timestamp_field: str = "t"
    signature_field: str = "v1"
    timestamp_header: str | None = None
    timestamp_body_field: str | None = None  # the body's top-level field that holds the timestamp (Ecwid)
    timestamp_unit: str = "s"
    tolerance: int | None = None
    key_encoding: str = "text"
    url_unescape: str = ""  # characters whose %XX escapes in the URL are decoded before signing (HubSpot)
    body_field: str | None = None  # a token source's field of the body that holds the token (Wufoo)
    # `rsa`: (signature header, header naming the public key's path) pairs, any of which may verify; the
    # keys are fetched from `keys_url` + that path; `recipient_field` of the body must equal the secret.
    rsa_signatures: tuple[tuple[str, str], ...] = ()
    keys_url: str | None = None
    recipient_field: str | None = None

    @property
    def signs_url(self) -> bool:
        """The signature covers the URL the sender called: relay must work it out (RELAY_PUBLIC_URL)."""
        return self.scheme == "hmac" and "{url}" in self.signed


@dataclass(frozen=True)
class PingSpec:
    """A provider's test request: every condition given must hold."""

    header: str | None = None
    equals: str | None = None
    absent_headers: tuple[str, ...] = ()
    when: str | None = None
    body: str | None = None
    body_pattern: str | None = None
    unsigned: bool = False


@dataclass(frozen=True)
class FetchSpec:
    """A document the worker fetches from the provider's API before it translates: a thin webhook names an
    order or a customer by id, and the rules read it as `fetched.<name>`.

    `url` and the header values are templates: `{expression}` over the payload (each value percent-encoded
    in the URL), `${NAME}` a setting, resolved only when the request is made."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    events: tuple[str, ...] = ()
    when: str | None = None
    # Skipped, rather than failing the delivery, while a setting it needs is unset: the rules then find no
    # `fetched.<name>` (Paddle's transactions are forwarded once an API key is set, and ignored before).
    optional: bool = False
    # Settings it needs besides those its address and headers name, not made while one is unset or empty.
    needs: tuple[str, ...] = ()
    # Read by the rule's order section alone (an order's lines): made after the profile calls are built, only
    # when the rule sends an order, and its failure holds back the order, not the buyer's profile.
    order_only: bool = False
    # The API's answers that say the record is gone since the webhook (404, 410): the rules then find no
    # `fetched.<name>`, rather than the delivery failing as rejected.
    absent_on: tuple[int, ...] = ()


MAX_DELAY_SECONDS = 86_400  # a day: a wait longer than that is no longer waiting for the shopper


@dataclass(frozen=True)
class DelaySpec:
    """The events whose deliveries the worker takes only `seconds` after they arrive, so that what it fetches
    then says how things ended: Ecwid sends `unfinished_order.created` as the shopper leaves for the payment
    page, and an order paid within minutes is no abandoned checkout.

    `seconds` is a whole number, or a `${NAME:-default}` reference whose default is one. With `latest_by`, an
    expression over the payload (Shopify's checkout `token`), a delivery is passed over when a later one of the
    same value came meanwhile: only the last state of a checkout updated five times goes. With `ordered_by`, a
    date-time or number over the payload (the checkout's `updated_at`), the last is the newest by that value,
    not the last received: a provider that does not keep the order of its hooks cannot have an older state go."""

    events: tuple[str, ...]
    seconds: int | str
    latest_by: str | None = None
    ordered_by: str | None = None


@dataclass(frozen=True)
class Source:
    """One mapping file, loaded and checked."""

    name: str
    file: str
    description: str = ""
    kind: str = "form"
    auth: AuthSpec = field(default_factory=lambda: AuthSpec(scheme="none"))
    pings: tuple[PingSpec, ...] = ()
    dedup_headers: tuple[str, ...] = ()
    dedup_paths: tuple[str, ...] = ()
    ip_paths: tuple[str, ...] = ()
    ip_from_client: bool = False
    event_header: str | None = None
    event_path: str | None = None
    event_query: str | None = None
    decode_json: tuple[str, ...] = ()
    accepted_status: int = 202
    # Web pages whose scripts may post to the hook from the visitor's browser (CORS); "*" for any.
    cors_origins: tuple[str, ...] = ()
    # A GET to the hook with this query parameter is the provider checking the address (Adobe I/O Events'
    # challenge): answered with the parameter's value, nothing stored.
    challenge_query: str | None = None
    payload_schema: Schema | None = field(default=None, compare=False, repr=False)
    fetches: tuple[FetchSpec, ...] = ()
    delays: tuple[DelaySpec, ...] = ()
    rules: tuple[Rule, ...] = ()
    # For a file that extends another: the base and the settings it reads otherwise (extending.Extension).
    extension: Extension | None = None

    @property
    def rule_fetches(self) -> tuple[FetchSpec, ...]:
        """The fetches made before a rule is chosen: what the rules and the profile calls read."""
        return tuple(spec for spec in self.fetches if not spec.order_only)

    @property
    def order_fetches(self) -> tuple[FetchSpec, ...]:
        """The fetches only an order section reads (`FetchSpec.order_only`)."""
        return tuple(spec for spec in self.fetches if spec.order_only)
