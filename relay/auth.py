"""Authenticate a webhook from its raw bytes, before anything parses them.

One configurable HMAC verifier covers the signing providers (header, algorithm,
hex or base64, prefix, what is signed, timestamp and tolerance); token sources
compare `?token=` or `X-Relay-Token`. Every comparison is `hmac.compare_digest`.
A source whose secret is unset refuses everything, naming the variable: fail
closed. Several secrets may be set at once, for rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from relay.errors import AuthenticationFailed
from relay.inbound import header_value
from relay.mapping import envrefs
from relay.mapping.model import AuthSpec, Source

__all__ = ["authenticate", "missing_secrets"]


def _secret_values(auth: AuthSpec, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(the secrets that are set, the variables that are not)."""
    values: list[str] = []
    names: list[str] = []
    for text in auth.secrets:
        ref = envrefs.parse_ref(text)
        if ref is None:
            continue
        names.append(ref.name)
        value = ref.resolve(env)
        if value:
            # A variable may hold several comma-separated secrets during rotation.
            values.extend(part.strip() for part in value.split(",") if part.strip())
    unset = names if not values else []
    return values, unset


def missing_secrets(source: Source, env: Mapping[str, str]) -> list[str]:
    """The variables a source needs before it accepts anything (empty when ready)."""
    if source.auth.scheme == "none":
        return []
    return _secret_values(source.auth, env)[1]


def authenticate(
    source: Source,
    *,
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    env: Mapping[str, str],
    now: float | None = None,
) -> None:
    """Return when the request is genuine.

    Raises:
        AuthenticationFailed: with a detail that names what is wrong (never a secret).
    """
    auth = source.auth
    if auth.scheme == "none":
        return
    secrets, unset = _secret_values(auth, env)
    if not secrets:
        raise AuthenticationFailed(
            f"source {source.name!r} is not configured: set {' or '.join(unset) or 'its secret'}"
        )
    if auth.scheme == "token":
        offered = query.get("token") or header_value(headers, "X-Relay-Token")
        if not offered:
            raise AuthenticationFailed("missing token: add ?token=... or the X-Relay-Token header")
        if not any(hmac.compare_digest(offered.encode(), s.encode()) for s in secrets):
            raise AuthenticationFailed("wrong token")
        return
    _verify_hmac(auth, body=body, headers=headers, secrets=secrets, now=time.time() if now is None else now)


def _verify_hmac(auth: AuthSpec, *, body: bytes, headers: Mapping[str, str], secrets: list[str], now: float) -> None:
    assert auth.header is not None
    raw = header_value(headers, auth.header)
    if not raw:
        raise AuthenticationFailed(f"missing signature header {auth.header}")
    timestamp: str | None = None
    if auth.signature_format == "fields":
        parts = [part.strip().split("=", 1) for part in raw.split(auth.field_separator) if "=" in part]
        timestamp = next((v for k, v in parts if k == auth.timestamp_field), None)
        offered = [v for k, v in parts if k == auth.signature_field]  # several during rotation
        if timestamp is None or not offered:
            raise AuthenticationFailed(f"{auth.header} lacks {auth.timestamp_field}= or {auth.signature_field}=")
    else:
        offered = [s.strip() for s in raw.split(",")] if "," in raw and auth.encoding == "hex" else [raw.strip()]
        if auth.timestamp_header:
            timestamp = header_value(headers, auth.timestamp_header)
            if not timestamp:
                raise AuthenticationFailed(f"missing timestamp header {auth.timestamp_header}")
    if timestamp is not None and auth.tolerance is not None:
        try:
            sent = float(timestamp) / (1000 if auth.timestamp_unit == "ms" else 1)
        except ValueError:
            raise AuthenticationFailed("timestamp is not a number") from None
        if abs(now - sent) > auth.tolerance:
            raise AuthenticationFailed(f"timestamp outside the {auth.tolerance} s tolerance")
    message = auth.signed.replace("{timestamp}", timestamp or "").encode().split(b"{body}")
    signed = body.join(message)
    algorithm = getattr(hashlib, auth.algorithm)
    for secret in secrets:
        try:
            key = bytes.fromhex(secret) if auth.hex_key else secret.encode()
        except ValueError:
            continue  # a secret that is not hex cannot match a hex-key scheme
        digest = hmac.new(key, signed, algorithm).digest()
        expected = digest.hex() if auth.encoding == "hex" else base64.b64encode(digest).decode()
        expected = auth.prefix + expected
        for candidate in offered:
            if hmac.compare_digest(candidate.encode(), expected.encode()):
                return
    raise AuthenticationFailed("signature does not match")
