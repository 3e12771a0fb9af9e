"""`relay deliveries --follow`, as a user runs it, beside the real app and worker delivering to the sandbox.

An operator presses a provider's "send test" button and watches: the webhook is printed as it arrives and
again once it is delivered; another source's webhooks stay out of a `--source` view; Ctrl-C ends it.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import MAPPINGS, ROOT, SECRETS, drain, hand_driven, post_signed, quick_retry_settings

WAIT_SECONDS = 15.0


@pytest.fixture
def relay(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    yield from hand_driven(quick_retry_settings(tmp_path, sandbox))


def _tilda(client, email: str, tranid: str) -> str:  # type: ignore[no-untyped-def]
    answer = client.post(
        f"/hooks/tilda?token={SECRETS['TILDA_WEBHOOK_TOKEN']}", data={"Email": email, "tranid": tranid}
    )
    assert answer.status_code == 202, answer.get_json()
    return str(answer.get_json()["id"])


class Lines:
    """The lines a process prints, read by a thread, waited for with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[dict[str, object]] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: [self._queue.put(line) for line in stdout], daemon=True).start()

    def wait_for(self, delivery_id: str, status: str) -> dict[str, object]:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                row = json.loads(self._queue.get(timeout=0.2))
            except queue.Empty:
                continue
            self.seen.append(row)
            if row["id"] == delivery_id and row["status"] == status:
                return row
        raise AssertionError(f"no line for {delivery_id} {status} within {WAIT_SECONDS} s; saw {self.seen}")


def _started_as_from_a_terminal(command: list[str], **options: Any) -> subprocess.Popen[str]:
    """The command started with Ctrl-C's signal at its default, as a shell's foreground command has it.

    A shell without job control starts a background command with SIGINT ignored (POSIX), and every process
    under it inherits that: the suite run as `scripts/test &` from a script would start `relay ... --follow`
    deaf to Ctrl-C, and this test would wait for it in vain. Python's own handler becomes the default at
    exec, so the child has it whatever this process was given; this process's is put back at once.
    """
    given = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, **options)
    finally:
        if given is not None:  # None: a handler set outside Python, which Python cannot put back
            signal.signal(signal.SIGINT, given)


@contextlib.contextmanager
def following(worker, *options: str) -> Iterator[Lines]:  # type: ignore[no-untyped-def]
    """`relay deliveries --follow --json <options>` running on the worker's store; at the end Ctrl-C must stop
    it cleanly. Its stderr is read as it comes (a pipe nobody reads blocks a process that fills it, and one
    blocked so would never end), and shown when it does not stop in time."""
    command = [sys.executable, "-X", "faulthandler", "-m", "relay", "deliveries", "--follow", "--json", *options]
    env = {"PATH": "/usr/bin:/bin", "RELAY_DATABASE_URL": worker.settings.database_url}
    with _started_as_from_a_terminal(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        errors: list[str] = []
        stderr = process.stderr
        assert stderr is not None
        reader = threading.Thread(target=lambda: errors.extend(stderr), daemon=True)
        reader.start()
        try:
            yield Lines(process)
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGABRT)  # faulthandler prints where each thread is
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
                reader.join(timeout=5)
                stack = "".join(errors)[-4000:]
                raise AssertionError(f"still running {WAIT_SECONDS} s after Ctrl-C; stderr:\n{stack}") from None
            reader.join(timeout=WAIT_SECONDS)
            assert code == 0, "".join(errors)
            assert "Traceback" not in "".join(errors)
        finally:
            if process.poll() is None:
                process.kill()


def test_follow_prints_each_delivery_as_it_arrives_and_again_as_it_settles(relay):
    client, store, worker = relay
    earlier = _tilda(client, "first@example.com", "1:1")
    assert drain(store, worker, earlier) == "delivered"
    with following(worker, "--source", "tilda") as lines:
        lines.wait_for(earlier, "delivered")  # the newest ones first, as tail -f shows the last lines
        arrived = _tilda(client, "second@example.com", "2:1")
        other = client.post(
            f"/hooks/google_forms?token={SECRETS['GOOGLE_FORMS_WEBHOOK_TOKEN']}", json={"email": "g@example.com"}
        )
        assert other.status_code == 202
        assert lines.wait_for(arrived, "queued")["attempts"] == 0
        assert drain(store, worker, arrived) == "delivered"
        assert lines.wait_for(arrived, "delivered")["attempts"] == 1
        assert other.get_json()["id"] not in {row["id"] for row in lines.seen}


def test_follow_with_an_event_shows_only_the_requests_that_name_it(relay):
    client, _store, worker = relay
    with following(worker, "--event", "orders/paid") as lines:
        form = _tilda(client, "form@example.com", "3:1")
        order = json.loads((MAPPINGS / "examples" / "shopify" / "orders-paid.json").read_text(encoding="utf-8"))
        paid = post_signed(
            client,
            "shopify",
            order,
            secret=SECRETS["SHOPIFY_WEBHOOK_SECRET"],
            header="X-Shopify-Hmac-Sha256",
            headers={"X-Shopify-Topic": "orders/paid", "X-Shopify-Webhook-Id": "follow-1"},
        )
        assert lines.wait_for(paid.get_json()["id"], "queued")["event"] == "orders/paid"
        assert form not in {row["id"] for row in lines.seen}


def test_follow_takes_no_filter_but_the_source_and_the_event(tmp_path):
    from .conftest import relay_command

    refused = relay_command(
        "deliveries", "--follow", "--status", "failed", env={"RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}
    )
    assert refused.returncode == 1 and "--follow takes --source and --event" in refused.stderr
