"""On-disk format of one log segment, and the blocking helpers that read and write it.

Theory of operation
-------------------
A log is a directory of segment files named ``<base position, 20 digits>.log``.  A
segment file starts with a 32-byte header::

    "PSLG" | version u16 | flags u16 | base position u64 | previous key i64 | pad u32 | crc u32

``previous key`` is the key of the last entry before this segment (-1 for none), so
that an empty segment still remembers where the log ends and which key came last,
even after retention dropped every older segment.  Entries follow back to back::

    crc u32 | data length u32 | key i64 | timestamp_ms i64 | data

where ``crc`` is the CRC-32C of the 20 header bytes after it followed by the data.
Recovery walks the entries and stops at the first one that is short or whose
checksum does not hold; the file is cut back to there.

A sealed (full) segment gets a ``<base>.idx`` file (see :mod:`storage.segment_index`)
so that opening a log does not need to rescan it; the index is checked against its
own checksum and against the last entry of the segment, and rebuilt when wrong.

Everything here is blocking file I/O: callers run it in a worker thread.
"""

from __future__ import annotations

import io
import os
import struct
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from crc32c import crc32c

from storage.api import StorageError, StoredEntry
from storage.segment_index import SegmentIndex

MAGIC = b"PSLG"
FORMAT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sHHQqI")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size + 4  # plus its crc
ENTRY_HEADER = struct.Struct("<IIqq")
ENTRY_HEADER_SIZE = ENTRY_HEADER.size
_ENTRY_FIELDS = struct.Struct("<Iqq")  # what the entry crc covers before the data
MAX_ENTRY_BYTES = 0xFFFF_FFFF
MAX_KEY = 2**63 - 1
_NAME_DIGITS = 20
_IOV_MAX = 1024
READ_RUN_BYTES = 1 << 20
"""Most entry bytes one read run (one ``pread``) covers, unless a single entry is larger."""
DIRECT_READ_BYTES = 64 * 1024
"""Entries this large are read on their own, their data straight into its own buffer."""


class CorruptLogError(StorageError):
    """Stored bytes do not match their checksum where they should (not a torn tail)."""


def segment_path(directory: Path, base: int) -> Path:
    """Path of the segment file whose first entry has position ``base``."""
    return directory / f"{base:0{_NAME_DIGITS}d}.log"


def index_path(directory: Path, base: int) -> Path:
    """Path of the index file of the segment starting at ``base``."""
    return directory / f"{base:0{_NAME_DIGITS}d}.idx"


def parse_segment_name(name: str) -> int | None:
    """The base position encoded in a segment file name, or None for other files."""
    stem, _dot, ext = name.partition(".")
    if ext != "log" or len(stem) != _NAME_DIGITS or not stem.isdigit():
        return None
    return int(stem)


def encode_segment_header(base: int, prev_key: int | None) -> bytes:
    """The header that starts a segment file."""
    prev = -1 if prev_key is None else prev_key
    head = SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, 0, base, prev, 0)
    return head + crc32c(head).to_bytes(4, "little")


def decode_segment_header(raw: bytes) -> tuple[int, int | None]:
    """Return ``(base, previous key)`` or raise :class:`CorruptLogError`."""
    if len(raw) < SEGMENT_HEADER_SIZE:
        raise CorruptLogError("short segment header")
    head = raw[: SEGMENT_HEADER.size]
    if crc32c(head).to_bytes(4, "little") != raw[SEGMENT_HEADER.size : SEGMENT_HEADER_SIZE]:
        raise CorruptLogError("segment header checksum mismatch")
    magic, version, _flags, base, prev, _pad = SEGMENT_HEADER.unpack(head)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CorruptLogError(f"not a segment file (magic {magic!r}, version {version})")
    return base, None if prev < 0 else prev


def encode_entry_header(key: int, timestamp_ms: int, data: bytes) -> bytes:
    """The 24-byte header written before ``data``."""
    fields = _ENTRY_FIELDS.pack(len(data), key, timestamp_ms)
    return crc32c(data, crc32c(fields)).to_bytes(4, "little") + fields


def parse_entries(buf: bytes, first_position: int, count: int) -> list[StoredEntry]:
    """Decode ``count`` consecutive entries from ``buf``, checking every checksum."""
    out: list[StoredEntry] = []
    view = memoryview(buf)
    offset = 0
    unpack = ENTRY_HEADER.unpack_from
    for i in range(count):
        crc, length, key, ts = unpack(buf, offset)
        start = offset + ENTRY_HEADER_SIZE
        end = start + length
        if end > len(buf) or crc32c(view[start:end], crc32c(view[offset + 4 : start])) != crc:
            raise CorruptLogError(f"entry at position {first_position + i} fails its checksum")
        out.append(StoredEntry(first_position + i, key, ts, bytes(view[start:end])))
        offset = end
    return out


@dataclass(frozen=True, slots=True)
class ReadRun:
    """Consecutive entries of one segment file to read together: bytes ``[start, end)``
    hold ``count`` entries, the first at log position ``first``."""

    path: Path
    start: int
    end: int
    first: int
    count: int


def read_runs(runs: list[ReadRun]) -> list[StoredEntry]:
    """Read and check the entries of ``runs``, in order (each file opened once).

    A run of one entry of :data:`DIRECT_READ_BYTES` or more is read with two ``pread``
    calls, header then data, so its data arrives in its own ``bytes`` with no further
    copy; other runs are read whole and split by :func:`parse_entries`.
    """
    out: list[StoredEntry] = []
    fds: dict[Path, int] = {}
    try:
        for run in runs:
            fd = fds.get(run.path)
            if fd is None:
                fd = fds[run.path] = os.open(run.path, os.O_RDONLY | os.O_CLOEXEC)
            size = run.end - run.start
            if run.count == 1 and size - ENTRY_HEADER_SIZE >= DIRECT_READ_BYTES:
                out.append(_read_one(fd, run))
            else:
                out.extend(parse_entries(_pread_exact(fd, run.path, run.start, size),
                                         run.first, run.count))
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


@dataclass(slots=True, eq=False)
class Segment:
    """One segment of an open log: where it starts, its file, the key before it, its
    index and its size (header plus entries written)."""

    base: int
    path: Path
    prev_key: int | None
    index: SegmentIndex
    size: int

    def visible(self, end: int) -> int:
        """How many of this segment's entries lie below the published ``end``."""
        return max(0, min(self.index.count, end - self.base))


def plan_reads(
    segments: list[Segment], position: int, end: int, max_bytes: int, max_entries: int | None
) -> list[ReadRun]:
    """The runs of entries to read from ``position`` (below ``end``), in order, for at
    most ``max_bytes`` of data (at least one entry) and ``max_entries`` entries.

    Consecutive entries of one segment share a run of at most ``READ_RUN_BYTES``; an
    entry of ``DIRECT_READ_BYTES`` or more is a run of its own (read straight into its
    own buffer).  So no read allocates a buffer the size of the whole budget.
    """
    plan: list[ReadRun] = []
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
                plan.append(_run(seg, run_first, j))
                run_first, run_bytes = j, 0
            used += size
            run_bytes += size
            taken += 1
            j += 1
            if size >= DIRECT_READ_BYTES:
                plan.append(_run(seg, run_first, j))
                run_first, run_bytes = j, 0
        if j > run_first:
            plan.append(_run(seg, run_first, j))
        elif j == first and first >= visible:
            break
        i += 1
    return plan


def _run(seg: Segment, first: int, stop: int) -> ReadRun:
    """Entries ``first`` to ``stop - 1`` of ``seg`` as one read run."""
    index = seg.index
    return ReadRun(seg.path, index.start_offset(first), index.end_offset(stop - 1),
                   seg.base + first, stop - first)


def _read_one(fd: int, run: ReadRun) -> StoredEntry:
    head = _pread_exact(fd, run.path, run.start, ENTRY_HEADER_SIZE)
    crc, length, key, ts = ENTRY_HEADER.unpack(head)
    if ENTRY_HEADER_SIZE + length != run.end - run.start:
        raise CorruptLogError(f"entry at position {run.first} does not match the index")
    data = _pread_exact(fd, run.path, run.start + ENTRY_HEADER_SIZE, length)
    if crc32c(data, crc32c(head[4:])) != crc:
        raise CorruptLogError(f"entry at position {run.first} fails its checksum")
    return StoredEntry(run.first, key, ts, data)


def write_all(fd: int, buffers: list[bytes]) -> None:
    """Write every buffer, in order, with as few system calls as possible."""
    for i in range(0, len(buffers), _IOV_MAX):
        chunk = buffers[i : i + _IOV_MAX]
        want = sum(len(b) for b in chunk)
        done = os.writev(fd, chunk)
        if done == want:
            continue
        rest = memoryview(b"".join(chunk))[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]


def fsync_directory(directory: Path) -> None:
    """Make a created, renamed or removed directory entry durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment_file(directory: Path, base: int, prev_key: int | None) -> Path:
    """Create a segment file atomically (header written and synced before it appears)."""
    path = segment_path(directory, base)
    tmp = path.with_suffix(".log.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, [encode_segment_header(base, prev_key)])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(directory)
    return path


@dataclass(slots=True)
class ScanResult:
    """What :func:`scan_segment` found in a segment file."""

    base: int
    prev_key: int | None
    index: SegmentIndex
    valid_size: int  # bytes of header plus valid entries
    file_size: int


def read_segment_header(path: Path) -> tuple[int, int | None]:
    """Read and check only the header of a segment file."""
    with open(path, "rb") as f:
        return decode_segment_header(f.read(SEGMENT_HEADER_SIZE))


def scan_segment(path: Path) -> ScanResult:
    """Walk every entry of a segment, stopping at the first torn or corrupt one."""
    file_size = path.stat().st_size
    with open(path, "rb", buffering=0) as raw, io.BufferedReader(raw, 1 << 20) as f:
        base, prev_key = decode_segment_header(f.read(SEGMENT_HEADER_SIZE))
        index = SegmentIndex(SEGMENT_HEADER_SIZE)
        offset = SEGMENT_HEADER_SIZE
        while True:
            head = f.read(ENTRY_HEADER_SIZE)
            if len(head) < ENTRY_HEADER_SIZE:
                break
            crc, length, key, ts = ENTRY_HEADER.unpack(head)
            data = f.read(length)
            if len(data) < length or crc32c(data, crc32c(head[4:])) != crc:
                break
            if key < 0 or (index.count and key <= index.last_key()):
                break
            if not index.count and prev_key is not None and key <= prev_key:
                break
            offset += ENTRY_HEADER_SIZE + length
            index.append(offset, key, ts)
    return ScanResult(base, prev_key, index, offset, file_size)


def truncate_file(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes and make that durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def last_entry_matches(path: Path, index: SegmentIndex, file_size: int) -> bool:
    """Check a loaded index against the segment: same size, same last entry."""
    if not index.count or index.end_offset(index.count - 1) != file_size:
        return False
    start = index.start_offset(index.count - 1)
    with open(path, "rb") as f:
        f.seek(start)
        head = f.read(ENTRY_HEADER_SIZE)
    if len(head) < ENTRY_HEADER_SIZE:
        return False
    _crc, length, key, _ts = ENTRY_HEADER.unpack(head)
    return bool(start + ENTRY_HEADER_SIZE + length == file_size and key == index.last_key())


def read_range(path: Path, start: int, end: int) -> bytes:
    """Read bytes ``[start, end)`` of a file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _pread_exact(fd, path, start, end - start)
    finally:
        os.close(fd)


def _pread_exact(fd: int, path: Path, start: int, want: int) -> bytes:
    data = os.pread(fd, want, start)
    if len(data) < want:  # pread may return short reads on some file systems
        parts = [data]
        got = len(data)
        while got < want:
            more = os.pread(fd, want - got, start + got)
            if not more:
                raise CorruptLogError(f"{path.name} is shorter than its index says")
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data
