"""The upstream client: one pooled httpx client, the contract's success rule, a rate limit.

Success is HTTP 2xx with `error == 0`. Network errors, timeouts, 5xx, 429 and
bodies that are not the API's JSON are transient; 402 (the tariff limit) is
transient too, and parks the worker's calls (TariffLimitReached); any other
answer is final. The token goes into the body and is never logged or stored.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from relay.errors import PermanentUpstreamError, TariffLimitReached, TransientUpstreamError
from relay.settings import Settings
from relay.upstream.request import UpstreamCall
from relay.upstream.xmlbody import to_xml

__all__ = [
    "MAX_ANSWER_BYTES",
    "AnswerTooLarge",
    "AnswerTooSlow",
    "ApiClient",
    "RateLimiter",
    "UpstreamAnswer",
    "UpstreamClient",
    "read_within",
    "retry_after",
]

MAX_ANSWER_BYTES = 1024 * 1024  # the API answers a few hundred bytes; a profile export is not asked for


class ApiClient(httpx.Client):
    """httpx's client without its cookie jar, for relay's calls to APIs: each call stands alone, and a cookie
    an API sets (a load balancer's, say) is neither kept nor sent back with later calls. httpx looks for
    cookies in every answer through urllib's request and response objects, even in answers that set none:
    13% of the instructions of a call to the sandbox (bench/README.md, "End to end")."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, _cookies: object) -> None:
        raise TypeError("relay's API clients keep no cookies")


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep none of the answer's cookies."""


class RateLimiter:
    """A token bucket shared by the threads of one process."""

    def __init__(self, rate: float, *, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()
        self.paused_until = 0.0
        self.pause_reason = ""

    def pause(self, seconds: float, reason: str = "") -> bool:
        """After a 429 or a 402, nobody in this process calls for `seconds`; True when no pause was on."""
        with self.lock:
            now = time.monotonic()
            was_on = self.paused_until > now
            if now + seconds > self.paused_until:
                self.paused_until, self.pause_reason = now + seconds, reason
            return not was_on

    def paused_for(self) -> float:
        """Seconds left of a pause; 0 when calls may go."""
        return self.pause_state()[0]

    def pause_state(self) -> tuple[float, str]:
        """(seconds left of a pause, the reason it was set with), read together: another thread's longer
        pause may replace both at any time."""
        with self.lock:
            left = max(0.0, self.paused_until - time.monotonic())
            return left, self.pause_reason if left else ""

    def acquire(self, stop: threading.Event | None = None) -> bool:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                wait = max(0.0, self.paused_until - now)
                if wait == 0 and self.tokens >= 1:
                    self.tokens -= 1
                    return True
                if wait == 0:
                    wait = (1 - self.tokens) / self.rate
            if stop is not None:
                if stop.wait(min(wait, 1.0)):
                    return False
            else:
                time.sleep(min(wait, 1.0))


@dataclass(frozen=True)
class UpstreamAnswer:
    http_status: int
    text: str
    profile_id: str | None


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _refusal(response: httpx.Response) -> str:
    """What a final answer that is not the API's JSON says: its status and, for a redirect (relay does not
    follow one: it would turn the POST into a GET), where it points, without its query."""
    location = response.headers.get("Location")
    if not (300 <= response.status_code < 400 and location):
        return f"HTTP {response.status_code}"
    where = location.split("?", 1)[0][:200]
    return f"HTTP {response.status_code}: redirected to {where}; set RELAY_UPSTREAM_URL to the API's own address"


class AnswerTooLarge(Exception):
    pass


class AnswerTooSlow(Exception):
    pass


def read_within(response: httpx.Response, *, deadline: float, limit: int) -> bytes:
    """A streamed answer's bytes, as long as they come before `deadline` (monotonic) and within `limit`.

    httpx's timeouts bound each read, not the whole answer: one that drips a byte a second never times
    out, and the worker's lease assumes calls that end; an answer of hundreds of megabytes would sit in
    the worker's memory.

    Raises:
        AnswerTooLarge, AnswerTooSlow
    """
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise AnswerTooSlow
    return b"".join(chunks)


class UpstreamClient:
    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        if not settings.upstream_url:
            raise ValueError("RELAY_UPSTREAM_URL is not set")
        self.base = settings.upstream_url
        self.token = settings.upstream_token
        self.format = settings.upstream_format
        self.timeout = settings.upstream_timeout
        timeout = httpx.Timeout(settings.upstream_timeout, connect=min(5.0, settings.upstream_timeout))
        self.client = ApiClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self.client.close()

    def _read_answer(self, response: httpx.Response, deadline: float) -> bytes:
        """The answer's bytes (`read_within`).

        Raises:
            TransientUpstreamError: too slow or too large; whether the upstream applied the call is not
                known, as after any timeout.
        """
        try:
            return read_within(response, deadline=deadline, limit=MAX_ANSWER_BYTES)
        except AnswerTooLarge:
            raise TransientUpstreamError(
                f"answer larger than {MAX_ANSWER_BYTES} bytes", http_status=response.status_code
            ) from None
        except AnswerTooSlow:
            raise TransientUpstreamError(
                f"timeout: the answer was still arriving after {self.timeout:g} s", http_status=response.status_code
            ) from None

    def encode(self, call: UpstreamCall) -> tuple[bytes, str]:
        body: dict[str, Any] = {"token": self.token or "", **call.body} if self.token else dict(call.body)
        if self.format == "xml":
            return to_xml(body).encode("utf-8"), "application/xml; charset=utf-8"
        return json.dumps(body, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8"

    def send(self, call: UpstreamCall) -> UpstreamAnswer:
        """Make one call.

        Raises:
            TransientUpstreamError: try again later.
            PermanentUpstreamError: the upstream refused it for good.
        """
        content, content_type = self.encode(call)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        deadline = time.monotonic() + self.timeout
        try:
            with self.client.stream("POST", f"{self.base}/{call.method}", content=content, headers=headers) as response:
                raw = self._read_answer(response, deadline)
        except httpx.TimeoutException as exc:
            raise TransientUpstreamError(f"timeout: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise TransientUpstreamError(f"network: {type(exc).__name__}: {exc}"[:300]) from None
        # The API answers UTF-8 JSON; what is kept of an answer is a 2,000-character excerpt for
        # the operator. Decoding it directly skips httpx's charset detection, a cost on every call.
        text = raw[:8000].decode("utf-8", "replace")[:2000]
        status = response.status_code
        if status == 402:
            raise TariffLimitReached(
                f"HTTP {status}: the tariff limit is reached",
                http_status=status,
                body=text,
                retry_after=retry_after(response),
            )
        if status == 429 or status == 408 or status >= 500:
            raise TransientUpstreamError(
                f"HTTP {status}", http_status=status, body=text, retry_after=retry_after(response)
            )
        try:
            answer = json.loads(raw)
        except ValueError:
            if 200 <= status < 300:
                raise TransientUpstreamError("answer is not the API's JSON", http_status=status, body=text) from None
            raise PermanentUpstreamError(_refusal(response), http_status=status, body=text) from None
        if not isinstance(answer, dict) or "error" not in answer:
            if 200 <= status < 300:
                raise TransientUpstreamError("answer lacks the error field", http_status=status, body=text)
            raise PermanentUpstreamError(f"HTTP {status}", http_status=status, body=text)
        if 200 <= status < 300 and answer.get("error") == 0:
            profile_id = answer.get("profile_id")
            return UpstreamAnswer(status, text, str(profile_id) if profile_id else None)
        error = answer.get("error")
        detail = f"HTTP {status}, error {error}: {answer.get('error_text', '')}"[:500]
        if error == 402:
            raise TariffLimitReached(detail, http_status=status, body=text)
        if error == 429 or (isinstance(error, int) and error >= 500):
            raise TransientUpstreamError(detail, http_status=status, body=text)
        raise PermanentUpstreamError(detail, http_status=status, body=text)
