"""``ctdd backfill customers|orders``: feed every existing customer or order of a commercetools project
into the same pipeline as live events, at lower priority.

Paging: ``sort=id asc``, ``limit`` (at most 500),
``withTotal=false``, ``where=id > :afterId`` with ``var.afterId=<last id>`` (a predicate input variable, never
pasted into the predicate); offsets are never used, so it scales past 10,000.

Every resource becomes a synthetic Platform-format Message notification, sent with TrackEventBatch and
``priority = PRIORITY_BACKFILL`` (live events are delivered first):

- customers: ``type: "CustomerCreated"`` with the full ``customer``;
- orders: ``type: "OrderImported"`` with the full ``order`` (imported rather than created: a historical
  order must not look like a new purchase).

The message id is ``backfill:<typeId>:<id>:<version>``, so running a backfill again is deduplicated by the
service (only resources changed since have a new id), and a resource already applied at the same or a
newer version (by a live event) is dropped as stale.

Cursor: a commercetools CustomObject (container ``ctdd-backfill``, key ``<store>-<resource>``; needs the
``manage_key_value_documents`` scope) holding the last id of the last page whose events were all
accepted. It lives in commercetools rather than in the service database so that a backfill can run from
any machine that reaches commercetools and the gRPC API, and needs no migration. Writes use optimistic
locking, so a second backfill of the same store and resource running at the same time stops with an
error instead of interleaving.

Results per event: OK -> counted; poison (INVALID_ARGUMENT) -> logged with the resource id and skipped;
retryable (or the call failed) -> the run stops, the cursor stays at the last fully accepted page, and the
next run resumes there (exit code 1). A completed run marks the cursor ``completed``; the next run then
starts from the beginning again (``--restart`` forces that for an interrupted run too).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence, TextIO

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.adapters.forwarder import OK, POISON, RETRY, EventForwarder
from ctdd.progress import terminal_bar

log = logging.getLogger(__name__)

CURSOR_CONTAINER = "ctdd-backfill"


@dataclass(frozen=True)
class ResourceSpec:
    path: str  # API path segment
    type_id: str  # Reference typeId
    message_type: str  # synthetic message type
    payload_field: str  # field of the message holding the resource
    identifiers: tuple[str, ...]  # resourceUserProvidedIdentifiers copied from the resource


RESOURCES = {
    "customers": ResourceSpec("customers", "customer", "CustomerCreated", "customer", ("key", "externalId", "customerNumber")),
    "orders": ResourceSpec("orders", "order", "OrderImported", "order", ("key", "orderNumber")),
}


class BackfillError(Exception):
    """The backfill cannot start or continue (another run holds the cursor, bad arguments ...)."""


@dataclass
class BackfillResult:
    resource: str
    processed: int = 0  # resources sent and settled (accepted or poison), this run and resumed ones
    accepted: int = 0  # this run
    poison: int = 0  # this run
    pages: int = 0  # this run
    completed: bool = False
    resumed_after: str | None = None
    last_id: str | None = None
    stopped_reason: str | None = None


def message_id(spec: ResourceSpec, resource: dict[str, Any]) -> str:
    return f"backfill:{spec.type_id}:{resource['id']}:{resource.get('version', 0)}"


def synthetic_notification(spec: ResourceSpec, resource: dict[str, Any], project_key: str) -> dict[str, Any]:
    """A Platform-format Message delivery carrying ``resource`` in full."""
    stamp = resource.get("lastModifiedAt") or resource.get("createdAt") or _now()
    return {
        "notificationType": "Message",
        "projectKey": project_key,
        "id": message_id(spec, resource),
        "version": 1,
        "sequenceNumber": 1,
        "resource": {"typeId": spec.type_id, "id": resource["id"]},
        "resourceVersion": resource.get("version", 0),
        "resourceUserProvidedIdentifiers": {k: resource[k] for k in spec.identifiers if resource.get(k)},
        "type": spec.message_type,
        spec.payload_field: resource,
        "createdAt": stamp,
        "lastModifiedAt": stamp,
    }


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{datetime.now(timezone.utc).microsecond // 1000:03d}Z"


class ProgressBar:
    """The progress on stderr: a tqdm bar redrawn in place on a terminal (``ctdd.progress``), a line every few
    seconds otherwise."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None, width: int = 30,
                 interval: float = 5.0):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width
        self.interval = interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last_print = 0.0
        self._start_done: int | None = None
        self._bar = None

    def render(self, done: int) -> str:
        if self._start_done is None:
            self._start_done = done
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (done - self._start_done) / elapsed
        if self.total:
            fraction = min(1.0, done / self.total)
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            return f"{self.label} [{bar}] {done}/{self.total} {fraction * 100:5.1f}% {rate:,.0f}/s"
        return f"{self.label} {done} done {rate:,.0f}/s"

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:  # tqdm's bar, with the count and rate after it
            self._draw(done, final)
            return
        text = self.render(done)
        if final or now - self._last_print >= self.interval or self._last_print == 0.0:
            self.stream.write(text + "\n")
            self._last_print = now
        self.stream.flush()


    def _draw(self, done: int, final: bool) -> None:
        if self._start_done is None:
            self._start_done = done
        rate = (done - self._start_done) / max(time.monotonic() - self.started, 1e-6)
        counts = f"{done}/{self.total} {rate:,.0f}/s" if self.total else f"{done} done {rate:,.0f}/s"
        if self._bar is None:
            self._bar = terminal_bar(self.label, self.total, done, counts, self.stream)
        else:
            self._bar.counts, self._bar.n = counts, done
            if not final:
                self._bar.refresh()
        if final:
            self._bar.close()
            self._bar = None


class Cursor:
    """The resumable position of one backfill, kept in a commercetools CustomObject."""

    def __init__(self, client, store_key: str, resource: str):
        self.client = client
        self.key = f"{store_key}-{resource}"
        self.version: int | None = None
        self.value: dict[str, Any] = {}

    async def load(self) -> dict[str, Any]:
        obj = await self.client.get_custom_object(CURSOR_CONTAINER, self.key)
        if obj is None:
            self.version, self.value = None, {}
        else:
            self.version, self.value = obj.get("version"), dict(obj.get("value") or {})
        return self.value

    async def save(self, **fields: Any) -> None:
        from ctdd.commercetools.errors import CommercetoolsConflict

        value = {**self.value, **{k: v for k, v in fields.items() if v is not None}, "updatedAt": _now()}
        for k, v in fields.items():
            if v is None:
                value.pop(k, None)  # commercetools does not store nulls; drop the field instead
        try:
            obj = await self.client.upsert_custom_object(CURSOR_CONTAINER, self.key, value, version=self.version)
        except CommercetoolsConflict:
            raise BackfillError(
                f"the cursor {CURSOR_CONTAINER}/{self.key} was changed by someone else: is another backfill of "
                "this store and resource running?"
            ) from None
        self.version, self.value = obj.get("version"), dict(obj.get("value") or value)


async def count_resources(client, spec: ResourceSpec, where: Sequence[str]) -> int | None:
    """The number of resources for the progress bar (one extra request; None when unavailable)."""
    try:
        page = await client.query(spec.path, where=list(where), limit=1, with_total=True)
    except Exception as exc:  # only cosmetic
        log.debug("count of %s failed: %s", spec.path, exc)
        return None
    total = page.get("total")
    return int(total) if isinstance(total, int) else None


async def run_backfill(
    client,
    forwarder: EventForwarder,
    *,
    store_key: str,
    project_key: str,
    resource: str,
    page_size: int = 500,
    where: Sequence[str] = (),
    restart: bool = False,
    progress: ProgressBar | None = None,
    show_progress: bool = True,
) -> BackfillResult:
    from ctdd.commercetools.errors import CommercetoolsError

    if resource not in RESOURCES:
        raise BackfillError(f"unknown resource {resource!r}; expected one of {', '.join(RESOURCES)}")
    if not 1 <= page_size <= 500:
        raise BackfillError("--page-size must be between 1 and 500 (a commercetools limit)")
    spec = RESOURCES[resource]
    result = BackfillResult(resource=resource)
    cursor = Cursor(client, store_key, resource)
    state = await cursor.load()
    after_id: str | None = None
    if state.get("status") == "running" and not restart:
        after_id = state.get("lastId")
        result.processed = int(state.get("processed", 0))
        result.resumed_after = after_id
        log.info("backfill %s of store %s: resuming after id %s (%d done before)", resource, store_key,
                 after_id or "(start)", result.processed)
    else:
        log.info("backfill %s of store %s: starting from the beginning", resource, store_key)
        state = {}
        await cursor.save(status="running", store=store_key, resource=resource, processed=0, poison=0,
                          startedAt=_now(), lastId=None, completedAt=None)
    poison_total = int(state.get("poison", 0))

    if progress is None and show_progress:
        progress = ProgressBar(f"{resource}", await count_resources(client, spec, where))
    if progress is not None:
        progress.update(result.processed)

    try:
        async for page in client.iterate_pages(spec.path, after_id=after_id, page_size=page_size, where=where):
            events = [
                pb.TrackEventRequest(
                    store_key=store_key,
                    commercetools_delivery=json.dumps(synthetic_notification(spec, r, project_key),
                                                      separators=(",", ":")).encode(),
                    priority=pb.PRIORITY_BACKFILL,
                )
                for r in page
            ]
            outcomes = await forwarder.forward(events)
            retry = [(r, o) for r, o in zip(page, outcomes) if o.kind == RETRY]
            if retry:
                r, o = retry[0]
                result.stopped_reason = (f"{len(retry)} of {len(page)} {resource} not accepted (code {o.code}, first "
                                         f"{spec.type_id} {r['id']}); run again to resume after id "
                                         f"{result.last_id or after_id or '(start)'}")
                log.warning("backfill %s stopped: %s", resource, result.stopped_reason)
                break
            for r, o in zip(page, outcomes):
                if o.kind == OK:
                    result.accepted += 1
                elif o.kind == POISON:
                    result.poison += 1
                    log.warning("%s %s (version %s): refused by the service (code %d); skipped",
                                spec.type_id, r["id"], r.get("version"), o.code)
                    log.debug("%s %s: reason: %s", spec.type_id, r["id"], o.message)
            result.pages += 1
            result.processed += len(page)
            result.last_id = page[-1]["id"]
            await cursor.save(lastId=result.last_id, processed=result.processed, poison=poison_total + result.poison)
            if progress is not None:
                progress.update(result.processed)
        else:
            result.completed = True
    except CommercetoolsError as exc:
        result.stopped_reason = f"commercetools: {exc}; run again to resume after id {result.last_id or after_id or '(start)'}"
        log.warning("backfill %s stopped: %s", resource, result.stopped_reason)

    if result.completed:
        await cursor.save(status="completed", completedAt=_now())
    if progress is not None:
        progress.update(result.processed, final=True)
    log.info("backfill %s of store %s: %s; %d accepted, %d poison skipped in %d page(s) this run",
             resource, store_key, "completed" if result.completed else "stopped", result.accepted, result.poison,
             result.pages)
    return result
