"""Visitor IPs: only public addresses are used; a local MaxMind database fills city, country, zone."""

from __future__ import annotations

import pytest

from relay.geo import GeoLookup, client_address, public_ip
from relay.mapping.loader import load_sources
from relay.mapping.translate import TranslateContext, translate

from .conftest import MAPPINGS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("81.2.69.142", "81.2.69.142"),
        ("2a00:1450:4001:80b::200e", "2a00:1450:4001:80b::200e"),
        ("10.1.2.3", None),
        ("192.168.0.1", None),
        ("172.16.5.4", None),
        ("127.0.0.1", None),
        ("169.254.1.1", None),
        ("100.64.0.1", None),
        ("203.0.113.42", None),
        ("198.51.100.1", None),
        ("::1", None),
        ("fe80::1", None),
        ("224.0.0.1", None),
        ("0.0.0.0", None),
        ("not-an-ip", None),
        ("::ffff:81.2.69.142", "81.2.69.142"),
        ("81.2.69.142:5678", "81.2.69.142"),  # proxies that append the client's port (Azure App Service)
        ("[2a00:1450:4001:80b::200e]:443", "2a00:1450:4001:80b::200e"),
        ("[2a00:1450:4001:80b::200e]", "2a00:1450:4001:80b::200e"),
        ("2a00:1450:4001::1234", "2a00:1450:4001::1234"),  # ends in digits, yet no port
        ("10.1.2.3:80", None),
        ("81.2.69.142:port", None),
    ],
)
def test_public_ip(raw, expected):
    """Private, loopback, link-local, CGNAT, documentation and multicast ranges are never used; a port
    after the address is not part of it."""
    assert public_ip(raw) == expected


def test_client_address_is_an_address_or_nothing():
    """A hop is kept as an address, its port left out; a forged hop of any other text (of any length: the
    store's column has 64 characters, and PostgreSQL refused the webhook's write) is no address. The
    socket's peer needs no check (and none is paid for on every webhook)."""
    assert client_address("10.0.0.1", "81.2.69.142:5678", 1) == "81.2.69.142"
    assert client_address("10.0.0.1", "[2a00:1450::1]:443", 1) == "2a00:1450::1"
    assert client_address("10.0.0.1", "x" * 300, 1) is None
    assert client_address("10.0.0.1", "unknown", 1) is None
    assert client_address("10.0.0.1", None, 0) == "10.0.0.1"  # the socket's peer, as it is
    assert client_address(None, None, 0) is None


def test_client_address_behind_trusted_proxies():
    """With N trusted hops the Nth address from the right of X-Forwarded-For is the client."""
    assert client_address("10.0.0.1", "1.2.3.4, 81.2.69.142", 0) == "10.0.0.1"
    assert client_address("10.0.0.1", "1.2.3.4, 81.2.69.142", 1) == "81.2.69.142"
    assert client_address("10.0.0.1", "1.2.3.4, 81.2.69.142", 2) == "1.2.3.4"


def test_private_ip_in_payload_sets_no_geo():
    """An order from a private address gets neither _ip nor detect_geo."""
    source = load_sources(MAPPINGS)["woocommerce"]
    payload = {"billing": {"email": "a@example.com"}, "customer_ip_address": "192.168.1.10", "status": "pending"}
    body = translate(source, payload, headers={"X-WC-Webhook-Topic": "order.created"}).calls[0].body
    assert "detect_geo" not in body and "_ip" not in body["data"]


def test_local_geoip_database_fills_city_country_and_zone(tmp_path):
    """With a MaxMind-format database, _city, _country and _tz are filled locally."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4, database_type="GeoIP2-City", languages=["en"])
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {
            "city": {"names": {"en": "London"}},
            "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
            "location": {"time_zone": "Europe/London"},
        },
    )
    path = tmp_path / "city.mmdb"
    writer.to_db_file(str(path))
    geo = GeoLookup(path)
    source = load_sources(MAPPINGS)["woocommerce"]
    payload = {"billing": {"email": "a@example.com"}, "customer_ip_address": "81.2.69.160", "status": "pending"}
    body = (
        translate(source, payload, headers={"X-WC-Webhook-Topic": "order.created"}, context=TranslateContext(geo=geo))
        .calls[0]
        .body
    )
    geo.close()
    assert body["detect_geo"] is True
    assert body["data"]["_ip"] == body["data"]["_regip"] == "81.2.69.160"
    assert (body["data"]["_city"], body["data"]["_country"], body["data"]["_tz"]) == (
        "London",
        "United Kingdom",
        "Europe/London",
    )
