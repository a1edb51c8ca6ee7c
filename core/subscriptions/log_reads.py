"""The partition log as a subscription uses it besides reading ahead.

:func:`read_offsets` reads single messages back by offset (delayed messages that
became due); :func:`wait_for_data_or` waits for new data or a wake-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from core.errors import OffsetOutOfRange, UnknownTopic
from core.names import TopicName
from core.records import Message, decode_batch
from core.transactions.reads import wait_for_stable

if TYPE_CHECKING:
    from core.api import Core

__all__ = ["read_offsets", "wait_for_data_or"]

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


async def wait_for_data_or(
    core: Core, topic: TopicName, partition: int, position: int, event: trio.Event,
    *, stable: bool = False,
) -> None:
    """Return once the log has data at ``position`` (below the last stable offset
    with ``stable``) or ``event`` is set.

    Raises :class:`~core.errors.UnknownTopic` when the topic is deleted meanwhile.
    """
    gone: list[UnknownTopic] = []
    async with trio.open_nursery() as nursery:

        async def until_data() -> None:
            try:
                if stable:
                    await wait_for_stable(core, topic, partition, position)
                else:
                    await core.wait_for_data(topic, partition, position)
            except UnknownTopic as exc:
                gone.append(exc)
            nursery.cancel_scope.cancel()

        async def until_woken() -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_data)
        nursery.start_soon(until_woken)
    if gone:
        raise gone[0]
