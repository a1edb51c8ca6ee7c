"""Just-appended messages are handed to readers without a decode (core.records.FreshBatches)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.entry import build_entry, decode_entry
from core.records import (
    FreshBatches,
    Message,
    StoredMessage,
    build_batch,
    build_plain_batch,
    decode_batch,
)
from core.subscriptions import InitialPosition, SubscriptionType
from storage import open_storage

PLAIN = [
    Message(b"k", b"v", [("a", b"1"), ("b", b"")], 5),
    Message(None, None),
    Message(b"", b"", [], -3),
    Message(b"k2", b"x" * 300, [("c", b"2")], 1_700_000_000_000),
]


@dataclass(frozen=True, slots=True)
class SubMessage(Message):
    """A Message subclass: not plain (it would decode as a plain Message)."""


NOT_PLAIN = [
    Message(b"k", bytearray(b"v")),
    Message(memoryview(b"k"), b"v"),  # type: ignore[arg-type]
    Message(b"k", b"v", [("a", None)]),  # type: ignore[list-item]
    Message(b"k", b"v", [("a", bytearray(b"1"))]),  # type: ignore[list-item]
    Message(b"k", b"v", (("a", b"1"),)),  # type: ignore[arg-type]
    Message(b"k", b"v", [["a", b"1"]]),  # type: ignore[list-item]
    SubMessage(b"k", b"v"),
]


def _entry(messages: list[Message], index: int = 10) -> tuple[bytes, memoryview]:
    entry = build_entry(index, 1, memoryview(build_batch(messages)))
    return entry, decode_entry(entry).batch


def test_plain_batches_are_the_same_bytes_and_decode_to_equal_messages() -> None:
    data, plain = build_plain_batch(PLAIN)
    assert plain
    assert data == build_batch(PLAIN)
    decoded = [s.message for s in decode_batch(data)]
    assert decoded == PLAIN
    for got, sent in zip(decoded, PLAIN, strict=True):
        assert type(got.key) is type(sent.key) and type(got.value) is type(sent.value)


@pytest.mark.parametrize("odd", NOT_PLAIN, ids=range(len(NOT_PLAIN)))
def test_any_odd_message_makes_the_batch_not_plain(odd: Message) -> None:
    data, plain = build_plain_batch([PLAIN[0], odd, PLAIN[1]])
    assert not plain
    assert data == build_batch([PLAIN[0], odd, PLAIN[1]])


def test_records_of_a_held_entry_are_what_decoding_gives() -> None:
    fresh = FreshBatches()
    entry, view = _entry(PLAIN)
    fresh.add(entry, PLAIN)
    got = fresh.records(view, 10, len(PLAIN))
    assert got == decode_batch(bytes(view))
    assert got is not None and all(type(s) is StoredMessage for s in got)
    assert fresh.hits == 1


def test_only_the_very_entry_object_matches() -> None:
    fresh = FreshBatches()
    entry, _ = _entry(PLAIN)
    fresh.add(entry, PLAIN)
    copy = bytes(bytearray(entry))  # equal bytes, another object (a file read, say)
    assert fresh.records(decode_entry(copy).batch, 10, len(PLAIN)) is None
    _, other_view = _entry(PLAIN)
    assert fresh.records(other_view, 10, len(PLAIN)) is None
    assert fresh.hits == 0


def test_it_holds_a_bounded_number_of_batches() -> None:
    fresh = FreshBatches(max_batches=2)
    entries = [_entry([Message(b"k", b"%d" % i)]) for i in range(3)]
    for entry, _ in entries:
        fresh.add(entry, [Message(b"k", b"x")])
    assert len(fresh) == 2
    assert fresh.records(entries[0][1], 10, 1) is None  # the oldest went first
    assert fresh.records(entries[2][1], 10, 1) is not None


def test_it_holds_a_bounded_number_of_bytes() -> None:
    big = [Message(None, b"x" * 1000)]
    entry, view = _entry(big)
    one = 2 * len(entry) + 200
    fresh = FreshBatches(max_bytes=one)
    fresh.add(entry, big)
    assert fresh.bytes == one
    second, second_view = _entry(big)
    fresh.add(second, big)
    assert len(fresh) == 1 and fresh.bytes == one
    assert fresh.records(view, 10, 1) is None
    assert fresh.records(second_view, 10, 1) is not None
    tiny = FreshBatches(max_bytes=one - 1)
    tiny.add(entry, big)  # heavier than the whole budget: not held
    assert len(tiny) == 0 and tiny.bytes == 0
    with pytest.raises(ValueError):
        FreshBatches(max_batches=0)


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage("memory://") as storage, open_core(storage, settings) as c:
        await c.create_topic("t", 1)
        yield c


async def _deliveries(core: Core, count: int) -> list[Message]:
    c = await core.subscriptions.subscribe(
        "t", "s", SubscriptionType.EXCLUSIVE, initial_position=InitialPosition.EARLIEST,
        max_permits=100,
    )
    c.flow(100)
    out = []
    with trio.fail_after(5):
        while len(out) < count:
            d = await c.receive()
            out.append(d.message)
            c.ack(d.partition, d.offset)
    c.close()
    return out


async def test_a_subscription_gets_appended_messages_without_a_decode(core: Core) -> None:
    sent = list(PLAIN)
    await core.append_messages("t", 0, sent)
    sent.clear()  # the caller reusing its list changes nothing
    got = await _deliveries(core, len(PLAIN))
    assert got == PLAIN
    assert core.fresh.hits == 1
    assert core.subscriptions.batches.decodes == 1


async def test_odd_messages_are_decoded_and_come_back_as_bytes(core: Core) -> None:
    value = bytearray(b"v1")
    await core.append_messages("t", 0, [Message(b"k", value)])
    value[:] = b"zz"  # a publisher reusing its buffer cannot change what was stored
    (got,) = await _deliveries(core, 1)
    assert got == Message(b"k", b"v1") and type(got.value) is bytes
    assert core.fresh.hits == 0
