"""`/admin/`: the operator's page, served by the app and driven in a real browser against `relay run`.

The browser tests need Chromium, its driver and selenium (.ci/run installs them); elsewhere they skip and
say so, unless RELAY_REQUIRE_BROWSER is set, when a missing browser fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from relay.admin_page import CONTENT_SECURITY_POLICY
from relay.sandbox import Sandbox, SandboxServer, default_config
from relay.testing import RelayProcess

from .conftest import MAPPINGS, SECRETS, make_settings

ADMIN_TOKEN = SECRETS["RELAY_ADMIN_TOKEN"]
FORM = "application/x-www-form-urlencoded"
LEADS_TOKEN = "leads-test-token-6f70"

# A form whose e-mail field the first version of its mapping reads under the wrong name: its webhooks fail
# for their mapping until the operator fixes the file and replays them, as an operator would.
LEADS_MAPPING = """\
version: 1
source: leads
kind: form
description: A test form.
auth:
  scheme: token
  secret: ${LEADS_WEBHOOK_TOKEN}
rules:
  - name: lead
    method: profiles/import
    matching: email
    match:
      email: {path: EMAIL_PATH, transform: email}
    new_profile: true
    fields:
      email: {path: EMAIL_PATH, transform: email}
"""


# ---- the page as the app serves it ---------------------------------------------------------------------------


def test_the_page_is_served_to_anyone_with_a_policy_that_runs_only_its_own_files(client):
    page = client.get("/admin/")
    assert page.status_code == 200
    assert page.content_type == "text/html; charset=utf-8"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    html = page.get_data(as_text=True)
    assert '<script src="admin.js" defer></script>' in html and "<script>" not in html  # no inline script
    assert ADMIN_TOKEN not in html
    for asset, kind in (("admin.js", "text/javascript"), ("admin.css", "text/css")):
        answer = client.get(f"/admin/{asset}")
        assert answer.status_code == 200 and answer.content_type.startswith(kind)
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    # The page holds no data: the API behind it still wants the token.
    assert client.get("/admin/api/overview").status_code == 401


def test_the_script_writes_no_markup():
    """Payloads are anyone's text: the page's script must build nodes, never parse strings as HTML."""
    script = (Path(__file__).resolve().parent.parent / "relay" / "admin_static" / "admin.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


def test_only_the_pages_files_are_served_and_unchanged_ones_answer_304(client):
    first = client.get("/admin/admin.js")
    again = client.get("/admin/admin.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.get_data() == b""
    assert client.get("/admin").status_code == 308  # the folder without its slash
    for path in ("/admin/index.html", "/admin/../web.py", "/admin/admin_static/admin.js", "/admin/x.js"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.is_json, path
    assert client.post("/admin/").status_code == 405


def test_the_page_is_served_while_the_admin_api_is_off(tmp_path):
    """Without RELAY_ADMIN_TOKEN the page still loads, and the API answers what the page then says."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path, RELAY_ADMIN_TOKEN=None))
    try:
        client = app.test_client()
        assert client.get("/admin/").status_code == 200
        off = client.get("/admin/api/overview", headers={"Authorization": "Bearer anything"})
        assert off.status_code == 403 and off.get_json()["error"] == "admin_disabled"
    finally:
        app.extensions["relay"]["store"].close()


def test_a_deliverys_preview_follows_the_mapping_file_as_it_is_on_disk(tmp_path):
    """`GET /admin/api/deliveries/<id>/preview`: the calls it would make now, or why it makes none."""
    from relay.web import create_app

    mappings = tmp_path / "mappings"
    mappings.mkdir()
    leads = mappings / "leads.yaml"
    leads.write_text(LEADS_MAPPING.replace("EMAIL_PATH", "email"))
    app = create_app(make_settings(tmp_path, RELAY_MAPPINGS_DIR=str(mappings), LEADS_WEBHOOK_TOKEN=LEADS_TOKEN))
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        client = app.test_client()
        posted = client.post(f"/hooks/leads?token={LEADS_TOKEN}", data={"email": "Anna@Example.com"})
        preview = f"/admin/api/deliveries/{posted.get_json()['id']}/preview"
        now = client.get(preview, headers=auth).get_json()
        assert now["outcome"] == "translate" and now["rule"] == "lead"
        [call] = now["calls"]
        assert call["method"] == "profiles/import"
        assert (call["body"]["email"], call["body"]["token"]) == ("anna@example.com", "***")

        leads.write_text(
            LEADS_MAPPING.replace("EMAIL_PATH", "email").replace(
                "  - name: lead\n", "  - name: closed\n    ignore: the form is closed\n  - name: lead\n"
            )
        )
        assert client.get(preview, headers=auth).get_json() == {
            "outcome": "ignored",
            "rule": "closed",
            "event": None,
            "reason": "the form is closed",
        }
    finally:
        app.extensions["relay"]["store"].close()


def test_a_payload_is_tried_on_a_sources_mapping_file_as_it_is_on_disk(tmp_path, client):
    """`POST /admin/api/sources/<name>/preview`: a sample translated as its provider would send it, nothing
    stored; a ping said to be one; the event a header or the hook URL's query names; a file added since the
    web server started read too."""
    from relay.web import create_app

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    examples = MAPPINGS / "examples"

    def tried(source: str, sample: dict[str, Any], app_client: Any = client) -> Any:
        return app_client.post(f"/admin/api/sources/{source}/preview", json=sample, headers=auth)

    form = tried("tilda", {"body": "Email=Anna%40Example.com&Name=Anna", "content_type": FORM})
    assert form.status_code == 200
    answer = form.get_json()
    assert (answer["outcome"], answer["rule"]) == ("translate", "form")
    [call] = answer["calls"]
    assert (call["method"], call["body"]["email"], call["body"]["token"]) == (
        "profiles/import",
        "anna@example.com",
        "***",
    )
    assert tried("tilda", {"body": "test=test", "content_type": FORM}).get_json() == {"outcome": "ping"}
    as_sent = tried("tilda", {"body": "Email=anna%40example.com", "headers": {"content-type": FORM}}).get_json()
    assert as_sent["outcome"] == "translate"  # the type from a header of any case, as relay reads headers
    assert tried("tilda", {"body": "Name=Nobody", "content_type": FORM}).get_json()["outcome"] == "fails"

    order = (examples / "shopify" / "orders-paid.json").read_text()
    paid = tried("shopify", {"body": order, "headers": {"X-Shopify-Topic": "orders/paid"}}).get_json()
    assert paid["event"] == "orders/paid" and paid["outcome"] == "translate"
    created = (examples / "insales" / "client-create.json").read_text()
    insales = tried("insales", {"body": created, "query": {"topic": "client/create"}}).get_json()
    assert insales["event"] == "client/create"
    assert insales["calls"][0]["body"]["email"] == "olga.kuznetsova@example.com"

    store = client.application.extensions["relay"]["store"]
    assert store.counts_by_source()[0] == []  # nothing was stored

    refusals = {
        "no body": (tried("tilda", {"content_type": FORM}), 400),
        "headers not texts": (tried("tilda", {"body": "x=1", "headers": {"A": 1}}), 400),
        "no such source": (tried("nosuch", {"body": "{}"}), 404),
        "not a source name": (tried("Tilda", {"body": "{}"}), 400),
        "too large": (tried("tilda", {"body": "x" * (2**20 + 1)}), 413),
        "no token": (client.post("/admin/api/sources/tilda/preview", json={"body": "{}"}), 401),
    }
    assert {name: answer.status_code for name, (answer, _) in refusals.items()} == {
        name: status for name, (_, status) in refusals.items()
    }

    # A mapping file added while the web server runs is tried before it is loaded (the hook answers 503).
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "tilda.yaml").write_text((MAPPINGS / "tilda.yaml").read_text())
    app = create_app(make_settings(tmp_path, RELAY_MAPPINGS_DIR=str(mappings)))
    try:
        (mappings / "leads.yaml").write_text(LEADS_MAPPING.replace("EMAIL_PATH", "email"))
        added = tried("leads", {"body": "email=new%40example.com", "content_type": FORM}, app.test_client())
        assert added.get_json()["calls"][0]["body"]["email"] == "new@example.com"
    finally:
        app.extensions["relay"]["store"].close()


# ---- in a browser, against `relay run` -----------------------------------------------------------------------


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not on PATH (Debian: apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("RELAY_REQUIRE_BROWSER"):
            pytest.fail(f"RELAY_REQUIRE_BROWSER is set but {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1300,1000")
    # The browser five hours east of UTC (no summer time there): local times and UTC must not be confused.
    service = Service(str(shutil.which("chromedriver")), env={**os.environ, "TZ": "Asia/Yekaterinburg"})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Relay:
    """`relay run` with the `leads` source, delivering to a sandbox upstream."""

    def __init__(self, folder: Path) -> None:
        self.mappings = folder / "mappings"
        self.mappings.mkdir()
        self.email_names = ["email"]
        self.write_mapping()
        self.sandbox = SandboxServer(Sandbox(default_config([SECRETS["RELAY_UPSTREAM_TOKEN"]]))).start()
        env = {
            "RELAY_DATABASE_URL": f"sqlite:///{folder / 'relay.db'}",
            "RELAY_MAPPINGS_DIR": str(self.mappings),
            "RELAY_UPSTREAM_URL": self.sandbox.api_url,
            "RELAY_UPSTREAM_TOKEN": SECRETS["RELAY_UPSTREAM_TOKEN"],
            "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "LEADS_WEBHOOK_TOKEN": LEADS_TOKEN,
            "RELAY_POLL_INTERVAL": "0.05",
            "RELAY_LOG_LEVEL": "warning",
        }
        self.process = RelayProcess(env, log=folder / "relay.log").start(timeout=60)
        self.url = self.process.url
        self.page = f"{self.url}/admin/"
        # `relay run` says where the page is, once it listens (a moment after /readyz may answer).
        line = f"relay: admin page at {self.page} (sign in with RELAY_ADMIN_TOKEN)"
        _until(lambda: line in (folder / "relay.log").read_text())
        assert ADMIN_TOKEN not in (folder / "relay.log").read_text()

    def write_mapping(self) -> None:
        path = " || ".join(self.email_names)
        (self.mappings / "leads.yaml").write_text(LEADS_MAPPING.replace("EMAIL_PATH", path))

    def read_also(self, name: str) -> None:
        """The fix an operator makes: the mapping reads the form's e-mail under this name too."""
        self.email_names.append(name)
        self.write_mapping()

    def post(self, **fields: str) -> str:
        answer = httpx.post(
            f"{self.url}/hooks/leads?token={LEADS_TOKEN}",
            content=urlencode(fields),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def api(self, path: str) -> Any:
        answer = httpx.get(f"{self.url}/admin/api/{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def status_of(self, delivery_id: str) -> str:
        return str(self.api(f"deliveries/{delivery_id}")["status"])

    def stop(self) -> None:
        self.process.stop()
        self.sandbox.stop()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Relay]:
    started = Relay(tmp_path_factory.mktemp("admin-page"))
    try:
        yield started
    finally:
        started.stop()


def _until(check: Callable[[], Any], seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {check}")
        time.sleep(0.05)


def _redrawn(browser: Any, action: Callable[[], Any]) -> None:
    """Do `action` and wait until the page has drawn the view it leads to (not the one still on screen)."""
    before = browser.execute_script("return document.body.dataset.shown || ''")
    action()
    _until(lambda: browser.execute_script("return document.body.dataset.shown || ''") not in ("", before))


def _shown(browser: Any, hash_path: str) -> None:
    """Go to `hash_path` of the page and wait until it has drawn it."""
    _redrawn(browser, lambda: browser.get(browser.current_url.split("#")[0] + hash_path))


def _text(browser: Any, css: str) -> str:
    """The text of the first element `css` finds, or "" while there is none (the page is drawing it, or
    replaced it between the finding and the reading)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.CSS_SELECTOR, css)
    try:
        return str(found[0].text) if found else ""
    except StaleElementReferenceException:
        return ""


def _sign_in(browser: Any, page: str, token: str = ADMIN_TOKEN) -> None:
    """Load the admin page at `page` afresh, its tab holding no token, and sign in with `token`."""
    from selenium.webdriver.common.by import By

    browser.get("about:blank")  # a new load of the page, not a change of its hash
    browser.get(page + "#/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    _until(lambda: browser.find_element(By.ID, "token").is_displayed())
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()


def _signed_in(browser: Any, page: str) -> None:
    """`_sign_in` with the admin token, until the overview is drawn."""
    from selenium.webdriver.common.by import By

    _sign_in(browser, page)
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, ".cards"))


def test_a_wrong_token_is_refused_and_the_right_one_shows_the_overview(browser, relay):
    from selenium.webdriver.common.by import By

    first = relay.post(mail="first@example.com", note="the overview counts me")
    _until(lambda: relay.status_of(first) == "failed")  # as the page will count it
    _sign_in(browser, relay.page, token="not-the-token")
    _until(lambda: "refused" in _text(browser, "#sign-in-message"))
    assert browser.execute_script("return sessionStorage.length") == 0  # a refused token is not kept

    _signed_in(browser, relay.page)
    overview = relay.api("overview")
    failed = _text(browser, "a.card.status-failed strong")
    assert failed == str(overview["by_status"]["failed"]) and int(failed) >= 1
    assert "email" in _text(browser, "table.problems")  # why: the mapping found no e-mail
    # The worker under `relay run` purged and keyed when it started.
    housekeeping = _text(browser, "#housekeeping")
    assert re.fullmatch(r"keying \d+ (ms|s|min) ago, purge \d+ (ms|s|min) ago", housekeeping), housekeeping
    assert browser.find_elements(By.CSS_SELECTOR, ".banner") == []  # ready, and an upstream is set
    assert ADMIN_TOKEN not in browser.page_source

    browser.find_element(By.ID, "sign-out").click()
    _until(lambda: browser.find_element(By.ID, "token").is_displayed())
    assert browser.execute_script("return sessionStorage.length") == 0


def test_the_overview_refreshes_itself_when_asked_to(browser, relay):
    from selenium.webdriver.common.by import By

    _signed_in(browser, relay.page)
    total = int(_text(browser, ".cards .card strong"))
    relay.post(mail="unseen@example.com", formid="refresh")
    time.sleep(0.5)
    assert int(_text(browser, ".cards .card strong")) == total  # not without a refresh
    browser.find_element(By.ID, "auto-refresh").click()
    _until(lambda: _text(browser, ".cards .card strong") == str(total + 1), seconds=25)  # every 10 s


def test_a_payload_is_shown_as_text_never_as_markup(browser, relay):
    from selenium.webdriver.common.by import By

    hostile = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
    delivery_id = relay.post(mail="hostile@example.com", Name=hostile)
    _signed_in(browser, relay.page)
    _shown(browser, f"#/d/{delivery_id}")
    assert hostile in _text(browser, "#request-body")
    assert browser.find_elements(By.CSS_SELECTOR, "#view img, #view script") == []
    assert browser.title == "relay"


def test_an_operator_fixes_a_mapping_and_replays_what_failed_from_the_page(browser, relay):
    """The mission's loop: what failed and why, the mapping fixed, a dry run, the replay, delivered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    delivery_id = relay.post(mail="ivan@example.com", formid="replay-me")
    _until(lambda: relay.status_of(delivery_id) == "failed")
    _signed_in(browser, relay.page)

    # Filter the list to what failed, as an operator would: the form's select and its button.
    _shown(browser, "#/deliveries")
    Select(browser.find_element(By.CSS_SELECTOR, "#filters select[name=status]")).select_by_value("failed/mapping")
    _redrawn(browser, browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click)
    assert "status=failed%2Fmapping" in browser.current_url
    rows = browser.find_elements(By.CSS_SELECTOR, "#delivery-rows tr")
    assert delivery_id in [row.get_attribute("data-id") for row in rows]
    assert all("failed/mapping" in row.text for row in rows)

    # The dry run with the mapping as it is: they would still fail.
    browser.find_element(By.ID, "replay-check").click()
    _until(lambda: browser.find_elements(By.ID, "with-mappings-now"))
    assert "0 translate" in _text(browser, "#with-mappings-now")

    relay.read_also("mail")  # the fix: the form calls the field `mail`
    browser.find_element(By.ID, "replay-check").click()
    _until(lambda: " 0 still fail" in _text(browser, "#with-mappings-now"))
    browser.find_element(By.ID, "replay-go").click()
    browser.switch_to.alert.accept()
    _until(lambda: browser.find_elements(By.ID, "replayed"))
    assert _text(browser, "#replayed").startswith("Replayed ")

    _until(lambda: relay.status_of(delivery_id) == "delivered")
    sent = [r for r in relay.sandbox.sandbox.requests if r["outcome"] == "ok"]
    assert any("ivan@example.com" in str(r["body"]) for r in sent)

    # Its page shows what went out and the upstream's answer.
    _shown(browser, f"#/d/{delivery_id}")
    assert "delivered" in _text(browser, "#detail-status")
    assert "ivan@example.com" in _text(browser, "details.call pre")
    attempts = browser.find_elements(By.CSS_SELECTOR, "table.attempts tbody tr")
    assert len(attempts) == 1 and "delivered" in attempts[0].text
    assert browser.find_elements(By.ID, "replay-one") == []  # a delivered one does not replay


def test_a_deliverys_page_translates_it_with_the_mapping_files_as_they_are_now(browser, relay):
    from selenium.webdriver.common.by import By

    delivery_id = relay.post(courriel="marie@example.com", formid="preview")  # a name no version reads yet
    _until(lambda: relay.status_of(delivery_id) == "failed")
    _signed_in(browser, relay.page)
    _shown(browser, f"#/d/{delivery_id}")
    browser.find_element(By.ID, "preview-now").click()
    _until(lambda: "still fails" in _text(browser, "#preview-outcome"))
    assert "no usable email" in _text(browser, "#preview-outcome")

    relay.read_also("courriel")
    browser.find_element(By.ID, "preview-now").click()
    _until(lambda: "translates to these calls" in _text(browser, "#preview-outcome"))
    assert "marie@example.com" in _text(browser, "#preview details.call pre")
    assert relay.status_of(delivery_id) == "failed"  # a preview changes nothing


def test_one_delivery_replays_from_its_own_page(browser, relay):
    from selenium.webdriver.common.by import By

    delivery_id = relay.post(e_mail="olga@example.com", formid="one")  # a name no version reads
    _until(lambda: relay.status_of(delivery_id) == "failed")
    relay.read_also("e_mail")
    _signed_in(browser, relay.page)
    _shown(browser, f"#/d/{delivery_id}")
    assert "failed/mapping" in _text(browser, "#detail-status")
    browser.find_element(By.ID, "replay-one").click()
    _until(lambda: browser.find_elements(By.ID, "replayed"))
    _until(lambda: relay.status_of(delivery_id) == "delivered")


def test_the_sources_page_says_which_source_takes_webhooks(browser, relay):
    from selenium.webdriver.common.by import By

    _signed_in(browser, relay.page)
    _shown(browser, "#/sources")
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-source=leads]")
    assert f"{relay.url}/hooks/leads" in row.text
    assert "ready" in row.text
    assert LEADS_TOKEN not in browser.page_source


def test_older_deliveries_come_a_page_at_a_time(browser, relay):
    from selenium.webdriver.common.by import By

    for index in range(55):
        relay.post(mail=f"page{index}@example.com", formid="paged")
    _signed_in(browser, relay.page)
    _shown(browser, "#/deliveries?source=leads")
    first = [row.get_attribute("data-id") for row in browser.find_elements(By.CSS_SELECTOR, "#delivery-rows tr")]
    assert len(first) == 50
    browser.find_element(By.ID, "older").click()
    _until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#delivery-rows tr")) > 50)
    every = [row.get_attribute("data-id") for row in browser.find_elements(By.CSS_SELECTOR, "#delivery-rows tr")]
    listed = relay.api("deliveries?source=leads&limit=500")["deliveries"]
    assert every == [delivery["id"] for delivery in listed]  # newest first, each once, none left out


def test_a_person_is_forgotten_from_the_page_after_a_dry_run(browser, relay):
    from selenium.webdriver.common.by import By

    ids = {relay.post(mail="Forget.Me@example.com", formid=f"erase{n}") for n in range(2)}
    ids.add(relay.post(courriel="forget.me@example.com", formid="erase-other-field"))
    kept = relay.post(mail="someone.else@example.com", formid="erase-not-me")
    _signed_in(browser, relay.page)
    _shown(browser, "#/deliveries?contact=forget.me%40example.com")
    listed = {row.get_attribute("data-id") for row in browser.find_elements(By.CSS_SELECTOR, "#delivery-rows tr")}
    assert listed == ids
    browser.find_element(By.ID, "forget-check").click()
    _until(lambda: _text(browser, "#would-forget") == "Would forget 3 deliveries.")
    assert all(relay.api(f"deliveries/{delivery_id}") for delivery_id in ids)  # a dry run deletes nothing

    browser.find_element(By.ID, "forget-go").click()
    browser.switch_to.alert.accept()
    _until(lambda: _text(browser, "#forgotten").startswith("Forgot "))
    assert _text(browser, "#forgotten") == "Forgot 3 deliveries."
    for delivery_id in ids:
        gone = httpx.get(
            f"{relay.url}/admin/api/deliveries/{delivery_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert gone.status_code == 404
    assert relay.api(f"deliveries/{kept}")["id"] == kept


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    """The app behind a real HTTP server on loopback, in a thread; its base URL."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_the_overview_says_when_relay_is_not_ready_and_when_no_upstream_is_set(tmp_path, browser):
    """What /readyz says, on the overview: a mapping file that does not load (its webhooks answered 503) and
    deliveries held for want of an upstream."""

    from relay.web import create_app

    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "leads.yaml").write_text(LEADS_MAPPING.replace("EMAIL_PATH", "email"))
    (mappings / "orders.yaml").write_text("version: 1\nsource: orders\nrules: [\n")
    app = create_app(make_settings(tmp_path, RELAY_MAPPINGS_DIR=str(mappings), RELAY_UPSTREAM_URL=None))
    try:
        with _serving(app) as base:
            _signed_in(browser, f"{base}/admin/")
            not_ready = _text(browser, "#not-ready")
            assert not_ready.startswith("Not ready (/readyz answers 503):")
            assert "mappings: orders:" in not_ready
            assert "RELAY_UPSTREAM_URL" in _text(browser, "#no-upstream")
    finally:
        app.extensions["relay"]["store"].close()


def test_a_payload_is_tried_from_the_sources_page(browser, relay):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _signed_in(browser, relay.page)
    _shown(browser, "#/sources")
    browser.find_element(By.CSS_SELECTOR, "tr[data-source=leads] a.try").click()
    _until(lambda: browser.find_elements(By.ID, "try-form"))
    form = browser.find_element(By.ID, "try-form")
    assert Select(form.find_element(By.NAME, "source")).first_selected_option.text == "leads"
    Select(form.find_element(By.NAME, "content_type")).select_by_value(FORM)
    form.find_element(By.NAME, "body").send_keys("email=Tried%40Example.com&formid=tried")
    browser.find_element(By.ID, "try-go").click()
    _until(lambda: "translates to these calls" in _text(browser, "#preview-outcome"))
    assert "tried@example.com" in _text(browser, "#try-result details.call pre")
    assert relay.api("deliveries?contact=tried%40example.com")["deliveries"] == []  # nothing stored


def test_the_time_filters_take_the_browsers_local_time_and_ask_in_utc(browser, relay):
    """Since and until are the browser's local time in the form and UTC in the hash and the API's query."""
    from selenium.webdriver.common.by import By

    newest = relay.post(mail="timed@example.com", formid="timed")
    received = relay.api(f"deliveries/{newest}")["received_at"]
    _signed_in(browser, relay.page)
    _shown(browser, "#/deliveries")
    # The field's value as the browser's own picker would set it: the local time of that arrival, less a second.
    browser.execute_script(
        """const at = new Date(new Date(arguments[0]).getTime() - 1000);
        const pad = (n) => String(n).padStart(2, "0");
        document.querySelector("#filters input[name=since]").value =
          `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())}T` +
          `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`;""",
        received,
    )
    _redrawn(browser, browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click)
    assert "since=" in browser.current_url
    rows = [row.get_attribute("data-id") for row in browser.find_elements(By.CSS_SELECTOR, "#delivery-rows tr")]
    assert newest in rows
    assert browser.execute_script("return new Date().getTimezoneOffset()") == -300  # the test means something
    since = browser.current_url.split("since=")[1].split("&")[0]
    assert since.endswith("Z")  # UTC, as the API takes it
    assert rows == [d["id"] for d in relay.api(f"deliveries?since={since}")["deliveries"]]

    browser.execute_script('document.querySelector("#filters input[name=since]").value = "2099-01-01T00:00:00"')
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    _until(lambda: browser.find_elements(By.ID, "no-deliveries"))
