"""``ctdd adapter sqs``: long-polls an SQS queue fed by a commercetools Subscription (SQS destination, or an
SNS topic with an SQS subscription) and forwards the message bodies to ctdd-sync with TrackEventBatch.

Per message, after the service answered:

- **OK** (durably accepted): the message is deleted from the queue. Only then.
- **retryable** (UNAVAILABLE / INTERNAL, or the whole call failed: target down, deadline ...): the message is
  left in the queue. Its visibility is set to a backoff that grows with its ``ApproximateReceiveCount``
  (``retry_base * 2^(n-1)``, capped), so a failing message is not received again in a hot loop.
- **poison** (INVALID_ARGUMENT): with ``--dlq-url`` the body (and its message attributes, plus
  ``ctdd-error-code`` and ``ctdd-source-message-id``) is sent to the DLQ and then deleted from the source
  queue. Without a DLQ it is logged and left with the same growing backoff, so the queue's own redrive
  policy (``maxReceiveCount``) moves it.

Bodies are personal data: they are never logged; logs carry SQS message ids and result codes.
SIGTERM/SIGINT: the adapter stops polling, finishes the batch in hand (settles every message of it), then
exits. A long poll that is running when the signal arrives is awaited (at most ``--wait`` seconds).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.adapters.forwarder import OK, POISON, RETRY, EventForwarder, Outcome, delivery_request
from ctdd.retry import backoff_delay
from ctdd.telemetry import carrier_from_attributes

log = logging.getLogger(__name__)

MAX_VISIBILITY = 43200  # SQS maximum (12 h)


@dataclass
class SqsAdapterConfig:
    queue_url: str
    target: str
    store_key: str
    dlq_url: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    batch: int = 10  # messages per ReceiveMessage (SQS allows 1..10)
    wait: int = 20  # long-poll seconds (0..20)
    visibility_timeout: int | None = None  # None: the queue's default
    retry_base: float = 2.0  # seconds; visibility backoff for a retryable message received n times
    retry_cap: float = 300.0
    rpc_timeout: float = 30.0
    priority: int = pb.PRIORITY_LIVE
    #: PROCESSING_QUEUED: acknowledged once in ctdd-sync's event inbox (fetch failures retried there)
    processing: int = pb.PROCESSING_APPLIED


@dataclass
class BatchReport:
    received: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    poison_left: int = 0
    retry: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)  # SQS message id -> ok|poison|retry


def backoff_seconds(receive_count: int, base: float, cap: float) -> int:
    """Visibility delay for a message received ``receive_count`` times (whole seconds, at least 1)."""
    delay = backoff_delay(receive_count, base=base, cap=min(cap, MAX_VISIBILITY), max_exponent=30)
    return int(max(1, delay))


def make_sqs_client(config: SqsAdapterConfig):
    from ctdd.adapters.extras import require

    boto3 = require("boto3", extra="sqs", what="the SQS adapter")
    from botocore.config import Config

    return boto3.client(
        "sqs",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        config=Config(
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=5,
            read_timeout=config.wait + 15,
        ),
    )


class SqsAdapter:
    def __init__(self, config: SqsAdapterConfig, *, sqs_client=None, forwarder: EventForwarder | None = None):
        if not 1 <= config.batch <= 10:
            raise ValueError("--batch must be between 1 and 10 (an SQS limit)")
        if not 0 <= config.wait <= 20:
            raise ValueError("--wait must be between 0 and 20 seconds (an SQS limit)")
        self.config = config
        self.sqs = sqs_client or make_sqs_client(config)
        self.forwarder = forwarder or EventForwarder(config.target, timeout=config.rpc_timeout)
        self._transport_failures = 0

    async def close(self) -> None:
        await self.forwarder.close()

    # -- SQS calls, each in a worker thread (boto3 is blocking) ----------------------------------------

    async def _call(self, name: str, **kwargs) -> dict[str, Any]:
        return await asyncio.to_thread(getattr(self.sqs, name), **kwargs)

    async def check_queues(self) -> None:
        """Fail early when the queues cannot be reached; warn when poison messages would have nowhere to go."""
        attrs = (await self._call("get_queue_attributes", QueueUrl=self.config.queue_url,
                                  AttributeNames=["RedrivePolicy", "VisibilityTimeout"]))["Attributes"]
        if self.config.dlq_url:
            await self._call("get_queue_attributes", QueueUrl=self.config.dlq_url, AttributeNames=["QueueArn"])
        elif "RedrivePolicy" not in attrs:
            log.warning("no --dlq-url and the queue has no redrive policy: poison messages stay in the queue "
                        "(received again at most every %ss)", int(self.config.retry_cap))
        visibility = self.config.visibility_timeout or int(attrs.get("VisibilityTimeout", 30))
        if visibility <= self.config.rpc_timeout:
            log.warning("visibility timeout %ss is not longer than the RPC timeout %ss: a slow call may let the "
                        "message be received twice (the service deduplicates it)", visibility, self.config.rpc_timeout)

    async def receive(self) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = dict(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=self.config.batch,
            WaitTimeSeconds=self.config.wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"],
        )
        if self.config.visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = self.config.visibility_timeout
        return (await self._call("receive_message", **kwargs)).get("Messages", [])

    async def _delete(self, messages: list[dict]) -> int:
        if not messages:
            return 0
        resp = await self._call("delete_message_batch", QueueUrl=self.config.queue_url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ])
        for failed in resp.get("Failed", []):
            m = messages[int(failed["Id"])]
            # it will be received again; the service drops the duplicate
            log.warning("message %s: delete failed (%s); it will be redelivered", m["MessageId"], failed.get("Code"))
        return len(resp.get("Successful", []))

    async def _backoff(self, messages: list[dict]) -> None:
        if not messages:
            return
        entries = []
        for i, m in enumerate(messages):
            count = int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            entries.append({"Id": str(i), "ReceiptHandle": m["ReceiptHandle"],
                            "VisibilityTimeout": backoff_seconds(count, self.config.retry_base, self.config.retry_cap)})
        try:
            resp = await self._call("change_message_visibility_batch", QueueUrl=self.config.queue_url, Entries=entries)
            for failed in resp.get("Failed", []):
                log.warning("message %s: visibility change failed (%s)", messages[int(failed["Id"])]["MessageId"],
                            failed.get("Code"))
        except Exception as exc:  # the message reappears after the queue's visibility timeout anyway
            log.warning("changing visibility of %d message(s) failed: %s", len(messages), type(exc).__name__)

    async def _dead_letter(self, message: dict, outcome: Outcome) -> bool:
        attributes: dict[str, dict] = {}
        for name, value in list(message.get("MessageAttributes", {}).items())[:8]:
            clean = {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}
            if clean.get("DataType"):
                attributes[name] = clean
        attributes["ctdd-error-code"] = {"DataType": "Number", "StringValue": str(outcome.code)}
        attributes["ctdd-source-message-id"] = {"DataType": "String", "StringValue": message["MessageId"]}
        try:
            await self._call("send_message", QueueUrl=self.config.dlq_url, MessageBody=message["Body"],
                             MessageAttributes=attributes)
            return True
        except Exception as exc:
            log.error("message %s: could not be sent to the DLQ (%s); left in the queue",
                      message["MessageId"], type(exc).__name__)
            return False

    # -- one batch ------------------------------------------------------------------------------------

    async def process(self, messages: list[dict]) -> BatchReport:
        """Forward ``messages`` and settle each of them (delete, dead-letter or back off)."""
        report = BatchReport(received=len(messages))
        if not messages:
            return report
        events = [delivery_request(self.config.store_key, m["Body"].encode("utf-8"), self.config.priority,
                                   self.config.processing)
                  for m in messages]
        # each message's W3C trace context (traceparent / tracestate message attributes): the service continues it
        outcomes = await self.forwarder.forward(
            events, [carrier_from_attributes(m.get("MessageAttributes")) for m in messages])
        accepted, retry, poison = [], [], []
        for m, outcome in zip(messages, outcomes):
            report.outcomes[m["MessageId"]] = outcome.kind
            count = m.get("Attributes", {}).get("ApproximateReceiveCount", "?")
            if outcome.kind == OK:
                accepted.append(m)
                log.debug("message %s: accepted", m["MessageId"])
            elif outcome.kind == POISON:
                poison.append((m, outcome))
                log.warning("message %s: refused by the service (code %d, receive count %s)",
                            m["MessageId"], outcome.code, count)
                log.debug("message %s: reason: %s", m["MessageId"], outcome.message)
            else:
                retry.append(m)
                log.info("message %s: not accepted, retry later (code %d, receive count %s)",
                         m["MessageId"], outcome.code, count)

        # nothing got through (target down, or everything retryable): slow the polling down
        nothing_accepted = all(o.kind == RETRY for o in outcomes)
        self._transport_failures = self._transport_failures + 1 if nothing_accepted else 0

        report.deleted = await self._delete(accepted)
        moved = []
        for m, outcome in poison:
            if self.config.dlq_url:
                if await self._dead_letter(m, outcome):
                    moved.append(m)
                else:
                    retry.append(m)
            else:
                log.error("message %s: poison and no --dlq-url; left for the queue's redrive policy", m["MessageId"])
                retry.append(m)
                report.poison_left += 1
        if moved:
            deleted = await self._delete(moved)
            report.dead_lettered = len(moved)
            report.deleted += deleted
            for m in moved:
                log.warning("message %s: moved to the DLQ", m["MessageId"])
        await self._backoff(retry)
        report.retry = len(retry) - report.poison_left
        log.info("batch: %d received, %d accepted, %d dead-lettered, %d poison left, %d to retry",
                 report.received, len(accepted), report.dead_lettered, report.poison_left, report.retry)
        return report

    async def poll_once(self) -> BatchReport:
        return await self.process(await self.receive())

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; the batch in hand is always settled before returning."""
        await self.check_queues()
        log.info("SQS adapter: %s -> %s (store %s)", self.config.queue_url, self.config.target, self.config.store_key)
        receive_errors = 0
        while not stop.is_set():
            try:
                messages = await self.receive()
                receive_errors = 0
            except Exception as exc:
                receive_errors += 1
                delay = backoff_delay(receive_errors + 1, base=0.5, cap=30.0, max_exponent=6)
                log.warning("ReceiveMessage failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await _sleep_or_stop(stop, delay)
                continue
            await self.process(messages)
            if self._transport_failures:
                delay = backoff_delay(self._transport_failures + 1, base=0.5, cap=min(self.config.retry_cap, 30.0),
                                      max_exponent=6)
                await _sleep_or_stop(stop, delay)
        log.info("SQS adapter stopped")


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
