"""The delivery worker: claim due deliveries, translate with today's mapping, send, settle.

Each claimed delivery is translated afresh from its stored raw request, then
its calls are sent in order from `calls_done`, so a call the upstream already
took is not sent again on the next try. Every try is recorded. SIGTERM and
SIGINT stop the loop; what a thread holds is finished or left to its lease.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from relay import metrics
from relay.contacts import delivery_contact_keys, forget, parse_contact
from relay.errors import (
    FetchError,
    KeptByMapping,
    MappingError,
    PermanentFetchError,
    PermanentUpstreamError,
    StoreUnavailable,
    TariffLimitReached,
    TransientFetchError,
    TransientUpstreamError,
    first_line,
)
from relay.fetch import Fetcher
from relay.mapping.fetches import FetchRequest
from relay.mapping.model import Source
from relay.mapping.translate import TranslateContext, Translation
from relay.mapping.watch import WatchedSources
from relay.pipeline import translate_request
from relay.retry import next_attempt
from relay.sentry import report_delivery_error, report_delivery_failure
from relay.settings import Settings
from relay.store import SETTLED, Attempt, Delivery, Store
from relay.upstream.client import RateLimiter, UpstreamClient
from relay.upstream.request import UpstreamCall

__all__ = ["Worker", "cmd_worker"]

log = logging.getLogger("relay.worker")
T = TypeVar("T")
CLAIM_BATCH = 4  # deliveries a thread claims at once: fewer claim transactions when the queue is long
PURGE_EVERY = 3600.0  # seconds between retention purges (the first runs at start)
KEY_EVERY = 60.0  # seconds between the housekeeping's rounds of keying deliveries that have no contact keys
# Each round of a housekeeping task runs in one worker process of all that share the store (Store.take_turn);
# one killed in the middle of a round (or that could not end it: the store away) holds the turn this long,
# then another takes over.
HOUSEKEEPING_HOLD = 900.0
# A delivery waiting untranslated this long gets its payload's contact keys from the housekeeping (held while
# no upstream is set, or its upstream away for hours): until then a search for a person reads it. Most are
# sent, and keyed by the worker, within a second.
KEY_WAITING_AFTER = 300.0
TARIFF_PARK_SECONDS = 300.0  # no calls for this long after a 402 (the tariff limit)
KEY_BATCH = 100  # deliveries given their contact keys by the housekeeping a transaction: 3.5 ms of write lock
GIVE_BACK_AFTER = 5.0  # a delivery whose call would wait longer than this for a pause goes back to the queue


def _ran(task: Callable[[], object]) -> bool:
    """True once `task` has run without raising (what `Worker._in_housekeeping` gives back then)."""
    task()
    return True


class _FetchesPaused(Exception):
    """A fetch the rules read is due while the provider's API is paused after a 429 (`seconds` more)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"fetches paused for {seconds:.0f} s")
        self.seconds = seconds


class Worker:
    """A pool of threads that deliver what the store has due."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        sources: dict[str, Source] | None = None,
        mappings_checked: bool = False,
    ) -> None:
        """`mappings_checked`: whoever started this worker has checked the mapping files (`relay run`), so
        one broken since is left out with a log line, rather than stop the worker."""
        self.settings = settings
        self.store = store or Store(settings.database_url, wait_for_database=True)
        # Given sources stay as they are; a folder's are loaded again when a file changes (a fix, then a replay).
        watched = WatchedSources(settings.mappings_dir, strict=not mappings_checked) if sources is None else None
        self.mappings = watched
        self.sources = watched.current() if watched is not None else sources or {}
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.stop_event = threading.Event()
        self.limiter = RateLimiter(settings.upstream_rate)
        self.client = UpstreamClient(settings) if settings.upstream_url else None
        self.fetcher = Fetcher(settings)  # for the sources whose mapping fetches documents from their API
        geo = None
        if settings.geoip_db:
            from relay.geo import GeoLookup

            geo = GeoLookup(settings.geoip_db)
        self.context = TranslateContext(env=settings.env, phone_region=settings.phone_region, geo=geo)
        self.threads: list[threading.Thread] = []
        self.held_to_release = False
        self.release_lock = threading.Lock()
        # A thread holds up to CLAIM_BATCH deliveries; the lease covers the slowest case for
        # all of them (two calls each at the full timeout), so none expires while held.
        self.lease = settings.lease_seconds + CLAIM_BATCH * 2 * settings.upstream_timeout

    # -- lifecycle --------------------------------------------------------
    def start(self) -> None:
        # Also while no upstream is set: what was delivered before still ages out, and gets its keys.
        housekeeping = threading.Thread(target=self._housekeeping, name="relay-housekeeping", daemon=True)
        housekeeping.start()
        self.threads.append(housekeeping)
        if self.client is None:
            log.warning("RELAY_UPSTREAM_URL is unset: deliveries are held until it is set")
            return
        self.held_to_release = True  # done by the first thread that finds the store answering
        for index in range(self.settings.worker_concurrency):
            thread = threading.Thread(target=self._loop, name=f"relay-worker-{index}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.client is not None:
            self.client.close()
        self.fetcher.close()

    def run_forever(self) -> None:
        self.start()
        self.stop_event.wait()
        self.stop()

    def _housekeeping(self) -> None:
        if not self.settings.keep_delivered:  # kept for ever since: its last round, long ago, is no failure to alert on
            self._in_housekeeping("purge turn", partial(self.store.drop_turn, "purge"), None)
        while not self.stop_event.is_set():
            self.housekeeping_round()
            self.stop_event.wait(KEY_EVERY)

    def housekeeping_round(self) -> list[str]:
        """Run each housekeeping task whose round is due and that no other worker process runs now: the
        purge (hourly, with RELAY_KEEP_DELIVERED), the keying (every minute). A task that fails is logged
        (and told to Sentry), and its next round tries again. Returns the tasks run, failed ones included."""
        tasks: list[tuple[str, float, Callable[[], object]]] = []
        if self.settings.keep_delivered:
            tasks.append(("purge", PURGE_EVERY, self.purge))
        tasks.append(("keying", KEY_EVERY, self.key_deliveries))
        ran = []
        for task, every, run in tasks:
            if self.stop_event.is_set():
                break
            take = partial(self.store.take_turn, task, self.owner, hold=HOUSEKEEPING_HOLD)
            if not self._in_housekeeping(f"{task} turn", take, False):
                continue
            done = self._in_housekeeping(task, partial(_ran, run), False)
            end = partial(self.store.end_turn, task, self.owner, every=every, done=done)
            self._in_housekeeping(f"{task} turn", end, None)
            ran.append(task)
        return ran

    def purge(self) -> dict[str, int]:
        """Delete what the retention setting no longer keeps, counted and logged."""
        purged = self.store.purge(received_before=time.time() - self.settings.keep_delivered, stop=self.stop_event)
        for kind, count in purged.items():
            metrics.purged(kind, count)
        if any(purged.values()):
            log.info("purged", extra={**purged, "keep_seconds": self.settings.keep_delivered})
        return purged

    def key_deliveries(self) -> int:
        """Give the deliveries that have no contact keys, and that a search would read one by one, the keys
        of the contacts they name, so that a search for a person finds them by key: those an older relay
        settled (the keys the worker gives each delivery it settles now), and those waiting untranslated for
        over KEY_WAITING_AFTER since their receipt or replay (their payload's, which the search reads; the
        worker adds their calls' when it translates them). A batch a transaction, until the worker stops.
        Returns how many got them."""
        region, kept, after = self.settings.phone_region, 0, ""
        waiting_before = time.time() - KEY_WAITING_AFTER
        while not self.stop_event.is_set():
            batch = self.store.unkeyed(waiting_before=waiting_before, after=after, limit=KEY_BATCH)
            if not batch:
                break
            found = {delivery.id: (delivery.updated_at, delivery_contact_keys(delivery, region)) for delivery in batch}
            kept += self.store.keep_contact_keys(found)
            after = batch[-1].id
        if kept:
            log.info("contact keys kept", extra={"count": kept})
        return kept

    def _in_housekeeping(self, what: str, task: Callable[[], T], failed: T) -> T:
        """Run a housekeeping task; a failure is logged (and told to Sentry) and the next round tries again."""
        try:
            return task()
        except StoreUnavailable:
            log.warning(f"{what} skipped: store unavailable; the next one will do it")
        except Exception as exc:  # noqa: BLE001 - the next round tries again; deliveries go on
            log.exception(f"{what} failed")
            import sentry_sdk

            sentry_sdk.capture_exception(exc)
        return failed

    def _release_held(self) -> None:
        """Queue what waited as held for an upstream (there is one now), once."""
        with self.release_lock:
            if self.held_to_release:
                released = self.store.release_held()
                self.held_to_release = False
                if released:
                    log.info("held deliveries queued", extra={"count": released})

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            self._look_at_mappings()  # also while idle, so that a broken edit shows before a delivery meets it
            paused = self.limiter.paused_for()
            if paused > GIVE_BACK_AFTER:
                # Parked (a 402, a long 429): claiming now would only hand the deliveries back.
                self.stop_event.wait(min(paused, self.settings.poll_interval * 4))
                continue
            try:
                if self.held_to_release:
                    self._release_held()
                claimed = self.store.claim(owner=self.owner, limit=CLAIM_BATCH, lease_seconds=self.lease)
            except StoreUnavailable as exc:  # away for a while (or at start): a line each try, no traceback
                log.warning("store unavailable; waiting for it", extra={"error": exc.reason[:200]})
                self.stop_event.wait(self.settings.poll_interval * 4)
                continue
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the thread
                log.exception("claim failed")
                self.stop_event.wait(self.settings.poll_interval * 4)
                continue
            if not claimed:
                self.stop_event.wait(self.settings.poll_interval)
                continue
            for delivery, token in claimed:
                if self.stop_event.is_set():
                    self.store.release(delivery.id, token)  # stopping: hand it back now
                    continue
                try:
                    self.process(delivery, token)
                except StoreUnavailable as exc:  # nothing can be kept now: its lease brings the delivery back
                    log.warning(
                        "store unavailable; the delivery waits for its lease",
                        extra={"delivery_id": delivery.id, "error": exc.reason[:200]},
                    )
                except Exception as exc:  # noqa: BLE001 - a bug: kept as retrying (below), else the lease
                    log.exception("delivery failed unexpectedly", extra={"delivery_id": delivery.id})
                    report_delivery_error(exc, source=delivery.source, delivery_id=delivery.id)
                    self._after_crash(delivery, token, exc)

    def _after_crash(self, delivery: Delivery, token: str, exc: Exception) -> None:
        """Settle a delivery on which relay itself failed (no error raised on purpose: a bug, met by this
        payload) as a transient failure: retried on the schedule with the error as its detail and a try in
        its log, then failed as exhausted, and replayable once fixed. Left to its lease, it was claimed and
        failed again every few minutes for ever, with an error report each time, and no sign of why in
        `relay overview`."""
        detail = f"relay failed on this delivery: {type(exc).__name__}: {first_line(exc)}"[:300]
        attempt = Attempt(time.time(), 0.0, delivery.calls_done, None, None, None, None, "transient", error=detail)
        try:
            self._retry_later(delivery, token, detail, attempt_no=delivery.attempts + 1, attempt=attempt)
        except Exception:  # noqa: BLE001 - the store failed too: the lease brings it back
            log.exception("could not keep the failure", extra={"delivery_id": delivery.id})

    def _retry_later(
        self,
        delivery: Delivery,
        token: str,
        detail: str,
        *,
        attempt_no: int,
        attempt: Attempt,
        calls: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        overloaded: bool = False,
    ) -> str:
        """Settle a try that failed for now: `retrying` at the schedule's next time, or failed as exhausted
        when the schedule has run out; the status it was settled with."""
        when = next_attempt(
            attempt_no,
            now=time.time(),
            cycle_started_at=delivery.cycle_started_at,
            max_attempts=self.settings.max_attempts,
            max_age=self.settings.max_age,
            retry_after=retry_after,
            overloaded=overloaded,
            schedule=self.settings.retry_schedule,
        )
        if when is None:
            return self._fail(delivery, token, "exhausted", detail, calls=calls, attempt=attempt)
        retry = partial(
            self._finish,
            delivery,
            token,
            status="retrying",
            detail=detail,
            next_attempt_at=when,
            calls=calls,
            attempt=attempt,
        )
        self._keep(delivery, retry)
        return "retrying"

    def _look_at_mappings(self) -> None:
        if self.mappings is not None:
            self.sources = self.mappings.current()  # the folder itself at most every RECHECK_SECONDS

    # -- one delivery -----------------------------------------------------
    def _translate(self, sources: dict[str, Source], delivery: Delivery) -> Translation:
        source = sources.get(delivery.source)
        if source is None:
            raise MappingError(f"no mapping for source {delivery.source!r}")

        order_only = {spec.name for spec in source.order_fetches}

        def fetch(request: FetchRequest) -> Any:
            paused = self.fetcher.paused_for(delivery.source)
            if paused:
                if request.name not in order_only:
                    raise _FetchesPaused(paused)
                # A fetch only the order reads, made after the profile calls were built: they go, the order waits.
                raise TransientFetchError(
                    f"fetch {request.name}: {delivery.source}'s API answered 429; fetches resume in {paused:.0f} s",
                    name=request.name,
                    url=request.shown,
                    retry_after=paused,
                )
            return self.fetcher.get(delivery.source, request)

        for _ in range(len(source.rules)):
            translation = translate_request(
                source,
                delivery.inbound(),
                self.context,
                upstream_format=self.settings.upstream_format,
                fetch=fetch,
                once_holder=partial(self.store.once_taken_by, delivery.source, delivery.id),
                latest_holder=partial(self._later_holder, delivery),
            )
            key = translation.once_key
            if key is None or self.store.take_once(delivery.source, key, delivery.id) == delivery.id:
                return translation
            # Another delivery took the key between the look and the take: translated again, it is passed over.
        raise MappingError(f"the once keys of source {delivery.source!r} changed hands while it was translated")

    def _later_holder(self, delivery: Delivery, key: str) -> str | None:
        """The later delivery that holds this one's `latest_by` key now, if one does (this one is passed over)."""
        holder = self.store.latest_holder(delivery.source, key)
        return holder if holder is not None and holder != delivery.id else None

    def _latest(self, sources: dict[str, Source]) -> dict[str, Source]:
        """The mapping files as they are this moment, kept as this worker's from now on when they changed."""
        latest = self.mappings.fresh() if self.mappings is not None else sources
        if latest is not sources:
            self.sources = latest
        return latest

    def _translate_with_latest(
        self, delivery: Delivery, token: str, sources: dict[str, Source], error: MappingError
    ) -> Translation | str:
        """Before a delivery fails for its mapping, the files as they are this moment: a source just added,
        or a fix the web server already serves, would otherwise fail the webhooks it takes in the seconds
        before this worker looks by itself. The translation, or the status the delivery was settled with."""
        latest = self._latest(sources)
        if latest is not sources:
            try:
                return self._translate(latest, delivery)
            except MappingError as again:
                error = again
        return self._mapping_failed(delivery, token, latest, error)

    def _order_with_latest(
        self, delivery: Delivery, sources: dict[str, Source], translation: Translation
    ) -> Translation:
        """An order the files as this worker last read them refuse: translated again with the files as they
        are this moment, as for a mapping error (`_translate_with_latest`), so a fix just saved is used."""
        latest = self._latest(sources)
        return translation if latest is sources else self._translate(latest, delivery)

    def _mapping_failed(self, delivery: Delivery, token: str, sources: dict[str, Source], error: MappingError) -> str:
        """Fail the delivery for its mapping; unless its source's file is there but does not load, with no
        good version to keep (an edit under way when this worker started): then it waits for the fix, as
        the web server answers that source 503, with waits that grow to 10 minutes, until RELAY_MAX_AGE."""
        problems = self.mappings.broken.get(delivery.source) if self.mappings is not None else None
        if not problems or delivery.source in sources:
            return self._fail(delivery, token, "mapping", error.detail, kept=isinstance(error, KeptByMapping))
        detail = f"the mapping file of {delivery.source!r} does not load: {problems[0]}"
        now = time.time()
        when = now + min(max(5.0, (now - delivery.cycle_started_at) / 4), 600.0)
        if when - delivery.cycle_started_at > self.settings.max_age:
            return self._fail(delivery, token, "mapping", detail)
        self._keep(
            delivery,
            partial(self._finish, delivery, token, status="retrying", detail=detail, next_attempt_at=when),
        )
        log.warning(
            "delivery waits: its mapping file does not load",
            extra={"delivery_id": delivery.id, "source": delivery.source, "detail": detail},
        )
        return "retrying"

    def process(self, delivery: Delivery, token: str) -> str:
        """Deliver one claimed delivery; returns the status it was settled with."""
        self._look_at_mappings()
        sources = self.sources
        started, clock = time.time(), time.perf_counter()
        try:
            try:
                translation = self._translate(sources, delivery)
                if translation.order_refused:
                    translation = self._order_with_latest(delivery, sources, translation)
            except MappingError as exc:
                settled = self._translate_with_latest(delivery, token, sources, exc)
                if isinstance(settled, str):
                    return settled
                translation = settled
        except FetchError as exc:
            return self._fetch_failed(delivery, token, exc, started, time.perf_counter() - clock)
        except _FetchesPaused as pause:
            # The provider's API answered 429 and this delivery's rules read a fetch: it waits the pause out in
            # the queue, no try spent. A delivery whose event fetches nothing before its calls is not held.
            detail = f"waiting: {delivery.source}'s API answered 429; fetches resume in {pause.seconds:.0f} s"
            return self._give_back(delivery, token, None, due_in=pause.seconds, detail=detail)
        translated_in = time.perf_counter() - clock
        if translation.forget:
            return self._forget(delivery, token, translation)
        if translation.ignored:
            passed = translation.passed_note
            detail = translation.ignored if passed is None else f"{translation.ignored} ({passed})"
            self._finish(delivery, token, status="delivered", reason="ignored", detail=detail, calls=[])
            self._count_passed_over(delivery, translation)
            return "delivered"
        calls = [call.to_dict() for call in translation.calls]
        if not self._lease_covers(delivery, len(translation.calls) - delivery.calls_done):
            # Slow fetches (or the batch's earlier deliveries) used the lease up: sent now, a call could
            # still be under way when another worker claims the delivery and sends it again.
            return self._give_back(
                delivery, token, calls, detail="waiting: the lease ran short; the calls go out later"
            )
        attempt_no = delivery.attempts
        last = len(translation.calls) - 1
        for index in range(delivery.calls_done, len(translation.calls)):
            wait, reason = self.limiter.pause_state()
            if wait > GIVE_BACK_AFTER:
                # Waiting out a long pause while holding the claim would outlast its lease, and another
                # worker could claim and send the delivery too: it goes back to the queue instead.
                detail = f"waiting: this worker's calls are paused for {wait:.0f} s ({reason or 'paused'})"
                return self._give_back(delivery, token, calls, due_in=wait, detail=detail)
            if not self.limiter.acquire(self.stop_event):
                # Stopping: give the delivery back at once rather than wait out the lease.
                return self._give_back(delivery, token, calls)
            attempt, error = self._send(delivery, index, translation.calls[index])
            attempt_no += 1
            if error is None and index < last:
                # Progress is kept at once, so a crash cannot make relay send this call again.
                if not self._keep(delivery, partial(self.store.record_attempt, delivery.id, token, attempt)):
                    return "lost"
                continue
            if error is None:
                return self._all_sent(delivery, token, translation, calls, attempt, attempt_no, started, translated_in)
            if isinstance(error, PermanentUpstreamError):
                return self._fail(delivery, token, "rejected", error.detail, calls=calls, attempt=attempt)
            if error.http_status == 429 and error.retry_after:
                self.limiter.pause(min(error.retry_after, 60), reason="429, the upstream's rate limit")
            if isinstance(error, TariffLimitReached):
                self._park(delivery, error)
            return self._retry_later(
                delivery,
                token,
                error.detail,
                attempt_no=attempt_no,
                attempt=attempt,
                calls=calls,
                retry_after=error.retry_after,
                overloaded=error.http_status == 429
                or isinstance(error, TariffLimitReached)
                or "timeout" in error.detail,
            )
        # Every call went through before (a replayed cycle that had finished): settle it.
        return self._all_sent(delivery, token, translation, calls, None, attempt_no, started, translated_in)

    def _forget(self, delivery: Delivery, token: str, translation: Translation) -> str:
        """An erasure request (a rule with `forget`): every stored delivery naming the person goes, from every
        source, and this one keeps no more of them than its id. One a worker is sending at that moment is
        forgotten at this delivery's next try, a minute on."""
        contacts = []
        for value in translation.forget:
            try:
                contacts.append(parse_contact(value, self.settings.phone_region))
            except ValueError:
                continue  # a phone no number can be made of: the e-mail, when given, still finds them
        forgotten, being_sent = 0, set()
        for contact in contacts:
            found = forget(self.store, contact)
            forgotten += len(found.ids)
            being_sent |= set(found.being_delivered) - {delivery.id}
        detail = f"forgot {forgotten} deliveries naming the person (rule {translation.rule!r})"
        if being_sent:
            return self._give_back(
                delivery, token, [], due_in=60.0, detail=f"{detail}; {len(being_sent)} being sent, forgotten next"
            )
        # Blanked while still claimed, then settled: a worker stopped in between leaves a request that no longer
        # parses (failed for its mapping when claimed again), never the person's data.
        if not self.store.scrub(delivery.id, token):
            return "retrying"  # the claim was lost: the worker that holds it now decides
        settle = partial(self._finish, delivery, token, payload_kept=False, status="delivered", detail=detail, calls=[])
        self._keep(delivery, settle)
        log.info(
            "erasure request done", extra={"delivery_id": delivery.id, "source": delivery.source, "count": forgotten}
        )
        return "delivered"

    def _all_sent(
        self,
        delivery: Delivery,
        token: str,
        translation: Translation,
        calls: list[dict[str, Any]],
        last: Attempt | None,
        attempt_no: int,
        started: float,
        translated_in: float,
    ) -> str:
        """Every call the translation made went through (`last`, the try of the last one, or None when they
        all went in an earlier cycle): delivered, unless its order was held back or refused."""
        if translation.order_held:
            held = self._fetch_attempt(translation.order_held, started, translated_in, call_index=len(calls))
            return self._hold_order(delivery, token, translation.order_held, calls, last, held, attempt_no)
        if translation.order_refused:
            return self._fail(delivery, token, "mapping", translation.order_refused, calls=calls, attempt=last)
        finish = partial(
            self._finish,
            delivery,
            token,
            status="delivered",
            detail=translation.passed_note,
            calls=calls,
            attempt=last,
        )
        self._keep(delivery, finish)
        self._count_passed_over(delivery, translation)
        log.info("delivered", extra={"delivery_id": delivery.id, "source": delivery.source})
        return "delivered"

    @staticmethod
    def _count_passed_over(delivery: Delivery, translation: Translation) -> None:
        """A delivered webhook's rules passed over, in `relay_rules_passed_over_total`: a `once` key that
        many orders share by mistake (`order {status}`) shows there before anyone misses the counts."""
        for passed in translation.passed_over:
            metrics.passed_over(delivery.source, passed.rule)

    def _fetch_failed(self, delivery: Delivery, token: str, error: FetchError, started: float, seconds: float) -> str:
        """A document the mapping fetches did not come: a try in the delivery's log (the address, a credential's
        setting in it as ***, and the API's answer), then retried on the schedule, or failed as `rejected` for
        an answer that will not change by itself (a wrong token, a record deleted): fixed, a replay fetches
        again."""
        attempt = self._fetch_attempt(error, started, seconds, call_index=delivery.calls_done)
        if isinstance(error, PermanentFetchError):
            return self._fail(delivery, token, "rejected", error.detail, attempt=attempt)
        return self._retry_later(
            delivery,
            token,
            error.detail,
            attempt_no=delivery.attempts + 1,
            attempt=attempt,
            retry_after=error.retry_after,
            overloaded=error.http_status == 429,
        )

    @staticmethod
    def _fetch_attempt(error: FetchError, started: float, seconds: float, *, call_index: int) -> Attempt:
        """A fetch that failed, as a try in the delivery's log: its address (a credential's setting as ***)
        and the API's answer."""
        return Attempt(
            started_at=started,
            duration_ms=seconds * 1000,
            call_index=call_index,
            method=f"fetch {error.name}",
            request={"url": error.url},
            http_status=error.http_status,
            response=error.body or None,
            outcome=error.code,
            error=error.detail,
        )

    def _hold_order(
        self,
        delivery: Delivery,
        token: str,
        error: FetchError,
        calls: list[dict[str, Any]],
        sent: Attempt | None,
        held: Attempt,
        attempt_no: int,
    ) -> str:
        """The profile calls went (`sent`, the last of them, kept first), and a document only the order
        reads did not come (`held`, its try): retried on the schedule for the order alone, or failed as
        `rejected` for an answer that will not change by itself, replayable once fixed."""
        if sent is not None and not self._keep(delivery, partial(self.store.record_attempt, delivery.id, token, sent)):
            return "lost"
        detail = f"the order was not sent: {error.detail}"
        if isinstance(error, PermanentFetchError):
            return self._fail(delivery, token, "rejected", detail, calls=calls, attempt=held)
        return self._retry_later(
            delivery,
            token,
            detail,
            attempt_no=attempt_no + 1,
            attempt=held,
            calls=calls,
            retry_after=error.retry_after,
            overloaded=error.http_status == 429,
        )

    def _lease_covers(self, delivery: Delivery, calls: int) -> bool:
        """Whether what is left of the delivery's lease covers its calls at their full timeout; also when a
        fresh lease would not either (nothing to gain from handing it back)."""
        needed = calls * self.settings.upstream_timeout + 5
        if delivery.lease_expires_at is None or needed > self.lease:
            return True
        return time.time() + needed <= delivery.lease_expires_at

    def _give_back(
        self,
        delivery: Delivery,
        token: str,
        calls: list[dict[str, Any]] | None,
        *,
        due_in: float = 0.0,
        detail: str | None = None,
    ) -> str:
        """Hand a claimed delivery back to the queue before its next call, with no try spent."""
        self._finish(
            delivery, token, status="retrying", detail=detail, next_attempt_at=time.time() + due_in, calls=calls
        )
        return "retrying"

    def _park(self, delivery: Delivery, error: TariffLimitReached) -> None:
        """The tariff limit: no call of this process goes out for a while (TARIFF_PARK_SECONDS, or the
        schedule's longest step when shorter), so the backlog is not spent on answers known in advance;
        the operator is told once a park, in the log and in Sentry. The deliveries wait as `retrying`."""
        seconds = max(error.retry_after or 0.0, min(TARIFF_PARK_SECONDS, self.settings.retry_schedule[-1]))
        if not self.limiter.pause(seconds, reason="402, the upstream's tariff limit"):
            return  # parked already (another thread's 402): said once
        message = f"upstream tariff limit reached (402): no calls for {seconds:g} s; deliveries wait as retrying"
        log.error(message, extra={"delivery_id": delivery.id, "source": delivery.source, "detail": error.detail})
        report_delivery_failure(message, source=delivery.source, delivery_id=delivery.id, reason=error.code)

    def _keep(self, delivery: Delivery, write: Callable[[], bool]) -> bool:
        """A store write that follows an upstream call, tried again while the store is away and the lease
        holds: given up, the call would be sent again by whichever worker claims the delivery next (an
        order's counters counted twice). A brief outage (a failover, a restart) then costs nothing."""
        pause = 0.5
        while True:
            try:
                return write()
            except StoreUnavailable:
                if time.time() + pause > (delivery.lease_expires_at or 0) - 5:
                    raise  # the lease brings it back; its call may be sent again
                log.warning("store unavailable; keeping the call's result", extra={"delivery_id": delivery.id})
                time.sleep(pause)
                pause = min(pause * 2, 5)

    def _finish(self, delivery: Delivery, token: str, *, payload_kept: bool = True, **settled: Any) -> bool:
        """`Store.finish`, with the keys of the contacts the delivery names: a search for a person finds it
        by them instead of reading it. Those of its calls; for one settled without calls (its mapping ignored
        or refused it), those of its payload, which the search would read (`relay.contacts.delivery_names`),
        unless the payload is no longer kept (`payload_kept`: an erasure request's, blanked)."""
        calls = settled.get("calls")
        if calls or (payload_kept and not delivery.calls and settled["status"] in SETTLED):
            as_settled = replace(delivery, calls=calls or None)  # the calls it is settled with, or its payload
            settled["contacts"] = delivery_contact_keys(as_settled, self.settings.phone_region)
        return self.store.finish(delivery.id, token, **settled)

    def _fail(
        self,
        delivery: Delivery,
        token: str,
        reason: str,
        detail: str,
        *,
        calls: list[dict[str, Any]] | None = None,
        attempt: Attempt | None = None,
        kept: bool = False,
    ) -> str:
        """Keep the delivery as failed with its reason, log it and tell Sentry; one a rule with `keep` took
        (`kept`) is logged at info level and not reported: its mapping meant it."""
        self._keep(
            delivery,
            partial(
                self._finish,
                delivery,
                token,
                status="failed",
                reason=reason,
                detail=detail,
                calls=calls,
                attempt=attempt,
            ),
        )
        log.log(
            logging.INFO if kept else logging.WARNING,
            "delivery kept unsent by its mapping" if kept else f"delivery failed: {reason}",
            extra={"delivery_id": delivery.id, "source": delivery.source, "detail": detail},
        )
        source = self.sources.get(delivery.source)
        if source is None or any(rule.once is not None for rule in source.rules):
            try:
                self.store.release_once(delivery.id)
            except StoreUnavailable:  # kept: a replay of this delivery still uses the rule
                log.warning(
                    "store unavailable; the failed delivery's once keys stay", extra={"delivery_id": delivery.id}
                )
        if not kept:
            report_delivery_failure(
                f"delivery failed: {reason}", source=delivery.source, delivery_id=delivery.id, reason=reason
            )
        return "failed"

    def _send(
        self, delivery: Delivery, index: int, call: UpstreamCall
    ) -> tuple[Attempt, TransientUpstreamError | PermanentUpstreamError | None]:
        """Make one call; the attempt to record, and the error when it did not go through."""
        assert self.client is not None
        started = time.time()
        clock = time.perf_counter()
        error: TransientUpstreamError | PermanentUpstreamError | None = None
        http_status: int | None
        profile_id = None
        try:
            answer = self.client.send(call)
            http_status, response, profile_id = answer.http_status, answer.text, answer.profile_id
            outcome = "delivered"
        except TransientUpstreamError as exc:  # TariffLimitReached's outcome is its own: tariff_limit
            error, http_status, response, outcome = exc, exc.http_status, exc.body, exc.code
        except PermanentUpstreamError as exc:
            error, http_status, response, outcome = exc, exc.http_status, exc.body, "rejected"
        seconds = time.perf_counter() - clock
        metrics.attempt(delivery.source, outcome, seconds)
        attempt = Attempt(
            started_at=started,
            duration_ms=seconds * 1000,
            call_index=index,
            method=call.method,
            request=call.body,
            http_status=http_status,
            response=response,
            outcome=outcome,
            error=error.detail if error else None,
            calls_done=index + 1 if error is None else None,
            profile_id=profile_id,
        )
        return attempt, error


def cmd_worker(args: Any, settings: Settings) -> int:
    from relay.logs import configure_logging
    from relay.sentry import init_sentry

    configure_logging(settings)
    init_sentry(settings)
    if settings.worker_metrics_port:
        _serve_metrics(settings.worker_metrics_port)
    worker = Worker(settings, mappings_checked=args.mappings_checked)
    install_stop_signals(worker.stop_event)
    log.info("worker started", extra={"concurrency": settings.worker_concurrency})
    worker.run_forever()
    log.info("worker stopped")
    return 0


def _serve_metrics(port: int) -> None:
    """A standalone worker's own /metrics, for a worker on a machine without the web nodes."""
    from prometheus_client import start_http_server

    from relay.metrics import REGISTRY

    start_http_server(port, addr="0.0.0.0", registry=REGISTRY)  # noqa: S104


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`.

    Not from the handler itself: it runs in the main thread between two steps of whatever that thread
    does, and `Event.set` takes the event's lock, which is not re-entrant; had the main thread just taken
    it (entering `stop.wait()`), the handler would wait for it for ever and the worker would never stop
    (starting a thread there could meet the same with threading's own lock). The handler writes a byte
    to a pipe, which takes no lock, and a thread waiting on the pipe sets the event.
    """
    read_end, write_end = os.pipe()

    def _stopper() -> None:
        os.read(read_end, 1)
        stop.set()

    threading.Thread(target=_stopper, name="relay-stop", daemon=True).start()

    def _stop(signum: int, _frame: Any) -> None:
        os.write(write_end, b"x")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
