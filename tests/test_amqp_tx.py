"""AMQP transactions on the core's transaction engine, end to end with pika and aio-pika.

Transactional publishes are stored at once but invisible to queue readers until
``tx.commit``; acks in a transaction take effect at commit and are undone (the message is
redelivered) at rollback; a commit-ok survives SIGKILL, an uncommitted or rolled-back
transaction never delivers anything, before or after a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.slow

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("amqp-tx"))
    try:
        yield factory("amqp", log_level="info")
    finally:
        factory.close()


def connect(server: ServerProcess) -> pika.BlockingConnection:
    host, port = server.address("amqp")
    return pika.BlockingConnection(pika.ConnectionParameters(
        host, port, connection_attempts=1, blocked_connection_timeout=TIMEOUT))


@pytest.fixture
def conn(server: ServerProcess) -> Iterator[pika.BlockingConnection]:
    c = connect(server)
    try:
        yield c
    finally:
        if c.is_open:
            c.close()


def get(ch: Any, queue: str, auto_ack: bool = True, wait: float = TIMEOUT) -> Any:
    """``basic.get`` retried for up to ``wait`` seconds: ``(method, body)`` or None."""
    deadline = time.monotonic() + wait
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, bytes(body)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def consume(conn: pika.BlockingConnection, ch: Any, queue: str, expect: int,
            quiet: float = 0.5) -> list[bytes]:
    """Consume (auto-ack) until ``expect`` bodies arrived, then listen ``quiet`` more seconds."""
    got: list[bytes] = []
    ch.basic_consume(queue, lambda c, m, p, body: got.append(bytes(body)), auto_ack=True)
    deadline = time.monotonic() + TIMEOUT
    while len(got) < expect and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=quiet)
    return got


def test_publishes_invisible_to_a_consumer_until_commit(server: ServerProcess,
                                                       conn: pika.BlockingConnection) -> None:
    watcher = connect(server)
    try:
        wch = watcher.channel()
        wch.queue_declare("txv-q")
        got: list[bytes] = []
        wch.basic_consume("txv-q", lambda c, m, p, body: got.append(bytes(body)), auto_ack=True)
        ch = conn.channel()
        ch.tx_select()
        for i in range(5):
            ch.basic_publish("", "txv-q", f"t{i}".encode())
        ch.basic_publish("", "txv-q", b"sync")
        ch.queue_declare("txv-q", passive=True)  # a round trip: the publishes were handled
        watcher.process_data_events(time_limit=0.5)
        assert got == []
        ch.tx_commit()
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 6 and time.monotonic() < deadline:
            watcher.process_data_events(time_limit=0.05)
        assert got == [b"t0", b"t1", b"t2", b"t3", b"t4", b"sync"]
    finally:
        watcher.close()


def test_rollback_delivers_nothing_and_commit_is_per_transaction(
        conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.queue_declare("txr-q", exclusive=True)
    ch.tx_select()
    ch.basic_publish("", "txr-q", b"a1")
    ch.basic_publish("", "txr-q", b"a2")
    ch.tx_rollback()
    ch.basic_publish("", "txr-q", b"c1")
    ch.tx_commit()
    ch.basic_publish("", "txr-q", b"a3")
    ch.tx_rollback()
    assert consume(conn, ch, "txr-q", 1) == [b"c1"]


def test_ack_in_transaction_takes_effect_at_commit(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.queue_declare("txa-q", exclusive=True)
    ch.basic_publish("", "txa-q", b"m")
    ch.tx_select()
    found = get(ch, "txa-q", auto_ack=False)
    assert found is not None and found[1] == b"m"
    ch.basic_ack(found[0].delivery_tag)
    ch.tx_rollback()
    # the rolled-back ack released the message: delivered again, as a redelivery
    again = get(ch, "txa-q", auto_ack=False)
    assert again is not None and again[1] == b"m" and again[0].redelivered
    ch.basic_ack(again[0].delivery_tag)
    ch.tx_commit()
    ch.close()
    ch = conn.channel()  # closing the channel would have requeued an unacked message
    assert get(ch, "txa-q", wait=1.0) is None


def test_channel_closed_with_open_transaction_rolls_back(conn: pika.BlockingConnection,
                                                         server: ServerProcess) -> None:
    ch = conn.channel()
    ch.queue_declare("txc-q")
    ch.basic_publish("", "txc-q", b"first")
    tx = conn.channel()
    tx.tx_select()
    found = get(tx, "txc-q", auto_ack=False)
    assert found is not None
    tx.basic_ack(found[0].delivery_tag)
    tx.basic_publish("", "txc-q", b"never")
    tx.close()  # no commit
    got = consume(conn, ch, "txc-q", 1)
    assert got == [b"first"]  # the ack was undone, the publish never became visible


def test_nack_in_transaction_is_held_until_commit(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.queue_declare("txn-q", exclusive=True)
    ch.basic_publish("", "txn-q", b"n")
    ch.tx_select()
    found = get(ch, "txn-q", auto_ack=False)
    assert found is not None
    ch.basic_nack(found[0].delivery_tag, requeue=True)
    assert get(ch, "txn-q", wait=0.5) is None  # not requeued yet
    ch.tx_commit()
    again = get(ch, "txn-q")
    assert again is not None and again[1] == b"n" and again[0].redelivered
    ch.tx_commit()


def test_commit_without_select_is_a_channel_error(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.tx_commit()
    assert info.value.reply_code == 406


def test_aio_pika_transaction_context(server: ServerProcess) -> None:
    import aio_pika

    host, port = server.address("amqp")

    async def scenario() -> list[bytes]:
        conn = await aio_pika.connect(f"amqp://guest:guest@{host}:{port}/")
        async with conn:
            ch = await conn.channel(publisher_confirms=False)
            queue = await ch.declare_queue("txaio-q", exclusive=True)
            async with ch.transaction():
                await ch.default_exchange.publish(aio_pika.Message(b"kept"), "txaio-q")
            with pytest.raises(RuntimeError):
                async with ch.transaction():
                    await ch.default_exchange.publish(aio_pika.Message(b"dropped"),
                                                      "txaio-q")
                    raise RuntimeError("roll back")
            reader = await conn.channel()  # acks on ``ch`` would wait for a commit
            queue = await reader.get_queue("txaio-q")
            got: list[bytes] = []
            async with queue.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append(message.body)
                    break
            await asyncio.sleep(0.5)
            assert await queue.get(fail=False) is None
            return got

    assert asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT)) == [b"kept"]


def test_committed_transaction_survives_sigkill(polystream_server: ServerFactory,
                                                tmp_path: Path) -> None:
    data_dir = tmp_path / "tx-data"
    first = polystream_server("amqp", data_dir=data_dir, log_level="info")
    conn = connect(first)
    ch = conn.channel()
    ch.exchange_declare("txk-x", "direct", durable=True)
    for name in ("txk-q", "txk-done"):
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, "txk-x", name)
    ch.basic_publish("txk-x", "txk-done", b"to ack")
    ch.confirm_delivery()
    ch.basic_publish("txk-x", "txk-done", b"kept", pika.BasicProperties(delivery_mode=2))
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish("txk-x", "txk-q", b"rolled back")
    tx.tx_rollback()
    for i in range(10):
        tx.basic_publish("txk-x", "txk-q", f"c{i}".encode(), pika.BasicProperties(delivery_mode=2))
    found = get(tx, "txk-done", auto_ack=False)
    assert found is not None and found[1] == b"to ack"
    tx.basic_ack(found[0].delivery_tag)
    tx.tx_commit()
    tx.basic_publish("txk-x", "txk-q", b"uncommitted")
    tx.queue_declare("txk-q", passive=True)  # the uncommitted publish was handled
    first.kill()  # SIGKILL right after commit-ok, with a transaction open
    second = polystream_server("amqp", data_dir=data_dir, log_level="info")
    conn = connect(second)
    try:
        ch = conn.channel()
        assert consume(conn, ch, "txk-q", 10) == [f"c{i}".encode() for i in range(10)]
        ch2 = conn.channel()
        assert consume(conn, ch2, "txk-done", 1) == [b"kept"]  # the committed ack held
    finally:
        conn.close()
