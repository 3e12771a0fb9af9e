"""The visitor's IP address: where to find it, which ones count, what it tells.

Only globally routable addresses are used: private, loopback, link-local,
documentation, shared (CGNAT), multicast and other reserved ranges never
become `_ip`. With `RELAY_GEOIP_DB` naming a MaxMind-format city database,
the city, country and time zone are filled locally as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["GeoLookup", "client_address", "public_ip"]


def public_ip(value: Any) -> str | None:
    """`value` as a normalised IP text when it is a usable public address, else None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if "," in text:  # an X-Forwarded-For style list: the first hop is the visitor
        text = text.split(",")[0].strip()
    try:
        address = ipaddress.ip_address(_without_port(text))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        return None
    return str(address)


def _without_port(text: str) -> str:
    """`81.2.69.142:5678` and `[2a00:1450::1]:443` without the port, which some proxies put in
    X-Forwarded-For (Azure App Service, IIS); a bare IPv6 address has several colons and stays whole."""
    if text.startswith("["):
        return text[1:].partition("]")[0]
    host, colon, port = text.rpartition(":")
    return host if colon and port.isdigit() and host.count(":") == 0 else text


def client_address(remote_addr: str | None, forwarded_for: str | None, trusted_proxies: int) -> str | None:
    """The client's address behind `trusted_proxies` hops of X-Forwarded-For.

    With 0 trusted hops the socket's peer is the client. With N, the Nth
    address from the right of X-Forwarded-For is, since each trusted proxy
    appends the address it saw; anything further left can be forged.
    """
    if trusted_proxies <= 0 or not forwarded_for:
        return remote_addr or None  # the socket's peer: an address, whoever sent the request
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if len(hops) < trusted_proxies:
        return _address(hops[0] if hops else remote_addr)
    return _address(hops[-trusted_proxies])


def _address(text: str | None) -> str | None:
    """`text` as an IP address (its port left out), or None: a hop a client forged can be any text, of any
    length, and is worth nothing as an address."""
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(_without_port(text.strip())))
    except ValueError:
        return None


class GeoLookup:
    """City, country and time zone of an address from a local MaxMind database."""

    def __init__(self, database: str | Path) -> None:
        import geoip2.database

        self._reader = geoip2.database.Reader(str(database))

    def lookup(self, ip: str) -> dict[str, str]:
        import geoip2.errors

        try:
            city = self._reader.city(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError, TypeError):
            return {}
        found: dict[str, str] = {}
        name = city.city.names.get("en") if city.city.names else None
        if name:
            found["_city"] = name
        country = city.country.names.get("en") if city.country.names else None
        if country:
            found["_country"] = country
        if city.location.time_zone:
            found["_tz"] = city.location.time_zone
        return found

    def close(self) -> None:
        self._reader.close()


def first_public(candidates: Sequence[Any]) -> str | None:
    for candidate in candidates:
        ip = public_ip(candidate)
        if ip:
            return ip
    return None
