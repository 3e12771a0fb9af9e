"""A person's deliveries, found by their e-mail address or phone number, and forgotten on request.

An operator asked "did Ivan's form arrive?" looks for ivan@example.com; one asked to erase a person
(GDPR's article 17, 152-FZ) deletes every stored request that names them. A delivery names a contact
when its translated calls hold it (the match keys and fields a mapping wrote: e-mails lower-cased,
phones in E.164, so that `IVAN@example.com` and `8 (912) 345-67-89` find them), or, for one without
calls (not yet translated, failed for its mapping, or ignored by it), when its stored payload holds
it, each value read as a mapping would read it.

The store narrows the search: the worker keeps a key for each contact a delivery's calls name
(`contact_keys`), and the store finds the deliveries with this contact's key; of those the keys do not
cover (no calls, or stored before relay kept keys) it takes those whose calls' text contains the address,
or that have no calls. Each delivery it finds is then checked here, value by value, so a longer address
that contains this one is not taken for it. A forgotten delivery goes with its attempts and its keys; its
de-duplication key stays, so a provider sending the same webhook again is answered `duplicate` and nothing
of it is stored again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.errors import RequestRejected
from relay.listing import chosen_deliveries
from relay.mapping.transforms import TransformContext, apply_transform
from relay.pipeline import parse_request
from relay.store import Delivery, Store, contact_key

__all__ = [
    "Contact",
    "Forgotten",
    "contact_keys",
    "delivery_contact_keys",
    "find_deliveries",
    "forget",
    "listed_deliveries",
    "names_contact",
    "parse_contact",
]

log = logging.getLogger("relay.contacts")

_DELETE_BATCH = 500
_NOT_DIGITS = re.compile(r"\D")
_TAIL_DIGITS = 7  # a phone's last digits, looked for before a value is parsed as a phone


@dataclass(frozen=True)
class Contact:
    """An e-mail address (lower-cased, as the `email` transform writes it) or a phone number (E.164)."""

    kind: str  # "email" or "phone"
    value: str
    phone_region: str

    @property
    def needle(self) -> str:
        """What the calls' stored text contains when they name this contact (the store's first look)."""
        return self.value if self.kind == "email" else self.value.lstrip("+")

    @property
    def key(self) -> str:
        """The key the store keeps for this contact in the deliveries whose calls name it."""
        return contact_key(self.value)


def parse_contact(text: str, phone_region: str) -> Contact:
    """The contact an operator typed. Raises ValueError saying what is expected."""
    context = TransformContext(phone_region=phone_region)
    written = text.strip()
    if "@" in written:
        email = apply_transform("email", None, written, context)
        if not email:
            raise ValueError(f"{written!r} is not an e-mail address")
        return Contact("email", email, phone_region)
    phone = apply_transform("phone", None, written, context) if written else None
    if not phone:
        raise ValueError(
            f"{written!r} is neither an e-mail address nor a phone number "
            f"(national numbers are read in RELAY_PHONE_REGION, {phone_region})"
        )
    return Contact("phone", phone, phone_region)


def names_contact(data: Any, contact: Contact) -> bool:
    """Whether any value in `data` (nested lists and objects) is this contact."""
    values = _scalars(data)
    if contact.kind == "email":
        return any(
            isinstance(value, str) and "@" in value and _read_as(contact, "email", value) == contact.value
            for value in values
        )
    tail = contact.value[-_TAIL_DIGITS:]
    texts = [str(value) for value in values]
    # One look at all the digits first: each value's digits stay together in the joined text, so a tail
    # missing there is missing from every value (a payload of hundreds of values is mostly not the phone).
    if tail not in _NOT_DIGITS.sub("", "\n".join(texts)):
        return False
    return any(
        tail in _NOT_DIGITS.sub("", text) and _read_as(contact, "phone", value) == contact.value
        for value, text in zip(values, texts, strict=True)
    )


def contact_keys(data: Any, phone_region: str) -> set[str]:
    """The keys of every contact `names_contact` finds in `data` (a delivery's calls, or its payload),
    phones read in `phone_region`: a delivery is found by a contact's key when the search reads phones in
    the same region (RELAY_PHONE_REGION, as the worker had it)."""
    found = set()
    # Each value once (a mapping writes an address or phone in several places); 1 and 1.0 stay two values.
    for value in {(type(value), value): value for value in _scalars(data)}.values():
        if isinstance(value, str) and "@" in value:
            email = _read_as_email(value)
            if email is not None:
                found.add(email)
        digits = _NOT_DIGITS.sub("", str(value))
        if len(digits) >= _TAIL_DIGITS:
            phone = _read_as_phone(value, phone_region)
            # What names_contact asks of a value, besides reading as the phone: the phone's tail in its digits.
            if phone is not None and phone[-_TAIL_DIGITS:] in digits:
                found.add(phone)
    return {contact_key(contact) for contact in found}


def delivery_contact_keys(delivery: Delivery, phone_region: str) -> set[str]:
    """The keys of every contact `delivery_names` finds in the delivery: its calls', or, when it has none,
    its stored payload's."""
    return contact_keys(_named_values(delivery), phone_region)


def _scalars(data: Any) -> list[str | int | float]:
    """Every string and number in `data`, nested lists and objects walked (booleans and nulls left out)."""
    found: list[str | int | float] = []
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
            found.append(item)
    return found


def _read_as(contact: Contact, transform: str, value: Any) -> str | None:
    if transform == "email":
        return _read_as_email(value)
    return _read_as_phone(value, contact.phone_region)


def _read_as_email(value: Any) -> str | None:
    read = apply_transform("email", None, value, TransformContext())
    return read if isinstance(read, str) else None


def _read_as_phone(value: Any, phone_region: str) -> str | None:
    read = apply_transform("phone", None, value, TransformContext(phone_region=phone_region))
    return read if isinstance(read, str) else None


def delivery_names(delivery: Delivery, contact: Contact) -> bool:
    """Whether this delivery's calls name the contact, or, when it has none, its stored payload."""
    return names_contact(_named_values(delivery), contact)


def _named_values(delivery: Delivery) -> Any:
    """What a delivery is searched in: its calls, or, when it has none, its stored payload (None for a body
    that no longer parses: no value of it can be read)."""
    if delivery.calls:
        return delivery.calls
    try:
        return parse_request(delivery.inbound(), stored=True)
    except RequestRejected:
        return None


def find_deliveries(
    store: Store,
    contact: Contact,
    *,
    limit: int,
    before: str | None = None,
    also: Callable[[Delivery], bool] | None = None,
    **filters: Any,
) -> list[Delivery]:
    """The newest `limit` deliveries (before `before`, matching `filters`, and `also` when given) that name
    the contact."""

    def keep(delivery: Delivery) -> bool:
        return delivery_names(delivery, contact) and (also is None or also(delivery))

    naming = (contact.key, contact.needle)
    return chosen_deliveries(store, keep, limit=limit, before=before, naming=naming, **filters)


def listed_deliveries(
    store: Store,
    *,
    limit: int,
    before: str | None = None,
    contact: Contact | None = None,
    names_event: Callable[[Delivery], bool] | None = None,
    **filters: Any,
) -> list[Delivery]:
    """A page of the admin API's and the command line's list: the store's filters, and, when given, the person
    the deliveries name and the event their requests name (`listing.naming_event`)."""
    if contact is not None:
        return find_deliveries(store, contact, limit=limit, before=before, also=names_event, **filters)
    if names_event is not None:
        return chosen_deliveries(store, names_event, limit=limit, before=before, **filters)
    return store.list_deliveries(limit=limit, before=before, **filters)


@dataclass
class Forgotten:
    """What `forget` deleted, and what it left because a worker was sending it at that moment."""

    ids: list[str] = field(default_factory=list)
    being_delivered: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"forgotten": len(self.ids), "ids": self.ids, "being_delivered": self.being_delivered}


def forget(store: Store, contact: Contact, *, dry_run: bool = False) -> Forgotten:
    """Delete every delivery that names the contact, with its attempts; `dry_run`: only say which.

    A delivery a worker holds (`delivering`) is left, and named: forgetting again once it is sent
    takes it too.
    """
    ids = [delivery.id for delivery in find_deliveries(store, contact, limit=2**31)]
    if dry_run:
        return Forgotten(ids=ids)
    result = Forgotten()
    for start in range(0, len(ids), _DELETE_BATCH):
        batch = ids[start : start + _DELETE_BATCH]
        deleted, left = store.delete_deliveries(batch)
        result.ids += [delivery_id for delivery_id in batch if delivery_id in deleted]
        result.being_delivered += [delivery_id for delivery_id in batch if delivery_id in left]
    # The contact itself is not logged: the line records that an erasure happened, not whose.
    log.info("deliveries forgotten", extra={"count": len(result.ids), "being_delivered": len(result.being_delivered)})
    return result
