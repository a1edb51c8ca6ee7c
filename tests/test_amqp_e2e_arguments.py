"""End to end with pika: queue arguments (TTL, expiry, length limits, dead-lettering, single
active consumer, priorities)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.slow

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("amqp-e2e-args"))
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


def get(ch: Any, queue: str, wait: float = TIMEOUT) -> bytes | None:
    deadline = time.monotonic() + wait
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return bytes(body)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def test_dead_letter_after_reject(channel: Any) -> None:
    channel.exchange_declare("dlx-reject", "fanout")
    channel.queue_declare("dlq-reject", exclusive=True)
    channel.queue_bind("dlq-reject", "dlx-reject")
    channel.queue_declare("work-reject", exclusive=True,
                          arguments={"x-dead-letter-exchange": "dlx-reject"})
    channel.confirm_delivery()
    channel.basic_publish("", "work-reject", b"poison", pika.BasicProperties(headers={"n": 1}))
    method = None
    deadline = time.monotonic() + TIMEOUT
    while method is None and time.monotonic() < deadline:
        method, _, _ = channel.basic_get("work-reject")
    assert method is not None
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert get(channel, "dlq-reject") == b"poison"
    assert get(channel, "work-reject", wait=0.3) is None


def test_dead_letter_after_ttl_with_routing_key(channel: Any) -> None:
    channel.exchange_declare("dlx-ttl", "direct")
    channel.queue_declare("dlq-ttl", exclusive=True)
    channel.queue_bind("dlq-ttl", "dlx-ttl", "expired")
    channel.queue_declare("work-ttl", exclusive=True, arguments={
        "x-message-ttl": 100, "x-dead-letter-exchange": "dlx-ttl",
        "x-dead-letter-routing-key": "expired"})
    channel.confirm_delivery()
    channel.basic_publish("", "work-ttl", b"too late")
    time.sleep(0.5)
    # expired messages are dead-lettered when the queue is next read
    assert get(channel, "work-ttl", wait=0.5) is None
    assert get(channel, "dlq-ttl") == b"too late"


def test_per_message_expiration(channel: Any) -> None:
    channel.queue_declare("expiring", exclusive=True)
    channel.confirm_delivery()
    channel.basic_publish("", "expiring", b"short", pika.BasicProperties(expiration="100"))
    channel.basic_publish("", "expiring", b"long", pika.BasicProperties(expiration="600000"))
    time.sleep(0.5)
    assert get(channel, "expiring") == b"long"


def test_max_length_drop_head(channel: Any) -> None:
    channel.queue_declare("bounded-drop", exclusive=True, arguments={"x-max-length": 2})
    channel.confirm_delivery()
    for i in range(5):
        channel.basic_publish("", "bounded-drop", f"m{i}".encode())
    assert channel.queue_declare("bounded-drop", passive=True).method.message_count == 2
    assert get(channel, "bounded-drop") == b"m3"
    assert get(channel, "bounded-drop") == b"m4"


def test_max_length_reject_publish_nacks(channel: Any) -> None:
    channel.queue_declare("bounded-reject", exclusive=True,
                          arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    channel.basic_publish("", "bounded-reject", b"1")
    channel.basic_publish("", "bounded-reject", b"2")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", "bounded-reject", b"3")
    assert channel.queue_declare("bounded-reject", passive=True).method.message_count == 2


def test_unused_queue_expires(channel: Any) -> None:
    channel.queue_declare("short-lived", arguments={"x-expires": 200})
    time.sleep(1.0)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare("short-lived", passive=True)
    assert info.value.reply_code == 404


def test_single_active_consumer(channel: Any) -> None:
    channel.queue_declare("sac", exclusive=True, arguments={"x-single-active-consumer": True})
    got: dict[str, list[bytes]] = {"a": [], "b": []}

    def on(name: str) -> Any:
        def callback(ch: Any, method: Any, props: Any, body: bytes) -> None:
            got[name].append(body)
            ch.basic_ack(method.delivery_tag)
        return callback

    tag_a = channel.basic_consume("sac", on("a"))
    channel.basic_consume("sac", on("b"))
    channel.confirm_delivery()
    for i in range(4):
        channel.basic_publish("", "sac", f"m{i}".encode())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(got["a"]) + len(got["b"]) < 4:
        channel.connection.process_data_events(time_limit=0.1)
    assert (len(got["a"]), len(got["b"])) == (4, 0)
    channel.basic_cancel(tag_a)
    channel.basic_publish("", "sac", b"after")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not got["b"]:
        channel.connection.process_data_events(time_limit=0.1)
    assert got["b"] == [b"after"]


def test_max_priority_is_accepted(channel: Any) -> None:
    channel.queue_declare("prio", exclusive=True, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    channel.basic_publish("", "prio", b"low", pika.BasicProperties(priority=1))
    channel.basic_publish("", "prio", b"high", pika.BasicProperties(priority=9))
    # basic.get hands out the highest priority first, as consumers get it (test_amqp_priority.py)
    assert get(channel, "prio") == b"high"
    assert get(channel, "prio") == b"low"


def test_invalid_argument_is_refused(channel: Any) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare("bad-args", arguments={"x-max-length": -1})
    assert info.value.reply_code == 406


def test_dead_lettering_survives_restart(polystream_server: ServerFactory, tmp_path: Any
                                         ) -> None:
    data_dir = tmp_path / "dlx-data"
    first = polystream_server("amqp", data_dir=data_dir, log_level="info")
    host, port = first.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    ch = conn.channel()
    ch.exchange_declare("dlx-durable", "fanout", durable=True)
    ch.queue_declare("dlq-durable", durable=True)
    ch.queue_bind("dlq-durable", "dlx-durable")
    ch.queue_declare("work-durable", durable=True,
                     arguments={"x-dead-letter-exchange": "dlx-durable"})
    ch.confirm_delivery()
    ch.basic_publish("", "work-durable", b"keep", pika.BasicProperties(delivery_mode=2))
    conn.close()
    first.terminate()
    second = polystream_server("amqp", data_dir=data_dir, log_level="info")
    host, port = second.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    try:
        ch = conn.channel()
        method = None
        deadline = time.monotonic() + TIMEOUT
        while method is None and time.monotonic() < deadline:
            method, _, _ = ch.basic_get("work-durable")
        assert method is not None
        ch.basic_nack(method.delivery_tag, requeue=False)
        assert get(ch, "dlq-durable") == b"keep"
    finally:
        conn.close()
