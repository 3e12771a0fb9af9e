"""Calendly bookings through the real app and worker to the sandbox upstream on loopback.

A booking tags the invitee's profile meeting_booked; a reschedule's cancellation is answered `ignored` (the new
time comes as its own booking); a cancellation swaps the tag for meeting_cancelled. The payloads are the
source's examples (mappings/examples/calendly), signed as Calendly signs: `t=<unix>,v1=<hex HMAC of t.body>`.
"""

from __future__ import annotations

import time

import pytest

from .conftest import MAPPINGS, SECRETS, drain, hand_driven, quick_retry_settings
from .test_signatures import calendly

EXAMPLES = MAPPINGS / "examples" / "calendly"


@pytest.fixture
def relay(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    yield from hand_driven(quick_retry_settings(tmp_path, sandbox))


def _post(client, name: str, *, signed_at: float | None = None):  # type: ignore[no-untyped-def]
    body = (EXAMPLES / name).read_bytes()
    headers = calendly(SECRETS["CALENDLY_WEBHOOK_SECRET"], body, time.time() if signed_at is None else signed_at)
    return client.post("/hooks/calendly", data=body, content_type="application/json", headers=headers)


def test_a_booking_then_its_cancellation_tag_the_invitee(relay, sandbox):
    client, store, worker = relay
    booked = _post(client, "invitee.created.json")
    assert booked.status_code == 202, booked.get_json()
    assert drain(store, worker, booked.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["email"] == "olga.smirnova@example.com"
    assert profile.fields["phones"] == ["+79123456789"]
    assert (profile.fields["_fname"], profile.fields["_lname"]) == ("Olga", "Smirnova")
    assert set(profile.fields["tags"]) == {"calendly", "meeting_booked"}

    moved = _post(client, "invitee.canceled-rescheduled.json")
    assert moved.status_code == 200 and moved.get_json()["status"] == "ignored", moved.get_json()

    cancelled = _post(client, "invitee.canceled.json")
    assert cancelled.status_code == 202, cancelled.get_json()
    assert drain(store, worker, cancelled.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert set(profile.fields["tags"]) == {"calendly", "meeting_cancelled"}
    # Calendly retries an unanswered webhook with the same body for 24 hours: the repeat is not sent again.
    again = _post(client, "invitee.canceled.json")
    assert again.status_code == 200 and again.get_json()["status"] == "duplicate"


def test_a_stale_or_foreign_signature_stores_nothing(relay):
    client, store, _worker = relay
    assert _post(client, "invitee.created.json", signed_at=time.time() - 600).status_code == 401
    body = (EXAMPLES / "invitee.created.json").read_bytes()
    forged = calendly("not-the-signing-key", body, time.time())
    answer = client.post("/hooks/calendly", data=body, content_type="application/json", headers=forged)
    assert answer.status_code == 401
    assert store.counts() == {}
