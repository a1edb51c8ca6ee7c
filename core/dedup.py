"""Idempotent-producer deduplication for one partition (sans-IO: no trio, no storage).

Theory of operation
-------------------
A Kafka-style idempotent producer stamps every record batch with its producer id
(``pid``), an epoch and the sequence number of its first record; the batch covers
sequences ``first_seq .. first_seq + record_count - 1`` (wrapping at 2**31 - 1 to 0).
Batches with ``pid == -1`` carry no identity and are never checked; neither are
control batches (transaction markers), which carry a pid but no sequence.

For every known producer :class:`DedupState` keeps its epoch and the sequence
ranges of its last :data:`MAX_BATCHES` batches (5, as Kafka) with the offsets they
got.  For a new batch, in this order (Kafka's rules, 2.5+):

* epoch older than the producer's   -> :class:`InvalidProducerEpoch` (fenced);
* same epoch, same ``first_seq``/``last_seq`` as a remembered batch -> a
  duplicate: answer with that batch's offsets and write nothing;
* unknown producer (or evicted) and ``first_seq != 0`` -> :class:`UnknownProducerId`;
* newer epoch and ``first_seq != 0``  -> :class:`OutOfOrderSequence`;
* same epoch and ``first_seq != last_seq + 1`` -> :class:`OutOfOrderSequence`;
* otherwise the batch is new; a newer epoch forgets the older epoch's batches.

:meth:`DedupState.plan` checks a whole append (several batches, maybe of one
producer) without changing anything, so an append is refused as a whole;
:meth:`DedupState.record` then remembers each batch once it has offsets.  The
partition calls both with no checkpoint in between, and before its first
checkpoint, so pipelined batches of one producer are checked in arrival order.

:meth:`DedupState.truncate` forgets batches at or past an offset: after a failed
append (the log holds less than was planned) or when a snapshot is ahead of the
log.  Snapshots (:meth:`DedupState.snapshot` / :meth:`DedupState.from_snapshot`)
are JSON; the partition replays the log after a snapshot's offset with
:meth:`DedupState.record`.

Memory is bounded: at most ``max_producers`` producers are kept, the least
recently used one is forgotten first (its retries then get ``UnknownProducerId``,
as in Kafka after producer-id expiration).
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import CoreError

__all__ = [
    "DEFAULT_MAX_PRODUCERS",
    "MAX_BATCHES",
    "NO_PRODUCER_ID",
    "BatchRange",
    "DedupState",
    "Duplicate",
    "InvalidProducerEpoch",
    "OutOfOrderSequence",
    "ProducerIdentity",
    "ProducerStateError",
    "UnknownProducerId",
    "last_sequence",
]

NO_PRODUCER_ID = -1
MAX_BATCHES = 5
DEFAULT_MAX_PRODUCERS = 10_000
_MAX_SEQUENCE = 0x7FFFFFFF


class ProducerStateError(CoreError):
    """An idempotent producer's batch does not fit its state; nothing was stored."""


class OutOfOrderSequence(ProducerStateError):
    """A sequence gap (or a new epoch not starting at 0): Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER."""


class InvalidProducerEpoch(ProducerStateError):
    """The batch's epoch is older than the producer's: a fenced (zombie) producer."""


class UnknownProducerId(ProducerStateError):
    """No state for this producer id and the batch does not start at sequence 0."""


class ProducerIdentity(Protocol):
    """The batch header fields dedup looks at (:class:`core.batch.BatchInfo` has them)."""

    @property
    def producer_id(self) -> int: ...
    @property
    def producer_epoch(self) -> int: ...
    @property
    def base_sequence(self) -> int: ...
    @property
    def record_count(self) -> int: ...
    @property
    def is_control(self) -> bool: ...


def last_sequence(first_seq: int, record_count: int) -> int:
    """Sequence of a batch's last record (sequences wrap from 2**31 - 1 to 0)."""
    return (first_seq + record_count - 1) % (_MAX_SEQUENCE + 1)


def _next_sequence(seq: int) -> int:
    return 0 if seq == _MAX_SEQUENCE else seq + 1


@dataclass(frozen=True, slots=True)
class BatchRange:
    """A remembered batch: its sequence range, the offsets it got and its broker time."""

    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int
    broker_timestamp: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The verdict for a retried batch: where its first copy landed."""

    base_offset: int
    last_offset: int
    broker_timestamp: int


class _Producer:
    __slots__ = ("batches", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches: deque[BatchRange] = deque(maxlen=MAX_BATCHES)

    @property
    def last_seq(self) -> int | None:
        return self.batches[-1].last_seq if self.batches else None


class DedupState:
    """Per-partition producer state; see the module docstring."""

    def __init__(self, max_producers: int = DEFAULT_MAX_PRODUCERS) -> None:
        if max_producers < 1:
            raise ValueError("max_producers must be at least 1")
        self._max = max_producers
        self._producers: OrderedDict[int, _Producer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._producers)

    def producer(self, pid: int) -> tuple[int, list[BatchRange]] | None:
        """``(epoch, remembered batches)`` of producer ``pid``, or None when unknown."""
        found = self._producers.get(pid)
        return None if found is None else (found.epoch, list(found.batches))

    def plan(self, batches: Iterable[ProducerIdentity]) -> list[Duplicate | None] | None:
        """Check an append; one verdict per batch (None: new, write it).

        Returns None (fast path) when no batch carries a producer id.  Raises a
        :class:`ProducerStateError` for the first batch that does not fit; the
        state is never changed here.
        """
        verdicts: list[Duplicate | None] | None = None
        # (epoch, last_seq) of producers already advanced earlier in this append
        ahead: dict[int, tuple[int, int]] | None = None
        for i, batch in enumerate(batches):
            pid = batch.producer_id
            if pid < 0 or batch.is_control:  # markers carry no sequence
                if verdicts is not None:
                    verdicts.append(None)
                continue
            if verdicts is None:
                verdicts = [None] * i
                ahead = {}
            assert ahead is not None
            first = batch.base_sequence
            last = last_sequence(first, batch.record_count)
            epoch = batch.producer_epoch
            verdict = self._check(pid, epoch, first, last, ahead.get(pid))
            if verdict is None:
                ahead[pid] = (epoch, last)
            verdicts.append(verdict)
        return verdicts

    def _check(self, pid: int, epoch: int, first: int, last: int,
               ahead: tuple[int, int] | None) -> Duplicate | None:
        if first < 0:
            raise OutOfOrderSequence(f"producer {pid}: negative base sequence {first}")
        known = self._producers.get(pid)
        if ahead is not None:
            cur_epoch, cur_last = ahead
        elif known is not None:
            cur_epoch = known.epoch
            cur_last = known.batches[-1].last_seq if known.batches else -1
        else:
            if first != 0:
                raise UnknownProducerId(
                    f"producer {pid} is unknown here and its batch starts at sequence {first}")
            return None
        if epoch < cur_epoch:
            raise InvalidProducerEpoch(
                f"producer {pid}: epoch {epoch} is older than the current epoch {cur_epoch}")
        if epoch > cur_epoch:
            if first != 0:
                raise OutOfOrderSequence(
                    f"producer {pid}: new epoch {epoch} must start at sequence 0, not {first}")
            return None
        if ahead is None and known is not None:
            for b in known.batches:
                if b.first_seq == first and b.last_seq == last:
                    return Duplicate(b.base_offset, b.last_offset, b.broker_timestamp)
        if cur_last == -1:
            if first != 0:
                raise UnknownProducerId(
                    f"producer {pid} has no batches here and its batch starts at {first}")
            return None
        if first != _next_sequence(cur_last):
            raise OutOfOrderSequence(
                f"producer {pid} epoch {epoch}: expected sequence {_next_sequence(cur_last)}, "
                f"got {first}")
        return None

    def record(self, pid: int, epoch: int, first_seq: int, record_count: int,
               base_offset: int, broker_timestamp: int) -> None:
        """Remember a batch that was given offsets (also used to replay the log)."""
        if pid < 0:
            return
        producers = self._producers
        known = producers.get(pid)
        if known is None:
            known = producers[pid] = _Producer(epoch)
            if len(producers) > self._max:
                producers.popitem(last=False)
        else:
            producers.move_to_end(pid)
            if epoch != known.epoch:
                if epoch < known.epoch:
                    return  # replaying a fenced zombie's batch that was stored anyway
                known.epoch = epoch
                known.batches.clear()
        known.batches.append(BatchRange(
            first_seq, last_sequence(first_seq, record_count), base_offset,
            base_offset + record_count - 1, broker_timestamp))

    def truncate(self, end_offset: int) -> None:
        """Forget every batch whose last offset is ``>= end_offset`` (not in the log)."""
        for pid in list(self._producers):
            known = self._producers[pid]
            while known.batches and known.batches[-1].last_offset >= end_offset:
                known.batches.pop()
            if not known.batches:
                # without its batches we no longer know where the producer stands
                del self._producers[pid]

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, offset: int) -> bytes:
        """JSON of the batches below ``offset`` (the state as of that log end)."""
        producers: dict[str, Any] = {}
        for pid, known in self._producers.items():
            kept = [[b.first_seq, b.last_seq, b.base_offset, b.last_offset, b.broker_timestamp]
                    for b in known.batches if b.last_offset < offset]
            if kept:
                producers[str(pid)] = {"epoch": known.epoch, "batches": kept}
        return json.dumps({"offset": offset, "producers": producers},
                          separators=(",", ":")).encode()

    @classmethod
    def from_snapshot(cls, data: bytes, max_producers: int = DEFAULT_MAX_PRODUCERS
                      ) -> tuple[DedupState, int]:
        """``(state, offset)`` from :meth:`snapshot` output; ValueError if malformed."""
        try:
            raw = json.loads(data)
            offset = int(raw["offset"])
            state = cls(max_producers)
            for pid_text, entry in raw["producers"].items():
                known = _Producer(int(entry["epoch"]))
                for first, last, base, last_offset, ts in entry["batches"]:
                    known.batches.append(BatchRange(int(first), int(last), int(base),
                                                    int(last_offset), int(ts)))
                state._producers[int(pid_text)] = known
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed producer-state snapshot: {exc}") from exc
        while len(state._producers) > state._max:
            state._producers.popitem(last=False)
        return state, offset
