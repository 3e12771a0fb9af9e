"""Authenticate a webhook from its raw bytes, before anything parses them.

One configurable HMAC verifier covers the signing providers (header, algorithm,
hex or base64, prefix, what is signed: the body with the timestamp, method, URL
or another header around it, or fields of a JSON body (Ecwid), timestamp and
tolerance, how the key is written);
token sources compare `?token=`, `X-Relay-Token`, a header the mapping names or
a field of the body (Wufoo's HandshakeKey). Every comparison is
`hmac.compare_digest`. A source whose secret is unset refuses everything, naming
the variable: fail closed. Several secrets may be set at once, for rotation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from relay.bodies import parse_body
from relay.errors import AuthenticationFailed, KeysUnavailable, RequestRejected
from relay.inbound import header_value
from relay.mapping import envrefs
from relay.mapping.model import AuthSpec, Source, signed_parts

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
    method: str = "POST",
    url: str | None = None,
    body_token: object = None,
) -> None:
    """Return when the request is genuine.

    `method` and `url` (the address the sender called) are needed only by a source that signs them;
    `body_token` (the value of the body field `auth.body_field`, see `bodies.read_field`) only by a token
    source that names one.

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
        offered = (
            query.get("token")
            or header_value(headers, "X-Relay-Token")
            or _token_in_header(auth, headers)
            or (body_token if isinstance(body_token, str) and auth.body_field else None)
        )
        if not offered:
            also = f", or {auth.header}: {auth.prefix}<token>" if auth.header else ""
            also += f", or the body field {auth.body_field}" if auth.body_field else ""
            raise AuthenticationFailed(f"missing token: add ?token=... or the X-Relay-Token header{also}")
        if not any(hmac.compare_digest(offered.encode(), s.encode()) for s in secrets):
            raise AuthenticationFailed("wrong token")
        return
    if auth.scheme == "rsa":
        _verify_rsa(auth, body=body, headers=headers, recipients=secrets, env=env)
        return
    _verify_hmac(
        auth,
        body=body,
        headers=headers,
        secrets=secrets,
        now=time.time() if now is None else now,
        method=method,
        url=url,
    )


def _verify_rsa(
    auth: AuthSpec, *, body: bytes, headers: Mapping[str, str], recipients: list[str], env: Mapping[str, str]
) -> None:
    """Adobe I/O Events: the body names this relay's registration as its recipient, and one of the
    RSA-SHA256 signatures verifies with the key published at the path its header names.

    Raises:
        AuthenticationFailed, KeysUnavailable (`relay.public_keys`)
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from relay.public_keys import published_keys

    assert auth.recipient_field is not None and auth.keys_url is not None
    recipient = _field_text(_body_fields(body), auth.recipient_field)
    if not any(hmac.compare_digest(recipient.encode(), expected.encode()) for expected in recipients):
        raise AuthenticationFailed(f"the event is for another recipient ({auth.recipient_field})")
    base = envrefs.resolve_text(auth.keys_url, env)
    if not base.startswith(("https://", "http://127.0.0.1:", "http://localhost:")):
        raise AuthenticationFailed("the keys' address is not https; set it to the publisher's https:// address")
    offered = False
    problem: AuthenticationFailed | KeysUnavailable | None = None
    for signature_header, path_header in auth.rsa_signatures:
        signature, path = header_value(headers, signature_header), header_value(headers, path_header)
        if not signature or not path:
            continue
        offered = True
        try:
            raw = base64.b64decode(signature, validate=True)
        except (ValueError, binascii.Error):
            continue
        # Each signature on its own: during a rotation one key may be unknown or unreachable yet.
        try:
            published_keys().get(base, path.strip()).verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        except KeysUnavailable as exc:
            problem = exc  # the request may be genuine: 503, sent again, unless another signature verifies
            continue
        except AuthenticationFailed as exc:
            problem = problem or exc
            continue
        return
    if not offered:
        names = " or ".join(f"{header} with {path}" for header, path in auth.rsa_signatures)
        raise AuthenticationFailed(f"missing signature: {names}")
    raise problem or AuthenticationFailed("signature does not match")


def _token_in_header(auth: AuthSpec, headers: Mapping[str, str]) -> str | None:
    """The token in the header a token source names (`Authorization: Bearer <token>`, which is all some
    form tools let their owner set), without its prefix."""
    if auth.header is None:
        return None
    value = (header_value(headers, auth.header) or "").strip()
    if not value.lower().startswith(auth.prefix.lower()):
        return None
    return value[len(auth.prefix) :].strip() or None


def _key(secret: str, encoding: str) -> bytes | None:
    """The HMAC key a secret stands for; None when it cannot be one (not hex, not base64)."""
    try:
        if encoding == "hex":
            return bytes.fromhex(secret)
        if encoding == "base64":
            # Standard Webhooks secrets are written whsec_<base64 of the key>.
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        return None
    return secret.encode()


@functools.lru_cache(maxsize=16)
def _escapes(characters: str) -> re.Pattern[str]:
    return re.compile("|".join(f"%{ord(c):02X}" for c in characters), re.IGNORECASE)


def _unescaped(url: str, characters: str) -> str:
    """`url` with the %XX escapes of `characters` decoded: HubSpot signs `%3A` as `:`, `%40` as `@`..."""
    if not characters or "%" not in url:
        return url
    return _escapes(characters).sub(lambda match: chr(int(match.group()[1:], 16)), url)


def _body_fields(body: bytes) -> dict[str, Any]:
    """A JSON body's top-level fields, for a source that signs fields rather than the body (Ecwid)."""
    try:
        fields = parse_body(body, "application/json")  # with the ingress's limits: a forged body is anything
    except RequestRejected as exc:
        raise AuthenticationFailed(f"the fields the signature covers cannot be read: {exc.detail}") from None
    if not isinstance(fields, dict):
        raise AuthenticationFailed("the body is not a JSON object, so the fields the signature covers cannot be read")
    return fields


def _field_text(fields: dict[str, Any], name: str) -> str:
    """A field as the sender wrote it into the signed message: text as it is, a number as JSON spells it."""
    value = fields.get(name)
    if value is None or isinstance(value, (dict, list)):
        raise AuthenticationFailed(f"missing field {name}, which the signature covers")
    return value if isinstance(value, str) else json.dumps(value)


def _signed_message(
    auth: AuthSpec,
    *,
    body: bytes,
    headers: Mapping[str, str],
    timestamp: str | None,
    method: str,
    url: str | None,
    fields: dict[str, Any] | None,
) -> bytes:
    pieces: list[bytes] = []
    for literal, placeholder in signed_parts(auth.signed):
        pieces.append(literal.encode())
        if placeholder == "body":
            pieces.append(body)
        elif placeholder == "timestamp":
            pieces.append((timestamp or "").encode())
        elif placeholder == "method":
            pieces.append(method.upper().encode())
        elif placeholder == "url":
            if url is None:
                raise AuthenticationFailed("the signature covers the URL, which relay could not tell")
            pieces.append(_unescaped(url, auth.url_unescape).encode())
        elif placeholder.startswith("field:"):
            assert fields is not None  # parsed by _verify_hmac for a signature that covers fields
            pieces.append(_field_text(fields, placeholder[6:]).encode())
        elif placeholder:  # header:<name>
            name = placeholder.partition(":")[2]
            value = header_value(headers, name)
            if value is None:
                raise AuthenticationFailed(f"missing header {name}, which the signature covers")
            pieces.append(value.encode())
    return b"".join(pieces)


def _verify_hmac(
    auth: AuthSpec,
    *,
    body: bytes,
    headers: Mapping[str, str],
    secrets: list[str],
    now: float,
    method: str,
    url: str | None,
) -> None:
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
        # Several signatures during a rotation: separated by spaces (Standard Webhooks' `v1,<sig> v1,<sig>`),
        # or by commas between hex ones (a comma is never part of a hex signature).
        offered = [raw.strip()] if any(c.isspace() for c in auth.prefix) else raw.split()
        if auth.encoding == "hex":
            offered = [part.strip() for item in offered for part in item.split(",") if part.strip()]
        if auth.timestamp_header:
            timestamp = header_value(headers, auth.timestamp_header)
            if not timestamp:
                raise AuthenticationFailed(f"missing timestamp header {auth.timestamp_header}")
    # Parsed once, for the timestamp and every {field:<name>} the signature covers.
    fields = _body_fields(body) if auth.timestamp_body_field or "{field:" in auth.signed else None
    if fields is not None and auth.timestamp_body_field:
        timestamp = _field_text(fields, auth.timestamp_body_field)
    if timestamp is not None and auth.tolerance is not None:
        try:
            sent = float(timestamp) / (1000 if auth.timestamp_unit == "ms" else 1)
        except ValueError:
            raise AuthenticationFailed("timestamp is not a number") from None
        if not abs(now - sent) <= auth.tolerance:  # NaN compares false both ways: "nan" is outside too
            raise AuthenticationFailed(f"timestamp outside the {auth.tolerance} s tolerance")
    signed = _signed_message(
        auth, body=body, headers=headers, timestamp=timestamp, method=method, url=url, fields=fields
    )
    algorithm = getattr(hashlib, auth.algorithm)
    for secret in secrets:
        key = _key(secret, auth.key_encoding)
        if key is None:
            continue  # a secret that is not hex (or base64) cannot match such a scheme
        digest = hmac.new(key, signed, algorithm).digest()
        expected = digest.hex() if auth.encoding == "hex" else base64.b64encode(digest).decode()
        expected = auth.prefix + expected
        for candidate in offered:
            if hmac.compare_digest(candidate.encode(), expected.encode()):
                return
    raise AuthenticationFailed("signature does not match")
