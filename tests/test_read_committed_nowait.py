"""The READ_COMMITTED cut at the last stable offset, done once for three readers.

:func:`read_committed_nowait` (from memory), :func:`read_committed` going to the
log, and a subscription's fill from memory (``ReadAheadFill._read_nowait``) must
return the same thing for every offset: aborted and open transactions, control
batches, a last stable offset in the middle of a batch, small and large byte budgets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from core.api import Core, open_core
from core.batch import BatchInfo
from core.config import CoreSettings
from core.errors import OffsetOutOfRange
from core.names import TopicName
from core.partition import Partition, ReadEntry
from core.records import Message
from core.subscriptions.read_ahead import ReadAheadFill
from core.transactions import reads
from core.transactions.reads import CommittedRead, read_committed, read_committed_nowait
from core.transactions.state import TxnId
from core.transactions.visibility import AbortedTxn
from storage import open_storage

BUDGETS = [1, 150, 1 << 20]


@pytest.fixture(params=["memory", "file"])
async def core(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    url = "memory://" if request.param == "memory" else f"file://{tmp_path / 'data'}"
    async with open_storage(url) as storage, open_core(storage, settings) as c:
        await c.create_topic("t", 1)
        yield c


def msgs(*values: bytes) -> list[Message]:
    return [Message(None, v) for v in values]


async def txn_write(core: Core, txn: TxnId, *values: bytes) -> None:
    await core.transactions.append_messages(txn, "t", 0, msgs(*values))


async def begin(core: Core) -> TxnId:
    txn = await core.transactions.begin()
    await core.transactions.add_partitions(txn, [("t", 0)])
    return txn


class _Reader(ReadAheadFill):
    """Just what ``ReadAheadFill._read_nowait`` reads of a READ_COMMITTED subscription."""

    def __init__(self, core: Core, topic: TopicName, position: int, read_bytes: int) -> None:
        self.core, self.topic, self.partition = core, topic, 0
        self.read_bytes = read_bytes
        self._read_position = position

    @property
    def _read_committed(self) -> bool:
        return True


def _shape(entries: list[ReadEntry]) -> list[tuple[int, int, bytes]]:
    return [(e.base_offset, e.last_offset, bytes(e.batch)) for e in entries]


def _same(a: CommittedRead, b: CommittedRead) -> None:
    assert _shape(a.entries) == _shape(b.entries)
    assert (a.aborted, a.last_stable_offset, a.high_watermark) == (
        b.aborted, b.last_stable_offset, b.high_watermark)


async def _from_the_log(
    core: Core, monkeypatch: pytest.MonkeyPatch, offset: int, budget: int
) -> CommittedRead | OffsetOutOfRange:
    """:func:`read_committed` with the partition's memory turned off: it reads the log."""
    with monkeypatch.context() as m:
        m.setattr(Partition, "read_nowait", lambda *_: None)
        try:
            return await read_committed(core, "t", 0, offset, budget)
        except OffsetOutOfRange as exc:
            return exc


async def _check_all_agree(core: Core, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every offset, every budget: the three readers agree.  Returns how many reads the
    memory answered (so a test can tell that the comparison was not vacuous)."""
    topic = core.parse_topic("t").base
    p = await core._partition(topic, 0)
    answered = 0
    for offset in range(-1, p.high_watermark + 2):
        for budget in BUDGETS:
            fast = read_committed_nowait(p, offset, budget)
            slow = await _from_the_log(core, monkeypatch, offset, budget)
            reader = _Reader(core, topic, offset, budget)
            from_reader = reader._read_nowait()
            if isinstance(slow, OffsetOutOfRange):
                assert fast is None and from_reader is None, offset
                continue
            _same(slow, await read_committed(core, "t", 0, offset, budget))  # memory on
            if fast is None:
                assert from_reader is None
                continue
            answered += 1
            _same(fast, slow)
            if not slow.entries or slow.aborted:
                assert from_reader is None, offset  # nothing, or aborted data: the async path
            else:
                assert from_reader is not None and _shape(from_reader) == _shape(slow.entries)
    return answered


async def _mixed_log(core: Core) -> tuple[TxnId, TxnId, TxnId]:
    """Offsets: 0-2 plain (one batch), 3-4 txn A, 5 txn B, 6 plain, 7 ABORT A, 8 txn B,
    9 COMMIT B, 10 txn C (left open), 11 plain.  LSO 10, high watermark 12."""
    await core.append_messages("t", 0, msgs(b"p0", b"p1", b"p2"))
    a, b = await begin(core), await begin(core)
    await txn_write(core, a, b"a3", b"a4")
    await txn_write(core, b, b"b5")
    await core.append_messages("t", 0, msgs(b"p6"))
    await core.transactions.end(a, commit=False)
    await txn_write(core, b, b"b8")
    await core.transactions.end(b, commit=True)
    c = await begin(core)
    await txn_write(core, c, b"c10")
    await core.append_messages("t", 0, msgs(b"p11"))
    return a, b, c


async def test_the_cut_at_the_last_stable_offset(core: Core) -> None:
    a, _, _ = await _mixed_log(core)
    p = await core._partition("t", 0)
    read = await read_committed(core, "t", 0, 0, 1 << 20)
    assert [e.base_offset for e in read.entries] == [0, 3, 5, 6, 7, 8, 9]
    assert read.aborted == [AbortedTxn(a.producer_id, 3, 7)]
    assert (read.last_stable_offset, read.high_watermark) == (10, 12)
    fast = read_committed_nowait(p, 8, 1 << 20)
    assert fast is not None and [e.base_offset for e in fast.entries] == [8, 9]
    assert fast.aborted == []  # the aborted transaction has no data from offset 8 on
    for at_or_past_lso in (10, 11, 12):
        assert read_committed_nowait(p, at_or_past_lso, 1 << 20) == CommittedRead([], [], 10, 12)
    assert read_committed_nowait(p, 13, 1 << 20) is None
    assert read_committed_nowait(p, -1, 1 << 20) is None


async def test_all_readers_agree_with_open_and_aborted_transactions(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, c = await _mixed_log(core)
    assert await _check_all_agree(core, monkeypatch) > 0
    await core.transactions.end(c, commit=False)  # LSO jumps to the high watermark
    d = await begin(core)
    await txn_write(core, d, b"d14")
    await core.transactions.end(d, commit=True)
    assert await _check_all_agree(core, monkeypatch) > 0


async def test_memory_reads_every_offset_of_a_fresh_memory_log(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _mixed_log(core)
    p = await core._partition("t", 0)
    if p.read_nowait(0, 1 << 20) is None:
        pytest.skip("this backend keeps no tail in memory")
    # every batch start below the LSO is answered from memory (and agrees, above)
    for offset in (0, 3, 5, 6, 7, 8, 9):
        assert read_committed_nowait(p, offset, 1) is not None, offset


async def test_a_batch_straddling_the_last_stable_offset_waits_whole(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    await core.append_messages("t", 0, msgs(b"p0", b"p1", b"p2"))
    await core.append_messages("t", 0, msgs(b"p3"))
    p = await core._partition("t", 0)
    # an open transaction whose first offset lies inside the first batch
    p.txns.on_append(cast(BatchInfo, SimpleNamespace(producer_id=4242, is_control=False)), 1)
    assert p.last_stable_offset == 1
    for offset in (0, 1):
        for budget in BUDGETS:
            fast = read_committed_nowait(p, offset, budget)
            assert fast is not None
            assert fast.entries == [] and fast.last_stable_offset == 1
    await _check_all_agree(core, monkeypatch)


async def test_a_partition_due_for_trimming_takes_the_async_path(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, _ = await _mixed_log(core)
    p = await core._partition("t", 0)
    before = read_committed_nowait(p, 0, 1 << 20)
    assert before is not None
    monkeypatch.setattr(reads, "_TRIM_AT", 1)
    assert read_committed_nowait(p, 0, 1 << 20) is None
    assert read_committed_nowait(p, 10, 1 << 20) == CommittedRead([], [], 10, 12)
    after = await read_committed(core, "t", 0, 0, 1 << 20)
    _same(before, after)  # trimmed to the earliest offset (0): nothing to drop
    assert after.aborted == [AbortedTxn(a.producer_id, 3, 7)]
    assert _Reader(core, core.parse_topic("t").base, 0, 1 << 20)._read_nowait() is None
