"""``ctdd adapter sqs`` against a real SQS API on loopback (moto's server), forwarding to a real gRPC peer.

Most tests drive ``SqsAdapter`` in-process (one poll at a time, so each step can be checked); one runs the
``ctdd adapter sqs`` command as a subprocess and stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid

import boto3
import pytest

from support import stop_with_sigterm
from support.scripted_sync_service import wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from support.scripted_sync_service import ScriptedSyncService
from ctdd.adapters.sqs import SqsAdapter, SqsAdapterConfig, backoff_seconds

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_SESSION_TOKEN": "testing"}


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def sqs(moto_endpoint):
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def queues(sqs):
    name = f"ct-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    queue = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    return queue, dlq


@pytest.fixture
async def peer():
    service = await ScriptedSyncService().start()
    yield service
    await service.stop()


def body(marker: str, n: int) -> str:
    # a platform-format-looking delivery; the scripted peer reads `ctdd_test`
    return json.dumps({"notificationType": "Message", "id": f"{marker}-{n}", "ctdd_test": marker,
                       "resource": {"typeId": "customer", "id": f"c-{n}"}, "email": f"person{n}@example.com"})


def counts(sqs, url) -> tuple[int, int]:
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def drain(sqs, url, wait=1) -> list[dict]:
    out = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
                                  MessageAttributeNames=["All"]).get("Messages", [])
        if not got:
            return out
        out += got


def make_adapter(moto_endpoint, queue, target, dlq=None, **kw) -> SqsAdapter:
    config = SqsAdapterConfig(queue_url=queue, dlq_url=dlq, endpoint_url=moto_endpoint, region="us-east-1",
                              target=target, store_key="uk", wait=1, retry_base=1.0, retry_cap=2.0,
                              rpc_timeout=3.0, **kw)
    return SqsAdapter(config)


def test_backoff_grows_with_receive_count_and_is_capped():
    assert [backoff_seconds(n, 2.0, 60) for n in (1, 2, 3, 4, 5, 6, 7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff_seconds(0, 0.1, 60) == 1  # SQS visibility is whole seconds; never 0 (no hot loop)


async def test_ok_deleted_poison_to_dlq_retryable_redelivered(moto_endpoint, sqs, queues, peer):
    queue, dlq = queues
    sent = {}
    for marker, n in [("good", 1), ("good", 2), ("poison", 3), ("flaky", 4), ("good", 5)]:
        b = body(marker, n)
        mid = sqs.send_message(QueueUrl=queue, MessageBody=b, MessageAttributes={
            "origin": {"DataType": "String", "StringValue": "commercetools"}})["MessageId"]
        sent[mid] = b
    adapter = make_adapter(moto_endpoint, queue, peer.target, dlq)
    try:
        report = None
        seen: dict[str, str] = {}
        while len(seen) < 5:  # SQS may hand out fewer than 10 per receive
            report = await adapter.poll_once()
            seen.update(report.outcomes)
        by_marker = {json.loads(sent[m])["ctdd_test"] + json.loads(sent[m])["id"][-2:]: k for m, k in seen.items()}
        assert sorted(by_marker.values()) == ["ok", "ok", "ok", "poison", "retry"]

        # the bodies reached the service byte for byte, with the store key and live priority
        first_try = [e for call in peer.calls for e in call]
        assert {e.commercetools_delivery.decode() for e in first_try} == set(sent.values())
        assert {e.store_key for e in first_try} == {"uk"}
        assert {e.priority for e in first_try} == {pb.PRIORITY_LIVE}

        # accepted ones are gone; the flaky one is still in the queue (invisible for its backoff)
        assert counts(sqs, queue) == (0, 1)
        # the poison one is in the DLQ, verbatim, with its attributes and the error code
        dead = drain(sqs, dlq)
        assert len(dead) == 1
        poison_mid = next(m for m, b in sent.items() if '"poison"' in b)
        assert dead[0]["Body"] == sent[poison_mid]
        attrs = dead[0]["MessageAttributes"]
        assert attrs["ctdd-error-code"]["StringValue"] == "3"
        assert attrs["ctdd-source-message-id"]["StringValue"] == poison_mid
        assert attrs["origin"]["StringValue"] == "commercetools"

        # a later poll (after the 1 s backoff) gets the retryable message again, and now it is accepted
        deadline = time.monotonic() + 10
        while counts(sqs, queue) != (0, 0) and time.monotonic() < deadline:
            await adapter.poll_once()
        assert counts(sqs, queue) == (0, 0)
        flaky = next(b for b in sent.values() if '"flaky"' in b)
        assert peer.attempts[flaky.encode()] == 2
        assert sorted(peer.accepted_bodies()) == sorted(b.encode() for b in sent.values() if '"poison"' not in b)
    finally:
        await adapter.close()


async def test_nothing_deleted_while_target_is_down_then_delivered(moto_endpoint, sqs, queues):
    queue, dlq = queues
    with socket.socket() as s:  # a port where nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bodies = [body("good", n) for n in range(4)]
    for b in bodies:
        sqs.send_message(QueueUrl=queue, MessageBody=b)
    adapter = make_adapter(moto_endpoint, queue, f"127.0.0.1:{port}", dlq)
    try:
        received = 0
        while received < 4:
            report = await adapter.poll_once()
            received += report.received
            assert report.deleted == 0 and set(report.outcomes.values()) <= {"retry"}
        assert counts(sqs, queue) == (0, 4)  # all still there, backing off
        assert drain(sqs, dlq, wait=0) == []
    finally:
        await adapter.close()

    # the target comes up on that port: the same messages are delivered by a later poll
    peer = await ScriptedSyncService().start(port=port)
    adapter = make_adapter(moto_endpoint, queue, peer.target, dlq)
    try:
        deadline = time.monotonic() + 15
        while len(peer.accepted_bodies()) < 4 and time.monotonic() < deadline:
            await adapter.poll_once()
        assert sorted(peer.accepted_bodies()) == sorted(b.encode() for b in bodies)
        assert counts(sqs, queue) == (0, 0)
    finally:
        await adapter.close()
        await peer.stop()


async def test_whole_call_failure_deletes_nothing(moto_endpoint, sqs, queues, peer):
    queue, dlq = queues
    for n in range(3):
        sqs.send_message(QueueUrl=queue, MessageBody=body("good", n))
    peer.fail_calls = 100
    adapter = make_adapter(moto_endpoint, queue, peer.target, dlq)
    try:
        report = await adapter.poll_once()
        assert report.received >= 1 and report.deleted == 0
        assert set(report.outcomes.values()) == {"retry"}
        visible, invisible = counts(sqs, queue)
        assert visible + invisible == 3
    finally:
        await adapter.close()


async def test_poison_without_dlq_is_left_for_the_redrive_policy(moto_endpoint, sqs, peer):
    name = f"ct-{uuid.uuid4().hex[:8]}"
    redrive_dlq = sqs.create_queue(QueueName=f"{name}-redrive")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=redrive_dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(QueueName=name, Attributes={
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "2"})})["QueueUrl"]
    poison = body("poison", 1)
    sqs.send_message(QueueUrl=queue, MessageBody=poison)
    adapter = make_adapter(moto_endpoint, queue, peer.target)
    try:
        report = await adapter.poll_once()
        assert report.outcomes and set(report.outcomes.values()) == {"poison"}
        assert report.poison_left == 1 and report.deleted == 0
        assert counts(sqs, queue) == (0, 1)  # left in the queue with a backoff, not deleted
        # received again after the backoff; then SQS's redrive policy moves it (maxReceiveCount 2)
        deadline = time.monotonic() + 10
        while not drain(sqs, redrive_dlq, wait=0) and time.monotonic() < deadline:
            await adapter.poll_once()
            await asyncio.sleep(0.2)
        assert counts(sqs, queue) == (0, 0)
        assert peer.attempts[poison.encode()] == 2
    finally:
        await adapter.close()


async def test_cli_adapter_runs_until_sigterm(moto_endpoint, sqs, queues, peer, tmp_path):
    queue, dlq = queues
    bodies = [body("good", n) for n in range(12)] + [body("poison", 99)]
    for b in bodies:
        sqs.send_message(QueueUrl=queue, MessageBody=b)
    log_path = tmp_path / "adapter.log"
    env = {**os.environ, **AWS_ENV, "CTDD_LOG_LEVEL": "INFO"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ctdd", "adapter", "sqs", "--queue-url", queue, "--dlq-url", dlq,
             "--endpoint-url", moto_endpoint, "--region", "us-east-1", "--target", peer.target, "--store", "uk",
             "--wait", "1", "--retry-base", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        await wait_for(lambda: len(peer.accepted_bodies()) == 12, timeout=20, what="12 accepted messages")
        await wait_for(lambda: counts(sqs, queue) == (0, 0), timeout=10, what="source queue empty")
    finally:
        returncode = await stop_with_sigterm(proc)
    output = log_path.read_text()
    assert returncode == 0, output[-3000:]
    assert "SQS adapter stopped" in output
    assert len(drain(sqs, dlq)) == 1
    # logs carry message ids and codes, never bodies (personal data)
    assert "@example.com" not in output and "person" not in output
    assert "refused by the service (code 3" in output


async def test_sigterm_finishes_the_batch_in_hand(moto_endpoint, sqs, queues, peer, tmp_path):
    queue, dlq = queues
    for n in range(3):
        sqs.send_message(QueueUrl=queue, MessageBody=body("good", n))
    peer.delay = 1.5  # SIGTERM arrives while the batch is being forwarded
    log_path = tmp_path / "adapter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ctdd", "adapter", "sqs", "--queue-url", queue, "--dlq-url", dlq,
             "--endpoint-url", moto_endpoint, "--region", "us-east-1", "--target", peer.target, "--store", "uk",
             "--wait", "1"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **AWS_ENV},
        )
    try:
        await wait_for(lambda: any(not peer.is_probe(e) for call in peer.calls for e in call), timeout=15,
                       what="a batch in flight")
    finally:
        returncode = await stop_with_sigterm(proc)
    assert returncode == 0, log_path.read_text()[-3000:]
    in_flight = [e for call in peer.calls for e in call if not peer.is_probe(e)]
    # the batch that was in flight was settled: accepted and deleted, nothing left behind
    assert len(peer.accepted_bodies()) == len(in_flight) >= 1
    visible, invisible = counts(sqs, queue)
    assert visible + invisible == 3 - len(in_flight) and invisible == 0


# -- against the real service -----------------------------------------------------------------------

@pytest.mark.parametrize("processing", [pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED], ids=["applied", "queued"])
async def test_end_to_end_with_the_real_service(moto_endpoint, sqs, queues, service_factory, sqlite_url, sandbox,
                                                processing):
    """SQS -> adapter -> ctdd-sync -> Dotdigital sandbox: a CustomerCreated (raw and SNS-wrapped) becomes a
    contact, its redelivery changes nothing, and an unparseable body ends in the DLQ - whether the adapter
    has events applied before the answer or queued in the service's event inbox (``--queued``)."""
    from support import ct_payloads as ct
    from support import all_settled, make_settings, wait_for as wait_settled
    from ctdd.testing.commercetools_fake import FakeCommercetools

    queue, dlq = queues
    with FakeCommercetools(project_key=ct.PROJECT) as fake_ct:
        svc = await service_factory(make_settings(sqlite_url, sandbox, commercetools=fake_ct))
        created = ct.message("customer", "cust-sqs-1", "CustomerCreated", version=1,
                             customer=ct.customer("cust-sqs-1", "Ana@Example.com", first="Ana"))
        other = ct.message("customer", "cust-sqs-2", "CustomerCreated", version=1,
                           customer=ct.customer("cust-sqs-2", "bo@example.com", first="Bo"))
        sqs.send_message(QueueUrl=queue, MessageBody=ct.raw(created).decode())
        sqs.send_message(QueueUrl=queue, MessageBody=ct.sns_notification(other).decode())
        sqs.send_message(QueueUrl=queue, MessageBody=ct.raw(created).decode())  # at-least-once: a duplicate
        sqs.send_message(QueueUrl=queue, MessageBody="this is not a commercetools delivery")
        adapter = make_adapter(moto_endpoint, queue, f"127.0.0.1:{svc.app.port}", dlq, processing=processing)
        try:
            deadline = time.monotonic() + 15
            while counts(sqs, queue) != (0, 0) and time.monotonic() < deadline:
                await adapter.poll_once()
        finally:
            await adapter.close()
        assert counts(sqs, queue) == (0, 0)
        [dead] = drain(sqs, dlq)
        assert dead["Body"] == "this is not a commercetools delivery"
        queued = svc.rows("SELECT status FROM event_inbox")
        assert len(queued) == (2 if processing == pb.PROCESSING_QUEUED else 0)  # the duplicate is not stored
        await wait_settled(lambda: sandbox.get_contact(email="bo@example.com") is not None, what="inbox")
        await wait_settled(lambda: all_settled(svc), what="deliveries")
        assert sandbox.get_contact(email="ana@example.com")["dataFields"]["FIRSTNAME"] == "Ana"
        assert sandbox.get_contact(email="bo@example.com")["dataFields"]["FIRSTNAME"] == "Bo"
        assert len([r for r in sandbox.requests if r.method == "PATCH" and r.status < 300]) == 2  # duplicate dropped
