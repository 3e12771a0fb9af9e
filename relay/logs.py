"""Structured log lines (JSON or key=value), with tokens redacted from every line."""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
import sys
import threading
import time
from typing import Any

from relay.settings import Settings

__all__ = ["REQUEST_ID", "LineFormatter", "Throttle", "configure_logging", "mask_contact", "redact_query"]

_TOKEN_IN_QUERY = re.compile(r"""((?:^|[?&;])(?:token|api_key|apikey|key|secret)=)[^&;#\s"']*""", re.IGNORECASE)
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")
_PHONE = re.compile(r"\+?\d[\d\s().-]{7,}\d")
_IPV4 = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}")
_MAYBE_CONTACT = re.compile(r"[@\d]")  # text with neither holds no e-mail and no phone
# The request being served, for every line logged while serving it.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("relay_request_id", default=None)
_FREE_TEXT = ("event", "detail", "reason", "exception", "error")
_OWN_FIELDS = frozenset({"ts", "level", "logger", "event", "request_id", "exception"})
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Built once: json.dumps with any option builds a new encoder on every call.
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str).encode
# A key=value value with any of these is written as a JSON string. Left bare, a line break in a request's path
# (`/hooks/a%0Alevel=error`, anyone can send one) wrote a line of the sender's own into the log.
_QUOTED = re.compile(r'[\s="\\\x00-\x1f\x7f]')


@functools.lru_cache(maxsize=4)
def _second(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


def redact_query(text: str) -> str:
    """Replace the value of every token-like query parameter with ***."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


def mask_contact(text: str) -> str:
    """Mask e-mail addresses and phone numbers (for info-level lines).

    A dotted IPv4 address looks like a phone to the pattern; it is left as it is, since an error that
    names the database host it could not reach is no use with the host masked.
    """
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(lambda m: m.group(0) if _IPV4.fullmatch(m.group(0)) else m.group(0)[:3] + "***", text)


class Throttle:
    """True at most once an interval, across threads: for a line (or a report) that would otherwise come
    once a request for as long as an outage lasts."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = -seconds
        self.lock = threading.Lock()

    def due(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if now - self.last < self.seconds:
                return False
            self.last = now
            return True


class LineFormatter(logging.Formatter):
    """One log record as one line: JSON, or key=value; tokens redacted, contacts masked."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style_name = style

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": _second(int(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            fields["request_id"] = request_id
        attributes = record.__dict__
        for key in sorted(attributes.keys() - _STANDARD):
            value = attributes[key]
            if value is not None and not key.startswith("_"):
                # An extra named like the line's own fields (a webhook's `event`) must not take the message's
                # place: the "accepted" lines of sources with events once said only the event.
                fields[f"extra_{key}" if key in _OWN_FIELDS else key] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        for key in _FREE_TEXT:
            text = fields.get(key)
            if isinstance(text, str) and _MAYBE_CONTACT.search(text):
                fields[key] = mask_contact(text)
        if self.style_name == "json":
            line = _ENCODE(fields)
        else:
            line = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return redact_query(line) if "=" in line else line


def _text_value(value: Any) -> Any:
    return _ENCODE(value) if isinstance(value, str) and _QUOTED.search(value) else value


def configure_logging(settings: Settings) -> None:
    """Install relay's formatter on the root logger once per process."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_relay", False):
            handler.setFormatter(LineFormatter(settings.log_format))
            break
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler._relay = True  # type: ignore[attr-defined]
        handler.setFormatter(LineFormatter(settings.log_format))
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # No line shows where a call was made; not looking it up saves most of the cost of a record
    # (the logging HOWTO's "Optimization" list). Thread and process ids stay: gunicorn's own lines
    # print them with %d, which fails on the None that switching them off leaves.
    logging._srcfile = None
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
