"""``LocalLog``: a partition log in segment files on local disk, with group commit.

How an append travels
---------------------
``append`` checks the keys and puts a *ticket* (entries plus their first position) on
the pending queue synchronously, before its first checkpoint: the order of ``append``
calls is the order in the log.  A single worker-thread call takes the pending tickets
(as many as are queued when the thread starts) and writes them all with ``writev`` and
— under the ``always`` policy — one ``fdatasync`` (group commit).  No task waits for
that thread: an append to an idle log starts it right away, and back on the event loop,
as soon as the thread is done (a ``run_sync_soon`` callback, :meth:`LocalLog._written`),
the new end of the log is published (readers never see more), the tickets are queued
for return, the files are given back and the next write starts if more is queued.  So
a group costs no scheduler step of its own.  The writer task (started by the storage's
nursery, see :meth:`LocalLog.run_writer`) only steps in when a write cannot start
without waiting (the files or the thread limiter busy) and drains the queue at close.
Appenders wait parked (no event each) and are rescheduled directly.  Tickets return
strictly in log order: only the oldest completed ticket is woken, and it wakes the next
one as it leaves (a baton), so a later append never returns before an earlier one even
though trio may resume woken tasks in any order.  A cancelled append leaves the queue
without blocking the others; its entries may still be written (their positions are
already taken).  :meth:`LocalLog.append_notify` (the core's partitions) cannot be
cancelled at all.

The pending queue has no fixed bound of its own: every ticket belongs to an
``append`` call that is waiting for it, so it is bounded by the callers'
concurrency.  One worker call takes at most ``_GROUP_BYTES`` of it.

Threads and state: the writer thread takes tickets from the queue (the event loop
only appends to it while a write is in flight), appends index rows and may roll to a
new segment (``_segments.append``); event-loop code reads only rows below the
published end.  Everything that changes files (writes, roll, retention, sync,
close) holds ``_io_lock`` (a :class:`storage.worker.WorkGate`: held by a write from its
start on the event loop to its end, which no one task spans).

Tail cache: as the writer publishes a group it also keeps its entries (the very
``bytes`` objects that were appended, no copy) in a :class:`storage.tail_cache.TailCache`
bounded by ``tail_cache_bytes``.  A read that starts inside the cache -- a consumer
keeping up with producers -- is answered from memory on the event loop: no worker-thread
hop, no file read, no checksum pass.  Older reads go to the segment files as before.
The cache is only touched on the event loop.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import outcome
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
    ENTRY_HEADER_SIZE,
    MAX_ENTRY_BYTES,
    MAX_KEY,
    ReadRun,
    Segment,
    create_segment_file,
    encode_entry_header,
    fsync_directory,
    index_path,
    plan_reads,
    read_runs,
    write_all,
)
from storage.segment_index import SegmentIndex
from storage.segment_recovery import RecoveredSegment, recover_log
from storage.tail_cache import TailCache
from storage.worker import WorkGate, run_in_worker, start_in_worker

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_TAIL_CACHE_BYTES = 8 * 1024 * 1024
MIN_TIMESTAMP = -(2**63)
_GROUP_BYTES = 16 * 1024 * 1024


class _Ticket:
    __slots__ = ("abandoned", "entries", "error", "first", "nbytes", "on_durable", "task",
                 "woken")

    def __init__(
        self, entries: Sequence[EntryIn], first: int, nbytes: int,
        on_durable: Callable[[], object] | None, task: trio.lowlevel.Task,
    ) -> None:
        self.entries = entries
        self.first = first
        self.nbytes = nbytes
        self.on_durable = on_durable
        self.task = task  # the appending task, parked until woken (see LocalLog._wake)
        self.woken = False
        self.error: BaseException | None = None
        self.abandoned = False


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
        self._segments = [Segment(r.base, r.path, r.prev_key, r.index, r.size) for r in recovered]
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
        self._io_lock = WorkGate()
        self._writing = False  # a group is in the worker thread (it holds _io_lock)
        self._writer_exited = False
        self._writer_done = trio.Event()  # the writer exited and no write is in flight
        self._borrower = object()  # holds the thread limiter's token for the write in flight
        self._limiter: trio.CapacityLimiter | None = None
        self._unsynced = False
        self._closing = False
        self._closed = False
        self._failed: BaseException | None = None
        self._tail = TailCache(tail_cache_bytes)

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

    #: :meth:`append_notify` cannot be cancelled: it always waits for the outcome, and a
    #: cancellation arriving meanwhile is delivered at the caller's next checkpoint (as
    #: if the call were shielded; the core's partition then needs no shield of its own)
    append_notify_uncancellable = True

    async def append(self, entries: Sequence[EntryIn]) -> list[int]:
        return await self._append(entries, None)

    async def append_notify(
        self, entries: Sequence[EntryIn], on_durable: Callable[[], object]
    ) -> list[int]:
        """:meth:`append`; ``on_durable`` runs as the group is published (see the base).

        Not cancellable (see :attr:`append_notify_uncancellable`).
        """
        return await self._append(entries, on_durable, uncancellable=True)

    async def _append(
        self, entries: Sequence[EntryIn], on_durable: Callable[[], object] | None,
        *, uncancellable: bool = False,
    ) -> list[int]:
        ticket = self._enqueue(entries, on_durable)
        if ticket is None:
            if uncancellable:
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                await trio.lowlevel.checkpoint()
            if on_durable is not None:
                on_durable()
            return []
        try:
            await trio.lowlevel.wait_task_rescheduled(
                _refuse_abort if uncancellable else partial(_abort_wait, ticket))
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
        ticket = _Ticket(tuple(entries), self._next_position, nbytes, on_durable,
                         trio.lowlevel.current_task())
        self._next_position += len(entries)
        self._assigned_key = last
        self._pending.append(ticket)
        if not self._writing and not self._try_start():
            self._work.unpark_all()  # else the write in flight starts the next as it ends
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
            _wake(returning[0])

    def _complete(self, tickets: Sequence[_Ticket]) -> None:
        for ticket in tickets:
            if not ticket.abandoned:
                self._returning.append(ticket)
        if self._returning:
            _wake(self._returning[0])
        self._progress.unpark_all()

    # -- the writer -----------------------------------------------------------------

    async def run_writer(self) -> None:
        """Write queued appends until the log is closed; run this in a nursery.

        Most writes never need this task: an append to an idle log starts the write
        itself and each write's completion starts the next (:meth:`_try_start`).  The
        task starts a write only when that could not be done without waiting (the files
        or the thread limiter busy), and it drains the queue at close.
        """
        try:
            while True:
                while self._writing or (
                        not self._pending and not self._closing and self._failed is None):
                    await self._work.park()
                if self._failed is not None or not self._pending:
                    return  # failed (the finally fails what is queued), or closing
                if not self._io_lock.try_take():
                    await self._io_lock.take()
                limiter = self._thread_limiter()
                try:
                    limiter.acquire_on_behalf_of_nowait(self._borrower)
                except trio.WouldBlock:
                    try:
                        await limiter.acquire_on_behalf_of(self._borrower)
                    except BaseException:
                        self._io_lock.release()
                        raise
                self._start()
        finally:
            self._closing = True
            self._writer_exited = True
            if not self._writing:
                self._writer_finished()

    def _thread_limiter(self) -> trio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = trio.to_thread.current_default_thread_limiter()
        return self._limiter

    def _try_start(self) -> bool:
        """Start writing what is queued, here and now, unless that needs a wait (the files
        or the thread limiter busy) or the writer task's care (failed, closing)."""
        if (self._writing or not self._pending or self._closing or self._failed is not None
                or not self._io_lock.try_take()):
            return False
        try:
            self._thread_limiter().acquire_on_behalf_of_nowait(self._borrower)
        except trio.WouldBlock:
            self._io_lock.release()
            return False
        self._start()
        return True

    def _start(self) -> None:
        """Hand the queue to a worker thread (files and limiter token held)."""
        self._writing = True
        try:
            start_in_worker(self._write_pending, self._written)
        except BaseException:
            self._writing = False
            self._thread_limiter().release_on_behalf_of(self._borrower)
            self._io_lock.release()
            raise

    def _write_pending(self) -> tuple[list[_Ticket], BaseException | None]:
        """Worker thread: take a group from the queue and write it.

        The group is taken here, when the thread runs, so appends made meanwhile join
        it.  While a write is in flight only this thread takes from the queue (the event
        loop only appends to it, and ``deque`` appends and pops are atomic).
        """
        group = self._take_group()
        try:
            self._write_group(group)
        except BaseException as exc:  # handed to the event loop with its group
            return group, exc
        return group, None

    def _written(self, result: outcome.Outcome[tuple[list[_Ticket], BaseException | None]]
                 ) -> None:
        """Event loop, as soon as the thread wrote its group: publish it (or fail it), give
        the files back and start the next write (or let the writer task do it)."""
        self._writing = False
        self._thread_limiter().release_on_behalf_of(self._borrower)
        group, exc = result.unwrap()  # _write_pending never raises
        if exc is not None:
            log.error("log %s: write failed, log is now read-only: %r", self._name, exc)
            self._failed = exc
            self._fail_tickets(group, exc)
        else:
            self._publish(group)
        self._io_lock.release()
        if self._writer_exited:
            self._writer_finished()
            return
        try:
            started = self._try_start()
        except Exception:  # never raise into trio's run_sync_soon: the writer task retries
            log.exception("log %s: cannot start the next write here", self._name)
            started = False
        if not started and (self._pending or self._closing or self._failed is not None):
            self._work.unpark_all()

    def _writer_finished(self) -> None:
        """The writer exited and nothing is in flight: fail what is still queued."""
        self._fail_tickets(list(self._pending), self._failed)
        self._pending.clear()
        self._writer_done.set()
        self._progress.unpark_all()

    def _publish(self, group: list[_Ticket]) -> None:
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

    def _roll(self) -> Segment:
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
        new = Segment(base, path, prev, SegmentIndex(old.index.first_offset), path.stat().st_size)
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
        """The runs of entries to read, in order (see :func:`storage.segment.plan_reads`)."""
        return plan_reads(self._segments, position, end, max_bytes, max_entries)

    async def floor_position(self, key: int) -> int | None:
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._floor(key, self._end)

    def _floor(self, key: int, end: int) -> int | None:
        sentinel = MAX_KEY + 1

        def first_key(seg: Segment) -> int:
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
        if key is None:
            floor = None
        else:
            floor = self._tail.floor(key, end)
            if floor is None:
                floor = self._floor(key, end)
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


def _read_plan(plan: list[ReadRun]) -> list[StoredEntry]:
    return read_runs(plan)


def _remove_files(directory: Path, paths: list[Path]) -> None:
    for path in paths:  # oldest first: a crash leaves a contiguous suffix
        path.unlink(missing_ok=True)
    fsync_directory(directory)


def _wake(ticket: _Ticket) -> None:
    """Resume the task waiting for ``ticket`` (once)."""
    if not ticket.woken:
        ticket.woken = True
        trio.lowlevel.reschedule(ticket.task)


def _refuse_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _abort_wait(ticket: _Ticket, _: object) -> trio.lowlevel.Abort:
    """A waiting appender is cancelled: it may go unless it was already woken."""
    ticket.woken = True
    return trio.lowlevel.Abort.SUCCEEDED
