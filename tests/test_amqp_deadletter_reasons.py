"""``x-death`` on every AMQP dead letter: messages that expire (``x-message-ttl``, a per-message
``expiration``) or are dropped by ``x-max-length`` (drop-head) are dead-lettered by the core
through the queue's rewrite hook, with the reasons ``expired`` and ``maxlen`` RabbitMQ uses.

The hook alone, then pika against the real server reading ``x-death`` from the dead letter
queue (rejects are covered by ``test_amqp_dlx_xdeath.py``)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from conftest import ServerFactory, ServerProcess

from core.records import Message
from core.subscriptions.redelivery import DeadLetterReason
from handlers.amqp.deadletter import rewriter
from handlers.amqp.mapping import message_to_amqp

TIMEOUT = 10.0
NOW_MS = 1_700_000_000_000

#: the core hands its dead letters (with their reasons) to the policy's rewrite hook once
#: core/subscriptions/subscription.py and purging.py call redelivery.dead_letters /
#: dead_letter_dropped; the end-to-end tests need that
# -- the hook -----------------------------------------------------------------------------------


def test_rewriter_adds_x_death_for_the_core_reason() -> None:
    clock = iter([NOW_MS, NOW_MS + 5000])
    rewrite = rewriter(queue="work", exchange="orders", routing_key="dead",
                       clock_ms=lambda: next(clock))
    message = Message(b"orders.new", b"body", [("ps.expiry-ms", b"100"), ("n", b"1")], 1)
    once = rewrite(message, DeadLetterReason.EXPIRED)
    assert once.key == b"dead" and once.value == b"body" and once.timestamp_ms == 1
    out = message_to_amqp(once)
    assert out.properties.expiration is None  # must not expire again in the dead letter queue
    headers = out.properties.headers
    assert headers["n"] == "1"
    assert headers["x-death"] == [{
        "count": 1, "reason": "expired", "queue": "work", "exchange": "orders",
        "routing-keys": ["orders.new"], "original-expiration": "100",
        "time": datetime.datetime.fromtimestamp(NOW_MS // 1000, datetime.UTC)}]
    assert (headers["x-first-death-reason"], headers["x-first-death-queue"],
            headers["x-first-death-exchange"]) == ("expired", "work", "orders")
    assert not any(name.startswith("ps.dlq.") for name in headers)
    # dead-lettered again from the same queue for another reason: a new entry in front
    twice = message_to_amqp(rewrite(once, DeadLetterReason.MAXLEN)).properties.headers
    assert [(d["reason"], d["count"]) for d in twice["x-death"]] == [
        ("maxlen", 1), ("expired", 1)]
    assert twice["x-first-death-reason"] == "expired"


def test_rewriter_keeps_the_key_without_a_dead_letter_routing_key() -> None:
    rewrite = rewriter(queue="q", exchange="", routing_key=None, clock_ms=lambda: NOW_MS)
    out = message_to_amqp(rewrite(Message(b"q", b"x"), DeadLetterReason.REJECTED))
    assert out.routing_key == "q"
    [death] = out.properties.headers["x-death"]
    assert (death["reason"], death["exchange"], death["routing-keys"]) == ("rejected", "", ["q"])


# -- pika against the real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("amqp-dl-reasons"))
    try:
        yield factory("amqp", log_level="info")
    finally:
        factory.close()


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[Any]:
    host, port = server.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port, connection_attempts=1))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        if conn.is_open:
            conn.close()


def get(ch: Any, queue: str) -> tuple[Any, bytes]:
    """Properties and body of the next message of ``queue`` (auto-ack), waiting for it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return props, bytes(body)
        assert time.monotonic() < deadline, f"nothing arrived in {queue}"
        time.sleep(0.05)


def expire(ch: Any, queue: str, wait_s: float) -> None:
    """Let the queue's messages expire, then read it: expired messages are dead-lettered when
    the queue is next read."""
    time.sleep(wait_s)
    method, _, _ = ch.basic_get(queue, auto_ack=True)
    assert method is None


def death(props: Any) -> dict[str, Any]:
    [entry] = props.headers["x-death"]
    assert isinstance(entry.pop("time"), datetime.datetime)
    return dict(entry)


@pytest.mark.slow
def test_queue_ttl_dead_letters_carry_x_death_expired(channel: Any) -> None:
    channel.exchange_declare("xr-dlx", "direct")
    channel.queue_declare("xr-dead", exclusive=True)
    channel.queue_bind("xr-dead", "xr-dlx", "expired")
    channel.exchange_declare("xr-in", "topic")
    channel.queue_declare("xr-ttl", exclusive=True, arguments={
        "x-message-ttl": 100, "x-dead-letter-exchange": "xr-dlx",
        "x-dead-letter-routing-key": "expired"})
    channel.queue_bind("xr-ttl", "xr-in", "orders.#")
    channel.basic_publish("xr-in", "orders.late", b"too late",
                          pika.BasicProperties(headers={"n": 1}, content_type="text/plain"))
    expire(channel, "xr-ttl", 0.3)
    props, body = get(channel, "xr-dead")
    assert body == b"too late" and props.content_type == "text/plain"
    assert props.headers["n"] == 1
    assert death(props) == {"count": 1, "reason": "expired", "queue": "xr-ttl",
                            "exchange": "xr-in", "routing-keys": ["orders.late"]}
    assert (props.headers["x-first-death-reason"], props.headers["x-first-death-queue"],
            props.headers["x-first-death-exchange"]) == ("expired", "xr-ttl", "xr-in")
    assert not any(name.startswith("ps.dlq.") for name in props.headers)


@pytest.mark.slow
def test_per_message_expiration_dead_letters_carry_x_death(channel: Any) -> None:
    channel.exchange_declare("xr-fan", "fanout")
    channel.queue_declare("xr-fan-dead", exclusive=True)
    channel.queue_bind("xr-fan-dead", "xr-fan")
    channel.queue_declare("xr-exp", exclusive=True, arguments={"x-dead-letter-exchange": "xr-fan"})
    channel.basic_publish("", "xr-exp", b"short", pika.BasicProperties(expiration="50"))
    channel.basic_publish("", "xr-exp", b"long", pika.BasicProperties(expiration="600000"))
    time.sleep(0.2)
    assert get(channel, "xr-exp")[1] == b"long"
    props, body = get(channel, "xr-fan-dead")
    assert body == b"short"
    assert props.expiration is None  # removed, kept as original-expiration
    assert death(props) == {"count": 1, "reason": "expired", "queue": "xr-exp", "exchange": "",
                            "routing-keys": ["xr-exp"], "original-expiration": "50"}


@pytest.mark.slow
def test_max_length_drop_head_dead_letters_with_maxlen(channel: Any) -> None:
    channel.exchange_declare("xr-max-dlx", "direct")
    channel.queue_declare("xr-maxed", exclusive=True)
    channel.queue_bind("xr-maxed", "xr-max-dlx", "maxed")
    channel.queue_declare("xr-max", exclusive=True, arguments={
        "x-max-length": 1, "x-dead-letter-exchange": "xr-max-dlx",
        "x-dead-letter-routing-key": "maxed"})
    for i in range(3):
        channel.basic_publish("", "xr-max", f"m{i}".encode())
    assert channel.queue_declare("xr-max", passive=True).method.message_count == 1
    assert get(channel, "xr-max")[1] == b"m2"
    for i in range(2):
        props, body = get(channel, "xr-maxed")
        assert body == f"m{i}".encode()
        assert death(props) == {"count": 1, "reason": "maxlen", "queue": "xr-max",
                                "exchange": "", "routing-keys": ["xr-max"]}
        assert props.headers["x-first-death-reason"] == "maxlen"
