"""``LocalLog``: a partition log in segment files on local disk, with group commit.

How an append travels
---------------------
``append`` checks the keys and puts a *ticket* (entries plus their first position) on
the pending queue synchronously, before its first checkpoint: the order of ``append``
calls is the order in the log. One writer task per log (started by the storage's
nursery, see :meth:`LocalLog.run_writer`) takes every pending ticket at once, and a
single worker-thread call writes them all with ``writev`` and — under the ``always``
policy — one ``fdatasync`` (group commit). Back on the event loop, as soon as the
thread is done (before the writer task itself resumes, see
:func:`storage.worker.run_in_worker`), the new end of the log is published (readers
never see more) and the tickets are queued for return. Tickets return strictly in log
order: only the oldest completed ticket is woken, and it wakes the next one as it
leaves (a baton), so a later append never returns before an earlier one even though
trio may resume woken tasks in any order. A cancelled append leaves the queue without
blocking the others; its entries may still be written (their positions are already
taken).

The pending queue has no fixed bound of its own: every ticket belongs to an
``append`` call that is waiting for it, so it is bounded by the callers'
concurrency.  One worker call takes at most ``_GROUP_BYTES`` of it.

Threads and state: the writer thread appends index rows and may roll to a new
segment (``_segments.append``); event-loop code reads only rows below the
published end.  Everything that changes files (writes, roll, retention, sync,
close) holds ``_io_lock``.

Tail cache: as the writer publishes a group it also keeps its entries (the very
``bytes`` objects that were appended, no copy) in a :class:`_TailCache` bounded by
``tail_cache_bytes``.  A read that starts inside the cache -- a consumer keeping
up with producers -- is answered from memory on the event loop: no worker-thread
hop, no file read, no checksum pass.  Older reads go to the segment files as
before.  The cache is only touched on the event loop.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from storage.api import (
    DurabilityPolicy,
    EntryIn,
    LogClosedError,
    OutOfOrderKeyError,
    PartitionLog,
    PositionOutOfRangeError,
    RetentionPolicy,
    StorageError,
    StoredEntry,
    SyncMode,
)
from storage.segment import (
    DIRECT_READ_BYTES,
    ENTRY_HEADER_SIZE,
    MAX_ENTRY_BYTES,
    MAX_KEY,
    READ_RUN_BYTES,
    ReadRun,
    create_segment_file,
    encode_entry_header,
    fsync_directory,
    index_path,
    read_runs,
    write_all,
)
from storage.segment_index import SegmentIndex
from storage.segment_recovery import RecoveredSegment, recover_log
from storage.worker import run_in_worker

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_TAIL_CACHE_BYTES = 8 * 1024 * 1024
MIN_TIMESTAMP = -(2**63)
_GROUP_BYTES = 16 * 1024 * 1024


@dataclass(slots=True, eq=False)
class _Segment:
    base: int
    path: Path
    prev_key: int | None
    index: SegmentIndex
    size: int  # bytes in the file: header plus entries written

    def visible(self, end: int) -> int:
        """How many of this segment's entries lie below the published ``end``."""
        return max(0, min(self.index.count, end - self.base))


class _Ticket:
    __slots__ = ("abandoned", "entries", "error", "event", "first", "nbytes", "on_durable")

    def __init__(
        self, entries: Sequence[EntryIn], first: int, nbytes: int,
        on_durable: Callable[[], object] | None,
    ) -> None:
        self.entries = entries
        self.first = first
        self.nbytes = nbytes
        self.on_durable = on_durable
        self.event = trio.Event()
        self.error: BaseException | None = None
        self.abandoned = False


class _TailCache:
    """The most recently published entries of a log, contiguous, at most ``limit`` bytes.

    A list with a moving head (evicted entries are cut off in bulk), so that looking up a
    position is an index computation.
    """

    __slots__ = ("_head", "_items", "_limit", "_nbytes")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: list[StoredEntry] = []
        self._head = 0  # index of the first live item
        self._nbytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of entry data held."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items) - self._head

    def add(self, first: int, entries: Sequence[EntryIn]) -> None:
        """Remember ``entries``, just published at positions ``first``, ``first + 1``, ..."""
        if self._limit <= 0:
            return
        items = self._items
        if len(self) and items[-1].position + 1 != first:
            self.clear()  # never a gap: the cache is one contiguous run
        for i, entry in enumerate(entries):
            data = entry.data if type(entry.data) is bytes else bytes(entry.data)
            items.append(StoredEntry(first + i, entry.key, entry.timestamp_ms, data))
            self._nbytes += len(data)
        self._evict(lambda: self._nbytes > self._limit)

    def drop_before(self, position: int) -> None:
        """Forget entries below ``position`` (retention removed them)."""
        self._evict(lambda: self._items[self._head].position < position)

    def clear(self) -> None:
        self._items = []
        self._head = 0
        self._nbytes = 0

    def _evict(self, while_true: Callable[[], bool]) -> None:
        items = self._items
        while self._head < len(items) and while_true():
            self._nbytes -= len(items[self._head].data)
            self._head += 1
        if self._head == len(items):
            self.clear()
        elif self._head > 64 and self._head * 2 > len(items):
            del items[: self._head]
            self._head = 0

    def read(
        self, position: int, end: int, max_bytes: int, max_entries: int | None
    ) -> list[StoredEntry] | None:
        """Entries from ``position`` as :meth:`LocalLog.read` would return them, or None
        when ``position`` is not cached.  Only entries below ``end`` are returned."""
        if not len(self) or (max_entries is not None and max_entries < 1):
            return None
        items = self._items
        first = items[self._head].position
        if not first <= position < end:
            return None
        i = self._head + position - first
        stop = min(len(items), self._head + end - first)
        if max_entries is not None:
            stop = min(stop, i + max_entries)
        out = [items[i]]
        used = len(items[i].data)
        for j in range(i + 1, stop):
            item = items[j]
            used += len(item.data)
            if used > max_bytes:
                break
            out.append(item)
        return out


class LocalLog(PartitionLog):
    """A partition log stored as segment files under one directory.

    Create it with :meth:`open` and run :meth:`run_writer` in a nursery for as
    long as it is open; :class:`storage.local.LocalStorage` does both.
    """

    def __init__(
        self,
        name: str,
        directory: Path,
        policy: DurabilityPolicy,
        segment_bytes: int,
        recovered: list[RecoveredSegment],
        fd: int,
        tail_cache_bytes: int = DEFAULT_TAIL_CACHE_BYTES,
    ) -> None:
        self._name = name
        self._dir = directory
        self._policy = policy
        self._segment_bytes = segment_bytes
        self._segments = [_Segment(r.base, r.path, r.prev_key, r.index, r.size) for r in recovered]
        self._active = self._segments[-1]
        self._fd: int | None = fd  # the active segment, opened for appending
        last = self._active
        self._end = last.base + last.index.count  # published (acknowledged) end
        self._last_key = self._compute_last_key()
        self._next_position = self._end  # assigned to appends, maybe not yet written
        self._assigned_key = self._last_key
        self._pending: deque[_Ticket] = deque()
        self._returning: deque[_Ticket] = deque()
        self._work = trio.lowlevel.ParkingLot()
        self._progress = trio.lowlevel.ParkingLot()
        self._io_lock = trio.Lock()
        self._writer_done = trio.Event()
        self._unsynced = False
        self._closing = False
        self._closed = False
        self._failed: BaseException | None = None
        self._tail = _TailCache(tail_cache_bytes)

    @classmethod
    async def open(
        cls,
        name: str,
        directory: Path,
        policy: DurabilityPolicy,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        tail_cache_bytes: int = DEFAULT_TAIL_CACHE_BYTES,
    ) -> LocalLog:
        """Recover (or create) the log in ``directory``; the files are checked in a thread.

        The newest appended entries, up to ``tail_cache_bytes`` of them (0: none), are
        also kept in memory so that reads of fresh data skip the files.
        """
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        recovered, fd = await trio.to_thread.run_sync(_recover_and_open, directory)
        return cls(name, directory, policy, segment_bytes, recovered, fd, tail_cache_bytes)

    def _compute_last_key(self) -> int | None:
        last = self._segments[-1]  # only the last segment can be empty
        return last.index.last_key() if last.index.count else last.prev_key

    # -- properties ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def directory(self) -> Path:
        """Where this log's files live."""
        return self._dir

    @property
    def start_position(self) -> int:
        return self._segments[0].base

    @property
    def end_position(self) -> int:
        """End of the acknowledged entries (appends still in flight are not counted)."""
        return self._end

    @property
    def last_key(self) -> int | None:
        return self._last_key

    @property
    def size_bytes(self) -> int:
        return sum(seg.size for seg in self._segments)

    @property
    def segment_count(self) -> int:
        """Number of segment files (the active one included)."""
        return len(self._segments)

    @property
    def needs_sync(self) -> bool:
        """Whether something was written that has not been fsynced yet."""
        return self._unsynced

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(self._name)

    def _check_writable(self) -> None:
        if self._closed or self._closing:
            raise LogClosedError(self._name)
        if self._failed is not None:
            raise StorageError(f"log {self._name} failed: {self._failed}") from self._failed

    # -- append -------------------------------------------------------------------

    async def append(self, entries: Sequence[EntryIn]) -> list[int]:
        return await self._append(entries, None)

    async def append_notify(
        self, entries: Sequence[EntryIn], on_durable: Callable[[], object]
    ) -> list[int]:
        """:meth:`append`; ``on_durable`` runs as the group is published (see the base)."""
        return await self._append(entries, on_durable)

    async def _append(
        self, entries: Sequence[EntryIn], on_durable: Callable[[], object] | None
    ) -> list[int]:
        ticket = self._enqueue(entries, on_durable)
        if ticket is None:
            await trio.lowlevel.checkpoint()
            if on_durable is not None:
                on_durable()
            return []
        try:
            await ticket.event.wait()
        except BaseException:
            ticket.abandoned = True
            self._leave(ticket)
            raise
        self._leave(ticket)
        if ticket.error is not None:
            raise ticket.error
        return list(range(ticket.first, ticket.first + len(ticket.entries)))

    def _enqueue(
        self, entries: Sequence[EntryIn], on_durable: Callable[[], object] | None = None
    ) -> _Ticket | None:
        """Validate and queue, synchronously (the ordering contract relies on it)."""
        self._check_writable()
        if not entries:
            return None
        last = self._assigned_key
        nbytes = 0
        for entry in entries:
            key = entry.key
            if key < 0 or key > MAX_KEY or (last is not None and key <= last):
                raise OutOfOrderKeyError(f"key {key} after {last}")
            if not MIN_TIMESTAMP <= entry.timestamp_ms <= MAX_KEY:
                raise ValueError(f"timestamp {entry.timestamp_ms} out of range")
            size = len(entry.data)
            if size > MAX_ENTRY_BYTES:
                raise ValueError(f"entry of {size} bytes is too large")
            nbytes += size
            last = key
        # a copy: the caller may reuse its list
        ticket = _Ticket(tuple(entries), self._next_position, nbytes, on_durable)
        self._next_position += len(entries)
        self._assigned_key = last
        self._pending.append(ticket)
        self._work.unpark_all()
        return ticket

    def _leave(self, ticket: _Ticket) -> None:
        """Remove a ticket from the return queue and pass the baton on."""
        returning = self._returning
        if not returning:
            return
        if returning[0] is ticket:
            returning.popleft()
        else:
            if ticket in returning:
                returning.remove(ticket)
            return
        if returning:
            returning[0].event.set()

    def _complete(self, tickets: Sequence[_Ticket]) -> None:
        for ticket in tickets:
            if not ticket.abandoned:
                self._returning.append(ticket)
        if self._returning:
            self._returning[0].event.set()
        self._progress.unpark_all()

    # -- the writer -----------------------------------------------------------------

    async def run_writer(self) -> None:
        """Write queued appends until the log is closed; run this in a nursery."""
        try:
            while True:
                while not self._pending and not self._closing:
                    await self._work.park()
                if not self._pending:
                    return
                # the lock is nearly always free: take it without a trip through the scheduler
                try:
                    self._io_lock.acquire_nowait()
                except trio.WouldBlock:
                    await self._io_lock.acquire()
                try:
                    group = self._take_group()
                    if self._failed is not None:  # an fsync failed: write nothing more
                        self._fail_tickets(group, self._failed)
                        return
                    try:
                        with trio.CancelScope(shield=True):
                            # published from the event loop as soon as the thread is done:
                            # the appenders wake a scheduler round earlier than this task
                            await run_in_worker(partial(self._write_group, group),
                                                on_success=partial(self._publish, group))
                    except Exception as exc:
                        log.error("log %s: write failed, log is now read-only: %r", self._name, exc)
                        self._failed = exc
                        self._fail_tickets(group, exc)
                        return
                finally:
                    self._io_lock.release()
        finally:
            self._closing = True
            self._fail_tickets(list(self._pending), self._failed)
            self._pending.clear()
            self._writer_done.set()
            self._progress.unpark_all()

    def _publish(self, group: list[_Ticket], _written: object = None) -> None:
        """A written group becomes readable (end, last key, tail cache); its appends return."""
        last = group[-1]
        self._end = last.first + len(last.entries)
        self._last_key = last.entries[-1].key
        for ticket in group:
            self._tail.add(ticket.first, ticket.entries)
        for ticket in group:
            if ticket.on_durable is not None:
                try:
                    ticket.on_durable()
                except Exception:  # the contract says it does not raise; never fail the log
                    log.exception("log %s: on_durable callback failed", self._name)
        self._complete(group)

    def _fail_tickets(self, tickets: Sequence[_Ticket], cause: BaseException | None) -> None:
        for ticket in tickets:
            if cause is None:
                ticket.error = LogClosedError(f"log {self._name} closed before the write")
            else:
                ticket.error = StorageError(f"append to {self._name} failed: {cause}")
                ticket.error.__cause__ = cause
        self._complete(tickets)

    def _take_group(self) -> list[_Ticket]:
        group = [self._pending.popleft()]
        nbytes = group[0].nbytes
        while self._pending and nbytes + self._pending[0].nbytes <= _GROUP_BYTES:
            ticket = self._pending.popleft()
            nbytes += ticket.nbytes
            group.append(ticket)
        return group

    def _write_group(self, group: list[_Ticket]) -> None:
        """Worker thread: write a group of tickets, roll segments, fsync per policy."""
        seg = self._active
        limit = self._segment_bytes
        buffers: list[bytes] = []
        header = encode_entry_header
        for ticket in group:
            for entry in ticket.entries:
                if seg.size >= limit and seg.index.count:
                    self._flush(buffers)
                    buffers = []
                    seg = self._roll()
                data = entry.data
                buffers.append(header(entry.key, entry.timestamp_ms, data))
                buffers.append(data)
                seg.size += ENTRY_HEADER_SIZE + len(data)
                seg.index.append(seg.size, entry.key, entry.timestamp_ms)
        self._flush(buffers)
        if seg.size >= limit:
            self._roll()
        if self._unsynced and self._policy.mode is SyncMode.ALWAYS:
            self._fsync()

    def _flush(self, buffers: list[bytes]) -> None:
        if buffers:
            assert self._fd is not None
            write_all(self._fd, buffers)
            self._unsynced = True

    def _fsync(self) -> None:
        assert self._fd is not None
        os.fdatasync(self._fd)
        self._unsynced = False

    def _roll(self) -> _Segment:
        """Worker thread: seal the active segment and start a new, empty one."""
        old = self._active
        assert self._fd is not None
        if self._unsynced:
            self._fsync()  # a sealed segment is never torn, whatever the policy
        os.close(self._fd)
        self._fd = None
        idx = index_path(self._dir, old.base)
        tmp = idx.with_suffix(".idx.tmp")
        tmp.write_bytes(old.index.to_bytes())  # not synced: checked and rebuilt at open
        os.replace(tmp, idx)
        base = old.base + old.index.count
        prev = old.index.last_key() if old.index.count else old.prev_key
        path = create_segment_file(self._dir, base, prev)
        new = _Segment(base, path, prev, SegmentIndex(old.index.first_offset), path.stat().st_size)
        self._fd = _open_for_append(path)
        self._segments.append(new)
        self._active = new
        return new

    # -- reads ------------------------------------------------------------------------

    async def read(
        self, position: int, max_bytes: int, max_entries: int | None = None
    ) -> list[StoredEntry]:
        self._check_open()
        end = self._end
        start = self.start_position
        if position < start or position > end:
            await trio.lowlevel.checkpoint()
            raise PositionOutOfRangeError(f"{position} outside [{start}, {end}]")
        cached = self._tail.read(position, end, max_bytes, max_entries)
        if cached is not None:
            await trio.lowlevel.checkpoint()
            return cached
        plan = self._plan_read(position, end, max_bytes, max_entries)
        if not plan:
            await trio.lowlevel.checkpoint()
            return []
        try:
            return await run_in_worker(partial(_read_plan, plan))
        except FileNotFoundError:
            # retention removed the segment while we were reading it
            raise PositionOutOfRangeError(
                f"{position} was dropped by retention (log starts at {self.start_position})"
            ) from None

    def _plan_read(
        self, position: int, end: int, max_bytes: int, max_entries: int | None
    ) -> list[ReadRun]:
        """The runs of entries to read, in order (see :class:`storage.segment.ReadRun`).

        Consecutive entries of one segment share a run of at most ``READ_RUN_BYTES``; an
        entry of ``DIRECT_READ_BYTES`` or more is a run of its own (read straight into its
        own buffer).  So no read allocates a buffer the size of the whole budget.
        """
        plan: list[ReadRun] = []
        segments = self._segments
        i = bisect_right(segments, position, key=lambda s: s.base) - 1
        taken = 0
        used = 0
        limit = max_entries if max_entries is not None else end - position
        while i < len(segments) and taken < limit:
            seg = segments[i]
            index = seg.index
            first = position - seg.base if not plan else 0
            visible = seg.visible(end)
            j = run_first = first
            run_bytes = 0
            while j < visible and taken < limit:
                start = index.start_offset(j)
                size = index.end_offset(j) - start - ENTRY_HEADER_SIZE
                if taken and used + size > max_bytes:
                    limit = taken  # budget spent
                    break
                if j > run_first and (size >= DIRECT_READ_BYTES
                                      or run_bytes + size > READ_RUN_BYTES):
                    plan.append(_run(seg, index, run_first, j))
                    run_first, run_bytes = j, 0
                used += size
                run_bytes += size
                taken += 1
                j += 1
                if size >= DIRECT_READ_BYTES:
                    plan.append(_run(seg, index, run_first, j))
                    run_first, run_bytes = j, 0
            if j > run_first:
                plan.append(_run(seg, index, run_first, j))
            elif j == first and first >= visible:
                break
            i += 1
        return plan

    async def floor_position(self, key: int) -> int | None:
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._floor(key, self._end)

    def _floor(self, key: int, end: int) -> int | None:
        sentinel = MAX_KEY + 1

        def first_key(seg: _Segment) -> int:
            return seg.index.keys[0] if seg.visible(end) else sentinel

        i = bisect_right(self._segments, key, key=first_key) - 1
        if i < 0:
            return None
        seg = self._segments[i]
        j = seg.index.floor(key, seg.visible(end))
        return None if j < 0 else seg.base + j

    def read_after_nowait(self, key: int | None, max_bytes: int) -> list[StoredEntry] | None:
        """From the tail cache when it holds the entry after ``key`` (see the base class)."""
        if self._closed:
            return None
        end = self._end
        start = self.start_position
        floor = None if key is None else self._floor(key, end)
        position = start if floor is None else max(floor + 1, start)
        if position >= end:
            return []
        return self._tail.read(position, end, max_bytes, None)

    async def position_for_timestamp(self, timestamp_ms: int) -> int:
        self._check_open()
        await trio.lowlevel.checkpoint()
        end = self._end
        for seg in self._segments:
            visible = seg.visible(end)
            if visible and seg.index.max_ts[visible - 1] >= timestamp_ms:
                return seg.base + seg.index.first_at_or_after(timestamp_ms, visible)
        return end

    # -- retention ----------------------------------------------------------------------

    async def apply_retention(self, policy: RetentionPolicy, now_ms: int) -> int:
        self._check_open()
        async with self._io_lock:
            total = self.size_bytes
            drop = 0
            while drop < len(self._segments) - 1:
                seg = self._segments[drop]
                too_old = (
                    policy.max_age_ms is not None
                    and seg.index.max_ts[-1] < now_ms - policy.max_age_ms
                )
                too_big = policy.max_bytes is not None and total - seg.size >= policy.max_bytes
                if not (too_old or too_big):
                    break
                total -= seg.size
                drop += 1
            return await self._drop_first(drop)

    async def truncate_before(self, position: int) -> int:
        self._check_open()
        async with self._io_lock:
            drop = 0
            while drop < len(self._segments) - 1:
                seg = self._segments[drop]
                if seg.base + seg.index.count > position:
                    break
                drop += 1
            return await self._drop_first(drop)

    async def _drop_first(self, count: int) -> int:
        """Forget the first ``count`` (sealed) segments and delete their files (lock held)."""
        if not count:
            await trio.lowlevel.checkpoint()
            return 0
        gone = self._segments[:count]
        del self._segments[:count]
        self._tail.drop_before(self.start_position)
        paths = [p for seg in gone for p in (seg.path, index_path(self._dir, seg.base))]
        await trio.to_thread.run_sync(_remove_files, self._dir, paths)
        return sum(seg.index.count for seg in gone)

    # -- sync and close -----------------------------------------------------------------

    async def sync(self) -> None:
        self._check_open()
        target = self._next_position
        while self._end < target and not self._closed:
            if self._failed is not None:
                raise StorageError(f"log {self._name} failed: {self._failed}")
            if self._writer_done.is_set():
                raise LogClosedError(self._name)
            await self._progress.park()
        async with self._io_lock:
            if self._unsynced and self._fd is not None and self._failed is None:
                try:
                    with trio.CancelScope(shield=True):
                        await run_in_worker(self._fsync)
                except OSError as exc:
                    log.error("log %s: fsync failed, log is now read-only: %r", self._name, exc)
                    self._failed = exc
                    raise StorageError(f"fsync of {self._name} failed: {exc}") from exc
            else:
                await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Write what is queued, fsync, close the files; later calls raise LogClosedError."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        self._work.unpark_all()
        await self._writer_done.wait()
        async with self._io_lock:
            if not self._closed:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._close_files)
                self._closed = True
                self._tail.clear()

    def _close_files(self) -> None:
        if self._fd is None:
            return
        try:
            if self._unsynced and self._failed is None:
                self._fsync()
        finally:
            os.close(self._fd)
            self._fd = None


def _open_for_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)


def _recover_and_open(directory: Path) -> tuple[list[RecoveredSegment], int]:
    recovered = recover_log(directory)
    return recovered, _open_for_append(recovered[-1].path)


def _run(seg: _Segment, index: SegmentIndex, first: int, stop: int) -> ReadRun:
    """Entries ``first`` to ``stop - 1`` of ``seg`` as one read run."""
    return ReadRun(seg.path, index.start_offset(first), index.end_offset(stop - 1),
                   seg.base + first, stop - first)


def _read_plan(plan: list[ReadRun]) -> list[StoredEntry]:
    return read_runs(plan)


def _remove_files(directory: Path, paths: list[Path]) -> None:
    for path in paths:  # oldest first: a crash leaves a contiguous suffix
        path.unlink(missing_ok=True)
    fsync_directory(directory)
