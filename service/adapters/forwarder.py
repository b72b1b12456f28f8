"""gRPC forwarding client shared by the adapters and the backfill.

``EventForwarder.forward`` sends events with ``TrackEventBatch`` (at most ``MAX_BATCH`` per call) and
classifies every event as ``ok``, ``poison`` or ``retry``:

- per-event ``code`` 0 -> ``ok`` (durably accepted);
- per-event ``code`` 3 (INVALID_ARGUMENT), or ``retryable`` false with a non-OK code -> ``poison``;
- any other per-event code -> ``retry``;
- a whole-call gRPC error (UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED ...) -> every event ``retry``
  (nothing was accepted);
- a whole-call INVALID_ARGUMENT (the batch itself was refused) is bisected down to single events so that
  one bad event cannot hold back the others; a single event refused that way is ``poison``.

``CoalescingForwarder`` gathers events submitted concurrently (for example by many HTTP requests) into
batches: a batch is sent once ``max_batch`` events are waiting or ``max_delay`` seconds have passed.

Traces: each event may come with the W3C trace context of its message (``traceparent`` / ``tracestate``
message attributes, ``ctdd.telemetry.carrier_from_attributes``). A call carries it as gRPC metadata, so the
service continues that trace, when its events share one context (a call has one parent); a batch mixing several
is forwarded without (``ctdd.telemetry.trace_metadata``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Sequence

import grpc

from ctdd.adapters.grpc_target import TargetSecurity
from ctdd.telemetry import trace_metadata
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: TrackEventBatch accepts at most this many events per call (proto contract).
MAX_BATCH = 500
#: google.rpc codes
CODE_OK = 0
CODE_INVALID_ARGUMENT = 3

OK = "ok"
POISON = "poison"
RETRY = "retry"

#: gRPC message size limit on the adapter side (the service allows 8 MiB).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """What became of one forwarded event."""

    kind: str  # OK | POISON | RETRY
    code: int  # google.rpc code (of the event, or of the whole call)
    message: str = ""
    response: pb.TrackEventResponse | None = None

    @property
    def ok(self) -> bool:
        return self.kind == OK


def delivery_request(store_key: str, body: bytes, priority: int = pb.PRIORITY_LIVE,
                     processing: int = pb.PROCESSING_APPLIED) -> pb.TrackEventRequest:
    """A TrackEventRequest carrying a commercetools subscription delivery verbatim."""
    return pb.TrackEventRequest(store_key=store_key, commercetools_delivery=body, priority=priority,
                                processing=processing)


def classify(result: pb.TrackEventResult) -> Outcome:
    if result.code == CODE_OK:
        return Outcome(OK, CODE_OK, "", result.response)
    if result.code == CODE_INVALID_ARGUMENT or not result.retryable:
        return Outcome(POISON, result.code, result.message)
    return Outcome(RETRY, result.code, result.message)


class EventForwarder:
    """Sends TrackEventBatch calls to one ctdd-sync target over a grpc.aio channel."""

    def __init__(self, target: str, *, timeout: float = 30.0, channel: grpc.aio.Channel | None = None,
                 security: TargetSecurity | None = None):
        self.target = target
        self.timeout = timeout
        self._own_channel = channel is None
        #: TLS, client certificate and bearer token for an authenticated target (ctdd.adapters.grpc_target)
        self.security = security or TargetSecurity()
        self.channel = channel or self.security.channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # fail fast while the target is down instead of waiting for the deadline
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 5000),
            ],
        )
        self.stub = pb_grpc.SyncServiceStub(self.channel)

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    async def __aenter__(self) -> "EventForwarder":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def forward(self, events: Sequence[pb.TrackEventRequest],
                      carriers: Sequence[dict[str, str]] | None = None) -> list[Outcome]:
        """One outcome per event, in order. Never raises for transport errors. ``carriers``: the W3C trace
        context of each event's message (see the module's docstring)."""
        carriers = list(carriers) if carriers is not None else [{}] * len(events)
        outcomes: list[Outcome] = []
        for start in range(0, len(events), MAX_BATCH):
            outcomes.extend(await self._forward_chunk(list(events[start:start + MAX_BATCH]),
                                                      carriers[start:start + MAX_BATCH]))
        return outcomes

    async def _forward_chunk(self, events: list[pb.TrackEventRequest],
                             carriers: Sequence[dict[str, str]] = ()) -> list[Outcome]:
        if not events:
            return []
        try:
            response = await self.stub.TrackEventBatch(
                pb.TrackEventBatchRequest(events=events), timeout=self.timeout, wait_for_ready=False,
                metadata=self.security.metadata + trace_metadata(carriers),
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                if len(events) == 1:
                    return [Outcome(POISON, CODE_INVALID_ARGUMENT, exc.details() or "")]
                mid = len(events) // 2
                log.warning("target refused a batch of %d events (INVALID_ARGUMENT); splitting it", len(events))
                return (await self._forward_chunk(events[:mid], carriers[:mid])
                        + await self._forward_chunk(events[mid:], carriers[mid:]))
            log.warning("TrackEventBatch to %s failed: %s; %d event(s) left for retry",
                        self.target, code.name, len(events))
            return [Outcome(RETRY, code.value[0], exc.details() or code.name)] * len(events)
        outcomes: list[Outcome | None] = [None] * len(events)
        for position, result in enumerate(response.results):
            # results are in request order; `index` says so explicitly
            index = result.index if 0 <= result.index < len(events) else position
            if outcomes[index] is None:
                outcomes[index] = classify(result)
        missing = [i for i, o in enumerate(outcomes) if o is None]
        if missing:
            log.error("TrackEventBatch answered %d result(s) for %d events; %d left for retry",
                      len(response.results), len(events), len(missing))
        return [o if o is not None else Outcome(RETRY, 13, "no result for this event") for o in outcomes]


class CoalescingForwarder:
    """Batches concurrently submitted events into TrackEventBatch calls."""

    def __init__(self, forwarder: EventForwarder, *, max_batch: int = 100, max_delay: float = 0.005,
                 max_in_flight: int = 8):
        self.forwarder = forwarder
        self.max_batch = min(max_batch, MAX_BATCH)
        self.max_delay = max_delay
        self._queue: asyncio.Queue[tuple[pb.TrackEventRequest, asyncio.Future, dict]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._task: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()
        self._gathering: list[tuple[pb.TrackEventRequest, asyncio.Future, dict]] = []

    def start(self) -> "CoalescingForwarder":
        self._task = asyncio.create_task(self._run(), name="coalescing-forwarder")
        return self

    async def submit(self, event: pb.TrackEventRequest, carrier: dict[str, str] | None = None) -> Outcome:
        """``carrier``: the W3C trace context of the event's message, if it has one."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((event, future, carrier or {}))
        return await asyncio.shield(future)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = self._gathering = [first]
            deadline = loop.time() + self.max_delay
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            await self._slots.acquire()
            self._gathering = []
            task = asyncio.create_task(self._send(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _send(self, batch) -> None:
        try:
            outcomes = await self.forwarder.forward([event for event, _, _ in batch],
                                                    [carrier for _, _, carrier in batch])
        except Exception as exc:  # defensive: a bug must not leave callers hanging
            log.exception("forwarding a batch failed")
            outcomes = [Outcome(RETRY, 13, f"adapter error: {type(exc).__name__}")] * len(batch)
        finally:
            self._slots.release()
        for (_, future, _), outcome in zip(batch, outcomes):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        """Stop batching; batches already being sent finish first."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        unsent = list(self._gathering)
        self._gathering = []
        while not self._queue.empty():
            unsent.append(self._queue.get_nowait())
        for _, future, _ in unsent:  # nothing of these was sent
            if not future.done():
                future.set_result(Outcome(RETRY, 14, "adapter shutting down"))


def probe_event(store_key: str) -> pb.TrackEventRequest:
    """A subscription test notification: the service checks the store key and ignores the rest."""
    body = {"notificationType": "ResourceCreated", "projectKey": "ctdd-probe",
            "resource": {"typeId": "subscription", "id": "ctdd-adapter-probe"},
            "resourceUserProvidedIdentifiers": {"key": "ctdd-adapter-probe"}, "version": 1,
            "modifiedAt": "2026-01-01T00:00:00.000Z"}
    import json

    return delivery_request(store_key, json.dumps(body).encode())


async def probe_store(forwarder: EventForwarder, store_key: str) -> Outcome:
    """Check that the target accepts ``store_key`` before forwarding real messages: with a wrong store key
    every message would be refused as poison and dead-lettered."""
    return (await forwarder.forward([probe_event(store_key)]))[0]
