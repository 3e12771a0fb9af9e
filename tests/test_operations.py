"""Operating relay: metrics, request ids, log formats, gunicorn and the Docker command, worker signals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sentry_sdk

from relay.metrics import DECLARED
from relay.metrics_dir import sweep_left_over
from relay.testing import RelayProcess, free_port
from relay.web import create_app

from .conftest import ROOT, SECRETS, captured_log_lines, delivery_workers, live_processes, make_settings
from .test_secrets import CapturingTransport

FORM = "application/x-www-form-urlencoded"
TILDA = "/hooks/tilda?token=" + SECRETS["TILDA_WEBHOOK_TOKEN"]
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(\{(?P<labels>[^}]*)\})? ", re.MULTILINE)


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_declared_bounded_and_counting(client):
    """/metrics shows declared metrics only, with labels from small fixed sets, and counts what happened."""
    accepted = 'relay_webhooks_received_total{outcome="accepted",source="tilda"}'
    unparsable = 'relay_webhooks_received_total{outcome="unparsable",source="tilda"}'
    before = client.get("/metrics").get_data(as_text=True)
    client.post(TILDA, data=b"Email=m%40example.com", content_type=FORM)
    client.post(TILDA, data=b"{", content_type="application/json")
    client.post("/hooks/nope", data=b"{}", content_type="application/json")
    text = client.get("/metrics").get_data(as_text=True)
    assert _value(text, accepted) - _value(before, accepted) == 1
    assert _value(text, unparsable) - _value(before, unparsable) == 1
    assert 'relay_deliveries{status="held"} 1.0' in text
    assert "relay_queue_depth 0.0" in text and "relay_oldest_due_age_seconds" in text
    # From the store, so it outlives a restart: a source gone quiet still has a series to alert on.
    newest = _value(text, 'relay_last_received_timestamp_seconds{source="tilda"}')
    assert time.time() - 60 < newest <= time.time()
    assert 'relay_last_received_timestamp_seconds{source="tally"}' not in text  # nothing from tally yet
    from relay import errors
    from relay.mapping.loader import load_sources
    from relay.store import STATUSES

    from .conftest import MAPPINGS, TEST_ONLY_SOURCES

    codes = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.RelayError)}
    outcomes = {
        "accepted",
        "duplicate",
        "ping",
        "ignored",
        "rate_limited",
        "delivered",
        "transient",
        "rejected",
        "fetched",  # relay_fetches_total's outcomes beside transient and rejected
        "absent",
        "+Inf",
        "deliveries",  # relay_purged_total's kinds
        "dedup_keys",
        "once_keys",
        "latest_keys",
    }
    sources = load_sources(MAPPINGS)
    rules = {rule.name for source in sources.values() for rule in source.rules}  # relay_rules_passed_over_total
    allowed = set(sources) | set(TEST_ONLY_SOURCES) | {"unknown"} | codes | outcomes | set(STATUSES) | rules
    for match in SAMPLE.finditer(text):
        name = match.group("name")
        assert any(name.startswith(d.removesuffix("_total")) for d in DECLARED), name
        for label in filter(None, (match.group("labels") or "").split(",")):
            value = label.split("=", 1)[1].strip('"')
            assert value in allowed or re.fullmatch(r"[0-9.]+", value), label


def test_metrics_objects_only_in_the_metrics_module():
    """No module but relay/metrics.py creates Prometheus metrics."""
    offenders = [
        str(path)
        for path in (ROOT / "relay").rglob("*.py")
        if path.name != "metrics.py"
        and re.search(r"\b(Counter|Gauge|Histogram|Summary)\(", path.read_text())
        and "prometheus_client" in path.read_text()
    ]
    assert offenders == []


def test_request_id_read_returned_and_logged(tmp_path):
    """X-Request-ID is kept when sane, made up otherwise, returned, and in the log lines."""
    with captured_log_lines("text") as lines:
        app = create_app(make_settings(tmp_path, RELAY_LOG_LEVEL="info"))
        client = app.test_client()
        given = client.post(
            TILDA, data=b"Email=r%40example.com", content_type=FORM, headers={"X-Request-ID": "abc-123"}
        )
        made = client.post(TILDA, data=b"Email=s%40example.com", content_type=FORM, headers={"X-Request-ID": "<bad>"})
    assert given.headers["X-Request-ID"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    accepted = [line for line in lines if "event=accepted" in line]
    assert any("request_id=abc-123" in line and "source=tilda" in line and "delivery_id=" in line for line in accepted)


def test_a_text_log_line_stays_one_line_whatever_a_sender_puts_in_it(tmp_path):
    """In key=value logs a value was quoted only when it had a space: a request path with a carriage return
    in it (`/hooks/a%0Dlevel=error`, which anyone may send) printed a line of the sender's own over relay's
    in a terminal and split it in log collectors that take CR for a line break; `=` and quotes misled parsers."""
    with captured_log_lines("text") as lines:
        app = create_app(make_settings(tmp_path, RELAY_LOG_LEVEL="info"))
        answer = app.test_client().post("/hooks/a%0Dlevel=error%09x=%22y", data=b"Email=x")
    assert answer.status_code == 404
    [rejected] = [line for line in lines if "event=rejected" in line]
    assert "\r" not in rejected and "\t" not in rejected
    path = re.search(r' path=("(?:[^"\\]|\\.)*")', rejected)
    assert path is not None and json.loads(path.group(1)) == '/hooks/a\rlevel=error\tx="y'  # no "?" added


def test_worker_failures_reach_sentry_with_tags_one_a_minute_of_a_kind(tmp_path, monkeypatch):
    """A delivery that fails for good is reported with its source and delivery id as tags. Of many that
    fail alike (an upstream refusing every call, one bug met by every webhook of a source), one a minute
    is reported, the next saying how many were left out: a report each spent the Sentry quota."""
    import relay.sentry
    from relay.inbound import InboundRequest
    from relay.sentry import ReportThrottle, init_sentry
    from relay.store import Store
    from relay.worker import Worker

    clock = [1000.0]  # the test's own time: a slow machine must not make the minute pass early
    monkeypatch.setattr(relay.sentry, "_delivery_reports", ReportThrottle(clock=lambda: clock[0]))
    transport = CapturingTransport()
    settings = make_settings(tmp_path, RELAY_UPSTREAM_URL="http://127.0.0.1:9/api")
    init_sentry(settings, transport=transport)
    try:
        store = Store(settings.database_url)
        worker = Worker(settings, store=store)

        def fail(source: str, key: str) -> str:
            request = InboundRequest(source=source, body=b"Name=x", content_type=FORM)
            delivery_id = store.accept(request, dedup_key=key, status="queued", dedup_window=60).id
            [(delivery, token)] = store.claim(owner="t", limit=1, lease_seconds=30)
            assert worker.process(delivery, token) == "failed"  # no e-mail, no phone: failed/mapping
            return delivery_id

        first = fail("tilda", "w0")
        for n in range(1, 5):
            fail("tilda", f"w{n}")
        other = fail("jotform", "j0")
        clock[0] += 59.0
        fail("tilda", "w5")  # 59 s on: still within the minute, left out
        clock[0] += 1.0
        later = fail("tilda", "w6")
        sentry_sdk.flush()
        worker.stop()
        store.close()
    finally:
        sentry_sdk.init()
    reports = [(e["tags"]["source"], e["tags"]["delivery_id"], e["tags"]["reason"]) for e in transport.events]
    assert reports == [("tilda", first, "mapping"), ("jotform", other, "mapping"), ("tilda", later, "mapping")]
    assert [e["extra"]["like_ones_not_reported_since_the_last"] for e in transport.events] == [0, 0, 5]


def _dockerfile_cmd() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    line = next(line for line in text.splitlines() if line.startswith("CMD "))
    import json

    return json.loads(line[4:])


def _dockerfile_healthcheck() -> str:
    text = (ROOT / "Dockerfile").read_text()
    return text.split("HEALTHCHECK", 1)[1].split("\n    CMD ", 1)[1].split("\n", 1)[0]


def test_the_image_compiles_relay_so_no_process_compiles_it_again(tmp_path):
    """The image's user writes no bytecode: the Dockerfile compiles relay at build, so the web server's
    workers, the delivery worker and every command read it (each `python -v` "matches" line is a module read
    from its compiled file) instead of compiling relay's modules from source at each start."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    compile_line = next(line for line in dockerfile.splitlines() if "compileall" in line)
    assert compile_line.startswith("RUN ")
    copied = [
        line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ") and "requirements" not in line
    ]
    image = tmp_path / "app"
    image.mkdir()
    for name in copied:  # as the image's COPY lines lay it out
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, image / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, image / name)
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "HOME": str(tmp_path),
    }
    subprocess.run(["/bin/sh", "-c", compile_line[4:]], cwd=image, env=env, check=True, timeout=120)
    script = (
        "import json, sys\n"
        "import app, relay.cli, relay.admin_cli, relay.worker, relay.serve, relay.sandbox, relay.store_copy\n"
        "print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) "
        f"if (getattr(m, '__file__', None) or '').startswith({str(image)!r}))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-v", "-c", script], cwd=image, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = json.loads(done.stdout.splitlines()[-1])
    read_compiled = set(re.findall(r"^# \S+\.pyc matches (\S+\.py)$", done.stderr, re.MULTILINE))
    assert len(imported) > 40 and str(image / "app.py") in imported
    assert sorted(set(imported) - read_compiled) == []


def _healthy(env: dict[str, str]) -> bool:
    """The image's HEALTHCHECK command, run as Docker runs it (a shell, the image's environment)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["/bin/sh", "-c", _dockerfile_healthcheck()], env={**env, "PATH": path}, timeout=10)
    return done.returncode == 0


def test_the_image_command_serves_and_stops_gracefully(tmp_path):
    """The Dockerfile's CMD (gunicorn app:app) starts, answers, merges metrics of its workers, stops on SIGTERM."""
    command = _dockerfile_cmd()
    assert command == ["gunicorn", "app:app"]
    port = free_port()
    env = {
        **os.environ,
        "RELAY_BIND": f"127.0.0.1:{port}",
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "TILDA_WEBHOOK_TOKEN": SECRETS["TILDA_WEBHOOK_TOKEN"],
        "HUBSPOT_WEBHOOK_SECRET": SECRETS["HUBSPOT_WEBHOOK_SECRET"],
        "RELAY_PUBLIC_URL": "https://hooks.example.com/relay",  # served under a path by a proxy
        "RELAY_WEB_WORKERS": "2",
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),  # where gunicorn.conf.py makes the metrics folder, as in the image
    }
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / f"relay-metrics-{_dead_pid()}.12345-x1").mkdir()  # left by a master that was killed
    executable = str(Path(sys.executable).parent / command[0])
    output = tmp_path / "gunicorn.log"
    with output.open("wb") as log_file:
        process = subprocess.Popen([executable, *command[1:]], cwd=ROOT, env=env, stdout=log_file, stderr=log_file)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert _healthy(env)  # on RELAY_BIND's port, not a fixed 8000
        with httpx.Client(base_url=base, timeout=5) as client:
            for index in range(20):
                response = client.post(TILDA, content=f"Email=g{index}%40example.com", headers={"Content-Type": FORM})
                assert response.status_code == 202
            # HubSpot signs the URL it called: RELAY_PUBLIC_URL, then the path and query as gunicorn received them.
            target = "/hooks/hubspot?portal=27145807&b=%7E"
            hubspot_body = json.dumps({"properties": {"email": {"value": "hub@example.com"}}}).encode()
            ts = str(int(time.time() * 1000))
            signed = b"POST" + b"https://hooks.example.com/relay" + target.encode() + hubspot_body + ts.encode()
            digest = hmac.new(SECRETS["HUBSPOT_WEBHOOK_SECRET"].encode(), signed, hashlib.sha256).digest()
            hubspot_headers = {
                "Content-Type": "application/json",
                "X-HubSpot-Request-Timestamp": ts,
                "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
            }
            assert client.post(target, content=hubspot_body, headers=hubspot_headers).status_code == 202
            metrics = client.get("/metrics").text
            # Anyone may send a path with a line break: the access log keeps it on its one line.
            assert client.post("/hooks/a%0D%0Aforged%20line", content=b"x=1").status_code == 404
        assert 'relay_webhooks_received_total{outcome="accepted",source="tilda"} 20.0' in metrics
        process.send_signal(signal.SIGHUP)  # a reload: new workers, this file read again
        deadline = time.monotonic() + 20
        while output.read_text(errors="replace").count("Booting worker") < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert output.read_text(errors="replace").count("Booting worker") >= 4
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert not _healthy(env)
    # gunicorn's own lines (booting, stopping) share the logging module with relay's: none may fail.
    log = output.read_text(errors="replace")
    assert "Logging error" not in log
    assert '"POST /hooks/a%0D%0Aforged%20line" 404' in log and "\nforged" not in log
    # No control socket: its default path in $HOME is one per user, so web nodes on one host would take it
    # from each other, and the image's user cannot write its home.
    assert "control socket" not in log.lower() and not (tmp_path / "home" / ".gunicorn").exists()
    # The killed master's folder went at the start, this master's own when it stopped.
    assert list((tmp_path / "tmp").iterdir()) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _start_ticks(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def test_metrics_folders_of_killed_processes_are_swept(tmp_path):
    """Only a folder whose maker (pid and start time) no longer runs goes; live, foreign and unknown ones stay."""
    me = os.getpid()
    kept = [f"relay-metrics-{me}.{_start_ticks(me)}-live", "relay-metrics-oldstyle", f"other-{me}.1-x"]
    gone = [f"relay-metrics-{_dead_pid()}.777-dead", f"relay-metrics-{me}.1-pidreused"]
    for name in kept + gone:
        (tmp_path / name).mkdir()
    (tmp_path / gone[0] / "counter_1.db").write_bytes(b"x")
    removed = sweep_left_over(str(tmp_path))
    assert sorted(Path(path).name for path in removed) == sorted(gone)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(kept)


def test_gunicorn_settings_checked_without_side_effects(tmp_path):
    """gunicorn.conf.py reads relay's own settings, `.env` included: a wrong value stops the master with one
    line naming it, before any worker boots; reading the settings makes no folder."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {
        **os.environ,
        "RELAY_BIND": f"127.0.0.1:{free_port()}",
        "TMPDIR": str(temporary),
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",  # --check-config loads the app
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    not_a_database = tmp_path / "GeoLite2-City.mmdb"
    not_a_database.write_text("not a database")
    cases = [
        ("RELAY_WEB_WORKERS", "two", "must be a positive whole number"),
        ("RELAY_WEB_THREADS", "0", "must be a positive whole number"),
        ("RELAY_WEB_TIMEOUT", "-1", "must be a whole number, zero or more"),
        ("RELAY_ACCESS_LOG", "maybe", "must be 1 or 0"),
        ("RELAY_UPSTREAM_URL", "ftp://x", "must start with http:// or https://"),
        ("RELAY_WORKER_METRICS_PORT", "nine", "must be a port number, 1 to 65535"),
        # Each of these passed the check and then failed every worker's boot with a traceback (or, for a
        # rate of 0, answered every webhook 429).
        ("RELAY_HOOK_RATE_LIMIT", "2 per fortnight", "must be a rate such as '1000 per second'"),
        ("RELAY_HOOK_RATE_LIMIT", "0 per second", "must let at least one request through"),
        ("RELAY_RATE_LIMIT_STORAGE", "mongodb://db", "must be memory:// (each process counts alone) or redis://"),
        ("RELAY_DATABASE_URL", "mysql://relay:pw@db/relay", "relay stores on SQLite (sqlite:///...) or PostgreSQL"),
        ("RELAY_GEOIP_DB", str(not_a_database), "is not a MaxMind-format database"),
        ("RELAY_BIND", "localhost", "must be host:port (0.0.0.0:8000, [::]:8000), unix:/path or fd://N"),
    ]
    for variable, value, reason in cases:
        done = subprocess.run(
            [gunicorn, "app:app"], cwd=ROOT, env={**env, variable: value}, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1
        shown = value.replace(":pw@", ":***@")  # a database password is never printed
        assert f"relay: settings are wrong:\n  {variable}={shown!r}: {reason}" in done.stderr
        assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr
    # A .env in the working directory counts, as it does for every other setting.
    here = tmp_path / "here"
    here.mkdir()
    (here / ".env").write_text("RELAY_WEB_WORKERS=none\n")
    config = ["--config", str(ROOT / "gunicorn.conf.py"), "--chdir", str(ROOT)]
    from_dotenv = subprocess.run(
        [gunicorn, *config, "app:app"],
        cwd=here,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert from_dotenv.returncode == 1
    assert "RELAY_WEB_WORKERS='none': must be a positive whole number" in from_dotenv.stderr
    (here / ".env").unlink()
    checked = subprocess.run([gunicorn, "--check-config", "app:app"], cwd=ROOT, env=env, timeout=30)
    assert checked.returncode == 0
    assert list(temporary.iterdir()) == []  # the metrics folder is the running master's, made when it starts


_HOOK_AS_GUNICORN_CALLS_IT = """
import gc
from gunicorn.app.base import Application


class Config(Application):
    def load_config(self):
        self.load_config_from_file("gunicorn.conf.py")

    def load(self):
        return None


config = Config()
before = gc.get_freeze_count()
config.cfg.post_worker_init(None)
print(before, gc.get_freeze_count())
"""


def test_a_web_worker_freezes_what_the_loaded_app_holds(tmp_path):
    """A full collection walked every object the app holds (17 ms here, 50-59 on a slow machine) while the worker
    answered nothing; gunicorn.conf.py's post_worker_init, read the way gunicorn reads its hooks, freezes them."""
    env = {**os.environ, "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", _HOOK_AS_GUNICORN_CALLS_IT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    before, after = (int(count) for count in done.stdout.split())
    assert before == 0 and after > 1000


def test_run_says_listening_only_when_it_is(tmp_path):
    """When gunicorn cannot start, `relay run` exits 1 with gunicorn's reason and never claims to listen;
    a wrong web setting is refused before anything starts."""
    env = {**os.environ, "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}
    run = [sys.executable, "-m", "relay", "run", "--port"]
    wrong = subprocess.run(
        [*run, str(free_port())],
        cwd=ROOT,
        env={**env, "RELAY_WEB_WORKERS": "two"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2
    assert wrong.stderr == "relay: settings are wrong:\n  RELAY_WEB_WORKERS='two': must be a positive whole number\n"
    with socket.socket() as taken:  # bound, not listening: gunicorn cannot bind and nothing answers
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run([*run, str(port)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Connection in use" in done.stderr
    assert "listening" not in done.stderr and "Traceback" not in done.stderr


def _relay_run(port: int, *, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`relay run` in a process group of its own (stop it with os.killpg); what it says goes to
    `relay-run.log` in `cwd`, which pytest keeps after a failure."""
    with (cwd / "relay-run.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "run", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until_ready(base: str, seconds: float = 60) -> None:
    """Until `relay run` at `base` answers /readyz with 200 (it takes seconds to start on a loaded machine)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base}/readyz did not answer 200 within {seconds} s")


def _eventually(check: Callable[[], bool], seconds: float = 30) -> bool:
    """Whether `check` comes true within `seconds` (asked every 0.1 s): a loaded machine is slow to
    replace processes, and a test must wait for that rather than fail."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _web_workers(run_pid: int) -> set[int]:
    """The pids of the gunicorn workers of `relay run` process `run_pid`."""
    (master,) = [
        pid
        for pid, fields, argv in live_processes()
        if int(fields[1]) == run_pid and any(b"gunicorn" in part for part in argv)
    ]
    return {pid for pid, fields, _argv in live_processes() if int(fields[1]) == master}


def test_sighup_to_run_reloads_the_web_servers_mapping_files_once_they_all_load(tmp_path):
    """A source added while `relay run` serves: SIGHUP with a file that does not load changes nothing (the
    same web workers go on serving) and /metrics counts the file as broken; SIGHUP once it loads has
    gunicorn replace its workers, which then serve the new source, with no request refused meanwhile."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    shutil.copy(ROOT / "mappings" / "tilda.yaml", folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "TILDA_", "JOTFORM_", "PROMETHEUS_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        RELAY_MAPPINGS_DIR=str(folder),
        RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}",
        TILDA_WEBHOOK_TOKEN="t",
        JOTFORM_WEBHOOK_TOKEN="j",
        RELAY_UPSTREAM_URL="http://127.0.0.1:9/api",  # nothing is sent here; the worker's loop runs, idle
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _relay_run(port, env=env, cwd=tmp_path)

    def web_workers() -> set[int]:
        return _web_workers(process.pid)

    def jotform() -> int:
        return httpx.post(f"{base}/hooks/jotform?token=j", data={"q3_email": "j@example.com"}, timeout=5).status_code

    def broken_files_shown(expected: float) -> bool:
        """Until /metrics shows the delivery worker's count of mapping files it could not load."""
        return _eventually(
            lambda: _value(httpx.get(f"{base}/metrics", timeout=5).text, "relay_mapping_files_broken") == expected
        )

    try:
        _wait_until_ready(base)
        # Its worker may still be reading the files when the broken edit below is saved: it was started
        # as checked by run, so it leaves the file out rather than stop relay.
        children = [argv for _pid, fields, argv in live_processes() if int(fields[1]) == process.pid]
        assert [b"worker", b"--mappings-checked"] in [argv[-3:-1] for argv in children], children
        assert jotform() == 404
        before = web_workers()
        assert len(before) == 2

        (folder / "jotform.yaml").write_text("version: 1\nsource: [\n")  # saved half way
        os.kill(process.pid, signal.SIGHUP)
        time.sleep(3)  # a reload would have replaced a worker by then
        assert web_workers() == before
        assert broken_files_shown(1)  # the delivery worker, with nothing to deliver, looked by itself
        assert httpx.post(f"{base}/hooks/tilda?token=t", data={"Email": "a@example.com"}, timeout=5).status_code == 202

        shutil.copy(ROOT / "mappings" / "jotform.yaml", folder)
        os.kill(process.pid, signal.SIGHUP)
        answers = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not answers or answers[-1] != 202):
            answers.append(jotform())  # a worker that booted after the bad edit answers 503 until replaced
            time.sleep(0.1)
        assert answers[-1] == 202 and set(answers) <= {404, 503, 202}, answers
        assert _eventually(lambda: not web_workers() & before)  # the old ones finish their requests first
        assert broken_files_shown(0)
        assert httpx.post(f"{base}/hooks/tilda?token=t", data={"Email": "b@example.com"}, timeout=5).status_code == 202
        assert process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_run_from_another_folder_uses_its_dotenv_and_paths(tmp_path):
    """`relay run` started elsewhere: its web server and worker read the same `.env` and resolve the same
    relative paths as it does (they used to start in the project folder and miss both)."""
    (tmp_path / ".env").write_text(f"TILDA_WEBHOOK_TOKEN=from-dotenv\nRELAY_MAPPINGS_DIR={ROOT / 'mappings'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "TILDA_", "PROMETHEUS_"))}
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    process = _relay_run(port, env=env, cwd=tmp_path)
    try:
        _wait_until_ready(f"http://127.0.0.1:{port}")
        answer = httpx.post(
            f"http://127.0.0.1:{port}/hooks/tilda?token=from-dotenv", data={"Email": "d@example.com"}, timeout=5
        )
        assert answer.status_code == 202, answer.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    from relay.store import Store

    store = Store(f"sqlite:///{tmp_path / 'var' / 'relay.db'}")  # the default, relative to where run started
    assert store.get(answer.json()["id"]) is not None
    store.close()


def test_sighup_to_run_reads_dotenv_again_and_no_request_is_refused_meanwhile(tmp_path):
    """A secret rotated and an upstream set in `.env` while `relay run` serves. Until SIGHUP nothing changes,
    not even in a web worker that replaces a crashed one; SIGHUP with a wrong setting changes nothing and
    says why; SIGHUP with right ones has new web and delivery workers take over, with no request refused
    meanwhile, and the webhooks held for want of an upstream are delivered."""
    from relay.sandbox import Sandbox, SandboxServer, default_config

    sandbox = SandboxServer(Sandbox(default_config(["up-token"]))).start()
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"TILDA_WEBHOOK_TOKEN=old\nRELAY_MAPPINGS_DIR={ROOT / 'mappings'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "TILDA_", "PROMETHEUS_"))}
    env["PYTHONPATH"] = str(ROOT)
    metrics = tmp_path / "metrics"  # where every process of run's writes its metrics
    metrics.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _relay_run(port, env=env, cwd=tmp_path)

    def tilda(token: str, email: str) -> int:
        # 20 s: a request during the reload waits for a web worker while new ones boot, which took more than 5 s
        # with another test file's processes on the same two cores (scripts/test runs files side by side).
        return httpx.post(f"{base}/hooks/tilda?token={token}", data={"Email": email}, timeout=20).status_code

    try:
        _wait_until_ready(base)
        said = "relay: the admin page (/admin/) and API are off until RELAY_ADMIN_TOKEN is set"
        assert _eventually(lambda: said in (tmp_path / "relay-run.log").read_text())
        assert tilda("old", "held@example.com") == 202  # no upstream yet: held
        settings = (
            f"TILDA_WEBHOOK_TOKEN=new\nRELAY_MAPPINGS_DIR={ROOT / 'mappings'}\n"
            f"RELAY_UPSTREAM_URL={sandbox.api_url}\nRELAY_UPSTREAM_TOKEN=up-token\n"
        )
        dotenv.write_text(settings + "RELAY_MAX_BODY_BYTES=10\n")
        # Not read yet: web workers that replace crashed ones have the values of the last (re)load, a
        # variable new in the file included.
        crashed = _web_workers(process.pid)
        for pid in crashed:
            os.kill(pid, signal.SIGKILL)
        assert _eventually(lambda: len(_web_workers(process.pid) - crashed) == 2)
        assert {tilda("old", f"o{n}@example.com") for n in range(4)} == {202}
        assert tilda("new", "early@example.com") == 401

        before_web, before_workers = _web_workers(process.pid), delivery_workers(process.pid)
        dotenv.write_text(dotenv.read_text() + "RELAY_UPSTREAM_FORMAT=yaml\n")
        os.kill(process.pid, signal.SIGHUP)
        time.sleep(3)  # a reload would have replaced a worker by then
        assert _web_workers(process.pid) == before_web and delivery_workers(process.pid) == before_workers
        assert tilda("old", "still@example.com") == 202

        dotenv.write_text(settings)
        os.kill(process.pid, signal.SIGHUP)
        answers: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not answers or answers[-1] != 202):
            answers.append(tilda("new", "new@example.com"))  # old web workers answer 401 until replaced
            time.sleep(0.1)
        assert answers[-1] == 202 and set(answers) <= {401, 202}, answers
        assert _eventually(lambda: not _web_workers(process.pid) & before_web)
        assert tilda("old", "late@example.com") == 401
        # The old delivery workers finish what they hold, then stop.
        assert _eventually(lambda: not delivery_workers(process.pid) & before_workers)
        assert delivery_workers(process.pid)
        # and their gauges leave /metrics (a broken-file count of a worker gone would hold the alert up)
        now = {f"gauge_livemax_{pid}.db" for pid in delivery_workers(process.pid)}
        assert _eventually(lambda: now <= _gauges(metrics))
        assert _eventually(lambda: not {f"gauge_livemax_{pid}.db" for pid in before_workers} & _gauges(metrics))

        def emails() -> set[str]:
            return {profile.fields["email"] for profile in sandbox.sandbox.profiles.values()}

        expected = {"held@example.com", "still@example.com", "new@example.com"}
        assert _eventually(lambda: expected <= emails()), emails()
        assert process.poll() is None
        # Two reloads checked the files and a replaced worker's gauges were dropped, each in a child of run's.
        assert _mapping_machinery_in(process.pid) == []
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        sandbox.stop()


def _start_worker(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], bytes]:
    """`python -m relay worker` and what it said on stderr until "worker started" (or its exit)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = process.stderr
    assert stderr is not None
    said = b""
    deadline = time.monotonic() + 30  # a loaded machine can take seconds to import and load the mappings
    while b"worker started" not in said and process.poll() is None and time.monotonic() < deadline:
        if select.select([stderr], [], [], 0.5)[0]:
            said += os.read(stderr.fileno(), 65536)
    return process, said


def _stop_worker(process: subprocess.Popen[bytes]) -> bytes:
    """SIGTERM, which it must obey with exit status 0; the rest of what it said."""
    assert process.stderr is not None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    rest = process.stderr.read()
    process.stderr.close()
    return rest


def test_worker_command_stops_on_sigterm(tmp_path):
    """python -m relay worker starts and exits 0 on SIGTERM."""
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/w.db",
        "RELAY_UPSTREAM_URL": "http://127.0.0.1:9/api",
    }
    process, said = _start_worker(env=env)
    assert b"worker started" in said, said  # its stop signals are installed by then
    assert b"worker stopped" in said + _stop_worker(process)


def test_a_stop_signal_stops_the_worker_whatever_its_main_thread_is_doing():
    """SIGTERM set the stop event from inside the signal handler, which runs in the main thread between
    two of its steps; when that thread had just taken the event's lock (entering `stop.wait()`), the
    handler waited for it for ever: a worker that never stopped (seen once when `relay run` stopped a
    worker it had just started). Here the main thread takes the lock all the time, 30 times over."""
    child = """
import os, signal, threading
from relay.worker import install_stop_signals

for _ in range(30):
    stop = threading.Event()
    install_stop_signals(stop)
    threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGTERM)).start()
    while not stop.wait(0):
        pass
print("stopped 30 times")
"""
    try:
        done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("a stop signal left the process waiting for its own lock")
    assert done.stdout == "stopped 30 times\n", done.stderr


def test_a_worker_started_by_run_leaves_out_a_file_broken_since_run_checked_it(tmp_path):
    """`relay run` checks the mapping files, then starts its worker, which reads them again a moment later:
    an edit saved half way in between stopped that worker, and relay with it. Started by `run`
    (`--mappings-checked`) the worker leaves the file out and says so; started alone it still refuses."""
    folder = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", folder)
    (folder / "tally.yaml").write_text("version: 1\nsource: [\n")  # saved half way
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/w.db",
        "RELAY_UPSTREAM_URL": "http://127.0.0.1:9/api",
        "RELAY_MAPPINGS_DIR": str(folder),
    }
    alone, said = _start_worker(env=env)
    assert alone.wait(timeout=30) == 1 and alone.stderr is not None
    said += alone.stderr.read()
    alone.stderr.close()
    assert b"tally.yaml" in said and b"worker started" not in said
    under_run, said = _start_worker("--mappings-checked", env=env)
    assert b"worker started" in said, said
    assert b"mapping file does not load; its deliveries wait for it" in said and b"tally.yaml" in said
    assert b"worker stopped" in said + _stop_worker(under_run)


def test_dockerfile_and_compose_are_consistent():
    """The image runs as a non-root user with a health check; compose runs web, worker and PostgreSQL."""
    import yaml

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER relay" in dockerfile and "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert "pip install -r requirements.txt" in dockerfile
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "web", "worker"}
    assert services["worker"]["command"] == ["python", "-m", "relay", "worker"]
    for name in ("web", "worker"):
        assert services[name]["environment"]["RELAY_DATABASE_URL"].startswith("postgresql://")
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"
    # A web node or worker that cannot reach the store when it starts exits; Docker brings each back, and
    # none of the three stays down after a crash or a reboot.
    assert {service["restart"] for service in services.values()} == {"unless-stopped"}
    # Docker's default 10 s before SIGKILL is shorter than a graceful stop of either (20 s and 30 s)
    assert services["web"]["stop_grace_period"] == "30s" and services["worker"]["stop_grace_period"] == "40s"
    port = services["worker"]["environment"]["RELAY_WORKER_METRICS_PORT"]  # the worker's own /metrics
    # and its health check asks there: the image's asks the web server, which the worker container does not run
    assert f"127.0.0.1:{port}/metrics" in " ".join(services["worker"]["healthcheck"]["test"])


def test_standalone_worker_serves_its_own_metrics(tmp_path):
    """RELAY_WORKER_METRICS_PORT: a worker away from the web nodes shows its attempts on its own /metrics."""
    from relay.inbound import InboundRequest
    from relay.store import Store

    database = f"sqlite:///{tmp_path}/w.db"
    store = Store(database)
    store.accept(
        InboundRequest("tilda", b"Email=m%40example.com", FORM),
        dedup_key="tilda:test:metrics",
        status="queued",
        dedup_window=60,
    )
    store.close()
    port = free_port()
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": database,
        "RELAY_UPSTREAM_URL": "http://127.0.0.1:9/api",  # nothing listens: every try fails to connect
        "RELAY_UPSTREAM_TOKEN": SECRETS["RELAY_UPSTREAM_TOKEN"],
        "RELAY_WORKER_METRICS_PORT": str(port),
        "RELAY_POLL_INTERVAL": "0.05",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sample = 'relay_delivery_attempts_total{outcome="transient",source="tilda"}'
        text = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except httpx.HTTPError:
                pass
            if _value(text, sample) >= 1:
                break
            time.sleep(0.1)
        assert _value(text, sample) >= 1, text[-2000:]
        assert "relay_upstream_seconds_count" in text
        assert "_created" not in text  # as under gunicorn: no creation-time series beside each counter
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def _gauges(metrics: Path) -> set[str]:
    return {path.name for path in metrics.glob("gauge_livemax_*.db")}


def _mapping_machinery_in(pid: int) -> list[str]:
    """The compiled parts of PyYAML, SQLAlchemy and orjson that process `pid` has loaded: `run` itself only
    watches its children, and checks the mapping files and the store in a child of its own, so that what
    those load (30 MB) is not kept for as long as relay runs."""
    libraries = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if ".so" in line}
    return sorted(path for path in libraries if "/sqlalchemy/" in path or "/yaml/" in path or "/orjson/" in path)


def _group_members(group: int) -> list[int]:
    """Pids of live processes in process group `group`."""
    return [pid for pid, fields, _argv in live_processes() if int(fields[2]) == group]


def test_run_stops_web_and_worker_on_sigterm(tmp_path):
    """`python -m relay run` starts gunicorn and the worker; SIGTERM to it stops them all, exit 0, no traceback."""
    log = tmp_path / "relay.log"
    env = {
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "TILDA_WEBHOOK_TOKEN": SECRETS["TILDA_WEBHOOK_TOKEN"],
        "HUBSPOT_WEBHOOK_SECRET": SECRETS["HUBSPOT_WEBHOOK_SECRET"],
        "RELAY_PUBLIC_URL": "https://hooks.example.com/relay",  # served under a path by a proxy
        "RELAY_WEB_WORKERS": "2",
    }
    relay = RelayProcess(env, log=log).start()
    process = relay.process
    assert process is not None
    try:
        answer = httpx.post(relay.url + TILDA, content=b"Email=stop%40example.com", headers={"Content-Type": FORM})
        assert answer.status_code == 202
        # run, the gunicorn master, its two workers and the delivery worker
        assert len(_group_members(process.pid)) >= 5
        assert _mapping_machinery_in(process.pid) == []
        assert _mapping_machinery_in(next(iter(delivery_workers(process.pid))))  # which a worker has
        # "listening" is the web server's; the worker may still be importing, and a SIGTERM before it set
        # its handlers ends it at once, with no line (it holds nothing then). Seen once in 30 runs.
        deadline = time.monotonic() + 30
        while '"event": "worker started"' not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
        # run waits for its children: none outlives it (a supervisor would kill what is left mid-delivery)
        assert _group_members(process.pid) == []
    finally:
        relay.kill()
        print(log.read_text(errors="replace"))  # shown when the test fails
    text = log.read_text(errors="replace")
    assert f"relay: listening on http://127.0.0.1:{relay.port}" in text
    assert f"`kill -HUP {process.pid}` reads .env and the mapping files again" in text
    assert "worker stopped" in text and "Shutting down: Master" in text
    assert "Traceback" not in text and "Logging error" not in text


def test_the_readme_lists_every_setting_with_its_default():
    """Each setting relay reads has a row in the README's settings table, and the row gives the default
    relay really uses (or says it is unset): a setting added or changed without its line fails here."""
    from relay.settings import _SPEC

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[2]
    wrong = {}
    for _attribute, variable, _parse, default in _SPEC:
        documented = rows.get(variable)
        expected = "unset" if default is None else f"`{default}`"
        if documented is None or not documented.startswith(expected):
            wrong[variable] = (documented, expected)
    assert wrong == {}


def _check_promql(where: str, expr: str) -> None:
    """`expr` is PromQL that Prometheus would load, naming only metrics relay declares and, for outcome and
    status labels, only values relay emits: a query on a renamed metric or a misspelt outcome shows nothing,
    silently."""
    import promql_parser

    from relay import errors, metrics
    from relay.store import STATUSES

    webhook_outcomes = {"accepted", "duplicate", "ping", "ignored", "rate_limited", "mapping_unavailable"} | {
        value.code
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, (errors.RequestRejected, errors.StoreUnavailable))
    }
    emitted = {
        "relay_webhooks_received_total": {"outcome": webhook_outcomes},
        "relay_delivery_attempts_total": {"outcome": {"delivered", "transient", "tariff_limit", "rejected"}},
        "relay_fetches_total": {"outcome": {"fetched", "transient", "rejected"}},
        "relay_deliveries": {"status": set(STATUSES)},
    }
    promql_parser.parse(expr)  # raises ValueError on PromQL that Prometheus would refuse
    names = re.findall(r"(relay_[a-z_]+)(?:\{([^}]*)\})?", expr)
    assert names, (where, expr)
    for name, labels in names:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert base in metrics.DECLARED, (where, name)
        for label, values in re.findall(r'(\w+)!?=~?"([^"]*)"', labels):
            allowed = emitted.get(base, {}).get(label)
            assert allowed is not None and set(values.split("|")) <= allowed, (where, label, values)


def test_the_alert_rules_name_only_what_relay_exports():
    """ops/prometheus-alerts.yml is a Prometheus rule file whose every expression names what relay exports."""
    import yaml

    rules = yaml.safe_load((ROOT / "ops" / "prometheus-alerts.yml").read_text(encoding="utf-8"))
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 6
    for alert in alerts:
        assert alert["alert"] and alert["annotations"]["summary"], alert
        _check_promql(alert["alert"], alert["expr"])


def test_the_grafana_dashboard_shows_only_what_relay_exports():
    """ops/grafana-dashboard.json imports into Grafana (a datasource picked at import, panels that do not
    overlap) and each panel's queries name what relay exports; every metric relay declares is on it."""
    from relay import metrics

    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert [variable["type"] for variable in dashboard["templating"]["list"]] == ["datasource"]
    cells: set[tuple[int, int]] = set()
    shown: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["datasource"]["uid"] == "${datasource}", panel
        x, y, w, h = (panel["gridPos"][key] for key in "xywh")
        assert x + w <= 24, panel["title"]
        area = {(column, row) for column in range(x, x + w) for row in range(y, y + h)}
        assert not area & cells, panel["title"]
        cells |= area
        for target in panel["targets"]:
            _check_promql(panel["title"], target["expr"])
            names = re.findall(r"relay_[a-z_]+", target["expr"])
            shown |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}
    assert shown == metrics.DECLARED


def _mappings_with_tally_broken(tmp_path: Path) -> Path:
    folder = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", folder)
    with (folder / "tally.yaml").open("a") as file:
        file.write("rules: []\n")  # a second `rules`, empty: the file no longer loads
    return folder


def test_a_web_worker_that_boots_with_a_broken_mapping_serves_the_other_sources(tmp_path):
    """A mapping file edited on disk while relay runs, and broken: a web worker that boots then (after a
    crash, a timeout, a reload) serves every other source, answers 503 for the broken one (its provider
    sends again), and /readyz says which file and why. Before, the worker failed to boot, and gunicorn's
    master then stopped altogether: `relay run` exited and every webhook met a closed port."""
    folder = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", folder)
    port = free_port()
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "RELAY_MAPPINGS_DIR": str(folder),
        "TILDA_WEBHOOK_TOKEN": "tok",
        "RELAY_WEB_WORKERS": "1",
        "PYTHONPATH": str(ROOT),
    }
    process = _relay_run(port, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"

    def gunicorn() -> dict[int, int]:
        """pid -> parent pid of relay run's gunicorn processes (its master and the master's worker)."""
        return {
            pid: int(fields[1])
            for pid, fields, argv in live_processes()
            if b"app:app" in argv and int(fields[2]) == process.pid
        }

    def web_workers() -> list[int]:
        found = gunicorn()
        return [pid for pid, parent in found.items() if parent in found]

    def wait_for(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, "relay run did not start")
        wait_for(lambda: len(web_workers()) == 1, "no web worker")
        [worker] = web_workers()
        with (folder / "tally.yaml").open("a") as file:
            file.write("rules: []\n")
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: web_workers() not in ([], [worker]) and ready(), "no new web worker")
        assert process.poll() is None, "relay run stopped"
        tilda = httpx.post(f"{base}/hooks/tilda?token=tok", data={"Email": "after@example.com"}, timeout=5)
        assert tilda.status_code == 202, tilda.text
        tally = httpx.post(f"{base}/hooks/tally", json={"eventId": "e1"}, timeout=5)
        assert tally.status_code == 503 and tally.headers["Retry-After"] == "60"
        assert tally.json()["error"] == "mapping_unavailable"
        readyz = httpx.get(f"{base}/readyz", timeout=5)
        assert readyz.status_code == 503
        assert readyz.json()["problems"]["mappings"]["tally"][0].startswith("tally.yaml:")  # not the folder
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_a_source_added_while_relay_runs_answers_503_until_the_reload(tmp_path):
    """A mapping file added while the web server runs is read at its reload. A provider pointed at the new
    hook before then got 404 `unknown_source`, final for most (Typeform disables the webhook at once); it
    gets 503 with Retry-After now, which providers send again, and a detail that says what to do."""
    folder = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", folder)
    settings = make_settings(tmp_path, RELAY_MAPPINGS_DIR=str(folder), LANDING_WEBHOOK_TOKEN="tok")
    app = create_app(settings)
    text = (folder / "tilda.yaml").read_text()
    (folder / "landing.yaml").write_text(
        text.replace("source: tilda", "source: landing").replace("TILDA_WEBHOOK_TOKEN", "LANDING_WEBHOOK_TOKEN")
    )
    client = app.test_client()
    try:
        with captured_log_lines() as lines:
            early = client.post("/hooks/landing?token=tok", data={"Email": "early@example.com"})
        assert (early.status_code, early.headers["Retry-After"]) == (503, "60")
        assert early.json == {
            "error": "mapping_unavailable",
            "detail": "landing.yaml was added after the web server started and is not loaded yet; nothing was "
            "kept, send it again (operator: `relay check`, then `kill -HUP <pid of relay run>`)",
        }
        assert any("mapping file added since the web server started" in line for line in lines)
        # A name with no file, or no source's name at all, is still unknown.
        assert client.post("/hooks/nosuch", data={"a": "b"}).status_code == 404
        assert client.post("/hooks/Landing", data={"a": "b"}).status_code == 404
        assert client.post("/hooks/landing.yaml", data={"a": "b"}).status_code == 404
    finally:
        app.extensions["relay"]["store"].close()
    reloaded = create_app(settings)  # as gunicorn's workers after `kill -HUP`
    try:
        again = reloaded.test_client().post("/hooks/landing?token=tok", data={"Email": "early@example.com"})
        assert again.status_code == 202, again.json
    finally:
        reloaded.extensions["relay"]["store"].close()


def test_gunicorn_refuses_to_start_on_a_broken_mapping(tmp_path):
    """`gunicorn app:app` started with a mapping file that does not load stops before any worker boots,
    with the file, line and key of each problem and no traceback."""
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "RELAY_MAPPINGS_DIR": str(_mappings_with_tally_broken(tmp_path)),
        "RELAY_BIND": f"127.0.0.1:{free_port()}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "relay: mapping files are wrong:\n  " in done.stderr and "tally.yaml:" in done.stderr
    assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr


def test_gunicorn_on_its_own_reads_dotenv_again_on_sighup_and_keeps_its_settings_when_it_is_wrong(tmp_path):
    """`gunicorn app:app` with `.env` in its folder: SIGHUP reads the file again (a rotated token), and a
    wrong setting in it leaves the web server as it was, with a line saying why, instead of stopping it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dotenv = tmp_path / ".env"
    settings = f"RELAY_MAPPINGS_DIR={ROOT / 'mappings'}\nRELAY_DATABASE_URL=sqlite:///{tmp_path}/r.db\n"
    dotenv.write_text(settings + "TILDA_WEBHOOK_TOKEN=old\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "TILDA_", "PROMETHEUS_"))}
    env.update(PYTHONPATH=str(ROOT), RELAY_BIND=f"127.0.0.1:{port}", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    with (tmp_path / "gunicorn.log").open("ab") as log:
        master = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"), "app:app"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tilda(token: str) -> int:
        return httpx.post(f"{base}/hooks/tilda?token={token}", data={"Email": f"{token}@example.com"}).status_code

    def workers() -> set[int]:
        return {pid for pid, fields, _argv in live_processes() if int(fields[1]) == master.pid}

    def reloaded(before: set[int]) -> set[int]:
        """The web workers once none of `before` is left (a reload replaces every one of them)."""
        assert _eventually(lambda: len(workers()) == 2 and not workers() & before), "the web workers were not replaced"
        return workers()

    try:
        _wait_until_ready(base)
        first = workers()
        dotenv.write_text(settings + "TILDA_WEBHOOK_TOKEN=new\nRELAY_UPSTREAM_FORMAT=yaml\n")
        master.send_signal(signal.SIGHUP)
        second = reloaded(first)
        assert (tilda("old"), tilda("new")) == (202, 401) and master.poll() is None
        said = (tmp_path / "gunicorn.log").read_text()
        assert "relay: reload refused, settings are wrong; the web server keeps the ones it has" in said
        assert "RELAY_UPSTREAM_FORMAT='yaml'" in said

        dotenv.write_text(settings + "TILDA_WEBHOOK_TOKEN=new\n")
        master.send_signal(signal.SIGHUP)
        reloaded(second)
        assert (tilda("old"), tilda("new")) == (401, 202)
    finally:
        os.killpg(master.pid, signal.SIGTERM)
        master.wait(timeout=30)


def test_export_dotenv_reads_the_file_again_and_forgets_what_was_taken_out(tmp_path, monkeypatch):
    """Gunicorn's master puts `.env` into its environment at each (re)load: under what the environment
    sets itself, read again from the file each time (a line deleted is gone), and from then on its
    workers take the environment as it is rather than read a file that may have been edited since."""
    from relay.settings import dotenv_exported, export_dotenv, load_environment

    monkeypatch.chdir(tmp_path)
    for name in ("RELAY_SET_FROM_DOTENV", "FIRST_FROM_FILE", "SECOND_FROM_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SET_IN_THE_ENVIRONMENT", "environment")
    dotenv = tmp_path / ".env"
    dotenv.write_text("FIRST_FROM_FILE=1\nSECOND_FROM_FILE=2\nSET_IN_THE_ENVIRONMENT=file\n")
    assert not dotenv_exported()
    export_dotenv()
    assert dotenv_exported()
    assert (os.environ["FIRST_FROM_FILE"], os.environ["SECOND_FROM_FILE"]) == ("1", "2")
    assert os.environ["SET_IN_THE_ENVIRONMENT"] == "environment"
    dotenv.write_text("FIRST_FROM_FILE=edited\nTHIRD_FROM_FILE=3\n")  # not read until the next reload
    assert load_environment()["FIRST_FROM_FILE"] == "1" and "THIRD_FROM_FILE" not in load_environment()

    monkeypatch.delenv("THIRD_FROM_FILE", raising=False)
    export_dotenv()  # a reload
    assert (os.environ["FIRST_FROM_FILE"], os.environ["THIRD_FROM_FILE"]) == ("edited", "3")
    assert "SECOND_FROM_FILE" not in os.environ
    assert os.environ["SET_IN_THE_ENVIRONMENT"] == "environment"


def test_the_systemd_unit_starts_relay_run_reloads_it_with_hup_and_gives_it_time_to_stop(tmp_path):
    """ops/relay.service runs `relay run` as the command line takes it, from the folder whose `.venv` it names,
    where the default store's folder is writable; reload is SIGHUP, stop SIGTERM to relay alone with more time
    than the web server's graceful timeout; systemd's own check passes it where systemd-analyze is."""
    import configparser
    import shlex

    from relay.cli import _parser
    from relay.settings import Settings

    text = (ROOT / "ops" / "relay.service").read_text(encoding="utf-8")
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read_string(text)
    service = unit["Service"]
    command = shlex.split(service["ExecStart"])
    home = service["WorkingDirectory"]
    assert command[:4] == [f"{home}/.venv/bin/python", "-m", "relay", "run"]
    parsed = _parser().parse_args(command[3:])
    assert (parsed.host, parsed.port) == ("127.0.0.1", 8000)
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (service["KillSignal"], service["KillMode"]) == ("SIGTERM", "mixed")
    defaults = Settings.from_env({})
    assert int(service["TimeoutStopSec"]) > defaults.web_graceful_timeout + 30
    store_folder = str(Path(home) / Path(defaults.database_url.removeprefix("sqlite:///")).parent)
    assert store_folder in service["ReadWritePaths"].split()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    here = ROOT / ".venv" / "bin" / "python"
    if not here.exists():
        return  # a checkout without its own .venv: the interpreter the unit names is not there to check
    copy = tmp_path / "relay.service"
    copy.write_text(text.replace("/opt/relay", str(ROOT)), encoding="utf-8")
    checked = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
