"""The worker's HTTP client for the documents a mapping fetches from a provider's API.

A GET with the mapping's headers, no redirects followed (a redirect to another host would take the API
token along), the answer read within RELAY_UPSTREAM_TIMEOUT and MAX_DOCUMENT_BYTES. Network errors,
timeouts, 408, 429 and 5xx are transient, and so is a 2xx whose body is not JSON (a proxy's page); after
a 429 the source's fetches pause for its Retry-After; an answer the fetch takes as the record gone
(`absent_on`: 404, 410) is no document; any other answer is final (a wrong token, a record deleted since):
the delivery fails as `rejected`, and a replay fetches again. Only `FetchRequest.shown`
is ever logged or kept.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from relay import __version__, metrics
from relay.bodies import parse_body
from relay.errors import FetchError, PermanentFetchError, RequestRejected, TransientFetchError
from relay.mapping.fetches import FetchRequest
from relay.settings import Settings, shown_url
from relay.upstream.client import AnswerTooLarge, AnswerTooSlow, ApiClient, read_within, retry_after

__all__ = ["MAX_DOCUMENT_BYTES", "Fetcher"]

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024  # an order with hundreds of lines is tens of kilobytes
_ABSENT = object()  # an answer the fetch takes as the record gone (`absent_on`): no document
DEFAULT_PAUSE = 10.0  # seconds without fetches from a source's API after a 429 that gives no Retry-After
MAX_PAUSE = 300.0


class Fetcher:
    """One pooled client for every source's fetches, shared by the worker's threads."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        self.timeout = settings.upstream_timeout
        # A provider's API that answered 429 is left alone for a while, per source: a backlog replayed
        # after an outage would otherwise spend a try of every delivery on the same answer.
        self.paused_until: dict[str, float] = {}
        self.pause_lock = threading.Lock()
        self.client = ApiClient(
            timeout=httpx.Timeout(self.timeout, connect=min(5.0, self.timeout)),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": f"relay/{__version__}", "Accept": "application/json"},
        )

    def close(self) -> None:
        self.client.close()

    def get(self, source: str, request: FetchRequest) -> Any:
        """The document, parsed (None for an empty answer).

        Raises:
            TransientFetchError: try again later.
            PermanentFetchError: the API refused it for good.
        """
        clock = time.perf_counter()
        outcome = "transient"
        try:
            document = self._get(request)
            if document is _ABSENT:
                outcome = "absent"
                return None
            outcome = "fetched"
            return document
        except PermanentFetchError:
            outcome = "rejected"
            raise
        except TransientFetchError as exc:
            if exc.http_status == 429:
                self.pause(source, exc.retry_after)
            raise
        finally:
            metrics.fetched(source, outcome, time.perf_counter() - clock)

    def pause(self, source: str, retry_after: float | None) -> None:
        """No fetch for `source` for the API's Retry-After (DEFAULT_PAUSE without one, MAX_PAUSE at most)."""
        seconds = min(MAX_PAUSE, DEFAULT_PAUSE if retry_after is None else retry_after)
        with self.pause_lock:
            until = time.monotonic() + seconds
            if until > self.paused_until.get(source, 0.0):
                self.paused_until[source] = until

    def paused_for(self, source: str) -> float:
        """Seconds before `source`'s API may be asked again; 0 when it may."""
        with self.pause_lock:
            return max(0.0, self.paused_until.get(source, 0.0) - time.monotonic())

    def _get(self, request: FetchRequest) -> Any:
        # The API's origin, not the record's address: the detail groups alike in `relay overview` for every
        # order the API refused; the whole address is kept with the try.
        said = f"fetch {request.name} from {_origin(request.shown)}"
        deadline = time.monotonic() + self.timeout
        try:
            with self.client.stream("GET", request.url, headers=request.headers) as response:
                raw = self._read(response, deadline, said, request)
        except FetchError:
            raise
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise PermanentFetchError(f"{said}: {type(exc).__name__}", name=request.name, url=request.shown) from None
        except httpx.TimeoutException as exc:
            raise TransientFetchError(
                f"{said}: timeout: {type(exc).__name__}", name=request.name, url=request.shown
            ) from None
        except httpx.HTTPError as exc:
            # httpx's own words, with the address as it may be shown should they name it.
            words = str(exc).replace(request.url, request.shown)
            raise TransientFetchError(
                f"{said}: network: {type(exc).__name__}: {words}"[:300], name=request.name, url=request.shown
            ) from None
        status = response.status_code
        text = raw[:8000].decode("utf-8", "replace")[:2000]
        common: dict[str, Any] = {"name": request.name, "url": request.shown, "http_status": status, "body": text}
        if status in (408, 429) or status >= 500:
            raise TransientFetchError(f"{said}: HTTP {status}", retry_after=retry_after(response), **common)
        if 300 <= status < 400:
            where = shown_url(response.headers.get("Location", ""))[:200]
            raise PermanentFetchError(f"{said}: HTTP {status}: redirected to {where or '(nowhere)'}", **common)
        if status in request.absent_on:
            return _ABSENT  # the record is gone since the webhook, and the mapping says that is no error
        if not 200 <= status < 300:
            raise PermanentFetchError(f"{said}: HTTP {status}", **common)
        if not raw.strip():
            return None
        try:
            return parse_body(raw, "application/json")
        except RequestRejected:
            raise TransientFetchError(f"{said}: HTTP {status} with an answer that is not JSON", **common) from None

    def _read(self, response: httpx.Response, deadline: float, said: str, request: FetchRequest) -> bytes:
        """The answer's bytes within the call's time and MAX_DOCUMENT_BYTES (`read_within`)."""
        common: dict[str, Any] = {"name": request.name, "url": request.shown, "http_status": response.status_code}
        try:
            return read_within(response, deadline=deadline, limit=MAX_DOCUMENT_BYTES)
        except AnswerTooLarge:
            raise PermanentFetchError(f"{said}: answer larger than {MAX_DOCUMENT_BYTES} bytes", **common) from None
        except AnswerTooSlow:
            raise TransientFetchError(
                f"{said}: timeout: the answer was still arriving after {self.timeout:g} s", **common
            ) from None


def _origin(url: str) -> str:
    """`https://api.example.com` of an address: its scheme, host and port, never credentials in it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
