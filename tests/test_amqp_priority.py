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


def get_all(ch: Any, queue: str, *, auto_ack: bool) -> list[tuple[bytes, int | None]]:
    """basic.get until the queue is empty: (body, message_count) per message."""
    got: list[tuple[bytes, int | None]] = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            return got
        got.append((bytes(body), method.message_count))
        if not auto_ack:
            ch.basic_ack(method.delivery_tag)


@pytest.mark.slow
@pytest.mark.parametrize("auto_ack", [False, True])
def test_basic_get_hands_out_the_highest_priority_first(channel: Any, auto_ack: bool) -> None:
    queue = f"prio-get-{auto_ack}"
    channel.queue_declare(queue, exclusive=True, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    for body, priority in [(b"low", 1), (b"none", None), (b"high", 9), (b"mid", 5),
                           (b"mid-2", 5), (b"zero", 0), (b"capped", 200)]:
        channel.basic_publish("", queue, body, pika.BasicProperties(priority=priority))
    got = get_all(channel, queue, auto_ack=auto_ack)
    assert [body for body, _ in got] == [
        b"capped", b"high", b"mid", b"mid-2", b"low", b"none", b"zero"]
    assert got[0][1] == 6  # message_count: what is left after this one


@pytest.mark.slow
def test_basic_get_sees_a_higher_priority_published_between_gets(channel: Any) -> None:
    channel.queue_declare("prio-get-live", exclusive=True, arguments={"x-max-priority": 3})
    channel.confirm_delivery()
    for body in (b"a", b"b"):
        channel.basic_publish("", "prio-get-live", body, pika.BasicProperties(priority=1))
    _, _, body = channel.basic_get("prio-get-live", auto_ack=True)
    assert body == b"a"
    channel.basic_publish("", "prio-get-live", b"urgent", pika.BasicProperties(priority=3))
    assert [body for body, _ in get_all(channel, "prio-get-live", auto_ack=True)] == [
        b"urgent", b"b"]


@pytest.mark.slow
def test_messages_a_get_held_go_back_when_its_channel_closes(server: ServerProcess) -> None:
    host, port = server.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port, connection_attempts=1))
    try:
        ch = conn.channel()
        ch.queue_declare("prio-get-held", arguments={"x-max-priority": 5})
        ch.confirm_delivery()
        for i in range(4):
            ch.basic_publish("", "prio-get-held", b"m%d" % i, pika.BasicProperties(priority=i))
        _, _, body = ch.basic_get("prio-get-held", auto_ack=True)
        assert body == b"m3"
        ch.close()  # the three others it looked at go back to the queue
        other = conn.channel()
        got = get_all(other, "prio-get-held", auto_ack=True)
        assert [body for body, _ in got] == [b"m2", b"m1", b"m0"]
        other.queue_delete("prio-get-held")
    finally:
        if conn.is_open:
            conn.close()
