"""Dead-lettering with RabbitMQ's ``x-death``: the header builder, and pika against the real
server (reject without requeue → the DLX's bound queues get the message with ``x-death``)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from conftest import ServerFactory, ServerProcess

from core.records import Message
from handlers.amqp.deadletter import dead_letter
from handlers.amqp.mapping import message_to_amqp

TIMEOUT = 10.0
NOW_MS = 1_700_000_000_000


def test_x_death_entry_and_first_death_headers() -> None:
    message = Message(b"work", b"body", [("ps.expiry-ms", b"5000")], 1)
    out = message_to_amqp(dead_letter(message, queue="work", reason="rejected",
                                      exchange="orders", now_ms=NOW_MS, routing_key="dead"))
    assert out.routing_key == "dead" and out.body == b"body"
    assert out.properties.expiration is None
    headers = out.properties.headers
    assert headers["x-death"] == [{
        "count": 1, "reason": "rejected", "queue": "work", "exchange": "orders",
        "routing-keys": ["work"], "original-expiration": "5000",
        "time": datetime.datetime.fromtimestamp(NOW_MS // 1000, datetime.UTC)}]
    assert (headers["x-first-death-reason"], headers["x-first-death-queue"],
            headers["x-first-death-exchange"]) == ("rejected", "work", "orders")


def test_same_queue_and_reason_counts_up_and_moves_to_the_front() -> None:
    message = Message(b"a", b"body", [], 1)
    message = dead_letter(message, queue="a", reason="rejected", exchange="", now_ms=NOW_MS)
    message = dead_letter(message, queue="b", reason="expired", exchange="x", now_ms=NOW_MS)
    message = dead_letter(message, queue="a", reason="rejected", exchange="", now_ms=NOW_MS)
    headers = message_to_amqp(message).properties.headers
    assert [(d["queue"], d["reason"], d["count"]) for d in headers["x-death"]] == [
        ("a", "rejected", 2), ("b", "expired", 1)]
    assert headers["x-first-death-queue"] == "a"


# -- pika against the real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("amqp-xdeath"))
    try:
        yield factory("amqp", log_level="info")
    finally:
        factory.close()


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[Any]:
    host, port = server.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port, connection_attempts=1))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()


def get(ch: Any, queue: str, *, ack: bool = True) -> tuple[Any, Any, bytes]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=ack)
        if method is not None:
            return method, props, bytes(body)
        assert time.monotonic() < deadline, f"nothing arrived in {queue}"
        time.sleep(0.05)


@pytest.mark.slow
def test_reject_routes_through_the_dlx_with_x_death(channel: Any) -> None:
    channel.exchange_declare("xd-dlx", "direct")
    channel.exchange_declare("xd-audit-x", "fanout")
    channel.exchange_bind("xd-audit-x", "xd-dlx", "dead")  # the DLX's own e2e binding
    channel.queue_declare("xd-dead", exclusive=True)
    channel.queue_bind("xd-dead", "xd-dlx", "dead")
    channel.queue_declare("xd-audit", exclusive=True)
    channel.queue_bind("xd-audit", "xd-audit-x")
    channel.queue_declare("xd-other", exclusive=True)
    channel.queue_bind("xd-other", "xd-dlx", "not-dead")
    channel.exchange_declare("xd-in", "topic")
    channel.queue_declare("xd-work", exclusive=True, arguments={
        "x-dead-letter-exchange": "xd-dlx", "x-dead-letter-routing-key": "dead"})
    channel.queue_bind("xd-work", "xd-in", "orders.#")
    channel.confirm_delivery()
    channel.basic_publish("xd-in", "orders.new", b"poison",
                          pika.BasicProperties(headers={"n": 1}, content_type="text/plain"))
    method, _, _ = get(channel, "xd-work", ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)
    for queue in ("xd-dead", "xd-audit"):
        _, props, body = get(channel, queue)
        assert body == b"poison" and props.content_type == "text/plain"
        assert props.headers["n"] == 1
        [death] = props.headers["x-death"]
        assert {k: death[k] for k in ("count", "reason", "queue", "exchange", "routing-keys")} \
            == {"count": 1, "reason": "rejected", "queue": "xd-work", "exchange": "xd-in",
                "routing-keys": ["orders.new"]}
        assert isinstance(death["time"], datetime.datetime)
        assert props.headers["x-first-death-reason"] == "rejected"
    method, _, _ = channel.basic_get("xd-other", auto_ack=True)
    assert method is None  # the DLX's type and bindings decide: key "dead" only


@pytest.mark.slow
def test_repeated_rejects_count_up(channel: Any) -> None:
    # a queue dead-lettering to itself through the default exchange
    channel.queue_declare("xd-loop", exclusive=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "xd-loop"})
    channel.confirm_delivery()
    channel.basic_publish("", "xd-loop", b"again")
    for expected in (1, 2, 3):
        method, props, body = get(channel, "xd-loop", ack=False)
        assert body == b"again"
        if expected > 1:
            [death] = props.headers["x-death"]
            assert death["count"] == expected - 1 and death["queue"] == "xd-loop"
        channel.basic_reject(method.delivery_tag, requeue=False)
