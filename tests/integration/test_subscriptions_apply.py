"""``ctdd commercetools subscriptions apply`` against the fake commercetools API over real HTTP."""

from __future__ import annotations

import json

import pytest

from support import commercetools_section
from ctdd.cli import main
from ctdd.commercetools.subscriptions import (
    CUSTOMER_MESSAGES,
    ORDER_MESSAGES,
    build_destination,
    build_format,
    desired_subscriptions,
    plan,
)
from ctdd.testing.commercetools_fake import FakeCommercetools

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/ct-events"
OTHER_QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/ct-events-v2"
KEYS = ["ctdd-uk-customers", "ctdd-uk-orders", "ctdd-uk-payments"]


@pytest.fixture
def fake():
    with FakeCommercetools(project_key="shop-eu", client_secret="ct-secret-value") as f:
        yield f


@pytest.fixture
def config(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("CT_SECRET", fake.client_secret)
    path = tmp_path / "ctdd.toml"
    path.write_text(f"""
[accounts.main]
region = "r1"

{commercetools_section(fake)}
[stores.uk]
account = "main"
commercetools = "shop"
""")
    return path


def apply(config, *extra: str, queue: str = QUEUE) -> int:
    return main(["commercetools", "subscriptions", "apply", "--config", str(config), "--store", "uk",
                 "--destination-type", "SQS", "--queue-url", queue, "--region", "eu-west-1", *extra])


def subscription_writes(fake) -> list:
    return [r for r in fake.requests if "/subscriptions" in r.path and r.method in ("POST", "DELETE")]


def test_dry_run_prints_the_plan_and_writes_nothing(fake, config, capsys):
    assert apply(config, "--dry-run") == 0
    out = capsys.readouterr().out
    for key in KEYS:
        assert f"create    {key}" in out
    assert "messages customer: CustomerCreated" in out and "changes: customer" in out
    assert "dry run" in out
    assert fake.all("subscriptions") == []
    assert subscription_writes(fake) == []


def test_apply_creates_then_is_idempotent_then_updates_a_changed_destination(fake, config, capsys):
    assert apply(config) == 0
    created = {s["key"]: s for s in fake.all("subscriptions")}
    assert sorted(created) == KEYS
    customers = created["ctdd-uk-customers"]
    assert customers["destination"] == {"type": "SQS", "queueUrl": QUEUE, "region": "eu-west-1",
                                        "authenticationMode": "IAM"}
    assert customers["messages"] == [{"resourceTypeId": "customer", "types": list(CUSTOMER_MESSAGES)}]
    assert customers["changes"] == [{"resourceTypeId": "customer"}]  # some customer updates have no message
    assert set(created["ctdd-uk-orders"]["messages"][0]["types"]) == set(ORDER_MESSAGES)
    assert set(created["ctdd-uk-payments"]["messages"][0]["types"]) == {"PaymentTransactionAdded",
                                                                        "PaymentTransactionStateChanged"}
    assert {s["format"]["type"] for s in created.values()} == {"Platform"}
    assert "3 created" in capsys.readouterr().out

    # second run: nothing to do, nothing written
    fake.reset_requests()
    assert apply(config) == 0
    out = capsys.readouterr().out
    assert all(f"unchanged {key}" in out for key in KEYS)
    assert subscription_writes(fake) == []
    assert {s["key"]: s["version"] for s in fake.all("subscriptions")} == {k: s["version"] for k, s in created.items()}

    # a changed destination: dry run shows the diff, apply sends changeDestination only
    assert apply(config, "--dry-run", queue=OTHER_QUEUE) == 0
    out = capsys.readouterr().out
    assert all(f"update    {key}" in out for key in KEYS)
    assert OTHER_QUEUE in out and QUEUE in out
    assert subscription_writes(fake) == []
    assert apply(config, queue=OTHER_QUEUE) == 0
    writes = subscription_writes(fake)
    assert len(writes) == 3
    assert all([a["action"] for a in w.json["actions"]] == ["changeDestination"] for w in writes)
    after = {s["key"]: s for s in fake.all("subscriptions")}
    assert {s["destination"]["queueUrl"] for s in after.values()} == {OTHER_QUEUE}
    assert all(after[k]["version"] == created[k]["version"] + 1 for k in KEYS)
    assert all(after[k]["id"] == created[k]["id"] for k in KEYS)  # updated in place, not recreated


def test_drifted_messages_are_restored_and_other_subscriptions_left_alone(fake, config, capsys):
    assert apply(config) == 0
    other = fake.add("subscriptions", {"key": "someone-else", "destination": {"type": "SQS", "queueUrl": QUEUE,
                                                                              "region": "eu-west-1"},
                                       "messages": [{"resourceTypeId": "product", "types": []}], "changes": [],
                                       "format": {"type": "Platform"}, "status": "Healthy"})
    orders = next(s for s in fake.all("subscriptions") if s["key"] == "ctdd-uk-orders")
    fake.bump_version("subscriptions", orders["id"], messages=[{"resourceTypeId": "order", "types": ["OrderCreated"]}])
    capsys.readouterr()
    fake.reset_requests()
    assert apply(config) == 0
    out = capsys.readouterr().out
    assert "update    ctdd-uk-orders" in out and "+ DeliveryAdded" in out
    [write] = subscription_writes(fake)
    assert [a["action"] for a in write.json["actions"]] == ["setMessages"]
    assert fake.get("subscriptions", other["id"]) == other


def test_format_change_recreates(fake, config, capsys):
    assert apply(config) == 0
    capsys.readouterr()
    assert apply(config, "--format", "CloudEvents") == 0
    assert "recreate  ctdd-uk-customers" in capsys.readouterr().out
    assert {s["format"]["type"] for s in fake.all("subscriptions")} == {"CloudEvents"}
    assert sorted(s["key"] for s in fake.all("subscriptions")) == KEYS


def test_bad_destination_arguments_are_a_config_error(config, capsys):
    assert main(["commercetools", "subscriptions", "apply", "--config", str(config), "--store", "uk",
                 "--destination-type", "GoogleCloudPubSub", "--project-id", "p"]) == 2
    assert "needs topic" in capsys.readouterr().err


def test_plan_compares_message_types_as_sets_and_ignores_secrets():
    destination = build_destination("SNS", topicArn="arn:aws:sns:eu-west-1:1:t", authenticationMode="Credentials",
                                    accessKey="AK", accessSecret="secret-1")
    desired = desired_subscriptions("uk", destination, build_format())
    current = json.loads(json.dumps(desired))
    for s in current:
        s["id"], s["version"] = s["key"], 3
        for m in s["messages"]:
            m["types"] = list(reversed(m["types"]))
        s["destination"]["accessSecret"] = "****"  # not returned as sent
    assert [c.action for c in plan(current, desired)] == ["unchanged"] * 3
    changes = plan([], desired)
    assert all("secret-1" not in line for c in changes for line in c.diff)
