"""RangeSet: unit tests and hypothesis properties against a plain ``set`` model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from core.rangeset import RangeSet

LIMIT = 200  # small universe: collisions, adjacency and merges are frequent

values = st.integers(0, LIMIT)


def ranges_of(model: set[int]) -> list[tuple[int, int]]:
    """The canonical ranges of a set of integers."""
    out: list[tuple[int, int]] = []
    for v in sorted(model):
        if out and out[-1][1] == v:
            out[-1] = (out[-1][0], v + 1)
        else:
            out.append((v, v + 1))
    return out


def test_empty() -> None:
    rs = RangeSet()
    assert len(rs) == 0
    assert rs.count == 0
    assert not rs
    assert list(rs) == []
    assert 0 not in rs
    assert rs.first_gap(5) == 5
    assert rs.next_member(0) is None
    assert rs.first() is None and rs.last() is None
    assert rs.count_in(0, 100) == 0
    assert list(rs.gaps(3, 7)) == [(3, 7)]


def test_add_coalesces_adjacent_values() -> None:
    rs = RangeSet()
    assert rs.add(5)
    assert rs.add(7)
    assert list(rs) == [(5, 6), (7, 8)]
    assert rs.add(6)
    assert list(rs) == [(5, 8)]
    assert not rs.add(6)
    assert rs.add(4) and rs.add(8)
    assert list(rs) == [(4, 9)]
    assert rs.count == 5


def test_add_range_merges_overlapping_and_touching() -> None:
    rs = RangeSet([(0, 2), (5, 7), (10, 12), (20, 25)])
    assert rs.add_range(2, 5) == 3  # touches both neighbours
    assert list(rs) == [(0, 7), (10, 12), (20, 25)]
    assert rs.add_range(8, 22) == 14 - 2 - 2  # swallows [10,12), overlaps [20,25)
    assert list(rs) == [(0, 7), (8, 25)]
    assert rs.add_range(3, 3) == 0
    assert rs.add_range(9, 4) == 0
    assert rs.count == 7 + 17


def test_negative_values_are_rejected() -> None:
    rs = RangeSet()
    with pytest.raises(ValueError):
        rs.add(-1)
    with pytest.raises(ValueError):
        rs.add_range(-3, 2)
    assert -1 not in rs
    assert "x" not in rs


def test_remove_below_splits_a_range() -> None:
    rs = RangeSet([(0, 3), (5, 10), (12, 13)])
    assert rs.remove_below(7) == 3 + 2
    assert list(rs) == [(7, 10), (12, 13)]
    assert rs.remove_below(7) == 0
    assert rs.remove_below(100) == 4
    assert not rs and rs.count == 0


def test_queries() -> None:
    rs = RangeSet([(2, 4), (6, 9)])
    assert rs.first_gap(0) == 0
    assert rs.first_gap(2) == 4
    assert rs.first_gap(7) == 9
    assert rs.next_member(0) == 2
    assert rs.next_member(4) == 6
    assert rs.next_member(8) == 8
    assert rs.next_member(9) is None
    assert rs.count_in(3, 7) == 2
    assert rs.count_in(0, 100) == 5
    assert rs.count_in(5, 6) == 0
    assert list(rs.gaps(0, 10)) == [(0, 2), (4, 6), (9, 10)]
    assert list(rs.gaps(3, 8)) == [(4, 6)]
    assert rs.ranges(1) == [(2, 4)]
    assert rs.first() == (2, 4) and rs.last() == (6, 9)


def test_copy_and_equality() -> None:
    rs = RangeSet([(1, 3)])
    other = rs.copy()
    assert other == rs
    other.add(10)
    assert other != rs
    assert list(rs) == [(1, 3)]
    assert "[1, 3)" in repr(rs)


def test_iteration_survives_mutation() -> None:
    rs = RangeSet([(0, 1), (2, 3), (4, 5)])
    seen = []
    for lo, hi in rs:
        seen.append((lo, hi))
        rs.add(hi)
    assert seen == [(0, 1), (2, 3), (4, 5)]
    assert list(rs) == [(0, 6)]


def test_a_million_scattered_acks_stay_a_few_ranges() -> None:
    """1,000 consumers each acking their own slice, interleaved: never more than 1,000 ranges."""
    consumers, per_consumer = 1_000, 1_000
    rs = RangeSet()
    most = 0
    for i in range(per_consumer):
        for c in range(consumers):
            rs.add(c * per_consumer + i)
        most = max(most, len(rs))
    assert most <= consumers
    assert list(rs) == [(0, consumers * per_consumer)]
    assert rs.count == consumers * per_consumer


@given(st.lists(st.tuples(values, st.integers(0, 20)), max_size=40), values)
def test_matches_set_model(ops: list[tuple[int, int]], probe: int) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for lo, length in ops:
        if length == 0:
            assert rs.add(lo) == (lo not in model)
            model.add(lo)
        else:
            new = set(range(lo, lo + length)) - model
            assert rs.add_range(lo, lo + length) == len(new)
            model |= new
    assert list(rs) == ranges_of(model)
    assert rs.count == len(model)
    assert (probe in rs) == (probe in model)
    gap = rs.first_gap(probe)
    assert gap >= probe and gap not in model
    assert all(v in model for v in range(probe, gap))


class RangeSetMachine(RuleBasedStateMachine):
    """Random interleavings of every operation, checked against a set after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.rs = RangeSet()
        self.model: set[int] = set()

    @rule(value=values)
    def add(self, value: int) -> None:
        assert self.rs.add(value) == (value not in self.model)
        self.model.add(value)

    @rule(lo=values, length=st.integers(0, 30))
    def add_range(self, lo: int, length: int) -> None:
        new = set(range(lo, lo + length)) - self.model
        assert self.rs.add_range(lo, lo + length) == len(new)
        self.model |= new

    @rule(bound=values)
    def remove_below(self, bound: int) -> None:
        dropped = {v for v in self.model if v < bound}
        assert self.rs.remove_below(bound) == len(dropped)
        self.model -= dropped

    @rule(lo=values, hi=values)
    def count_in(self, lo: int, hi: int) -> None:
        assert self.rs.count_in(lo, hi) == sum(1 for v in self.model if lo <= v < hi)

    @rule(lo=values, hi=values)
    def gaps(self, lo: int, hi: int) -> None:
        expected = ranges_of({v for v in range(lo, hi) if v not in self.model})
        assert list(self.rs.gaps(lo, hi)) == expected

    @rule(start=values)
    def next_member(self, start: int) -> None:
        above = [v for v in self.model if v >= start]
        assert self.rs.next_member(start) == (min(above) if above else None)

    @rule(start=values)
    def first_gap(self, start: int) -> None:
        gap = self.rs.first_gap(start)
        assert gap not in self.model
        assert all(v in self.model for v in range(start, gap))

    @invariant()
    def same_as_model(self) -> None:
        assert list(self.rs) == ranges_of(self.model)
        assert self.rs.count == len(self.model)
        assert len(self.rs) == len(ranges_of(self.model))


TestRangeSetMachine = RangeSetMachine.TestCase
TestRangeSetMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
