"""A small in-test gRPC peer implementing SyncService.TrackEventBatch with scripted per-event results.

It is a legitimate peer for the adapters' and the backfill's ack / retry / dead-letter logic: it speaks the
real proto contract over a real grpc.aio server on loopback. ``script(event, attempt)`` decides each
event's result: return a google.rpc code (0 OK, 3 INVALID_ARGUMENT, 14 UNAVAILABLE, 13 INTERNAL); ``attempt``
counts how often the same body was seen (1 for the first time). ``fail_calls`` makes whole calls fail.
"""

from __future__ import annotations

import base64
import collections
import json
from typing import Callable

import grpc

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc

OK, INVALID_ARGUMENT, INTERNAL, UNAVAILABLE = 0, 3, 13, 14


def by_marker(event: pb.TrackEventRequest, attempt: int) -> int:
    """Default script: the delivery's JSON ``ctdd_test`` field says what to do.

    ``"poison"`` -> INVALID_ARGUMENT; ``"flaky"`` -> UNAVAILABLE on the first attempt, then OK;
    ``"down"`` -> always UNAVAILABLE; anything else -> OK. The adapter probe (a subscription test
    notification) is always OK.
    """
    try:
        delivery = json.loads(event.commercetools_delivery)
        if isinstance(delivery.get("message"), dict):  # Pub/Sub push envelope
            delivery = json.loads(base64.b64decode(delivery["message"]["data"]))
        marker = delivery.get("ctdd_test")
    except (ValueError, KeyError, TypeError, AttributeError):
        return INVALID_ARGUMENT
    if marker == "poison":
        return INVALID_ARGUMENT
    if marker == "flaky":
        return UNAVAILABLE if attempt == 1 else OK
    if marker == "down":
        return UNAVAILABLE
    return OK


class ScriptedSyncService(pb_grpc.SyncServiceServicer):
    def __init__(self, script: Callable[[pb.TrackEventRequest, int], int] = by_marker):
        self.script = script
        self.calls: list[list[pb.TrackEventRequest]] = []
        self.accepted: list[pb.TrackEventRequest] = []  # events answered OK, in order
        self.attempts: collections.Counter[bytes] = collections.Counter()
        self.fail_calls = 0  # the next N calls fail as a whole with UNAVAILABLE
        self.delay = 0.0  # seconds to wait before answering a call with real events (a slow service)
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def is_probe(self, event: pb.TrackEventRequest) -> bool:
        return b'"ctdd-adapter-probe"' in event.commercetools_delivery

    def accepted_bodies_events(self) -> list[pb.TrackEventRequest]:
        return [e for e in self.accepted if not self.is_probe(e)]

    def accepted_bodies(self) -> list[bytes]:
        return [e.commercetools_delivery for e in self.accepted if not self.is_probe(e)]

    async def start(self, port: int = 0) -> "ScriptedSyncService":
        self.server = grpc.aio.server()
        pb_grpc.add_SyncServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def TrackEventBatch(self, request, context):
        import asyncio

        self.calls.append(list(request.events))
        if self.delay and not all(self.is_probe(e) for e in request.events):
            await asyncio.sleep(self.delay)
        if self.fail_calls > 0:
            self.fail_calls -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")
        results = []
        for index, event in enumerate(request.events):
            self.attempts[event.commercetools_delivery] += 1
            code = OK if self.is_probe(event) else self.script(event, self.attempts[event.commercetools_delivery])
            if code == OK:
                self.accepted.append(event)
                results.append(pb.TrackEventResult(index=index, code=OK, response=pb.TrackEventResponse()))
            else:
                results.append(pb.TrackEventResult(index=index, code=code, message=f"scripted code {code}",
                                                   retryable=code != INVALID_ARGUMENT))
        return pb.TrackEventBatchResponse(results=results)


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
                   what: str = "condition"):
    """Poll ``predicate`` (sync) until it returns a truthy value."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
