"""The gauges that answer "is it healthy": observed from the database and from the process's rate budget.

Each gauge is an OpenTelemetry observable gauge whose callback reads a :class:`HealthSnapshot`: a handful of
cheap aggregate queries (one per table, over indexed columns: the outbox's and the inbox's open rows, the open
triggers, the last hour's enrolment calls, the back-sync cursors) run together at most once per
``CACHE_SECONDS`` whatever the number of gauges or scrapes. Nothing runs while no meter provider collects
(``ctdd.telemetry``: no exporter, no cost).

The list of metrics, with their units, attributes and meaning, is docs/metrics.md. Every configured store (and
its account) is reported, with 0 where nothing is waiting, so that an alert on "above N" sees a series from the
start. A query that fails (a table another version of the service changed) leaves its gauges out of that
collection and is logged once; the others are still reported.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy.engine import Engine

from ctdd.backsync.events_feed import read_times
from ctdd.config import Settings
from ctdd.db.engine import utcnow
from ctdd.db.models import BacksyncCursor, EnrolmentCall, EventInbox, OutboxMessage, ProgramTrigger
from ctdd.telemetry import account_paused, meter

log = logging.getLogger(__name__)

#: a snapshot is reused for this long (every gauge of one collection, and scrapes in quick succession)
CACHE_SECONDS = 5.0
#: the outbox statuses counted (the final ones, ``delivered`` above all, grow without bound and are not)
OUTBOX_STATUSES = ("pending", "in_flight", "parked", "dead")
#: the trigger statuses counted: those still to be decided or sent
TRIGGER_STATUSES = ("pending", "claimed", "enrolling")

OM = OutboxMessage.__table__
IN = EventInbox.__table__
PT = ProgramTrigger.__table__
EC = EnrolmentCall.__table__
BC = BacksyncCursor.__table__


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite, through an untyped aggregate
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _age(now: datetime, since: Any) -> float:
    since = _aware(since)
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


@dataclass
class HealthSnapshot:
    """What the database says at one moment (each dict: attributes tuple -> value)."""

    outbox: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (account, store, status)
    outbox_oldest_due_age: dict[tuple[str, str], float] = field(default_factory=dict)  # (account, store)
    inbox_pending: dict[str, int] = field(default_factory=dict)  # store
    inbox_oldest_age: dict[str, float] = field(default_factory=dict)  # store
    bulk_imports: dict[str, int] = field(default_factory=dict)  # account
    triggers: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (account, store, status)
    enrolment_calls: dict[str, int] = field(default_factory=dict)  # account
    backsync_lag: dict[str, float] = field(default_factory=dict)  # account


class HealthMetrics:
    """The observed gauges of one running service (``ctdd.runtime.app.App`` registers it while it runs)."""

    def __init__(self, engine: Engine, settings: Settings, *, budget=None, guard=None,
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.settings = settings
        self.budget = budget
        self.guard = guard
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: HealthSnapshot | None = None
        self._taken = 0.0
        self._failed: set[str] = set()

    # -- the snapshot ---------------------------------------------------------------------------------------
    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            if self._snapshot is None or self._clock() - self._taken >= CACHE_SECONDS:
                self._snapshot = self._read()
                self._taken = self._clock()
            return self._snapshot

    def _read(self) -> HealthSnapshot:
        snap = HealthSnapshot()
        stores = {key: store.account for key, store in self.settings.stores.items()}
        for key, account in stores.items():
            for status in OUTBOX_STATUSES:
                snap.outbox[(account, key, status)] = 0
            snap.outbox_oldest_due_age[(account, key)] = 0.0
            snap.inbox_pending[key] = 0
            snap.inbox_oldest_age[key] = 0.0
            for status in TRIGGER_STATUSES:
                snap.triggers[(account, key, status)] = 0
        for account in self.settings.accounts:
            snap.bulk_imports[account] = 0
            snap.enrolment_calls[account] = 0
        now = utcnow()
        with self.engine.connect() as conn:
            for name, read in (("outbox", self._read_outbox), ("inbox", self._read_inbox),
                               ("triggers", self._read_triggers), ("enrolment calls", self._read_enrolments),
                               ("back-sync", self._read_backsync)):
                try:
                    read(conn, snap, now)
                except Exception as exc:  # a gauge left out must not take the others with it
                    conn.rollback()
                    if name not in self._failed:
                        self._failed.add(name)
                        log.warning("metrics: cannot read the %s gauges (%s); left out", name, type(exc).__name__)
        return snap

    @staticmethod
    def _read_outbox(conn, snap: HealthSnapshot, now: datetime) -> None:
        due = sa.and_(OM.c.status == "pending", OM.c.next_attempt_at <= now)
        rows = conn.execute(
            sa.select(OM.c.account, OM.c.store_key, OM.c.status, sa.func.count(),
                      sa.func.min(sa.case((due, OM.c.created_at)), type_=OM.c.created_at.type))
            .where(OM.c.status.in_(OUTBOX_STATUSES))
            .group_by(OM.c.account, OM.c.store_key, OM.c.status)
        ).all()
        for account, store, status, count, oldest_due in rows:
            store = store or ""
            snap.outbox[(account, store, status)] = count
            if oldest_due is not None:
                age = _age(now, oldest_due)
                key = (account, store)
                snap.outbox_oldest_due_age[key] = max(snap.outbox_oldest_due_age.get(key, 0.0), age)
        for account, imports in conn.execute(
            sa.select(OM.c.account, sa.func.count(sa.distinct(OM.c.bulk_import_id)))
            .where(OM.c.status == "in_flight", OM.c.bulk_import_id.is_not(None))
            .group_by(OM.c.account)
        ).all():
            snap.bulk_imports[account] = imports

    @staticmethod
    def _read_inbox(conn, snap: HealthSnapshot, now: datetime) -> None:
        # pending rows only: they have a partial index; the done ones stay as dedupe records and are many
        for store, count, oldest in conn.execute(
            sa.select(IN.c.store_key, sa.func.count(), sa.func.min(IN.c.received_at))
            .where(IN.c.status == "pending").group_by(IN.c.store_key)
        ).all():
            snap.inbox_pending[store] = count
            snap.inbox_oldest_age[store] = _age(now, oldest)

    @staticmethod
    def _read_triggers(conn, snap: HealthSnapshot, now: datetime) -> None:
        for account, store, status, count in conn.execute(
            sa.select(PT.c.account, PT.c.store_key, PT.c.status, sa.func.count())
            .where(PT.c.status.in_(TRIGGER_STATUSES)).group_by(PT.c.account, PT.c.store_key, PT.c.status)
        ).all():
            snap.triggers[(account, store, status)] = count

    @staticmethod
    def _read_enrolments(conn, snap: HealthSnapshot, now: datetime) -> None:
        for account, count in conn.execute(
            sa.select(EC.c.account, sa.func.count())
            .where(EC.c.called_at >= now - timedelta(hours=1)).group_by(EC.c.account)
        ).all():
            snap.enrolment_calls[account] = count

    @staticmethod
    def _read_backsync(conn, snap: HealthSnapshot, now: datetime) -> None:
        # The back-sync keeps one cursor row per account; ``last_poll_at`` is when its last complete poll (a
        # successful read of every feed) started. Read by name so that a changed table only drops this gauge.
        # The events feed (ctdd.backsync.events_feed) keeps ``read_at`` in its lease cursor: the newer of the two
        # counts (with a working feed the polls only reconcile, every few hours).
        columns = BC.c
        if "last_poll_at" not in columns or "account" not in columns:
            return
        latest: dict[str, datetime] = {}
        for account, last in conn.execute(sa.select(columns["account"], columns["last_poll_at"])).all():
            if last is not None:
                latest[account] = _aware(last)  # type: ignore[assignment]
        for account, read_at in read_times(conn).items():
            read_at = _aware(read_at)  # type: ignore[assignment]
            if account not in latest or read_at > latest[account]:
                latest[account] = read_at
        for account, last in latest.items():
            snap.backsync_lag[account] = _age(now, last)

    # -- in-process state ---------------------------------------------------------------------------------------
    def rate_remaining(self) -> dict[str, int]:
        return self.budget.remaining_calls() if self.budget is not None else {}

    def throttled(self) -> dict[str, float]:
        if self.budget is None:
            return {}
        return {account: self.budget.paused_for(account) for account in self.settings.accounts}


# -- the registry of running services and the gauges reading it -------------------------------------------------

_SOURCES: list[HealthMetrics] = []
_SOURCES_LOCK = threading.Lock()


def register(source: HealthMetrics) -> None:
    """Observe ``source`` from now on. In a process that delivers (it has the account guard, which sets the
    auth-pause gauge on every change), that gauge starts at 0 for the accounts not paused; a process without a
    dispatcher (``ctdd serve --no-dispatcher``) leaves it to the workers."""
    with _SOURCES_LOCK:
        _SOURCES.append(source)
    if source.guard is not None:
        for account in source.settings.accounts:
            if not source.guard.is_paused(account):
                account_paused.set(0, {"account": account})


def unregister(source: HealthMetrics) -> None:
    with _SOURCES_LOCK:
        if source in _SOURCES:
            _SOURCES.remove(source)


def _sources() -> list[HealthMetrics]:
    with _SOURCES_LOCK:
        return list(_SOURCES)


def _observe(read: Callable[[HealthMetrics], Iterable[tuple[float, dict]]]):
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for source in _sources():
            try:
                observations.extend(Observation(value, attributes) for value, attributes in read(source))
            except Exception:  # the database is away: no value this time (the failure shows in the logs)
                log.warning("metrics: cannot read the service's state", exc_info=True)
        return observations
    return callback


def _outbox(source: HealthMetrics):
    for (account, store, status), count in source.snapshot().outbox.items():
        yield count, {"account": account, "store": store, "status": status}


def _outbox_age(source: HealthMetrics):
    for (account, store), age in source.snapshot().outbox_oldest_due_age.items():
        yield age, {"account": account, "store": store}


def _inbox(source: HealthMetrics):
    for store, count in source.snapshot().inbox_pending.items():
        yield count, {"store": store}


def _inbox_age(source: HealthMetrics):
    for store, age in source.snapshot().inbox_oldest_age.items():
        yield age, {"store": store}


def _bulk(source: HealthMetrics):
    for account, count in source.snapshot().bulk_imports.items():
        yield count, {"account": account}


def _triggers(source: HealthMetrics):
    for (account, store, status), count in source.snapshot().triggers.items():
        yield count, {"account": account, "store": store, "status": status}


def _enrolment_used(source: HealthMetrics):
    for account, count in source.snapshot().enrolment_calls.items():
        yield count, {"account": account}


def _enrolment_allowed(source: HealthMetrics):
    for account in source.settings.accounts:
        yield source.settings.programs.enrolment_calls_per_hour, {"account": account}


def _backsync_lag(source: HealthMetrics):
    for account, lag in source.snapshot().backsync_lag.items():
        yield lag, {"account": account}


def _rate_remaining(source: HealthMetrics):
    for account, remaining in source.rate_remaining().items():
        yield remaining, {"account": account}


def _throttled(source: HealthMetrics):
    for account, seconds in source.throttled().items():
        yield seconds, {"account": account}


GAUGES = {
    "ctdd.outbox.messages": ("{message}", _outbox,
                             "Outbox messages by account, store and status (pending, in_flight, parked, dead)"),
    "ctdd.outbox.oldest_due_age": ("s", _outbox_age,
                                   "Age (since it was enqueued) of the oldest pending outbox message that is due"),
    "ctdd.inbox.pending": ("{event}", _inbox, "Queued events waiting to be applied, by store"),
    "ctdd.inbox.oldest_pending_age": ("s", _inbox_age, "Age of the oldest queued event waiting to be applied"),
    "ctdd.delivery.bulk_imports_active": ("{import}", _bulk, "Bulk imports in flight, by account"),
    "ctdd.programs.triggers": ("{trigger}", _triggers,
                               "Program triggers not decided or not sent yet, by account, store and status"),
    "ctdd.programs.enrolment_calls_used": ("{call}", _enrolment_used,
                                           "Enrolment calls made in the last hour, by account"),
    "ctdd.programs.enrolment_calls_allowed": ("{call}", _enrolment_allowed,
                                              "Enrolment calls allowed per rolling hour, by account"),
    "ctdd.backsync.lag": ("s", _backsync_lag, "Time since the last complete back-sync poll began, by account"),
    "ctdd.dotdigital.rate_budget.remaining": ("{call}", _rate_remaining,
                                              "Calls left in the account's Dotdigital rate-limit window"),
    "ctdd.delivery.account_throttled": ("s", _throttled,
                                        "Seconds the account's calls are still paused for after a throttle (429)"),
}

for _name, (_unit, _read, _description) in GAUGES.items():
    meter.create_observable_gauge(_name, callbacks=[_observe(_read)], unit=_unit, description=_description)
