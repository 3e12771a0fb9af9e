"""`python -m relay run`: the web server (gunicorn) and the delivery worker together.

Child processes, so that each can be killed and restarted alone and the
worker never competes with request threads for the GIL. SIGTERM or SIGINT
stops them all gracefully; if one dies, the others are stopped too.

SIGHUP reads the settings (`.env` included) and the mapping files again and
checks them. When they are right, gunicorn replaces its web workers
gracefully and new delivery workers take over from the old ones, which
finish what they hold: a new secret, an upstream URL or a new source takes
effect without a request refused. When they are wrong, nothing changes and
the log says why.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.errors import ConfigError
from relay.logs import configure_logging
from relay.metrics_dir import make_metrics_dir
from relay.settings import Settings

__all__ = ["cmd_run"]

log = logging.getLogger("relay.run")
ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when `run` dies, even by SIGKILL, so nothing is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cmd_run(args: Any, settings: Settings) -> int:
    configure_logging(settings)
    checked = _in_a_child(lambda: _ready_to_start(settings), settings)
    if checked != 0:
        return checked
    # The children start in this working directory and read `.env` there themselves: relative paths (the
    # default database, the mappings) mean the same to all of them, and a reload reads the file again.
    env = dict(os.environ)
    env["RELAY_BIND"] = f"{args.host}:{args.port}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # One metrics folder for the web workers and the delivery worker, so /metrics shows both.
    metrics_dir = make_metrics_dir()
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"), "app:app"],
        cwd=os.getcwd(),
        env=env,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets the parent-death signal
    )
    workers = _start_workers(settings, env)
    retiring: list[subprocess.Popen[bytes]] = []  # workers replaced by a reload, finishing what they hold
    stopping = False
    reload_asked = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    def _reload(signum: int, _frame: Any) -> None:
        nonlocal reload_asked
        reload_asked = True  # done in the loop below, not inside the handler

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    if _wait_until_listening(args.host, args.port, [web, *workers], lambda: stopping):
        print(
            f"relay: listening on http://{args.host}:{args.port}  (hooks at /hooks/<source>; "
            f"`kill -HUP {os.getpid()}` reads .env and the mapping files again)",
            file=sys.stderr,
        )
        if settings.admin_token:
            print(
                f"relay: admin page at http://{args.host}:{args.port}/admin/ (sign in with RELAY_ADMIN_TOKEN)",
                file=sys.stderr,
            )
        else:
            print("relay: the admin page (/admin/) and API are off until RELAY_ADMIN_TOKEN is set", file=sys.stderr)
    while not stopping and all(child.poll() is None for child in [web, *workers]):
        if reload_asked:
            reload_asked = False
            fresh = _reload_checked(settings)
            if fresh is not None:
                settings = fresh
                web.send_signal(signal.SIGHUP)  # gunicorn starts new workers, then stops the old ones gracefully
                # New delivery workers first, then the old ones stop claiming and finish what they hold.
                replaced, workers = workers, _start_workers(settings, env)
                for old in replaced:
                    old.send_signal(signal.SIGTERM)
                retiring += replaced
                log.info("reloading: settings, .env and mapping files read again")
        for old in [child for child in retiring if child.poll() is not None]:
            retiring.remove(old)
            _in_a_child(functools.partial(_forget_metrics_of, old.pid, env["PROMETHEUS_MULTIPROC_DIR"]), settings)
        time.sleep(0.2)
    children = [web, *workers, *retiring]
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0 if stopping else 1


def _in_a_child(check: Callable[[], int], settings: Settings) -> int:
    """`check`'s exit status, run in a forked child: what it loads (the mapping files' schemas, the store's
    driver, 30 MB) stays out of this process, which only watches the others for as long as relay runs."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError as exc:  # no memory or process left for it: a failed check, not a stop of relay
        log.error("a check could not start", extra={"error": exc.strerror or str(exc)})
        return 1
    if pid == 0:  # pragma: no cover - runs in the child, which leaves by os._exit
        code = 1
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)  # not this process's handlers: a stop ends a check at once
            from relay.cli import reported

            code = reported(check, settings)
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):  # the status still says how the check went
                    stream.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _ready_to_start(settings: Settings) -> int:
    """The mapping files load and the store's schema is there (made once, before two processes race for
    it); a store that is away stops `run` here."""
    from relay.mapping.loader import load_sources
    from relay.store import Store

    try:
        load_sources(settings.mappings_dir)
    except ConfigError as exc:
        print(exc.report("mapping files"), file=sys.stderr)
        return 1
    store = Store(settings.database_url)
    try:
        store.ensure_schema()
    finally:
        store.close()
    return 0


def _start_workers(settings: Settings, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """The delivery worker processes, each a process of its own (one GIL each). The upstream rate is
    shared out so that all of them together keep to RELAY_UPSTREAM_RATE; `--mappings-checked`, because
    this process checked the files (one broken in the moment since is left out, not fatal)."""
    worker_env = {**env, "RELAY_UPSTREAM_RATE": repr(settings.upstream_rate / settings.worker_processes)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "relay", "worker", "--mappings-checked"],
            cwd=os.getcwd(),
            env=worker_env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        for _ in range(settings.worker_processes)
    ]


def _reload_checked(settings: Settings) -> Settings | None:
    """The settings as `.env` and the mapping files say now, or None, with the reason logged, when they
    are wrong: then nothing changes, and relay goes on as it was."""
    try:
        fresh = Settings.from_env()
    except ConfigError as exc:
        log.error("reload refused: settings are wrong; relay keeps the ones it has", extra={"problems": exc.problems})
        return None
    if fresh.database_url != settings.database_url:
        log.error("reload refused: RELAY_DATABASE_URL changed; moving to another store takes a restart")
        return None
    return fresh if _in_a_child(lambda: _mapping_files_check_out(fresh), fresh) == 0 else None


def _mapping_files_check_out(settings: Settings) -> int:
    from relay.mapping.loader import load_sources

    try:
        sources = load_sources(settings.mappings_dir)
    except ConfigError as exc:
        log.error(
            "reload refused: mapping files are wrong; the web server keeps the files it has",
            extra={"problems": exc.problems},
        )
        return 1
    log.info("reload: settings and mapping files check out", extra={"sources": sorted(sources)})
    return 0


def _forget_metrics_of(pid: int, metrics_dir: str) -> int:
    """A replaced worker's gauges leave the merged /metrics (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
    return 0


def _wait_until_listening(
    host: str, port: int, children: list[subprocess.Popen[bytes]], stopping: Callable[[], bool]
) -> bool:
    """True once the web server takes connections (so "listening" is only said when it is true); False
    when a child exits, a stop comes or a minute passes first."""
    address = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stopping() and all(child.poll() is None for child in children):
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False
