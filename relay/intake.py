"""What relay does with a request once it is authenticated, for the web server and for `relay import`.

Parse it, answer a provider's test ping, leave out what the mapping ignores, and store the rest once: a
repeat names the delivery it repeats. The web server answers the provider by the outcome; `relay import`
counts the outcomes of a file of past webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.inbound import InboundRequest, dedup_key, is_ping
from relay.mapping.delays import Wait, latest_key, wait_for
from relay.mapping.model import Source
from relay.mapping.translate import event_of, ignored_at_ingress, prepare_payload
from relay.pipeline import parse_request
from relay.settings import Settings
from relay.store import Store

__all__ = ["Taken", "take_request"]


@dataclass(frozen=True)
class Taken:
    """What became of a request: `ping`, `ignored` (with the mapping's `reason`), `accepted` or `duplicate`
    (with the id of the delivery stored, or of the one it repeats), and the wait of its event's delay."""

    outcome: str
    delivery_id: str | None = None
    event: str | None = None
    reason: str | None = None
    wait: Wait = field(default_factory=Wait)


def take_request(source: Source, inbound: InboundRequest, *, settings: Settings, store: Store | None) -> Taken:
    """What became of the request; with `store` None (a dry run) nothing is stored, and what would be is
    `accepted`, without an id.

    Raises:
        RequestRejected: the body does not parse (400), or is a kind relay does not read (415).
        StoreUnavailable: the store did not take the webhook.
    """
    payload = parse_request(inbound)
    if is_ping(source, inbound, payload):
        return Taken("ping")
    prepared = prepare_payload(source, payload)
    event = event_of(source, prepared, inbound.headers)
    # A delayed event with a `latest_by` key is kept even when its rules will ignore it (a completed checkout):
    # it is the later delivery that passes over the ones that waited with its key.
    latest = latest_key(source, prepared, event) if source.delays else None
    reason = ignored_at_ingress(source, prepared, event, settings.env) if latest is None else None
    if reason is not None:
        return Taken("ignored", event=event, reason=reason)
    wait = wait_for(source, event, settings.env)
    if store is None:
        return Taken("accepted", event=event, wait=wait)
    accepted = store.accept(
        inbound,
        dedup_key=dedup_key(source, inbound, prepared),
        status="queued" if settings.upstream_url else "held",
        dedup_window=settings.dedup_window,
        wait=wait.seconds,
        latest=latest.key if latest is not None else None,
        latest_order=latest.order if latest is not None else None,
    )
    return Taken("duplicate" if accepted.duplicate else "accepted", accepted.id, event, wait=wait)
