"""Runs of single ``basic.ack`` frames (pika, aio-pika and kombu ack one delivery at a time).

* the state machine turns a run of whole single-ack frames on one open channel into one
  :class:`Acks` event, and anything else (``multiple``, another channel, a channel that is not
  open, a partial frame) into what frame-by-frame reading gives;
* the session settles a run with one core ``ack_many`` per core consumer, and an unknown tag in
  a run still closes the channel with 406 after the tags before it took effect.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
from fixtures.amqp.client_codec import ConnectionPair, assert_connection_close
from pamqp import commands
from test_amqp_broker_session import Client, open_channel, publish, start
from test_amqp_broker_session import vhosts as vhosts  # the fixture

from core.subscriptions import Consumer
from handlers.amqp import Acks, MethodReceived, ReplyCode
from handlers.amqp.broker.vhosts import VhostDirectory
from handlers.amqp.frames import FrameReader


def ack(channel: int, tag: int, multiple: bool = False) -> bytes:
    return struct.pack(">BHIHHQBB", 1, channel, 13, 60, 80, tag, int(multiple), 0xCE)


def acks_seen(events: list[Any]) -> list[tuple[int, int, bool]]:
    """(channel, tag, multiple) of every ack, whichever event carried it."""
    out: list[tuple[int, int, bool]] = []
    for e in events:
        if isinstance(e, Acks):
            out.extend((e.channel, t, False) for t in e.tags)
        elif isinstance(e, MethodReceived) and isinstance(e.method, commands.Basic.Ack):
            out.append((e.channel, e.method.delivery_tag, bool(e.method.multiple)))
    return out


def test_frame_reader_peeks_a_run_of_single_acks_on_one_channel() -> None:
    reader = FrameReader(4096, 1 << 16)
    reader.feed(ack(1, 1) + ack(1, 2) + ack(1, 3) + ack(2, 4) + ack(2, 5, multiple=True))
    found = reader.peek_acks()
    assert found is not None
    channel, tags, end = found
    assert (channel, tags, end) == (1, [1, 2, 3], 3 * 21)
    assert reader.peek_acks() == found  # nothing consumed until commit
    reader.commit(end)
    assert reader.peek_acks() == (2, [4], 4 * 21)
    reader.commit(4 * 21)
    assert reader.peek_acks() is None  # multiple=true: frame by frame
    assert reader.next_frame() is not None
    reader.feed(ack(1, 6)[:-1])
    assert reader.peek_acks() is None  # not whole yet
    reader.feed(b"\xce")
    assert reader.peek_acks() == (1, [6], 21)  # positions in the buffer after feed's tail copy


@pytest.mark.parametrize("chunk", [0, 1, 7, 21, 50])
def test_ack_runs_give_the_acks_frame_by_frame_reading_gives(chunk: int) -> None:
    stream = b"".join([ack(1, 1), ack(1, 2), ack(2, 1), ack(2, 2), ack(1, 3, multiple=True),
                       ack(1, 4), b"\x08\x00\x00\x00\x00\x00\x00\xce", ack(1, 5), ack(1, 6)])
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    pair.open_channel(2)
    pieces = [stream] if not chunk else [stream[i:i + chunk]
                                         for i in range(0, len(stream), chunk)]
    for piece in pieces:
        pair.send(piece)
    assert acks_seen(pair.events) == [(1, 1, False), (1, 2, False), (2, 1, False),
                                      (2, 2, False), (1, 3, True), (1, 4, False),
                                      (1, 5, False), (1, 6, False)]
    if not chunk:
        runs = [(e.channel, e.tags) for e in pair.events if isinstance(e, Acks)]
        assert runs == [(1, [1, 2]), (2, [1, 2]), (1, [4]), (1, [5, 6])]


def test_acks_on_a_channel_that_is_not_open_are_a_connection_error() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    answer = pair.send(ack(1, 1) + ack(3, 1) + ack(3, 2))
    assert acks_seen(pair.events) == [(1, 1, False)]
    assert_connection_close(answer, ReplyCode.CHANNEL_ERROR)


async def deliveries(client: Client, n: int) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(n):
        deliver = await client.next()
        assert isinstance(deliver, commands.Basic.Deliver), deliver
        await client.next()
        _, body = await client.next()  # type: ignore[misc]
        out.append((deliver.delivery_tag, body))
    return out


async def test_a_run_of_acks_is_one_core_ack_many(vhosts: VhostDirectory,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[int]] = []
    real = Consumer.ack_many

    def spy(self: Consumer, partition: int, offsets: Any) -> None:
        offsets = list(offsets)
        calls.append(offsets)
        real(self, partition, offsets)

    monkeypatch.setattr(Consumer, "ack_many", spy)
    bodies = [b"m%d" % i for i in range(6)]
    async with trio.open_nursery() as nursery:
        client = await start(nursery, vhosts)
        await open_channel(client, "runs-q")
        await publish(client, "runs-q", bodies)
        await client.send(1, commands.Basic.Consume(queue="runs-q", consumer_tag="c"))
        assert isinstance(await client.next(), commands.Basic.ConsumeOk)
        got = await deliveries(client, 6)
        assert [body for _, body in got] == bodies
        await client.stream.send_all(b"".join(ack(1, tag) for tag, _ in got[:4]))
        # a method after the run: its answer means the run was handled
        await client.send(1, commands.Basic.Qos(prefetch_count=0))
        assert isinstance(await client.next(), commands.Basic.QosOk)
        assert len(calls) == 1 and len(calls[0]) == 4
        status = await vhosts.open("/")
        assert status is not None
        queue = status.registry.queue("runs-q", 50, 10)
        assert await status.message_count(queue) == 2  # the two left unacked
        nursery.cancel_scope.cancel()


async def test_an_unknown_tag_in_a_run_closes_the_channel_after_the_tags_before_it(
        vhosts: VhostDirectory) -> None:
    bodies = [b"u%d" % i for i in range(6)]
    async with trio.open_nursery() as nursery:
        client = await start(nursery, vhosts)
        await open_channel(client, "unknown-q")
        await publish(client, "unknown-q", bodies)
        await client.send(1, commands.Basic.Consume(queue="unknown-q", consumer_tag="c"))
        assert isinstance(await client.next(), commands.Basic.ConsumeOk)
        got = await deliveries(client, 6)
        await client.stream.send_all(ack(1, 1) + ack(1, 2) + ack(1, 99) + ack(1, 3))
        close = await client.next()
        assert isinstance(close, commands.Channel.Close)
        assert close.reply_code == 406 and "99" in close.reply_text
        await client.send(1, commands.Channel.CloseOk())
        # the channel's unacked went back: all but the two acked before the unknown tag
        await client.send(2, commands.Channel.Open())
        assert isinstance(await client.next(), commands.Channel.OpenOk)
        await client.send(2, commands.Basic.Consume(queue="unknown-q", consumer_tag="d",
                                                    no_ack=True))
        assert isinstance(await client.next(), commands.Basic.ConsumeOk)
        again = [body for _, body in await deliveries(client, 4)]
        assert sorted(again) == [body for _, body in got[2:]]
        nursery.cancel_scope.cancel()
