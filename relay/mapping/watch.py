"""The delivery worker's mapping files, loaded again when one changes on disk.

An operator fixes a mapping file and replays what it failed: the replay must
meet the fixed file, without restarting the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from relay import metrics
from relay.errors import ConfigError
from relay.mapping.loader import load_sources, load_sources_leniently, mapping_files
from relay.mapping.model import Source

__all__ = ["RECHECK_SECONDS", "WatchedSources", "folder_stamp", "sources_on_disk"]

log = logging.getLogger("relay.mappings")
RECHECK_SECONDS = 2.0  # how often the folder is looked at, at most: a stat of each file


class WatchedSources:
    """The sources of a folder of mapping files, as the files are now.

    Loaded strictly at first (a broken file stops a worker before it starts,
    as it stops the web server), unless `strict` is False: `relay run` checked
    the files itself, and a file broken in the moment before its worker read
    them must not stop relay. Later, whichever thread asks after
    RECHECK_SECONDS looks at the files' sizes and times, and on a change loads
    the folder again: a file that no longer loads keeps its last good version
    (and its problems are logged, once a change), so that a half-saved edit
    never fails deliveries; a file removed takes its source with it.
    `broken` names the files that do not load now, with their problems.
    """

    def __init__(self, folder: str | Path, *, recheck: float = RECHECK_SECONDS, strict: bool = True) -> None:
        self.folder = Path(folder)
        self.recheck = recheck
        self._stamp = folder_stamp(self.folder)
        self.broken: dict[str, list[str]] = {}
        if strict:
            self._sources = load_sources(self.folder)
        else:
            self._sources, self.broken = load_sources_leniently(self.folder)
            self._report_broken()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self) -> dict[str, Source]:
        """The sources, the folder looked at if RECHECK_SECONDS have passed (and no other thread is
        looking: that one's result may then come a moment later)."""
        if time.monotonic() - self._checked >= self.recheck and self._lock.acquire(blocking=False):
            try:
                self._look()
            finally:
                self._lock.release()
        return self._sources

    def fresh(self) -> dict[str, Source]:
        """The sources as the files are now: the folder looked at at once, after any look under way.

        For a delivery about to fail for its mapping (no file, or the file rejects it): the web server
        may already serve a file the worker has not looked at yet, a new source added with SIGHUP or a
        fix, and the webhooks it takes then must not fail for the old version.
        """
        with self._lock:
            self._look()
        return self._sources

    def _look(self) -> None:
        self._checked = time.monotonic()
        stamp = folder_stamp(self.folder)
        if stamp != self._stamp:
            changed = sorted({name for name, _time, _size in set(stamp) ^ set(self._stamp)})
            self._stamp = stamp  # taken before reading: a write after it is seen next time
            self._reload(changed)

    def _reload(self, changed: list[str]) -> None:
        try:
            loaded, broken = load_sources_leniently(self.folder)
        except ConfigError as exc:  # no mapping file left at all: an edit in progress, or a wrong folder
            log.error("mapping files not loaded again; the worker keeps what it had", extra={"problems": exc.problems})
            metrics.mapping_files_broken(1)
            return
        for name in broken:
            kept = self._sources.get(name)
            if kept is not None:
                loaded[name] = kept
        self._sources, self.broken = loaded, broken
        self._report_broken()
        log.info("mapping files loaded again", extra={"files": changed, "sources": len(loaded)})

    def _report_broken(self) -> None:
        metrics.mapping_files_broken(len(self.broken))
        for name, problems in self.broken.items():
            log.error(
                "mapping file does not load; the worker keeps its last good version"
                if name in self._sources
                else "mapping file does not load; its deliveries wait for it",
                extra={"source": name, "problems": problems},
            )


def folder_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Each mapping file's name, modification time and size: what changes when one is edited."""
    found = []
    for path in mapping_files(folder):
        try:
            status = path.stat()
        except OSError:  # removed between the listing and now
            continue
        found.append((path.name, status.st_mtime_ns, status.st_size))
    return tuple(found)


_Loaded = tuple[dict[str, Source], dict[str, list[str]]]
_last_on_disk: tuple[Path, tuple[tuple[str, int, int], ...], _Loaded] | None = None


def sources_on_disk(folder: str | Path) -> _Loaded:
    """`load_sources_leniently(folder)`, loaded again only when a file in it changed (its name, time or size).

    For the admin API's previews and dry runs, which an operator's page asks for one delivery after another
    while editing a file: the folder loads in a quarter of a second, a look at it takes a stat a file. The
    answer is shared: callers read it and change nothing in it.
    """
    global _last_on_disk
    folder = Path(folder)
    stamp = folder_stamp(folder)
    last = _last_on_disk
    if last is not None and last[0] == folder and last[1] == stamp:
        return last[2]
    loaded = load_sources_leniently(folder)
    _last_on_disk = (folder, stamp, loaded)
    return loaded
