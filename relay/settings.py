"""Settings: read once from the environment (and `.env`), checked, then passed in.

Nothing in relay reads `os.environ` after start-up except through a `Settings`
object, so tests build their own with `Settings.from_env({...})`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values

from relay.errors import ConfigError

__all__ = ["Settings", "dotenv_exported", "export_dotenv", "load_environment", "mask", "shown_url"]

SECRET_SETTINGS = {"upstream_token", "admin_token", "sentry_dsn"}


def mask(value: str | None) -> str:
    """How a secret is shown anywhere it is printed."""
    return "***" if value else "(unset)"


_FROM_DOTENV = "RELAY_SET_FROM_DOTENV"  # the names the last `export_dotenv` put into the environment


def load_environment(dotenv_path: str | os.PathLike[str] = ".env") -> dict[str, str]:
    """The process environment over the values of `.env` (when it exists); only the environment in a
    process whose parent put `.env` into it already (`export_dotenv`): the file may have changed since."""
    merged: dict[str, str] = {}
    if _FROM_DOTENV not in os.environ and Path(dotenv_path).is_file():
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ)
    return merged


def dotenv_exported() -> bool:
    """Whether `export_dotenv` has put `.env` into this process's environment (or its parent's)."""
    return _FROM_DOTENV in os.environ


def export_dotenv(dotenv_path: str | os.PathLike[str] = ".env") -> None:
    """Put the values of `.env` into this process's environment, under what the environment itself sets.

    Gunicorn's master does this when it reads its config, so that every web worker it forks, a crashed
    one's replacement included, gets the values of that moment, whatever the file holds by then; and a
    reload (SIGHUP) does it again: the values the previous call put in are taken out first, so that the
    file read now decides, and a line deleted from it is gone.
    """
    for name in filter(None, os.environ.pop(_FROM_DOTENV, "").split(",")):
        os.environ.pop(name, None)
    added: list[str] = []
    if Path(dotenv_path).is_file():
        for name, value in dotenv_values(dotenv_path).items():
            if value is not None and name not in os.environ:
                os.environ[name] = value
                added.append(name)
    os.environ[_FROM_DOTENV] = ",".join(added)


def _whole_number(least: int, most: int | None, problem: str) -> Callable[[str], int]:
    """A parser of whole numbers from `least` to `most`; anything else, a word included, is `problem`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(problem) from None
        if value < least or (most is not None and value > most):
            raise ValueError(problem)
        return value

    return parse


_positive_int = _whole_number(1, None, "must be a positive whole number")
_non_negative_int = _whole_number(0, None, "must be a whole number, zero or more")
_port = _whole_number(1, 65535, "must be a port number, 1 to 65535")


def _switch(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _url(text: str) -> str:
    """The upstream API's base address (`https://host/api/v1.1`), to which relay adds `/profiles/...`."""
    value = text.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must start with http:// or https:// and name a host")
    if parts.query or parts.fragment:
        # The method is appended to the path: a query would end up in the middle of every call's URL.
        raise ValueError("must not carry a query string or fragment; the token goes in RELAY_UPSTREAM_TOKEN")
    method = _METHOD_IN_PATH.search(parts.path)
    if method:
        base = urlunsplit(parts._replace(path=parts.path[: method.start()]))
        raise ValueError(f"is the API's base address, without the method: {shown_url(base)}")
    return value


_METHOD_IN_PATH = re.compile(r"/profiles/[A-Za-z_]+$")


def _public_url(text: str) -> str:
    """Relay's own address as providers call it (`https://relay.example.com`, with a path when a proxy
    serves relay under one): a source that signs the URL it called (HubSpot) is verified against it."""
    value = text.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must start with http:// or https:// and name a host (https://relay.example.com)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("is relay's address alone: no query string, fragment or credentials")
    return value


def shown_url(url: str) -> str:
    """A URL as it may be printed: its password and its query (where a token, or a database's
    `?password=`, could be) replaced by ***; the rest as written (`sqlite:///var/relay.db` too)."""
    parts = urlsplit(url)
    shown = url
    if parts.password is not None:
        shown = shown.replace(":" + parts.password + "@", ":***@", 1)
    if parts.query:
        shown = shown.split("?", 1)[0] + "?***"
    return shown


def _region(text: str) -> str:
    value = text.strip().upper()
    if len(value) != 2 or not value.isalpha():
        raise ValueError("must be a two-letter country code such as RU or US")
    return value


def _schedule(text: str) -> tuple[float, ...]:
    steps = tuple(float(part) for part in text.split(",") if part.strip())
    if not steps or any(step <= 0 for step in steps):
        raise ValueError("must be a comma-separated list of positive seconds, e.g. 5,30,120")
    return steps


def _text(text: str) -> str:
    return text


# The default is taken as it is (a test reads it with limits), so that a command or a delivery worker, which
# count nothing, does not import limits (with asyncio) just to check it.
DEFAULT_HOOK_RATE_LIMIT = "1000 per second"


def _rate_limit(text: str) -> str:
    """A `limits` rate (`1000 per second`, `20/minute`) of at least one request."""
    if text == DEFAULT_HOOK_RATE_LIMIT:
        return text
    from limits import parse

    try:
        limit = parse(text)
    except ValueError:
        raise ValueError("must be a rate such as '1000 per second' or '20/minute'") from None
    if limit.amount < 1:
        raise ValueError("must let at least one request through (0 refuses every webhook with 429)")
    return text.strip()


def _limit_storage(text: str) -> str:
    value = text.strip()
    if not value.startswith(("memory://", "redis://", "rediss://", "redis+unix://")):
        raise ValueError("must be memory:// (each process counts alone) or redis://host:6379/0 (one shared count)")
    return value


def _geoip_database(text: str) -> str:
    """A MaxMind-format city database, opened once here: a path that is wrong stopped the delivery worker
    with a traceback after relay had said it was listening."""
    import maxminddb

    path = text.strip()
    try:
        maxminddb.open_database(path).close()
    except OSError as exc:
        raise ValueError(f"cannot be opened ({exc.strerror or exc})") from None
    except (ValueError, maxminddb.InvalidDatabaseError):
        raise ValueError("is not a MaxMind-format database (a GeoLite2 or GeoIP2 City .mmdb)") from None
    return path


def _sentry_dsn(text: str) -> str:
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        Dsn(text.strip())
    except BadDsn as exc:
        raise ValueError(f"is not a Sentry DSN ({exc})") from None
    return text.strip()


def _bind(text: str) -> str:
    """Where gunicorn listens: `host:port`, `[::1]:port`, `unix:/path` or `fd://N`."""
    value = text.strip()
    if value.startswith(("unix:", "fd://")):
        return value
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("must be host:port (0.0.0.0:8000, [::]:8000), unix:/path or fd://N")
    return value


_STORES = {"sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"}


def _database_url(text: str) -> str:
    """A SQLAlchemy URL of a store relay has a driver for: SQLite, or PostgreSQL through psycopg 3."""
    value = text.strip()
    scheme, separator, _rest = value.partition("://")
    if not separator:
        raise ValueError("is not a database URL (sqlite:///var/relay.db, postgresql://user@host/db)")
    if scheme.lower() not in _STORES:
        raise ValueError(f"relay stores on SQLite (sqlite:///...) or PostgreSQL (postgresql://...), not {scheme}")
    return value


# (attribute, variable, parser, default as the variable would spell it)
_SPEC: list[tuple[str, str, Callable[[str], Any], str | None]] = [
    ("database_url", "RELAY_DATABASE_URL", _database_url, "sqlite:///var/relay.db"),
    ("upstream_url", "RELAY_UPSTREAM_URL", _url, None),
    ("upstream_token", "RELAY_UPSTREAM_TOKEN", _text, None),
    ("upstream_format", "RELAY_UPSTREAM_FORMAT", _choice("json", "xml"), "json"),
    ("upstream_timeout", "RELAY_UPSTREAM_TIMEOUT", _positive_float, "10"),
    ("upstream_rate", "RELAY_UPSTREAM_RATE", _positive_float, "50"),
    ("mappings_dir", "RELAY_MAPPINGS_DIR", _text, "mappings"),
    ("admin_token", "RELAY_ADMIN_TOKEN", _text, None),
    ("max_body_bytes", "RELAY_MAX_BODY_BYTES", _positive_int, str(1024 * 1024)),
    ("trusted_proxies", "RELAY_TRUSTED_PROXIES", _non_negative_int, "0"),
    ("public_url", "RELAY_PUBLIC_URL", _public_url, None),
    ("hook_rate_limit", "RELAY_HOOK_RATE_LIMIT", _rate_limit, DEFAULT_HOOK_RATE_LIMIT),
    ("rate_limit_storage", "RELAY_RATE_LIMIT_STORAGE", _limit_storage, "memory://"),
    ("phone_region", "RELAY_PHONE_REGION", _region, "RU"),
    ("geoip_db", "RELAY_GEOIP_DB", _geoip_database, None),
    ("dedup_window", "RELAY_DEDUP_WINDOW", _positive_int, str(7 * 24 * 3600)),
    # Delivered deliveries older than this are deleted by the worker; 0 keeps them for ever.
    ("keep_delivered", "RELAY_KEEP_DELIVERED", _non_negative_int, str(30 * 24 * 3600)),
    ("worker_concurrency", "RELAY_WORKER_CONCURRENCY", _positive_int, "4"),
    ("worker_processes", "RELAY_WORKER_PROCESSES", _positive_int, "1"),
    ("lease_seconds", "RELAY_LEASE_SECONDS", _positive_int, "60"),
    ("max_attempts", "RELAY_MAX_ATTEMPTS", _positive_int, "30"),
    ("max_age", "RELAY_MAX_AGE", _positive_int, str(4 * 24 * 3600)),
    ("retry_schedule", "RELAY_RETRY_SCHEDULE", _schedule, "5,30,120,300,900,1800,3600,7200,14400,21600"),
    ("poll_interval", "RELAY_POLL_INTERVAL", _positive_float, "0.5"),
    ("worker_metrics_port", "RELAY_WORKER_METRICS_PORT", _port, None),
    ("log_format", "RELAY_LOG_FORMAT", _choice("json", "text"), "json"),
    ("log_level", "RELAY_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info"),
    ("sentry_dsn", "SENTRY_DSN", _sentry_dsn, None),
    ("sentry_environment", "SENTRY_ENVIRONMENT", _text, "production"),
    # Read by gunicorn.conf.py (`gunicorn app:app` and `relay run`); 0 turns a timeout off.
    ("bind", "RELAY_BIND", _bind, "0.0.0.0:8000"),
    ("web_workers", "RELAY_WEB_WORKERS", _positive_int, "2"),
    ("web_threads", "RELAY_WEB_THREADS", _positive_int, "4"),
    ("web_timeout", "RELAY_WEB_TIMEOUT", _non_negative_int, "30"),
    ("web_graceful_timeout", "RELAY_WEB_GRACEFUL_TIMEOUT", _non_negative_int, "20"),
    ("access_log", "RELAY_ACCESS_LOG", _switch, "1"),
]


@dataclass(frozen=True)
class Settings:
    """Every setting relay has, parsed and checked."""

    database_url: str
    upstream_url: str | None
    upstream_token: str | None = field(repr=False)
    upstream_format: str
    upstream_timeout: float
    upstream_rate: float
    mappings_dir: str
    admin_token: str | None = field(repr=False)
    max_body_bytes: int
    trusted_proxies: int
    public_url: str | None
    hook_rate_limit: str
    rate_limit_storage: str
    phone_region: str
    geoip_db: str | None
    dedup_window: int
    keep_delivered: int
    worker_concurrency: int
    worker_processes: int
    lease_seconds: int
    max_attempts: int
    max_age: int
    retry_schedule: tuple[float, ...]
    poll_interval: float
    worker_metrics_port: int | None
    log_format: str
    log_level: str
    sentry_dsn: str | None = field(repr=False)
    sentry_environment: str
    bind: str
    web_workers: int
    web_threads: int
    web_timeout: int
    web_graceful_timeout: int
    access_log: bool
    # The whole environment, for the `${NAME}` references of mapping files.
    env: Mapping[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Parse settings from `environ` (default: the process environment and `.env`).

        Raises:
            ConfigError: listing every variable that is wrong, by name.
        """
        env = dict(load_environment() if environ is None else environ)
        values: dict[str, Any] = {}
        problems: list[str] = []
        for attribute, variable, parse, default in _SPEC:
            raw = env.get(variable)
            if raw is None or raw.strip() == "":
                values[attribute] = None if default is None else parse(default)
                continue
            try:
                values[attribute] = parse(raw)
            except ValueError as exc:
                shown = "***" if attribute in SECRET_SETTINGS else repr(raw)
                if attribute in ("upstream_url", "database_url"):
                    shown = repr(shown_url(raw.strip()))
                problems.append(f"{variable}={shown}: {exc}")
        keep, window = values.get("keep_delivered"), values.get("dedup_window")
        if keep and window and keep < window:
            # A repeat inside the window would be answered with the id of a delivery already deleted.
            problems.append(
                f"RELAY_KEEP_DELIVERED={keep}: must be 0 (keep for ever) or at least RELAY_DEDUP_WINDOW ({window} s)"
            )
        if problems:
            raise ConfigError(problems)
        values.update(overrides)
        return cls(env=env, **values)

    def describe(self) -> dict[str, str]:
        """Every effective setting by variable name, secrets masked, for start-up logs."""
        shown: dict[str, str] = {}
        for attribute, variable, _parse, _default in _SPEC:
            value = getattr(self, attribute)
            if attribute in SECRET_SETTINGS:
                shown[variable] = mask(value)
            elif attribute in ("upstream_url", "database_url") and value is not None:
                shown[variable] = shown_url(value)
            else:
                shown[variable] = "(unset)" if value is None else str(value)
        return shown


assert {f.name for f in fields(Settings)} - {"env"} == {a for a, *_ in _SPEC}
