"""The partition log as a subscription uses it besides reading ahead.

:func:`read_offsets` reads single messages back by offset (delayed messages that
became due).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from core.errors import OffsetOutOfRange
from core.names import TopicName
from core.records import Message, decode_batch

if TYPE_CHECKING:
    from core.api import Core

__all__ = ["read_offsets"]

# a read returns at least the entry holding the offset asked for; ask for no more
_ONE_ENTRY = 1


async def read_offsets(
    core: Core, topic: TopicName, partition: int, offsets: Iterable[int]
) -> tuple[dict[int, tuple[Message, int]], list[int]]:
    """Read the messages at ``offsets``: ``({offset: (message, publish time ms)}, gone)``.

    One log read per stored batch holding wanted offsets.  ``gone`` lists the
    offsets retention removed.  Other core errors propagate.
    """
    wanted_set = set(offsets)
    wanted = sorted(wanted_set)
    found: dict[int, tuple[Message, int]] = {}
    gone: list[int] = []
    i = 0
    while i < len(wanted):
        offset = wanted[i]
        try:
            entries = await core.read(topic, partition, offset, _ONE_ENTRY)
        except OffsetOutOfRange as exc:
            if offset >= exc.earliest:
                raise
            gone.append(offset)
            i += 1
            continue
        if not entries:  # at the high watermark: cannot happen for a stored offset
            gone.append(offset)
            i += 1
            continue
        entry = entries[0]
        for stored in decode_batch(entry.batch):
            if stored.offset in wanted_set:
                found[stored.offset] = (stored.message, entry.broker_timestamp)
        while i < len(wanted) and wanted[i] <= entry.last_offset:
            if wanted[i] not in found:
                gone.append(wanted[i])  # compacted away or never a record
            i += 1
    return found, gone
