"""Publisher confirms: delivery-tag numbering and coalesced acks/nacks (sans-IO).

After ``confirm.select`` every ``basic.publish`` on the channel gets the next sequence number
(1, 2, ...).  The session settles sequence numbers once their append is durable (ack) or failed
(nack), in any order; :meth:`ConfirmTracker.settle` returns the frames to send.  Confirms go out
in sequence order: a settled number above an unsettled one waits for it, and each run of
consecutive settled numbers of one kind (ack or nack) becomes one ``multiple=True`` frame (a
single number: ``multiple=False``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Confirm", "ConfirmTracker"]


@dataclass(frozen=True, slots=True)
class Confirm:
    """One ``basic.ack`` (``ack``) or ``basic.nack`` to send for publisher confirms."""

    delivery_tag: int
    multiple: bool
    ack: bool


class ConfirmTracker:
    """Sequence numbers of one channel in confirm mode."""

    def __init__(self) -> None:
        self._next = 1
        #: lowest sequence number not yet reported to the client
        self._low = 1
        #: settled but not reported because a lower number is still open: seq -> ack?
        self._settled: dict[int, bool] = {}

    @property
    def next_tag(self) -> int:
        """The number the next publish will get."""
        return self._next

    @property
    def unconfirmed(self) -> int:
        """Publishes not yet confirmed either way."""
        return self._next - self._low - len(self._settled)

    def publish(self) -> int:
        """Number the next publish."""
        tag = self._next
        self._next += 1
        return tag

    def settle(self, tags: Iterable[int], ack: bool) -> list[Confirm]:
        """Mark ``tags`` acked (or nacked); return the frames that can be sent now."""
        if isinstance(tags, list) and tags and not self._settled:
            # the common case: one run of consecutive numbers from the low-water mark
            first, last = tags[0], tags[-1]
            if (first == self._low and last < self._next
                    and tags == list(range(first, last + 1))):
                self._low = last + 1
                return [Confirm(last, last > first, ack)]
        for tag in tags:
            if not self._low <= tag < self._next:
                raise ValueError(f"tag {tag} is not outstanding")
            self._settled[tag] = ack
        out: list[Confirm] = []
        # Coalesce the contiguous run from the low-water mark, split where ack/nack changes.
        while self._low in self._settled:
            kind = self._settled[self._low]
            end = self._low
            while self._settled.get(end + 1) is kind:
                end += 1
            for tag in range(self._low, end + 1):
                del self._settled[tag]
            out.append(Confirm(end, end > self._low, kind))
            self._low = end + 1
        return out
