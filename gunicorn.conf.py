"""Gunicorn settings for `gunicorn app:app` (read automatically from the working directory).

Every value comes from relay's settings (the environment and `.env`, with
defaults), so the Dockerfile, `python -m relay run` and a bare
`gunicorn app:app` agree.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys

from relay import protocol_errors
from relay.errors import ConfigError
from relay.settings import Settings, dotenv_exported, export_dotenv

# `.env` as it is now goes into the master's environment, so every web worker forked from it has these
# values, whatever the file holds when a worker is replaced after a crash; a reload (SIGHUP) reads the file
# again, so a changed secret or setting takes effect without a restart.
_reloading = dotenv_exported()
_before = dict(os.environ)
export_dotenv()
# The same settings as the app: a wrong value stops the master with the list of what is wrong, before
# any worker starts, rather than a traceback from each worker that fails to boot. At a reload, it leaves
# everything as it was instead: the web server goes on with the settings it has.
try:
    _settings = Settings.from_env()
except ConfigError as exc:
    if not _reloading:
        raise SystemExit(exc.report("settings")) from None
    print(
        "relay: reload refused, settings are wrong; the web server keeps the ones it has:\n  "
        + "\n  ".join(exc.problems),
        file=sys.stderr,
    )
    os.environ.clear()
    os.environ.update(_before)
    _settings = Settings.from_env()

bind = _settings.bind
workers = _settings.web_workers
threads = _settings.web_threads
worker_class = "gthread"
timeout = _settings.web_timeout
graceful_timeout = _settings.web_graceful_timeout
keepalive = 5
# %(U)s is the path without the query string, so ?token=... never reaches the access log.
accesslog = "-" if _settings.access_log else None
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
logger_class = "relay.access_log.AccessLogger"  # the path as it may be printed: no line break of a sender's
# A request gunicorn cannot parse is answered by gunicorn itself: as JSON, like every error of relay's.
protocol_errors.install()
errorlog = "-"
# Gunicorn's control socket (for gunicornc) defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
# each master unlinks whatever is there and binds its own, so web nodes on one host would take it from each
# other (and a command meant for one reach another), and the image's user cannot write its home. Relay is
# stopped and scaled by signals and its supervisor instead.
control_socket_disable = True


def on_starting(server):  # type: ignore[no-untyped-def]
    """Refuse to start on a mapping file that does not load, with its problems, before any worker boots.

    Later, a worker that boots (after a crash, a timeout, a reload) serves the sources whose files load
    and answers 503 for one broken on disk meanwhile, rather than fail to boot and take gunicorn down.

    Prometheus counters from every worker process are merged at scrape time. A folder made here is
    this master's alone and is removed when it exits (or, if it is killed, at the next start). It is
    made when the master starts, not when this file is read: `gunicorn --check-config` reads it too,
    and a reload (SIGHUP) reads it again; the workers, forked later, inherit the environment."""
    from relay.mapping.loader import load_sources

    try:
        load_sources(_settings.mappings_dir)
    except ConfigError as exc:
        raise SystemExit(exc.report("mapping files")) from None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from relay.metrics_dir import make_metrics_dir  # standard library only

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = make_metrics_dir()
        os.environ["RELAY_METRICS_DIR_MADE"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """The app is loaded, and what it holds (modules, mapping schemas, the Flask app: some 76,000 objects) lives
    as long as the worker. A full garbage collection walked all of it while the worker answered nothing: over
    40,000 webhooks in one process, one of 27.5 ms (50-59 ms on a slow machine); frozen, three of 1.1 ms at most.
    Nothing frozen becomes garbage: a web worker never loads mapping files again in place (a reload replaces the
    workers)."""
    gc.freeze()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    made = os.environ.get("RELAY_METRICS_DIR_MADE")
    if made and made == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(made, ignore_errors=True)
