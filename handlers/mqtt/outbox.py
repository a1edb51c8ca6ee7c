"""Everything one MQTT connection sends: encoding, topic aliases, the bounded send queue and the
writer that empties it into the stream.

How it works
------------
Producers (the session's reader, the deliverer, retained-message tasks) put *encoded* bytes into
one bounded memory channel (:data:`SEND_QUEUE` items); :meth:`Outbox.write_to` takes what is
queued at each wake-up and writes it with one ``send_all`` (up to :data:`WRITE_CHUNK` bytes).
Each producer queues a whole burst as one item (all the PUBACK packets of one read, all the
PUBLISH packets of one delivery batch), so a busy connection makes one write per burst.

Replies that need not go out at once (PUBREL, PUBCOMP) wait in a small buffer and travel with
the next item (:meth:`Outbox.reply`, :meth:`Outbox.flush_replies`).

The outbox is the deliverer's :class:`~handlers.mqtt.delivery.Sink`: it assigns outbound topic
aliases when the client accepts them, drops packets over the client's Maximum Packet Size, and
remembers the connection's own publications for *no local*.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import replace

import trio

from core.stream_io import socket_io

from .encoder import encode
from .packet_types import MQTT_311
from .packets import Packet, Publish
from .session_state import OutboundAliases

__all__ = ["LOCAL_MEMORY", "SEND_QUEUE", "WRITE_CHUNK", "Outbox"]

#: encoded items waiting for the writer
SEND_QUEUE = 256
#: bytes gathered from the send queue into one write
WRITE_CHUNK = 64 * 1024
#: own publications remembered for *no local*
LOCAL_MEMORY = 1024


class Outbox:
    """The sending side of one connection (see the module docstring)."""

    def __init__(self) -> None:
        self.protocol_level = MQTT_311
        #: the client's Maximum Packet Size (None: no limit)
        self.max_packet_size: int | None = None
        self.aliases = OutboundAliases(0)
        #: True while a ``send_all`` is under way: cut short, the stream is unusable
        self.stream_broken = False
        self._alias_lock = trio.Lock()
        self._send, self._queue = trio.open_memory_channel[bytes](SEND_QUEUE)
        self._replies = bytearray()
        self._local: deque[tuple[str, int, int]] = deque()
        self._local_set: set[tuple[str, int, int]] = set()

    # ------------------------------------------------------------ packets and replies

    @property
    def queued(self) -> int:
        """Items waiting for the writer (at most :data:`SEND_QUEUE`)."""
        return self._send.statistics().current_buffer_used

    async def send(self, data: bytes) -> None:
        """Queue encoded bytes (waiting replies go first), waiting for room."""
        if self._replies:
            self._replies += data
            data = bytes(self._replies)
            self._replies.clear()
        await self._send.send(data)

    async def packet(self, packet: Packet) -> None:
        """Encode and queue ``packet`` (after any waiting replies)."""
        await self.send(encode(packet, self.protocol_level))

    def reply(self, packet: Packet) -> None:
        """Keep ``packet`` for the next send (see :meth:`flush_replies`)."""
        self._replies += encode(packet, self.protocol_level)

    async def flush_replies(self) -> None:
        """Queue the waiting replies, if any."""
        if self._replies:
            data = bytes(self._replies)
            self._replies.clear()
            await self._send.send(data)

    def flush_replies_nowait(self) -> None:
        """Queue the waiting replies if there is room (a connection ending); else drop them."""
        if self._replies:
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._send.send_nowait(bytes(self._replies))
            self._replies.clear()

    # ------------------------------------------------------------ the writer

    async def write_to(self, stream: trio.abc.Stream) -> None:
        """Write what is queued until :meth:`close`; stream errors propagate."""
        io = socket_io(stream)
        send_all = io.send_all if io is not None else stream.send_all
        queue = self._queue
        while True:
            # what is queued by now goes in one write (one syscall, not one per item): woken
            # by a producer, the writer runs after that scheduler round's other producers; with
            # items queued already, one round lets them add theirs (each write wakes the peer,
            # which costs more than the round)
            try:
                data = await queue.receive()
            except trio.EndOfChannel:
                return
            size = len(data)
            parts: list[bytes] | None = None
            while size < WRITE_CHUNK:
                try:
                    more = queue.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if parts is None:
                    parts = [data]
                parts.append(more)
                size += len(more)
            chunk = data if parts is None else b"".join(parts)  # one copy, sized once
            self.stream_broken = True
            await send_all(chunk)
            self.stream_broken = False

    def close(self) -> None:
        """No more sends: the writer ends once the queue is empty."""
        self._send.close()

    def take_queued(self) -> bytearray:
        """Everything still queued (for the goodbye, once the writer is gone)."""
        out = bytearray()
        while True:
            try:
                out += self._queue.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return out

    # ------------------------------------------------------------ Sink for the deliverer

    @property
    def uses_topic_aliases(self) -> bool:
        """Whether the client accepts topic aliases (PUBLISH packets then go through them)."""
        return self.aliases.maximum > 0

    async def send_publishes(
        self, packets: Sequence[Publish | bytes | tuple[bytes, ...]], *, droppable: bool
    ) -> list[bool] | None:
        """See :meth:`handlers.mqtt.delivery.Sink.send_publishes`."""
        if droppable:
            # while a waiting sender holds the alias lock, aliases could be queued out of order
            chunk, queued, fresh = self._encode_batch(packets, not self._alias_lock.locked())
            if chunk:
                try:
                    self._send.send_nowait(chunk)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
            self.aliases.commit_many(fresh)
            return queued
        # QoS 1/2: the lock is nearly always free; ``async with`` it would yield to the
        # scheduler *before* the packets are queued (a scheduler round on every delivery's
        # latency).  ``send`` queues first, then yields.
        try:
            self._alias_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._alias_lock.acquire()
        try:
            chunk, queued, fresh = self._encode_batch(packets, True)
            if chunk:
                await self._send.send(chunk)
            self.aliases.commit_many(fresh)
            return queued
        finally:
            self._alias_lock.release()

    def is_local(self, core_topic: str, partition: int, offset: int) -> bool:
        """Whether this connection published the message (one of its last
        :data:`LOCAL_MEMORY`)."""
        return (core_topic, partition, offset) in self._local_set

    def remember_local(self, where: tuple[str, int, int]) -> None:
        """This connection published the message stored at ``where``."""
        self._local.append(where)
        self._local_set.add(where)
        if len(self._local) > LOCAL_MEMORY:
            self._local_set.discard(self._local.popleft())

    def _encode_batch(
        self, packets: Sequence[Publish | bytes | tuple[bytes, ...]], use_alias: bool
    ) -> tuple[bytes, list[bool], dict[str, int]]:
        parts: list[bytes] = []
        queued: list[bool] = []
        fresh: dict[str, int] = {}
        limit = self.max_packet_size
        for packet in packets:
            if isinstance(packet, tuple):  # encoded in pieces: joined below with the rest
                fits = limit is None or sum(map(len, packet)) <= limit
                queued.append(fits)
                if fits:
                    parts.extend(packet)
                continue
            if isinstance(packet, bytes):
                data: bytes | None = packet
                if limit is not None and len(packet) > limit:
                    data = None
            else:
                data = self._encode_publish(packet, use_alias, fresh)
            queued.append(data is not None)
            if data is not None:
                parts.append(data)
        return b"".join(parts), queued, fresh

    def _encode_publish(
        self, packet: Publish, use_alias: bool, fresh: dict[str, int]
    ) -> bytes | None:
        """The encoded packet, or None when it exceeds the client's Maximum Packet Size.

        Aliases this packet would establish go into ``fresh`` (committed by the caller once
        the packet is queued); later packets of the same batch already count on them.
        """
        alias: int | None = None
        known = False
        if use_alias and self.aliases.maximum:
            alias, known = self.aliases.lookup(packet.topic)
            if not known:
                alias = fresh.get(packet.topic)
                known = alias is not None
                if not known:
                    alias = self.aliases.lookup_next(len(fresh))
            if alias is not None:
                props = replace(packet.properties, topic_alias=alias)
                if known:
                    packet = replace(packet, topic="", properties=props)
                else:
                    packet = replace(packet, properties=props)
        data = encode(packet, self.protocol_level)
        if self.max_packet_size is not None and len(data) > self.max_packet_size:
            return None
        if alias is not None and not known:
            fresh[packet.topic] = alias
        return data
