"""`relay check --upstream`: does the upstream answer, and does it take relay's token?

Asked once by an operator setting relay up, before webhooks depend on it: a `profiles/get` for an address
no profile can have (the `.invalid` domain is reserved), in the database the built-in mappings write to
(`RELAY_DB_ID`). "Not found" means the token and the database were accepted; 401 or 403 that they were not.
Nothing is written. The token is never shown, not even as the upstream may have echoed it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from relay.errors import PermanentUpstreamError, TariffLimitReached, TransientUpstreamError
from relay.sentry import scrub, secret_values
from relay.settings import Settings
from relay.upstream.client import UpstreamClient
from relay.upstream.request import UpstreamCall

__all__ = ["PROBE_EMAIL", "Probe", "probe_upstream"]

PROBE_EMAIL = "relay-check@example.invalid"
_NOT_FOUND = 404


@dataclass(frozen=True)
class Probe:
    """Whether the upstream took relay's call, and what to say of it."""

    ok: bool
    said: str


def probe_upstream(settings: Settings) -> Probe:
    if not settings.upstream_url:
        return Probe(False, "RELAY_UPSTREAM_URL is not set: deliveries wait as held until it is")
    db_id = settings.env.get("RELAY_DB_ID") or "1"
    where = f"{settings.upstream_url} (database {db_id})"
    if not db_id.isdigit():
        return Probe(False, f"RELAY_DB_ID is {db_id!r}, not a database's number")
    call = UpstreamCall("profiles/get", {"db_id": int(db_id), "matching": "email", "email": PROBE_EMAIL})
    client = UpstreamClient(settings)
    started = time.monotonic()
    try:
        client.send(call)
    except TariffLimitReached:
        return Probe(False, f"{where} took the token, and says the account's tariff limit is reached (402)")
    except TransientUpstreamError as exc:
        return Probe(False, f"{where} did not answer as the API does: {_shown(str(exc), settings)}")
    except PermanentUpstreamError as exc:
        if exc.http_status in (401, 403):
            refused = _shown(str(exc), settings)
            return Probe(False, f"{where} refused RELAY_UPSTREAM_TOKEN, or its access to the database: {refused}")
        if exc.http_status != _NOT_FOUND:
            return Probe(False, f"{where} refused the call: {_shown(str(exc), settings)}")
    finally:
        client.close()
    elapsed = (time.monotonic() - started) * 1000
    return Probe(True, f"{where} answers and takes the token ({elapsed:.0f} ms)")


def _shown(text: str, settings: Settings) -> str:
    """The upstream's words without any secret relay holds, as error reports are scrubbed."""
    return str(scrub(text, secret_values(settings)))
