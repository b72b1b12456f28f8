"""LISTEN for NOTIFY on PostgreSQL (the outbox's and the inbox's channels), so idle processes wake as soon as work
is committed.

Every enqueue runs ``NOTIFY ctdd_outbox`` inside its transaction (``ctdd.delivery.outbox.enqueue``); PostgreSQL
delivers it to every listening session when the transaction commits. The listener keeps one dedicated
autocommit psycopg 3 connection per dispatcher, outside the SQLAlchemy pool. If the connection drops it
reconnects with backoff and wakes the dispatcher once (a notification may have been missed meanwhile);
the dispatcher's poll interval remains the safety net.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import psycopg
from sqlalchemy.engine import Engine

from ctdd.db.engine import libpq_url
from ctdd.retry import backoff_delay

log = logging.getLogger(__name__)


class NotifyListener:
    def __init__(self, engine: Engine, on_notify: Callable[[], None], *, channel: str):
        self._url = libpq_url(engine)
        self._on_notify = on_notify
        self._channel = channel
        self._task: asyncio.Task | None = None
        self._conn: psycopg.AsyncConnection | None = None
        #: notifications received (observability and tests)
        self.received = 0
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-listen")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:  # pragma: no cover - closing a broken connection
                pass
            self._conn = None

    async def _run(self) -> None:
        failures = 0  # in a row, since the last successful LISTEN
        first = True
        while True:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
                await self._conn.execute(f"LISTEN {self._channel}")
                self.connected.set()
                if not first:
                    self._on_notify()  # something may have been enqueued while we were away
                first = False
                failures = 0
                async for _ in self._conn.notifies():
                    self.received += 1
                    self._on_notify()
                raise psycopg.OperationalError("notification stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                failures += 1
                backoff = backoff_delay(failures, base=0.5, cap=10.0)
                log.warning("LISTEN %s connection lost (%s); reconnecting in %.1fs", self._channel, exc, backoff)
                if self._conn is not None:
                    try:
                        await self._conn.close()
                    except Exception:
                        pass
                    self._conn = None
                await asyncio.sleep(backoff)
