"""Form builders of landing pages, through the real app and worker to the sandbox upstream on loopback.

Framer signs the body followed by the submission id. Unbounce and Paperform cannot sign: they carry the
token in the hook URL. Unbounce counts only a 200 as delivered and gives no
submission id, so a repeat is known by its body; its default body is form-urlencoded with the answers as
JSON text in `data.json`, each a list. Paperform's JSON names each answer's question; a submission sent
again (its Test button) has the same `submission_id`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from typing import Any

import pytest

from .conftest import MAPPINGS, SECRETS, drain, hand_driven, quick_retry_settings

EXAMPLES = MAPPINGS / "examples" / "unbounce"
PAPERFORM = MAPPINGS / "examples" / "paperform"
FORM = "application/x-www-form-urlencoded; charset=UTF-8"
HOOK = "/hooks/unbounce?token=" + SECRETS["UNBOUNCE_WEBHOOK_TOKEN"]


@pytest.fixture
def relay(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    yield from hand_driven(quick_retry_settings(tmp_path, sandbox))


def _body(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def test_a_submission_is_answered_200_stored_and_its_visitor_subscribed(relay, sandbox):
    client, store, worker = relay
    answer = client.post(HOOK, data=_body("form-submit.txt"), content_type=FORM)
    assert (answer.status_code, answer.get_json()["status"]) == (200, "accepted")
    again = client.post(HOOK, data=_body("form-submit.txt"), content_type=FORM)
    assert (again.status_code, again.get_json()) == (200, {"status": "duplicate", "id": answer.get_json()["id"]})
    assert drain(store, worker, answer.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["email"] == "jane.doe@example.com"
    assert (profile.fields["_fname"], profile.fields["_lname"]) == ("Jane", "Doe")
    assert "unbounce" in profile.fields["tags"]
    [request] = sandbox.sandbox.requests
    assert request["body"]["data"]["_ip"] == "203.0.114.24" and request["body"]["detect_geo"] is True
    assert request["body"]["data"]["subscriptions"][0]["status"] == "subscribed"


def test_a_box_left_unticked_subscribes_nobody_and_a_form_without_contact_is_ignored(relay, sandbox):
    client, store, worker = relay
    fields = dict(urllib.parse.parse_qsl(_body("form-submit.txt").decode()))
    answers: dict[str, Any] = json.loads(fields["data.json"])
    del answers["newsletter_opt_in"]  # a checkbox left unticked is not sent
    fields["data.json"] = json.dumps(answers)
    unticked = client.post(HOOK, data=urllib.parse.urlencode(fields), content_type=FORM)
    assert unticked.status_code == 200
    assert drain(store, worker, unticked.get_json()["id"]) == "delivered"
    [request] = sandbox.sandbox.requests
    assert "subscriptions" not in request["body"]["data"]
    nobody = client.post(HOOK, data=_body("no-contact.txt"), content_type=FORM)
    assert (nobody.status_code, nobody.get_json()["status"]) == (200, "ignored")


def test_without_its_token_a_submission_is_refused(relay):
    client, _store, _worker = relay
    refused = client.post("/hooks/unbounce", data=_body("form-submit.txt"), content_type=FORM)
    assert refused.status_code == 401 and refused.get_json()["error"] == "authentication_failed"


def test_a_paperform_submission_is_stored_once_and_its_visitor_subscribed(relay, sandbox):
    client, store, worker = relay
    hook = "/hooks/paperform?token=" + SECRETS["PAPERFORM_WEBHOOK_TOKEN"]
    body = (PAPERFORM / "submission.json").read_bytes()
    answer = client.post(hook, data=body, content_type="application/json")
    assert (answer.status_code, answer.get_json()["status"]) == (202, "accepted")
    tested = json.loads(body)
    tested["created_at"] = "2026-11-30 11:00:00"  # the Test button sends the latest submission again
    again = client.post(hook, data=json.dumps(tested), content_type="application/json")
    assert (again.status_code, again.get_json()) == (200, {"status": "duplicate", "id": answer.get_json()["id"]})
    assert drain(store, worker, answer.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["email"] == "maria.garcia@example.com" and profile.fields["phones"] == ["+34612345678"]
    [request] = sandbox.sandbox.requests
    assert request["body"]["data"]["subscriptions"][0]["status"] == "subscribed"
    refused = client.post("/hooks/paperform", data=body, content_type="application/json")
    assert refused.status_code == 401


def _framer(client: Any, body: bytes, submission: str, *, signed: bytes | None = None) -> Any:
    """Post as Framer does: hex HMAC-SHA256 of the body followed by the submission id (or of `signed`)."""
    secret = SECRETS["FRAMER_WEBHOOK_SECRET"].encode()
    digest = hmac.new(secret, signed if signed is not None else body + submission.encode(), hashlib.sha256)
    headers = {"Framer-Signature": "sha256=" + digest.hexdigest(), "Framer-Webhook-Submission-Id": submission}
    return client.post("/hooks/framer", data=body, content_type="application/json", headers=headers)


def test_a_framer_submission_is_verified_with_its_id_and_a_retry_is_a_duplicate(relay, sandbox):
    client, store, worker = relay
    body = (MAPPINGS / "examples" / "framer" / "submission.json").read_bytes()
    submission = "0fbbb90e-564b-4870-ac8b-78f9bc4e44a6"
    unbound = _framer(client, body, submission, signed=body)  # the body alone: not how Framer signs
    assert unbound.status_code == 401
    other_id = _framer(client, body, "another-id", signed=body + submission.encode())
    assert other_id.status_code == 401  # a signature is bound to its submission id
    answer = _framer(client, body, submission)
    assert (answer.status_code, answer.get_json()["status"]) == (202, "accepted")
    retry = _framer(client, body, submission)
    assert retry.get_json() == {"status": "duplicate", "id": answer.get_json()["id"]}
    assert drain(store, worker, answer.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["email"] == "tomas.silva@example.com" and "framer" in profile.fields["tags"]
