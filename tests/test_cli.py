"""python -m relay preview and sources, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import FIXTURES, ROOT

ENV = {"PATH": "/usr/bin:/bin", "RELAY_UPSTREAM_TOKEN": "secret-upstream-token-zz"}


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        input=stdin.decode() if stdin else None,
        timeout=60,
    )


def test_preview_shopify_order_with_browser_ip(tmp_path):
    """A real Shopify order with browser_ip previews with e-mail, E.164 phones, names, _ip and the tag."""
    order = json.loads((FIXTURES / "shopify-orders-create.json").read_text())
    order["browser_ip"] = "81.2.69.142"
    order["email"] = "Jon@Example.COM"
    order["phone"] = "+1 613-555-0147"
    path = tmp_path / "order.json"
    path.write_text(json.dumps(order))
    result = run("preview", "--source", "shopify", "--header", "X-Shopify-Topic: orders/create", str(path))
    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout)
    body = calls[0]["body"]
    assert calls[0]["method"].startswith("profiles/")
    assert body["token"] == "***" and "secret-upstream-token-zz" not in result.stdout
    assert body["email"] == "jon@example.com" and body["data"]["email"] == "jon@example.com"
    assert body["data"]["phones"] == ["+16135550147"]
    assert body["data"]["_fname"] == "John" and body["data"]["_lname"] == "Smith"
    assert body["data"]["_ip"] == "81.2.69.142" and body["detect_geo"] is True
    assert "shopify" in body["data"]["tags"]["value"]


def test_preview_tilda_russian_phone_from_stdin():
    """A Tilda form with 8 (912) 345-67-89 comes out as +79123456789."""
    body = b"Name=Ivan&Email=ivan%40example.com&Phone=8+(912)+345-67-89"
    result = run("preview", "--source", "tilda", "--content-type", "application/x-www-form-urlencoded", "-", stdin=body)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["body"]["data"]["phones"] == ["+79123456789"]


def test_preview_ignored_and_rejected(tmp_path):
    """Ignored events print [] with the reason; a payload the mapping rejects exits 1."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"id": "evt", "type": "customer.created"}))
    ignored = run("preview", "--source", "stripe", str(path))
    assert ignored.returncode == 0 and json.loads(ignored.stdout) == [] and "ignored" in ignored.stderr
    path.write_text(json.dumps({"Name": "No Contact"}))
    rejected = run("preview", "--source", "tilda", str(path))
    assert rejected.returncode == 1 and "mapping error" in rejected.stderr


def test_preview_xml_format(tmp_path):
    """--format xml prints the XML body."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"Email": "a@example.com"}))
    result = run("preview", "--source", "tilda", "--format", "xml", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["body"].startswith(
        '<?xml version="1.0" encoding="UTF-8"?><xml><token>***</token>'
    )


def test_sources_lists_urls_auth_and_readiness():
    """sources names each hook URL, how it authenticates and what is missing."""
    result = run("sources")
    assert result.returncode == 0
    assert "/hooks/shopify" in result.stdout and "X-Shopify-Hmac-Sha256" in result.stdout
    assert "NOT READY: set TILDA_WEBHOOK_TOKEN" in result.stdout
