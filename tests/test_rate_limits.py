"""Per-source request limits answer 429 with Retry-After; with Redis they hold across processes."""

from __future__ import annotations

import os

import pytest

from relay.web import create_app

from .conftest import SECRETS, make_settings

FORM = "application/x-www-form-urlencoded"


def post(client, source: str, index: int):  # type: ignore[no-untyped-def]
    token = SECRETS[f"{source.upper()}_WEBHOOK_TOKEN"]
    return client.post(
        f"/hooks/{source}?token={token}", data=f"Email=r{index}%40example.com".encode(), content_type=FORM
    )


def test_limit_per_source(tmp_path):
    """Past the limit a source gets 429 JSON with Retry-After; other sources are not affected."""
    app = create_app(make_settings(tmp_path, RELAY_HOOK_RATE_LIMIT="3 per hour"))
    client = app.test_client()
    assert [post(client, "tilda", i).status_code for i in range(4)] == [202, 202, 202, 429]
    limited = post(client, "tilda", 9)
    assert limited.get_json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) > 0
    assert post(client, "elementor", 1).get_json()["status"] == "accepted"


def test_limit_shared_through_redis(tmp_path):
    """Two app instances (as two gunicorn workers) share one Redis-backed limit."""
    import redis

    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url).flushdb()
    except redis.exceptions.ConnectionError:
        if os.environ.get("RELAY_REQUIRE_POSTGRES"):
            pytest.fail("Redis is required in CI (.ci/run starts it)")
        pytest.skip("Redis does not answer on 127.0.0.1:6379")
    settings = make_settings(tmp_path, RELAY_HOOK_RATE_LIMIT="4 per hour", RELAY_RATE_LIMIT_STORAGE=url)
    first, second = create_app(settings).test_client(), create_app(settings).test_client()
    codes = [post(client, "tilda", i).status_code for i, client in enumerate([first, second] * 3)]
    assert codes == [202, 202, 202, 202, 429, 429]


def test_limit_storage_away_lets_webhooks_through(tmp_path):
    """Redis refusing connections, or taking them and never answering: webhooks are accepted (within the
    half-second timeout), with one warning line a minute; the limit protects relay, it must not lose leads."""
    import socket
    import time

    from relay.testing import free_port

    from .conftest import captured_log_lines

    silent = socket.create_server(("127.0.0.1", 0))  # takes connections into its backlog, never answers
    try:
        refused, unanswered = free_port(), silent.getsockname()[1]
        for port in (refused, unanswered):
            url = f"redis://127.0.0.1:{port}/0"
            settings = make_settings(
                tmp_path / str(port),
                RELAY_HOOK_RATE_LIMIT="1 per hour",
                RELAY_RATE_LIMIT_STORAGE=url,
                RELAY_LOG_LEVEL="info",
            )
            client = create_app(settings).test_client()
            with captured_log_lines() as lines:
                started = time.monotonic()
                codes = [post(client, "tilda", i).status_code for i in range(3)]
                took = time.monotonic() - started
            assert codes == [202, 202, 202], url
            assert took < 5, took
            warnings = [line for line in lines if "rate limit storage unavailable; not limiting" in line]
            assert len(warnings) == 1, lines
    finally:
        silent.close()


def test_forged_requests_do_not_spend_a_sources_allowance(tmp_path):
    """Counted before authentication, anyone who knew a hook's URL could spend its source's allowance with
    forged requests, and the provider's own webhooks were answered 429: leads lost, since Tilda tries three
    times in two minutes and Elementor once. Forged requests get 401 and count for nothing."""
    app = create_app(make_settings(tmp_path, RELAY_HOOK_RATE_LIMIT="3 per hour"))
    client = app.test_client()
    forged = [
        client.post("/hooks/tilda?token=guessed", data=f"Email=f{i}%40example.com".encode(), content_type=FORM)
        for i in range(10)
    ]
    assert {response.status_code for response in forged} == {401}
    assert [post(client, "tilda", i).status_code for i in range(4)] == [202, 202, 202, 429]


def test_the_default_rate_is_one_limits_reads():
    """Settings take the default without reading it (a command must not import limits): limits reads it so."""
    from limits import parse

    from relay.settings import DEFAULT_HOOK_RATE_LIMIT, Settings

    limit = parse(DEFAULT_HOOK_RATE_LIMIT)
    assert (limit.amount, limit.GRANULARITY.name) == (1000, "second")
    assert Settings.from_env({}).hook_rate_limit == DEFAULT_HOOK_RATE_LIMIT
