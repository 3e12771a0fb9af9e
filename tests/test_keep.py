"""A rule with `keep` stores what it takes and sends nothing, until a rule that forwards it is written.

The capture of a new source through the real app and worker to the sandbox upstream on loopback: its first
mapping file has only its authentication and a `keep` rule, so the provider's first real webhooks are stored
and wait as failed for their mapping, quietly (an info line, no Sentry report); the rule that maps them is
written from what was kept, the kept request saved as the source's first example (`preview --delivery
--save-example`), and a replay sends them.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import sentry_sdk
import yaml

from relay.mapping.loader import load_source_file

from .conftest import ROOT, SECRETS, captured_log_lines, drain, hand_driven, quick_retry_settings, relay_command
from .test_secrets import CapturingTransport

TOKEN = "landing-test-token-3c3d"
ADMIN = {"Authorization": f"Bearer {SECRETS['RELAY_ADMIN_TOKEN']}"}


def _guides_capturing_file() -> str:
    """The first file mappings/README.md gives for capturing a new source (step 1): what these tests use."""
    text = (ROOT / "mappings" / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    [capturing] = [block for block in blocks if "keep:" in block]
    return textwrap.dedent(capturing.rstrip(" "))


CAPTURING = _guides_capturing_file()

MAPPED = """
version: 1
source: landing
auth: {scheme: token, secret: "${LANDING_WEBHOOK_TOKEN}"}
rules:
  - name: signup
    matching: email
    match: {email: {path: contact.email, transform: email}}
    fields:
      email: {path: contact.email, transform: email}
"""


@pytest.fixture
def landing(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "landing.yaml").write_text(CAPTURING, encoding="utf-8")
    settings = quick_retry_settings(
        tmp_path, sandbox, RELAY_MAPPINGS_DIR=str(folder), LANDING_WEBHOOK_TOKEN=TOKEN, RELAY_LOG_LEVEL="info"
    )
    for client, store, worker in hand_driven(settings):
        yield client, store, worker, folder


def test_a_new_source_is_captured_unsent_then_mapped_and_replayed(landing, sandbox):
    from relay.sentry import init_sentry

    client, store, worker, folder = landing
    transport = CapturingTransport()
    init_sentry(worker.settings, transport=transport)
    try:
        body = {"contact": {"email": "Ana@Example.COM"}, "submission_id": "s-1"}
        answer = client.post(f"/hooks/landing?token={TOKEN}", json=body)
        assert answer.status_code == 202, answer.get_json()
        delivery_id = answer.get_json()["id"]
        with captured_log_lines() as lines:
            assert drain(store, worker, delivery_id) == "failed"
        sentry_sdk.flush()
    finally:
        sentry_sdk.init()
    kept = store.get(delivery_id)
    assert (kept.reason, kept.detail) == ("mapping", "kept by rule 'capture': no rule maps this source's webhooks yet")
    assert transport.events == []  # meant by its mapping: not an error to report
    [line] = [json.loads(line) for line in lines if "kept unsent" in line]
    assert line["level"] == "info" and line["delivery_id"] == delivery_id
    assert sandbox.sandbox.profiles == {}
    # Failed, and counted apart, so that the failing-deliveries alert leaves it out.
    store_metrics = client.get("/metrics").get_data(as_text=True)
    assert 'relay_deliveries{status="failed"} 1.0' in store_metrics
    assert "\nrelay_deliveries_kept 1.0\n" in store_metrics

    (folder / "landing.yaml").write_text(MAPPED, encoding="utf-8")
    # The kept request becomes the source's first example, expecting what the new rule makes of it.
    env = {"RELAY_DATABASE_URL": worker.settings.database_url, "RELAY_MAPPINGS_DIR": str(folder)}
    saved = relay_command("preview", "--delivery", delivery_id, "--save-example", "first-signup", env=env)
    assert saved.returncode == 0, saved.stderr
    example = yaml.safe_load((folder / "examples" / "landing" / "first-signup.yaml").read_text(encoding="utf-8"))
    assert json.loads(example["request"]["body"]) == body
    assert example["expect"]["calls"][0]["body"]["email"] == "ana@example.com"
    checked = relay_command("check", env=env)
    assert checked.returncode == 0 and "ok: 1 mapping files, 1 examples" in checked.stdout, checked.stderr
    assert client.post(f"/admin/api/deliveries/{delivery_id}/replay", headers=ADMIN).status_code == 202
    assert drain(store, worker, delivery_id) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["email"] == "ana@example.com"
    # One the rule cannot map (no e-mail) fails for its mapping, and is not counted as kept.
    unmapped = client.post(f"/hooks/landing?token={TOKEN}", json={"contact": {"phone": "+79123456789"}})
    assert drain(store, worker, unmapped.get_json()["id"]) == "failed"
    store_metrics = client.get("/metrics").get_data(as_text=True)
    assert 'relay_deliveries{status="failed"} 1.0' in store_metrics
    assert "\nrelay_deliveries_kept 0.0\n" in store_metrics


def test_sources_and_preview_say_what_a_keep_rule_does(tmp_path):
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "landing.yaml").write_text(CAPTURING, encoding="utf-8")
    payload = tmp_path / "payload.json"
    payload.write_text('{"contact": {"email": "ana@example.com"}}', encoding="utf-8")
    env = {"RELAY_MAPPINGS_DIR": str(folder), "LANDING_WEBHOOK_TOKEN": TOKEN}
    listed = relay_command("sources", env=env)
    assert "capture: any event -> kept unsent, to replay (no rule maps this source's webhooks yet)" in listed.stdout
    previewed = relay_command("preview", "--source", "landing", str(payload), env=env)
    assert previewed.returncode == 1
    assert "kept by rule 'capture': no rule maps this source's webhooks yet" in previewed.stderr


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("    ignore: not these\n", "rules.0.keep: a rule has one of ignore, keep and forget, not ignore and keep"),
        ("    once: 'x {id}'\n", "rules.0.once: once is for a rule that forwards, not one with keep"),
        ("    forget: {email: {path: email}}\n", "not keep and forget"),
    ],
)
def test_a_keep_rule_neither_ignores_nor_forgets_nor_counts_once(tmp_path: Path, extra: str, problem: str):
    path = tmp_path / "landing.yaml"
    path.write_text(CAPTURING + extra, encoding="utf-8")
    source, problems = load_source_file(path)
    assert source is None and any(problem in found for found in problems), problems
