"""Cursor: acks, mark-delete, backlog, redelivery counts, binary form; hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from core.cursor import (
    FORMAT_VERSION,
    MAX_OFFSET,
    CorruptCursor,
    Cursor,
    CursorClosed,
    UnknownPosition,
)
from core.errors import CoreError
from core.rangeset import RangeSet

# ---------------------------------------------------------------- acks


def test_in_order_acks_move_mark_delete() -> None:
    c = Cursor()
    for offset in range(5):
        assert c.ack(offset)
    assert c.mark_delete == 5
    assert not c.individually_acked
    assert not c.ack(3)  # already acked
    assert c.is_acked(4) and not c.is_acked(5)


def test_individual_acks_then_the_gap_closes() -> None:
    c = Cursor()
    assert c.ack(1) and c.ack(2) and c.ack(4)
    assert c.mark_delete == 0
    assert list(c.individually_acked) == [(1, 3), (4, 5)]
    assert c.next_unacked() == 0
    assert c.next_unacked(1) == 3
    assert c.backlog(6) == 3  # 0, 3, 5
    assert c.ack(0)
    assert c.mark_delete == 3
    assert list(c.individually_acked) == [(4, 5)]
    assert c.ack(3)
    assert c.mark_delete == 5
    assert not c.individually_acked


def test_ack_range_is_half_open_and_counts_new_offsets() -> None:
    c = Cursor(2)
    assert c.ack_range(0, 5) == 3  # 0 and 1 were acked cumulatively already
    assert c.mark_delete == 5
    assert c.ack_range(7, 10) == 3
    assert c.ack_range(8, 12) == 2
    assert list(c.individually_acked) == [(7, 12)]
    assert c.ack_range(5, 7) == 2
    assert c.mark_delete == 12 and not c.individually_acked
    assert c.ack_range(20, 20) == 0
    assert list(c.unacked_ranges(15)) == [(12, 15)]


def test_ack_cumulative_swallows_individual_acks_and_never_goes_back() -> None:
    c = Cursor()
    c.ack_range(3, 6)
    c.ack(8)
    assert c.ack_cumulative(3) == 3  # 0, 1, 2 are new; mark-delete runs on to 6
    assert c.mark_delete == 6
    assert list(c.individually_acked) == [(8, 9)]
    assert c.ack_cumulative(2) == 0
    assert c.mark_delete == 6
    assert c.ack_cumulative(7) == 2  # 6 and 7; then 8 is acked too
    assert c.mark_delete == 9


def test_reset_forgets_individual_acks_and_may_go_backwards() -> None:
    c = Cursor()
    c.ack_cumulative(9)
    c.ack(15)
    c.record_redelivery(12)
    c.reset(4)
    assert c.mark_delete == 4
    assert not c.individually_acked
    assert c.redelivery_count(12) == 0
    assert not c.is_acked(15)
    assert c.backlog(20) == 16
    c.reset(100)  # seeking past the end is allowed
    assert c.backlog(20) == 0


def test_backlog() -> None:
    c = Cursor(10)
    assert c.backlog(5) == 0
    assert c.backlog(10) == 0
    assert c.backlog(20) == 10
    c.ack_range(12, 15)
    c.ack(30)  # acked without a high watermark: not below 20, not counted
    assert c.backlog(20) == 7
    assert c.backlog(31) == 31 - 10 - 4


def test_unknown_position_is_a_typed_error_and_changes_nothing() -> None:
    c = Cursor()
    with pytest.raises(UnknownPosition) as info:
        c.ack(10, high_watermark=10)
    assert info.value.offset == 10 and info.value.high_watermark == 10
    assert isinstance(info.value, CoreError)
    with pytest.raises(UnknownPosition):
        c.ack_range(5, 11, high_watermark=10)
    with pytest.raises(UnknownPosition):
        c.ack_cumulative(10, high_watermark=10)
    with pytest.raises(UnknownPosition):
        c.ack(-1)
    with pytest.raises(UnknownPosition):
        c.ack(MAX_OFFSET + 1)
    with pytest.raises(UnknownPosition):
        c.reset(-5)
    assert c.mark_delete == 0 and not c.individually_acked
    assert c.ack(9, high_watermark=10)
    assert c.ack_range(0, 9, high_watermark=9) == 9
    assert c.mark_delete == 10


def test_closed_cursor_refuses_changes_but_answers_reads() -> None:
    c = Cursor()
    c.ack(0)
    c.close()
    c.close()
    assert c.closed
    for call in (
        lambda: c.ack(1),
        lambda: c.ack_range(1, 3),
        lambda: c.ack_cumulative(5),
        lambda: c.reset(0),
        lambda: c.record_redelivery(1),
    ):
        with pytest.raises(CursorClosed):
            call()
    assert c.mark_delete == 1
    assert c.is_acked(0) and c.backlog(3) == 2
    assert "closed" in repr(c)


def test_constructor_settles_given_state() -> None:
    c = Cursor(5, RangeSet([(0, 3), (5, 8), (10, 11)]))
    assert c.mark_delete == 8
    assert list(c.individually_acked) == [(10, 11)]
    with pytest.raises(ValueError):
        Cursor(max_tracked_redeliveries=0)


# ---------------------------------------------------------------- redeliveries


def test_redelivery_counts_are_pruned_when_acked() -> None:
    c = Cursor()
    assert c.record_redelivery(3) == 1
    assert c.record_redelivery(3) == 2
    assert c.record_redelivery(5) == 1
    assert c.record_redelivery(9) == 1
    assert c.redelivery_count(3) == 2
    c.ack(5)
    assert c.redelivery_count(5) == 0
    c.ack_cumulative(3)
    assert c.redelivery_count(3) == 0
    assert c.tracked_redeliveries == 1
    c.ack_range(8, 1_000_000)  # a wide range prunes by scanning the (small) table
    assert c.tracked_redeliveries == 0
    assert c.record_redelivery(2) == 0  # acked offsets are not counted


def test_redelivery_table_is_bounded_and_keeps_recent_counts() -> None:
    c = Cursor(max_tracked_redeliveries=3)
    for offset in (10, 11, 12):
        c.record_redelivery(offset)
    c.record_redelivery(10)  # 10 is now the most recently counted
    c.record_redelivery(13)  # evicts 11, the least recently counted
    assert c.tracked_redeliveries == 3
    assert c.redelivery_count(10) == 2
    assert c.redelivery_count(11) == 0
    assert c.redelivery_count(13) == 1


# ---------------------------------------------------------------- binary form


def test_binary_form_fixture() -> None:
    c = Cursor(300, RangeSet([(302, 305), (1000, 1001)]))
    data = c.to_bytes()
    assert data == bytes(
        [FORMAT_VERSION, 0xAC, 0x02, 2, 2, 3, 0xB7, 0x05, 1]
    )  # 300; 2 ranges; gap 2 len 3; gap 695 len 1
    back = Cursor.from_bytes(data)
    assert back.mark_delete == 300
    assert back.individually_acked == c.individually_acked
    assert Cursor.from_bytes(bytearray(data)).mark_delete == 300
    assert Cursor.from_bytes(memoryview(data)).mark_delete == 300


def test_binary_form_of_extremes() -> None:
    c = Cursor()
    assert c.to_bytes() == bytes([FORMAT_VERSION, 0, 0])
    c.ack_cumulative(MAX_OFFSET)
    assert Cursor.from_bytes(c.to_bytes()).mark_delete == MAX_OFFSET + 1


def test_range_cap_keeps_the_oldest_ranges_and_only_loses_acks() -> None:
    c = Cursor(max_persisted_ranges=3)
    for offset in range(1, 20, 2):
        c.ack(offset)
    assert len(c.individually_acked) == 10
    back = Cursor.from_bytes(c.to_bytes())
    assert back.mark_delete == c.mark_delete
    assert list(back.individually_acked) == [(1, 2), (3, 4), (5, 6)]
    # every offset acked after the restart was acked before: at worst redelivery
    assert all(c.is_acked(o) for o in range(30) if back.is_acked(o))
    assert back.backlog(30) > c.backlog(30)


def test_corrupt_inputs_raise_corrupt_cursor() -> None:
    good = Cursor(300, RangeSet([(302, 305)])).to_bytes()
    for cut in range(len(good)):
        with pytest.raises(CorruptCursor):
            Cursor.from_bytes(good[:cut])
    bad = [
        good + b"\x00",  # trailing byte
        bytes([9]) + good[1:],  # unknown version
        bytes([FORMAT_VERSION, 0, 1, 0, 1]),  # zero gap
        bytes([FORMAT_VERSION, 0, 1, 1, 0]),  # empty range
        bytes([FORMAT_VERSION]) + b"\xff" * 10 + b"\x01\x00",  # varint over 10 bytes
        bytes([FORMAT_VERSION, 0, 0x7F]),  # claims 127 ranges in no bytes
        bytes([FORMAT_VERSION, 0x80, 0x00, 0]),  # non-minimal varint
        bytes([FORMAT_VERSION]) + b"\xff" * 9 + b"\x01" + b"\x00",  # mark-delete too large
    ]
    for data in bad:
        with pytest.raises(CorruptCursor):
            Cursor.from_bytes(data)


@given(st.binary(max_size=40))
def test_decoding_garbage_raises_only_corrupt_cursor(data: bytes) -> None:
    try:
        c = Cursor.from_bytes(data)
    except CorruptCursor:
        return
    assert c.to_bytes() == data  # whatever decodes is canonical


@given(
    st.integers(0, 2**40),
    st.lists(st.tuples(st.integers(1, 2**20), st.integers(1, 2**20)), max_size=30),
)
def test_round_trip_is_identity(mark_delete: int, gaps: list[tuple[int, int]]) -> None:
    acked = RangeSet()
    prev = mark_delete
    for gap, length in gaps:
        acked.add_range(prev + gap, prev + gap + length)
        prev += gap + length
    c = Cursor(mark_delete, acked)
    back = Cursor.from_bytes(c.to_bytes())
    assert back.mark_delete == c.mark_delete
    assert back.individually_acked == c.individually_acked
    assert back.to_bytes() == c.to_bytes()


# ---------------------------------------------------------------- properties

OFFSETS = st.integers(0, 120)


class CursorMachine(RuleBasedStateMachine):
    """A cursor against a model: the set of acked offsets, and a growing high watermark."""

    def __init__(self) -> None:
        super().__init__()
        self.cursor = Cursor(max_persisted_ranges=1_000_000)
        self.acked: set[int] = set()
        self.hw = 0
        self.last_mark_delete = 0
        self.was_reset = False

    def _check_hw(self, offset: int, use_hw: bool) -> bool:
        return not use_hw or offset < self.hw

    @rule(count=st.integers(1, 20))
    def append(self, count: int) -> None:
        self.hw += count

    @rule(offset=OFFSETS, use_hw=st.booleans())
    def ack(self, offset: int, use_hw: bool) -> None:
        hw = self.hw if use_hw else None
        if not self._check_hw(offset, use_hw):
            with pytest.raises(UnknownPosition):
                self.cursor.ack(offset, hw)
            return
        assert self.cursor.ack(offset, hw) == (offset not in self.acked)
        self.acked.add(offset)

    @rule(lo=OFFSETS, length=st.integers(0, 25), use_hw=st.booleans())
    def ack_range(self, lo: int, length: int, use_hw: bool) -> None:
        hw = self.hw if use_hw else None
        if length and not self._check_hw(lo + length - 1, use_hw):
            with pytest.raises(UnknownPosition):
                self.cursor.ack_range(lo, lo + length, hw)
            return
        new = set(range(lo, lo + length)) - self.acked
        assert self.cursor.ack_range(lo, lo + length, hw) == len(new)
        self.acked |= new

    @rule(offset=OFFSETS, use_hw=st.booleans())
    def ack_cumulative(self, offset: int, use_hw: bool) -> None:
        hw = self.hw if use_hw else None
        if not self._check_hw(offset, use_hw):
            with pytest.raises(UnknownPosition):
                self.cursor.ack_cumulative(offset, hw)
            return
        if offset < self.cursor.mark_delete:
            assert self.cursor.ack_cumulative(offset, hw) == 0
            return
        new = set(range(offset + 1)) - self.acked
        assert self.cursor.ack_cumulative(offset, hw) == len(new)
        self.acked |= new

    @rule(offset=OFFSETS)
    def reset(self, offset: int) -> None:
        self.cursor.reset(offset)
        self.acked = set(range(offset))
        self.was_reset = True

    @rule(offset=OFFSETS)
    def redeliver(self, offset: int) -> None:
        before = self.cursor.redelivery_count(offset)
        after = self.cursor.record_redelivery(offset)
        assert after == (0 if offset in self.acked else before + 1)

    @rule()
    def restart(self) -> None:
        """Serialise and deserialise (under the range cap): nothing changes."""
        data = self.cursor.to_bytes()
        back = Cursor.from_bytes(data, max_persisted_ranges=1_000_000)
        assert back.mark_delete == self.cursor.mark_delete
        assert back.individually_acked == self.cursor.individually_acked
        self.cursor = back

    @invariant()
    def mark_delete_only_moves_forward_without_reset(self) -> None:
        if not self.was_reset:
            assert self.cursor.mark_delete >= self.last_mark_delete
        self.last_mark_delete = self.cursor.mark_delete
        self.was_reset = False

    @invariant()
    def matches_model(self) -> None:
        c = self.cursor
        expected_md = 0
        while expected_md in self.acked:
            expected_md += 1
        assert c.mark_delete == expected_md
        for offset in self.acked:  # no acked offset is ever reported unacked
            assert c.is_acked(offset)
        assert c.backlog(self.hw) == sum(1 for o in range(self.hw) if o not in self.acked)
        for lo, _ in c.individually_acked:
            assert lo > c.mark_delete  # never below it, never a range starting at it

    @invariant()
    def next_unacked_walks_every_unacked_offset(self) -> None:
        seen = []
        offset = self.cursor.next_unacked(0)
        while offset < self.hw:
            assert offset not in self.acked
            seen.append(offset)
            offset = self.cursor.next_unacked(offset + 1)
        assert seen == [o for o in range(self.hw) if o not in self.acked]
        from_ranges = [o for lo, hi in self.cursor.unacked_ranges(self.hw) for o in range(lo, hi)]
        assert from_ranges == seen


TestCursorMachine = CursorMachine.TestCase
TestCursorMachine.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


@given(
    st.lists(st.tuples(OFFSETS, st.integers(1, 5)), max_size=40),
    st.integers(0, 6),
    st.integers(0, 130),
)
def test_range_cap_only_ever_forgets_acks(
    acks: list[tuple[int, int]], cap: int, hw: int
) -> None:
    c = Cursor(max_persisted_ranges=cap)
    for lo, length in acks:
        c.ack_range(lo, lo + length)
    back = Cursor.from_bytes(c.to_bytes())
    assert back.mark_delete == c.mark_delete
    assert len(back.individually_acked) == min(cap, len(c.individually_acked))
    assert all(c.is_acked(o) for o in range(hw) if back.is_acked(o))  # never loss
    assert back.backlog(hw) >= c.backlog(hw)  # at worst redelivery
