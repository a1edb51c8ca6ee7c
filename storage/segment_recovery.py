"""Opening a log directory after a clean shutdown or a crash (blocking; run in a thread).

The rules, in order:

* leftover ``*.tmp`` files (a segment or index being created) are removed;
* sealed segments load their ``.idx`` when it passes its checks, else they are
  rescanned and the index rewritten;
* the last segment is always rescanned; a torn or corrupt tail is cut back to the
  last entry whose checksum holds (nothing acknowledged as durable can be there:
  acknowledged entries were fsynced, or the policy did not promise it);
* a sealed segment with a bad entry (real corruption) is cut back the same way and
  every later segment is removed, since positions must stay contiguous;
* a gap in base positions means a retention run was interrupted (files are removed
  oldest first): the segments before the gap are removed too;
* an empty directory gets a first, empty segment at position 0.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from storage.segment import (
    SEGMENT_HEADER_SIZE,
    CorruptLogError,
    create_segment_file,
    index_path,
    last_entry_matches,
    parse_segment_name,
    read_segment_header,
    scan_segment,
    segment_path,
    truncate_file,
)
from storage.segment_index import SegmentIndex

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RecoveredSegment:
    """A segment as found on disk, ready to be used."""

    base: int
    path: Path
    prev_key: int | None
    index: SegmentIndex
    size: int


def _load_sealed(path: Path, base: int) -> RecoveredSegment | None:
    """Use the segment's ``.idx`` if it is sound; None means rescan."""
    try:
        raw = index_path(path.parent, base).read_bytes()
    except FileNotFoundError:
        return None
    index = SegmentIndex.from_bytes(raw, SEGMENT_HEADER_SIZE)
    if index is None:
        return None
    size = path.stat().st_size
    if not last_entry_matches(path, index, size):
        return None
    _base, prev_key = read_segment_header(path)
    return RecoveredSegment(base, path, prev_key, index, size)


def _scan(path: Path, base: int, sealed: bool) -> tuple[RecoveredSegment, bool]:
    """Rescan a segment, cutting a bad tail; also say whether it had one."""
    found = scan_segment(path)
    if found.base != base:
        raise CorruptLogError(f"{path} says its base position is {found.base}")
    cut = found.valid_size < found.file_size
    if cut:
        log.warning(
            "%s: cutting %d bytes after the last valid entry (%d entries kept)",
            path, found.file_size - found.valid_size, found.index.count,
        )
        truncate_file(path, found.valid_size)
    if sealed and found.index.count and not cut:
        tmp = index_path(path.parent, base).with_suffix(".idx.tmp")
        tmp.write_bytes(found.index.to_bytes())
        os.replace(tmp, index_path(path.parent, base))
    seg = RecoveredSegment(base, path, found.prev_key, found.index, found.valid_size)
    return seg, cut


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def recover_log(directory: Path) -> list[RecoveredSegment]:
    """Check and repair a log directory; return its segments, oldest first (never empty)."""
    directory.mkdir(parents=True, exist_ok=True)
    bases: list[int] = []
    for item in os.scandir(directory):
        if not item.is_file():
            continue
        if item.name.endswith(".tmp"):
            os.unlink(item.path)
            continue
        base = parse_segment_name(item.name)
        if base is not None:
            bases.append(base)
    bases.sort()

    segments: list[RecoveredSegment] = []
    for n, base in enumerate(bases):
        path = segment_path(directory, base)
        last = n == len(bases) - 1
        seg = None if last else _load_sealed(path, base)
        cut = False
        if seg is None:
            seg, cut = _scan(path, base, sealed=not last)
        if segments:
            prev = segments[-1]
            expected = prev.base + prev.index.count
            if base > expected:
                log.warning("%s: gap before position %d, removing older segments", directory, base)
                _remove([p for s in segments for p in (s.path, index_path(directory, s.base))])
                segments.clear()
            elif base < expected:
                raise CorruptLogError(f"{path} overlaps the segment before it")
        segments.append(seg)
        if cut and not last:
            later = bases[n + 1 :]
            log.warning("%s: corrupt sealed segment, removing %d later ones", directory, len(later))
            _remove([f(directory, b) for b in later for f in (segment_path, index_path)])
            break

    kept = {seg.base for seg in segments}
    for item in os.scandir(directory):
        stem, _dot, ext = item.name.partition(".")
        if ext == "idx" and item.is_file() and (not stem.isdigit() or int(stem) not in kept):
            os.unlink(item.path)

    if not segments:
        path = create_segment_file(directory, 0, None)
        segments.append(
            RecoveredSegment(0, path, None, SegmentIndex(SEGMENT_HEADER_SIZE), SEGMENT_HEADER_SIZE)
        )
    return segments
