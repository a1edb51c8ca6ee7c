"""Sans-IO parts: the state machine, marker bytes, the per-partition visibility index."""

from __future__ import annotations

import pytest
from kafka.record.default_records import DefaultRecordBatch

from core.batch import split_batches
from core.errors import CorruptBatch
from core.records import Message, build_batch
from core.transactions import (
    ControlType,
    InvalidTxnState,
    TransactionTimedOut,
    TxnState,
    build_marker,
    marker_type,
)
from core.transactions.acks import PendingAcks
from core.transactions.errors import AckConflict
from core.transactions.state import AckRef, OffsetRef, Transaction, TxnId
from core.transactions.visibility import AbortedTxn, TxnIndex

T = TxnId(7, 2, 1)


def test_transitions_follow_kafkas_states() -> None:
    txn = Transaction(T, 1000, 1.0, "app")
    assert txn.to_record()["state"] == "Empty"
    assert txn.new_partitions([("a", 0), ("a", 0), ("b", 1)]) == [("a", 0), ("b", 1)]
    assert txn.to_record()["state"] == "Empty"  # new_partitions only checks
    txn.add_partitions([("a", 0), ("b", 1)])
    assert txn.to_record()["state"] == "Ongoing"
    assert txn.add_partitions([("a", 0)]) == []
    txn.add_ack(AckRef("in", "s", 0, 5))
    txn.set_offset(OffsetRef("g", "in", 0), 6)
    txn.decide(commit=True)
    assert txn.state is TxnState.PREPARE_COMMIT and txn.committed
    with pytest.raises(InvalidTxnState):
        txn.add_ack(AckRef("in", "s", 0, 6))
    with pytest.raises(InvalidTxnState):
        txn.decide(commit=False)
    txn.complete()
    assert txn.to_record()["state"] == TxnState.COMPLETE_COMMIT.value
    with pytest.raises(InvalidTxnState):
        txn.complete()


def test_timed_out_transactions_say_so() -> None:
    txn = Transaction(T, 1000, 1.0)
    txn.timed_out = True
    txn.decide(commit=False)
    with pytest.raises(TransactionTimedOut):
        txn.check_open()


def test_records_round_trip_and_carry_acks_once_decided() -> None:
    txn = Transaction(T, 1000, 1.0, "app")
    txn.add_partitions([("a", 0)])
    txn.add_ack(AckRef("in", "s", 0, 5))
    assert "acks" not in txn.to_record()
    assert txn.to_record(extra_partitions=[("b", 0)])["partitions"] == [["a", 0], ["b", 0]]
    txn.set_offset(OffsetRef("g", "in", 0), 6)
    txn.decide(commit=False)
    back = Transaction.from_record(txn.to_record(), 2.0)
    assert (back.id, back.state, back.transactional_id) == (T, TxnState.PREPARE_ABORT, "app")
    assert list(back.partitions) == [("a", 0)]
    assert list(back.acks) == [AckRef("in", "s", 0, 5)]
    assert back.offsets == {OffsetRef("g", "in", 0): 6}
    assert TxnState.COMPLETE_ABORT.rank > TxnState.PREPARE_ABORT.rank > TxnState.ONGOING.rank


def test_pending_acks_belong_to_one_transaction() -> None:
    acks = PendingAcks()
    ack = AckRef("in", "s", 0, 1)
    acks.claim(ack, T)
    acks.claim(ack, T)
    with pytest.raises(AckConflict):
        acks.claim(ack, TxnId(8, 0, 2))
    acks.release([ack], TxnId(8, 0, 2))  # not its owner: nothing happens
    assert acks.owner(ack) == T
    acks.release([ack], T)
    assert len(acks) == 0


@pytest.mark.parametrize("control", list(ControlType))
def test_marker_bytes_are_a_kafka_control_batch(control: ControlType) -> None:
    data = build_marker(42, 3, control, 1_700_000_000_000, coordinator_epoch=9)
    (info,) = split_batches(data, 1 << 20, allow_control=True)
    assert info.is_control and info.is_transactional
    assert (info.producer_id, info.producer_epoch, info.base_sequence) == (42, 3, -1)
    assert marker_type(data) is control
    parsed = DefaultRecordBatch(data)  # kafka-python, as a client, reads it too
    (record,) = list(parsed)
    assert parsed.is_control_batch
    assert record.key == b"\x00\x00" + int(control).to_bytes(2, "big")
    assert record.value == b"\x00\x00\x00\x00\x00\x09"
    with pytest.raises(CorruptBatch):
        marker_type(data[:63])


def test_index_tracks_lso_and_aborted_ranges() -> None:
    index = TxnIndex()
    assert index.stable_offset(10) == 10

    def data(pid: int, offset: int) -> None:
        raw = build_batch([Message(None, b"v")], producer_id=pid, producer_epoch=0,
                          base_sequence=0, transactional=True)
        (info,) = split_batches(raw, 1 << 20)
        index.on_append(info, offset)

    def marker(pid: int, control: ControlType, offset: int) -> None:
        (info,) = split_batches(build_marker(pid, 0, control, 0), 1 << 20, allow_control=True)
        index.on_append(info, offset)

    data(1, 10)
    data(2, 11)
    data(1, 12)
    assert index.stable_offset(20) == 10
    assert index.open_transactions == {1: 10, 2: 11}
    marker(1, ControlType.ABORT, 13)
    assert index.stable_offset(20) == 11
    marker(2, ControlType.COMMIT, 14)
    assert index.stable_offset(20) == 20
    assert index.aborted_between(0, 100) == [AbortedTxn(1, 10, 13)]
    assert index.aborted_between(14, 100) == []
    assert index.is_aborted(1, 12) and not index.is_aborted(2, 11)
    marker(1, ControlType.ABORT, 13)  # replayed: ignored
    assert index.aborted_count == 1
    assert index.trim(14) == 1 and index.aborted_count == 0
