"""Priority queues (``x-max-priority``): the reordering buffer, and pika against the real
server (publish with no consumer, then consume: highest priority first)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from conftest import ServerFactory, ServerProcess

from core import headers as h
from core.records import Message
from core.subscriptions import Delivery
from handlers.amqp.priority import PriorityBuffer, message_priority

TIMEOUT = 10.0


def delivery(offset: int, priority: bytes | None) -> Delivery:
    headers = [] if priority is None else [(h.AMQP_PRIORITY, priority)]
    return Delivery("t", 0, offset, Message(None, b"%d" % offset, headers), 0, 0)


def test_priority_rules() -> None:
    assert message_priority(delivery(0, None), 10) == 0
    assert message_priority(delivery(0, b"7"), 10) == 7
    assert message_priority(delivery(0, b"200"), 10) == 10  # capped at x-max-priority
    assert message_priority(delivery(0, b"junk"), 10) == 0


def test_buffer_orders_by_priority_then_arrival() -> None:
    buffer = PriorityBuffer(5)
    for offset, priority in enumerate([b"1", None, b"5", b"0", b"9", b"3", b"5"]):
        buffer.push(delivery(offset, priority))
    assert len(buffer) == 7
    first = buffer.pop()
    assert first.offset == 2  # 5 and 9 (capped to 5) tie: arrival order
    assert [d.offset for d in buffer.drain()] == [4, 6, 5, 0, 1, 3]
    assert len(buffer) == 0
    with pytest.raises(IndexError):
        buffer.pop()


# -- pika against the real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("amqp-priority"))
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


def consume(ch: Any, queue: str, n: int, *, prefetch: int, auto_ack: bool = False) -> list[bytes]:
    ch.basic_qos(prefetch_count=prefetch)
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    for method, _, body in ch.consume(queue, auto_ack=auto_ack, inactivity_timeout=0.2):
        if method is not None:
            got.append(bytes(body))
            if not auto_ack:
                ch.basic_ack(method.delivery_tag)
        if len(got) == n or time.monotonic() > deadline:
            break
    ch.cancel()
    return got


@pytest.mark.slow
@pytest.mark.parametrize("prefetch", [1, 0])
def test_higher_priority_is_consumed_first(channel: Any, prefetch: int) -> None:
    queue = f"prio-{prefetch}"
    channel.queue_declare(queue, exclusive=True, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    for body, priority in [(b"low", 1), (b"none", None), (b"high", 9), (b"mid", 5),
                           (b"zero", 0), (b"capped", 200)]:
        channel.basic_publish("", queue, body, pika.BasicProperties(priority=priority))
    assert consume(channel, queue, 6, prefetch=prefetch, auto_ack=prefetch == 0) == [
        b"capped", b"high", b"mid", b"low", b"none", b"zero"]


@pytest.mark.slow
def test_priority_applies_to_messages_arriving_while_consuming(channel: Any) -> None:
    channel.queue_declare("prio-live", exclusive=True, arguments={"x-max-priority": 3})
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=1)
    channel.basic_publish("", "prio-live", b"first", pika.BasicProperties(priority=0))
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    for method, _, body in channel.consume("prio-live", inactivity_timeout=0.2):
        if method is None:
            if time.monotonic() > deadline:
                break
            continue
        got.append(bytes(body))
        if len(got) == 1:  # while "first" is unacked, queue a low and a high one
            channel.basic_publish("", "prio-live", b"low", pika.BasicProperties(priority=1))
            channel.basic_publish("", "prio-live", b"high", pika.BasicProperties(priority=3))
        channel.basic_ack(method.delivery_tag)
        if len(got) == 3:
            break
    channel.cancel()
    assert got == [b"first", b"high", b"low"]


@pytest.mark.slow
def test_max_priority_above_255_is_refused(server: ServerProcess) -> None:
    host, port = server.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port, connection_attempts=1))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().queue_declare("prio-big", arguments={"x-max-priority": 256})
        assert info.value.reply_code == 406
    finally:
        if conn.is_open:
            conn.close()
