"""python -m relay preview and sources, as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from .conftest import FIXTURES, ROOT, SECRETS, relay_command

ENV = {"PATH": "/usr/bin:/bin", "RELAY_UPSTREAM_TOKEN": "secret-upstream-token-zz"}


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return relay_command(*args, env=ENV, stdin=stdin.decode() if stdin else None)


def test_preview_shopify_order_with_browser_ip(tmp_path):
    """A real Shopify order with browser_ip previews with e-mail, E.164 phones, names, _ip and the tag."""
    order = json.loads((FIXTURES / "shopify-orders-create.json").read_text())
    order["browser_ip"] = "81.2.69.142"
    order["email"] = "Jon@Example.COM"
    order["phone"] = "+1 613-555-0147"
    path = tmp_path / "order.json"
    path.write_text(json.dumps(order))
    result = run("preview", "--source", "shopify", "--header", "X-Shopify-Topic: orders/create", str(path))
    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout)
    body = calls[0]["body"]
    assert calls[0]["method"].startswith("profiles/")
    assert body["token"] == "***" and "secret-upstream-token-zz" not in result.stdout
    assert body["email"] == "jon@example.com" and body["data"]["email"] == "jon@example.com"
    assert body["data"]["phones"] == ["+16135550147"]
    assert body["data"]["_fname"] == "John" and body["data"]["_lname"] == "Smith"
    assert body["data"]["_ip"] == "81.2.69.142" and body["detect_geo"] is True
    assert "shopify" in body["data"]["tags"]["value"]


def test_preview_tilda_russian_phone_from_stdin():
    """A Tilda form with 8 (912) 345-67-89 comes out as +79123456789."""
    body = b"Name=Ivan&Email=ivan%40example.com&Phone=8+(912)+345-67-89"
    result = run("preview", "--source", "tilda", "--content-type", "application/x-www-form-urlencoded", "-", stdin=body)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["body"]["data"]["phones"] == ["+79123456789"]


def test_preview_ignored_and_rejected(tmp_path):
    """Ignored events print [] with the reason; a payload the mapping rejects exits 1."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"id": "evt", "type": "customer.created"}))
    ignored = run("preview", "--source", "stripe", str(path))
    assert ignored.returncode == 0 and json.loads(ignored.stdout) == [] and "ignored" in ignored.stderr
    path.write_text(json.dumps({"Name": "No Contact"}))
    rejected = run("preview", "--source", "tilda", str(path))
    assert rejected.returncode == 1 and "mapping error" in rejected.stderr


def test_preview_takes_the_event_a_hook_url_names():
    """`--query topic=...` is the hook URL's parameter (InSales names its topic nowhere else): a new paid order
    is counted, a deleted one ignored; a header of relay's own name, which no sender may set, names nothing."""
    order = (ROOT / "mappings" / "examples" / "insales" / "orders-create-paid.json").as_posix()
    created = run("preview", "--source", "insales", "--query", "topic=orders/create", order)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)[0]["body"]["data"]["orders_count"] == {"action": "incr", "value": 1}
    deleted = run("preview", "--source", "insales", "--query", "topic=orders/destroy", order)
    assert (deleted.returncode, json.loads(deleted.stdout)) == (0, [])
    assert "a deleted order changes nobody's profile" in deleted.stderr
    forged = run("preview", "--source", "insales", "--header", "X-Relay-Event: orders/create", order)
    assert forged.returncode == 0, forged.stderr
    assert "order_created" not in json.loads(forged.stdout)[0]["body"]["data"]["tags"]["value"]
    wrong = run("preview", "--source", "insales", "--query", "topic", order)
    assert wrong.returncode == 1 and "--query 'topic' must be 'name=value'" in wrong.stderr


def test_preview_xml_format(tmp_path):
    """--format xml prints the XML body."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"Email": "a@example.com"}))
    result = run("preview", "--source", "tilda", "--format", "xml", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["body"].startswith(
        '<?xml version="1.0" encoding="UTF-8"?><xml><token>***</token>'
    )


def test_sources_lists_urls_auth_and_readiness():
    """sources names each hook URL, what the source is (its file's kind and description), how it
    authenticates and what is missing."""
    result = run("sources")
    assert result.returncode == 0
    assert "\nshopify\n  about:    shop: Shopify orders" in result.stdout
    assert "/hooks/shopify" in result.stdout and "X-Shopify-Hmac-Sha256" in result.stdout
    assert "NOT READY: set TILDA_WEBHOOK_TOKEN" in result.stdout
    assert "\nhubspot\n" in result.stdout
    assert "  note:     signs the URL it calls: set RELAY_PUBLIC_URL" in result.stdout
    public = relay_command("sources", env={**ENV, "RELAY_PUBLIC_URL": "https://hooks.example.com/"})
    assert "  url:      https://hooks.example.com/hooks/hubspot\n" in public.stdout and "  note:" not in public.stdout
    assert "browsers:" not in result.stdout  # no built-in source is posted from a browser
    paid = "order_paid: orders/paid -> profiles/import (by email, else phone) + market/orders/import"
    once = ", once per 'order {id} paid'"
    assert f"{paid} (off while RELAY_MARKET_ENDPOINT is unset){once}\n" in result.stdout
    market = relay_command("sources", env={**ENV, "RELAY_MARKET_ENDPOINT": "web-shop"})
    assert f"{paid} (endpoint web-shop){once}\n" in market.stdout
    # Ecwid's orders name no currency: while its setting is unset, every order is held back, which it says.
    ecwid = "order_paid: order.created, order.updated -> profiles/import + market/orders/import (endpoint web-shop"
    assert f"{ecwid}; held back while ECWID_CURRENCY is unset)" in market.stdout
    checkout = "\n            checkout: checkouts/create, checkouts/update -> profiles/import (by email, else phone)"
    assert f"{checkout} (the field RELAY_RECOVERY_URL_FIELD names: left out while unset)\n" in result.stdout
    named = relay_command("sources", env={**ENV, "RELAY_RECOVERY_URL_FIELD": "cart_url"})
    assert f"{checkout}\n" in named.stdout
    waits = "  waits:    checkouts/create, checkouts/update: taken by the worker 600 s after it arrives"
    assert f"{waits} (SHOPIFY_ABANDONED_AFTER_SECONDS), only the last of each token, the newest by updated_at\n" in (
        result.stdout
    )


def test_sources_names_the_pages_a_source_takes_posts_from(tmp_path):
    """An operator sees which web pages may post to a hook from the visitor's browser (`cors`)."""
    (tmp_path / "landing.yaml").write_text(
        "version: 1\nsource: landing\nauth: {scheme: token, secret: '${LANDING_TOKEN}', header: X-Key}\n"
        "cors: {origins: [https://www.example.com, https://promo.example.com]}\n"
        "rules:\n  - name: lead\n    match:\n      email: {path: email}\n"
    )
    result = relay_command("sources", env={**ENV, "RELAY_MAPPINGS_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "  auth:     token in ?token= or X-Relay-Token or X-Key: <token> from LANDING_TOKEN\n" in result.stdout
    assert "  browsers: pages that may post here: https://www.example.com, https://promo.example.com\n" in result.stdout


def test_the_admin_api_and_sources_json_say_what_each_source_needs_never_a_secret(tmp_path):
    """`GET /admin/api/sources` is `relay sources --json` as the web server loaded the files: readiness and the
    settings still missing by name, each rule's events and what it does; a file that does not load is listed
    with its problems. No setting's value is in either."""
    from relay.web import create_app

    from .conftest import SECRETS, make_settings

    folder = tmp_path / "mappings"
    folder.mkdir()
    for name in ("tilda", "shopify", "bigcommerce"):
        (folder / f"{name}.yaml").write_text((ROOT / "mappings" / f"{name}.yaml").read_text())
    (folder / "broken.yaml").write_text("version: 1\nsource: broken\n")
    env = {k: v for k, v in SECRETS.items() if k not in ("SHOPIFY_WEBHOOK_SECRET", "BIGCOMMERCE_API_TOKEN")}
    settings = make_settings(
        tmp_path, RELAY_MAPPINGS_DIR=str(folder), SHOPIFY_WEBHOOK_SECRET=None, BIGCOMMERCE_API_TOKEN=None
    )
    client = create_app(settings).test_client()
    assert client.get("/admin/api/sources").status_code == 401
    answer = client.get("/admin/api/sources", headers={"Authorization": f"Bearer {SECRETS['RELAY_ADMIN_TOKEN']}"})
    assert answer.status_code == 200
    body = answer.get_json()
    by_name = {source["name"]: source for source in body["sources"]}
    assert sorted(by_name) == ["bigcommerce", "shopify", "tilda"]
    assert (by_name["tilda"]["ready"], by_name["tilda"]["missing"], by_name["tilda"]["url"]) == (
        True,
        [],
        "/hooks/tilda",
    )
    assert by_name["shopify"]["status"] == "NOT READY: set SHOPIFY_WEBHOOK_SECRET"
    assert by_name["shopify"]["auth"]["settings"] == ["SHOPIFY_WEBHOOK_SECRET"]
    assert by_name["bigcommerce"]["missing"] == ["BIGCOMMERCE_API_TOKEN", "BIGCOMMERCE_STORE_HASH"]  # its fetch
    assert {"name": "order_created", "events": ["orders/create"], "does": "profiles/import (by email, else phone)"} in (
        by_name["shopify"]["rules"]
    )
    assert list(body["broken"]) == ["broken"] and "broken.yaml" in body["broken"]["broken"][0]
    printed = relay_command("sources", "--json", env={**ENV, **env, "RELAY_MAPPINGS_DIR": str(folder)})
    assert printed.returncode == 1 and "broken.yaml" in printed.stderr  # the command line refuses a broken file
    (folder / "broken.yaml").unlink()
    printed = relay_command("sources", "--json", env={**ENV, **env, "RELAY_MAPPINGS_DIR": str(folder)})
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["sources"] == body["sources"]
    for value in SECRETS.values():
        assert value not in answer.get_data(as_text=True) and value not in printed.stdout


def test_output_into_a_pipe_closed_early_stops_quietly():
    """`relay sources | head`: once the reader has gone, relay stops without a word on stderr and with the
    status of a Unix tool killed by SIGPIPE, instead of `relay: [Errno 32] Broken pipe` (or Python's
    'Exception ignored ... BrokenPipeError' from the last flush at exit)."""
    reader = subprocess.Popen(
        [sys.executable, "-m", "relay", "sources"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # before relay has printed a line: its imports alone take longer
    with reader.stderr:
        stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 141, stderr
    assert stderr == ""


def test_commands_and_the_delivery_worker_start_without_the_web_side(tmp_path):
    """`relay deliveries`, `overview` and the worker import neither Flask (with Jinja) nor limits (with
    asyncio): every operator's command and every worker start would pay for them (about 8% of a command's
    start), and the worker would keep them in its memory."""
    script = (
        "import sys\n"
        "from relay.settings import Settings\n"
        "Settings.from_env()\n"
        "import relay.admin_cli, relay.worker\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'flask', 'jinja2', 'limits'}))\n"
    )
    env = {**ENV, "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_deliveries_and_replay_commands(tmp_path):
    """`deliveries` lists and shows, `replay` requeues; a wrong filter is refused by name, never a traceback."""
    from relay.web import create_app

    from .conftest import SECRETS, make_settings

    app = create_app(make_settings(tmp_path))
    client = app.test_client()
    ids = [
        client.post("/hooks/tilda?token=" + SECRETS["TILDA_WEBHOOK_TOKEN"], data={"Email": f"c{n}@example.com"}).json[
            "id"
        ]
        for n in range(2)
    ]
    app.extensions["relay"]["store"].close()
    env = {**ENV, "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}

    def relay(*args: str) -> subprocess.CompletedProcess[str]:
        return relay_command(*args, env=env)

    listed = relay("deliveries", "--status", "held", "--since", "2020-01-01T00:00:00Z")
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == sorted(ids)
    as_lines = relay("deliveries", "--status", "held", "--json").stdout.splitlines()
    assert sorted(json.loads(line)["id"] for line in as_lines) == sorted(ids)
    assert {json.loads(line)["status"] for line in as_lines} == {"held"}
    shown = relay("deliveries", ids[0])
    assert json.loads(shown.stdout)["request"]["body"] == "Email=c0@example.com"  # as the test client sent it
    first = relay("deliveries", "--source", "tilda", "--limit", "1")
    assert first.stdout.split()[0] == max(ids) and first.stdout.count("\n") == 1
    assert f"--before {max(ids)}" in first.stderr  # the next page, newest first
    second = relay("deliveries", "--source", "tilda", "--limit", "1", "--before", max(ids))
    assert second.stdout.split()[0] == min(ids) and second.stdout.count("\n") == 1
    last = relay("deliveries", "--source", "tilda", "--limit", "1", "--before", min(ids))
    assert (last.returncode, last.stdout, last.stderr) == (0, "", "")
    overview = relay("overview")
    assert overview.returncode == 0, overview.stderr
    lines = overview.stdout.splitlines()
    assert lines[0] == "deliveries: 2   queued 0   delivering 0   delivered 0   retrying 0   held 2   failed 0"
    assert lines[1] == "oldest due: none waiting"  # held ones wait for an upstream, not for a worker
    assert re.fullmatch(r"store: sqlite, \d+\.\d KB in its files, \d+\.\d GB free on their disk", lines[2]), lines[2]
    assert lines[3] == "housekeeping done: not yet (the delivery worker does it)"  # no worker has run
    assert lines[4].split()[-2:] == ["last", "received"]
    assert lines[5].split()[:7] == ["tilda", "0", "0", "0", "0", "2", "0"]
    assert re.fullmatch(r"\d+ s ago", " ".join(lines[5].split()[7:])), lines[5]
    as_json = json.loads(relay("overview", "--source", "shopify", "--json").stdout)
    assert as_json["total"] == 0 and as_json["by_source"] == {}
    # The database file and, while the command had it open, its WAL and shared memory (gone once it closed).
    assert as_json["store"]["kind"] == "sqlite"
    assert as_json["store"]["file_bytes"] >= (tmp_path / "relay.db").stat().st_size > 0
    assert as_json["store"]["disk_free_bytes"] > 0
    assert as_json["housekeeping_done_at"] == {}
    # A worker's keying went through a minute and a half ago; its purge has not yet.
    from relay.delivery_views import parse_time
    from relay.store import Store

    store = Store(env["RELAY_DATABASE_URL"])
    ended = time.time() - 90
    assert store.take_turn("keying", "a worker", hold=900, now=ended - 5)
    store.end_turn("keying", "a worker", every=60, done=True, now=ended)
    store.close()
    done = relay("overview").stdout.splitlines()[3]
    assert re.fullmatch(r"housekeeping done: keying 1 min \d+ s ago", done), done  # however slow the command
    as_json = json.loads(relay("overview", "--json").stdout)
    assert list(as_json["housekeeping_done_at"]) == ["keying"]
    assert abs(parse_time(as_json["housekeeping_done_at"]["keying"]) - ended) < 0.001  # to the millisecond
    counted = relay("replay", "--status", "held", "--dry-run")
    assert (counted.returncode, counted.stdout) == (
        0,
        "would replay 2 deliveries: held 2\n"
        "with the mapping files as they are now: 2 translate, 0 ignored by their mapping, 0 still fail\n",
    ), counted.stderr
    one = relay("replay", ids[0], "--dry-run")
    assert (one.returncode, one.stdout) == (
        0,
        f"would replay {ids[0]}: held\nwith the mapping files as they are now it translates\n",
    ), one.stderr
    none = relay("replay", "--source", "shopify", "--dry-run")
    assert (none.returncode, none.stdout) == (0, "would replay 0 deliveries\n"), none.stderr
    replayed = relay("replay", "--status", "held")  # the dry runs changed nothing: both are still there
    assert (replayed.returncode, replayed.stdout) == (0, "replayed 2 deliveries (held)\n")
    for args, status, message in [
        (["deliveries", "--status", "faild"], 2, "argument --status: 'faild' is not one of queued, delivering"),
        (["deliveries", "--since", "yesterday"], 2, "argument --since: 'yesterday' is neither an ISO 8601 time"),
        (["deliveries", "--limit", "0"], 2, "argument --limit: '0' is not a whole number of at least 1"),
        (["replay", "--until", "inf"], 2, "argument --until: 'inf' is neither"),
        (["replay", "--status", "delivered"], 1, "relay: only failed and held deliveries replay"),
        (["deliveries", "--source", "Tilda"], 2, "argument --source: 'Tilda' is not a source name"),
        (["overview", "--source", "tilda form"], 2, "argument --source: 'tilda form' is not a source name"),
        (["deliveries", "--before", "last"], 2, "argument --before: 'last' is not a delivery id (32 hex digits)"),
        (["replay", "01a2-not-an-id"], 2, "argument id: '01a2-not-an-id' is not a delivery id"),
    ]:
        done = relay(*args)
        assert done.returncode == status, (args, done.stderr)
        assert message in done.stderr
        assert "Traceback" not in done.stderr


def test_overview_says_what_went_wrong_most_common_first(tmp_path):
    """`relay overview` ends with the errors of failed and retrying deliveries, grouped and counted, each on
    one line however long or many-lined the upstream's answer was, and the id of the newest to look at."""
    from relay.inbound import InboundRequest
    from relay.store import Store

    url = f"sqlite:///{tmp_path / 'relay.db'}"
    store = Store(url)
    start = time.time() - 10
    ids = [
        store.accept(
            InboundRequest("tilda" if n < 3 else "shopify", b"n=%d" % n),
            dedup_key=str(n),
            status="queued",
            dedup_window=60,
            now=start + n,  # ids in the order of n
        ).id
        for n in range(5)
    ]
    tokens = {delivery.id: token for delivery, token in store.claim(owner="t", limit=10, lease_seconds=30)}
    answer = "HTTP 400, error 3: " + "bad field\n" * 30  # what an upstream may answer
    for n, id_ in enumerate(ids):
        reason, detail = ("mapping", "the payload gives no usable email") if n < 3 else ("rejected", answer)
        store.finish(id_, tokens[id_], status="failed", reason=reason, detail=detail)
    store.close()
    listed = relay_command("deliveries", "--status", "failed", env={**ENV, "RELAY_DATABASE_URL": url})
    assert len(listed.stdout.splitlines()) == 5  # one delivery a line, for scripts, whatever the detail holds
    assert listed.stdout.splitlines()[0].endswith("attempts=0  " + ("HTTP 400, error 3: " + "bad field " * 30).strip())
    shown = relay_command("overview", env={**ENV, "RELAY_DATABASE_URL": url})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    first = lines.index("most common problems of failed and retrying deliveries (`relay deliveries <id>` shows one):")
    assert lines[first + 1].split() == ["count", "source", "status", "newest", "id"]
    assert lines[first + 2].split() == ["3", "tilda", "failed/mapping", ids[2]]
    assert lines[first + 3] == " " * 10 + "the payload gives no usable email"
    assert lines[first + 4].split() == ["2", "shopify", "failed/rejected", ids[4]]
    assert lines[first + 5] == " " * 10 + ("HTTP 400, error 3: " + "bad field " * 30)[:157] + "..."
    assert len(lines) == first + 6
    # The status column, as printed, is a filter: the problem fixed, only its deliveries are replayed.
    env = {**ENV, "RELAY_DATABASE_URL": url}
    rejected = relay_command("deliveries", "--status", "failed/rejected", env=env)
    assert [line.split()[0] for line in rejected.stdout.splitlines()] == [ids[4], ids[3]]
    counted = relay_command("replay", "--status", "failed/mapping", "--dry-run", env=env)
    assert counted.stdout.startswith("would replay 3 deliveries: failed/mapping 3\n"), counted.stderr
    replayed = relay_command("replay", "--status", "failed/rejected", env=env)
    assert (replayed.returncode, replayed.stdout) == (0, "replayed 2 deliveries (held)\n"), replayed.stderr


def test_unreadable_file_and_unreachable_store_are_one_line(tmp_path):
    """A file that is not there, a store that does not answer: one line naming it (password masked), exit 1."""
    missing = run("preview", "--source", "tilda", str(tmp_path / "missing.json"))
    assert (missing.returncode, missing.stderr) == (1, f"relay: No such file or directory: {tmp_path}/missing.json\n")
    env = {**ENV, "RELAY_DATABASE_URL": "postgresql://relay:hunter2@127.0.0.1:1/relay"}
    for command in (["deliveries"], ["replay", "--status", "failed"], ["run", "--port", "9"]):
        done = subprocess.run(
            [sys.executable, "-m", "relay", *command], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.startswith("relay: the store at postgresql://relay:***@127.0.0.1:1/relay failed: ")
        assert "Connection refused" in done.stderr
        assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_preview_prints_the_calls_that_still_go_when_the_order_is_refused(tmp_path):
    """An order the contract refuses does not hold back the buyer's profile: preview prints the profile
    calls, says why the order is left out, and exits 1 as for any mapping error."""
    order = (ROOT / "mappings" / "examples" / "shopify" / "orders-paid-live.json").read_text()
    path = tmp_path / "order.json"
    path.write_text(order.replace('"currency":"CAD"', '"currency":"dollars"', 1))
    result = relay_command(
        "preview", "--source", "shopify", "--header", "X-Shopify-Topic: orders/paid", str(path),
        env={**ENV, "RELAY_MARKET_ENDPOINT": "web-shop"},
    )  # fmt: skip
    assert result.returncode == 1
    assert [call["method"] for call in json.loads(result.stdout)] == ["profiles/import", "profiles/update"]
    assert "the order was not sent" in result.stderr and "data.0.currency: an ISO 4217 code" in result.stderr


def _mappings_copy(tmp_path, *sources: str):  # type: ignore[no-untyped-def]
    """These built-in mapping files, without their examples, in a folder of the test's own."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    for source in sources:
        (folder / f"{source}.yaml").write_bytes((ROOT / "mappings" / f"{source}.yaml").read_bytes())
    return folder


def _example(path):  # type: ignore[no-untyped-def]
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_preview_saves_the_request_as_an_example_that_check_then_runs(tmp_path):
    """--save-example writes the request as relay keeps it (the hook URL's event as `query`, a body that is not
    UTF-8 in a file beside it, the API's answers copied, the settings the mapping reads with secrets not
    shown) and the calls relay makes now: `check` finds the example holds."""
    folder = _mappings_copy(tmp_path, "insales", "tilda", "bigcommerce")
    env = {**ENV, "RELAY_MAPPINGS_DIR": str(folder)}
    shop_env = {
        **env,
        "BIGCOMMERCE_STORE_HASH": "abc123",
        "BIGCOMMERCE_API_TOKEN": "bc-api-token-not-in-files",
        "RELAY_PHONE_REGION": "US",
    }
    examples = ROOT / "mappings" / "examples"
    insales = [
        "preview",
        "--source",
        "insales",
        "--query",
        "topic=orders/create",
        str(examples / "insales" / "orders-create-paid.json"),
        "--save-example",
        "paid-order",
    ]
    saved = relay_command(*insales, env=env)
    assert saved.returncode == 0, saved.stderr
    assert "saved" in saved.stderr and "paid-order.yaml (expecting 1 call(s))" in saved.stderr
    form = "Name=Иван&Email=ivan%40example.com&tranid=1%3A2&formid=form1".encode("cp1251")  # not UTF-8
    cp1251 = tmp_path / "form.txt"
    cp1251.write_bytes(form)
    tilda = relay_command(
        "preview",
        "--source",
        "tilda",
        "--content-type",
        "application/x-www-form-urlencoded; charset=windows-1251",
        str(cp1251),
        "--save-example",
        "windows-1251.yaml",
        "--description",
        "a form in windows-1251",
        env=env,
    )
    assert tilda.returncode == 0, tilda.stderr
    bigcommerce = relay_command(
        "preview",
        "--source",
        "bigcommerce",
        "--header",
        "Content-Type: application/json",
        str(examples / "bigcommerce" / "customer-created.json"),
        "--fetched",
        f"customer={examples / 'bigcommerce' / 'api-customer-32.json'}",
        "--save-example",
        "customer",
        env=shop_env,
    )
    assert bigcommerce.returncode == 0, bigcommerce.stderr

    import yaml

    paid = yaml.safe_load((folder / "examples" / "insales" / "paid-order.yaml").read_text(encoding="utf-8"))
    assert paid["request"]["query"] == {"topic": "orders/create"} and "X-Relay-Event" not in paid["request"].get(
        "headers", {}
    )
    # What relay does with these requests is what their hand-written examples say.
    assert paid["expect"] == _example(examples / "insales" / "orders-create-paid.yaml")["expect"]
    windows = yaml.safe_load((folder / "examples" / "tilda" / "windows-1251.yaml").read_text(encoding="utf-8"))
    assert windows["description"] == "a form in windows-1251"
    assert (folder / "examples" / "tilda" / windows["request"]["body_file"]).read_bytes() == form
    assert windows["expect"]["calls"][0]["body"]["data"]["_fname"] == "Иван"
    customer_text = (folder / "examples" / "bigcommerce" / "customer.yaml").read_text(encoding="utf-8")
    assert "bc-api-token-not-in-files" not in customer_text
    customer = yaml.safe_load(customer_text)
    assert customer["env"]["BIGCOMMERCE_API_TOKEN"] == "not-shown" and customer["env"]["RELAY_PHONE_REGION"] == "US"
    assert customer["expect"] == _example(examples / "bigcommerce" / "customer-created.yaml")["expect"]
    assert (folder / "examples" / "bigcommerce" / customer["request"]["fetched"]["customer"]).is_file()

    checked = relay_command("check", env={"PATH": ENV["PATH"], "RELAY_MAPPINGS_DIR": str(folder)})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 examples" in checked.stdout
    again = relay_command(*insales, env=env)
    assert again.returncode == 1 and "paid-order.yaml exists; give another name, or remove it first" in again.stderr
    elsewhere = relay_command(*insales[:-1], "../paid", env=env)
    assert elsewhere.returncode == 1 and "must be a file name, without a folder" in elsewhere.stderr


def test_check_upstream_says_whether_the_upstream_answers_and_takes_the_token(sandbox):
    """`check --upstream` asks the upstream once (a profiles/get for an address no profile has), writes
    nothing, and says what it found: taken, the token refused (never shown), no answer, or no upstream set."""
    secret = SECRETS["RELAY_UPSTREAM_TOKEN"]
    base = {"PATH": "/usr/bin:/bin", "RELAY_UPSTREAM_URL": sandbox.api_url}
    taken = relay_command("check", "--upstream", env={**base, "RELAY_UPSTREAM_TOKEN": secret})
    assert taken.returncode == 0, taken.stderr
    assert f"upstream: {sandbox.api_url} (database 1) answers and takes the token (" in taken.stdout
    wrong = "wrong-token-0123456789"
    refused = relay_command("check", "--upstream", env={**base, "RELAY_UPSTREAM_TOKEN": wrong})
    assert refused.returncode == 1 and "refused RELAY_UPSTREAM_TOKEN, or its access to the database" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr
    away = {
        "PATH": "/usr/bin:/bin",
        "RELAY_UPSTREAM_URL": "http://127.0.0.1:9/api/v1.1",
        "RELAY_UPSTREAM_TOKEN": secret,
    }
    silent = relay_command("check", "--upstream", env=away)
    assert silent.returncode == 1 and "did not answer as the API does: network" in silent.stderr
    unset = relay_command("check", "--upstream", env={"PATH": "/usr/bin:/bin"})
    assert unset.returncode == 1 and "upstream: RELAY_UPSTREAM_URL is not set" in unset.stderr
    assert sandbox.sandbox.profiles == {} and sandbox.sandbox.applied == 0
