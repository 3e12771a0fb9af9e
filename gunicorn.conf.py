"""Gunicorn settings for `gunicorn app:app` (read automatically from the working directory).

Every value comes from an environment variable with a default, so the
Dockerfile, `python -m relay run` and a bare `gunicorn app:app` agree.
"""

from __future__ import annotations

import os
import shutil


def _whole(variable: str, default: int, *, least: int) -> int:
    """A count from the environment; a wrong one stops gunicorn with one line naming it, not a traceback."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise SystemExit(f"relay: {variable}={raw!r}: expected a whole number, at least {least}")
    return value


bind = os.environ.get("RELAY_BIND", "0.0.0.0:8000")
workers = _whole("RELAY_WEB_WORKERS", 2, least=1)
threads = _whole("RELAY_WEB_THREADS", 4, least=1)
worker_class = "gthread"
# 0 turns gunicorn's worker timeout off.
timeout = _whole("RELAY_WEB_TIMEOUT", 30, least=0)
graceful_timeout = _whole("RELAY_WEB_GRACEFUL_TIMEOUT", 20, least=0)
keepalive = 5
# %(U)s is the path without the query string, so ?token=... never reaches the access log.
accesslog = "-" if os.environ.get("RELAY_ACCESS_LOG", "1") != "0" else None
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
# Gunicorn's control socket (for gunicornc) defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
# each master unlinks whatever is there and binds its own, so web nodes on one host would take it from each
# other (and a command meant for one reach another), and the image's user cannot write its home. Relay is
# stopped and scaled by signals and its supervisor instead.
control_socket_disable = True


def on_starting(server):  # type: ignore[no-untyped-def]
    """Prometheus counters from every worker process are merged at scrape time. A folder made here is
    this master's alone and is removed when it exits (or, if it is killed, at the next start). It is
    made when the master starts, not when this file is read: `gunicorn --check-config` reads it too,
    and a reload (SIGHUP) reads it again; the workers, forked later, inherit the environment."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from relay.metrics_dir import make_metrics_dir  # standard library only

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = make_metrics_dir()
        os.environ["RELAY_METRICS_DIR_MADE"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    made = os.environ.get("RELAY_METRICS_DIR_MADE")
    if made and made == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(made, ignore_errors=True)
