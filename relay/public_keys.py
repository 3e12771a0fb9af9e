"""Public keys a provider signs its webhooks with, fetched from where it publishes them and kept.

Adobe I/O Events signs each event with RSA-SHA256 and names, in a header, the path of the public key under
https://static.adobeioevents.com. The path comes with the request, so it must look like a .pem file's path
and is only ever appended to the address the mapping file gives. A key is fetched once and kept for
KEEP_SECONDS by each web worker; a path that is not there is remembered as such for a while, so forged
requests with made-up paths cost one fetch each at most.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Any

import httpx

from relay import __version__
from relay.errors import AuthenticationFailed, KeysUnavailable
from relay.upstream.client import AnswerTooLarge, AnswerTooSlow, ApiClient, read_within

__all__ = ["KEY_PATH", "PublicKeys", "published_keys"]

KEY_PATH = re.compile(r"\A/[A-Za-z0-9_/-][A-Za-z0-9._/-]{0,199}\.pem\Z")
KEEP_SECONDS = 24 * 3600.0
MISSING_SECONDS = 300.0  # a path the publisher answered 404 for
KEPT_AT_MOST = 64
MAX_KEY_BYTES = 16 * 1024
TIMEOUT = 3.0  # the provider waits (Adobe: 10 s) while relay fetches a key it has not seen


class PublicKeys:
    """Keys by address, kept for KEEP_SECONDS; shared by a process's threads."""

    def __init__(self, *, transport: httpx.BaseTransport | None = None) -> None:
        self.kept: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.lock = threading.Lock()
        self.transport = transport
        self.client: httpx.Client | None = None

    def get(self, base: str, path: str) -> Any:
        """The RSA public key published at `base` + `path`.

        Raises:
            AuthenticationFailed: the path is not a key's, or the publisher has no key there.
            KeysUnavailable: the publisher did not answer; the request may be genuine.
        """
        if KEY_PATH.fullmatch(path) is None or "/." in path or "//" in path:
            raise AuthenticationFailed(f"{path[:100]!r} is not the path of a published key")
        url = base.rstrip("/") + path
        now = time.monotonic()
        with self.lock:
            found = self.kept.get(url)
            if found is not None and found[0] > now:
                self.kept.move_to_end(url)
                if found[1] is None:
                    raise AuthenticationFailed(f"no public key is published at {path}")
                return found[1]
        key = self._fetch(url, path)
        with self.lock:
            self.kept[url] = (now + (KEEP_SECONDS if key is not None else MISSING_SECONDS), key)
            while len(self.kept) > KEPT_AT_MOST:
                self.kept.popitem(last=False)
        if key is None:
            raise AuthenticationFailed(f"no public key is published at {path}")
        return key

    def _fetch(self, url: str, path: str) -> Any:
        """The key at `url`, or None when the publisher says there is none (404, 410)."""
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        if self.client is None:
            self.client = ApiClient(
                timeout=TIMEOUT,
                follow_redirects=False,
                limits=httpx.Limits(max_keepalive_connections=0),  # a key is fetched once a day at most
                transport=self.transport,
                headers={"User-Agent": f"relay/{__version__}"},
            )
        try:
            with self.client.stream("GET", url) as response:
                raw = read_within(response, deadline=time.monotonic() + TIMEOUT, limit=MAX_KEY_BYTES)
        except (httpx.HTTPError, AnswerTooSlow) as exc:
            raise KeysUnavailable(f"the public key at {path} could not be fetched: {type(exc).__name__}") from None
        except AnswerTooLarge:
            return None
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise KeysUnavailable(f"the public key at {path} could not be fetched: HTTP {response.status_code}")
        try:
            key = load_pem_public_key(raw)
        except ValueError:
            return None
        return key if isinstance(key, RSAPublicKey) else None


_KEYS = PublicKeys()


def published_keys() -> PublicKeys:
    """The process's keys: one set for all sources (a key's address names its publisher)."""
    return _KEYS
