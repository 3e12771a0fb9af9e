"""The folder where every process of one relay writes its Prometheus counters.

prometheus-client's multi-process mode keeps each process's counters in files
of one folder, merged at scrape time. The process that starts relay (the
gunicorn master, or `relay run`) makes the folder and removes it when it stops
cleanly. A process that is killed (SIGKILL, the OOM killer) cannot; the next
start removes what it left. Each folder's name holds its maker's pid and start
time, so a folder is known to be left over when no process has both: a pid
alone is reused, and in a restarted container the master is pid 1 again.

Standard library only: gunicorn.conf.py imports it into gunicorn's master.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["make_metrics_dir", "sweep_left_over"]

PREFIX = "relay-metrics-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)\.(\d+)-")


def make_metrics_dir() -> str:
    """Remove folders that killed processes left, then make this process's own."""
    sweep_left_over()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}.{_started(os.getpid()) or 0}-")


def sweep_left_over(base: str | None = None) -> list[str]:
    """Remove this user's metrics folders whose maker no longer runs; the paths removed."""
    removed: list[str] = []
    if _started(os.getpid()) is None:
        return removed  # no /proc (not Linux): no way to tell a live maker from a dead one
    for path in Path(base or tempfile.gettempdir()).glob(PREFIX + "*"):
        match = _NAME.match(path.name)
        if match is None:
            continue  # an older relay's or someone else's folder: its maker is unknown
        pid, started = int(match.group(1)), int(match.group(2))
        try:
            if path.stat().st_uid != os.getuid() or _started(pid) == started:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


def _started(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux); None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])
