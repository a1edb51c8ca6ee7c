"""Dispatchers: which consumer gets the next message, per subscription type (pure logic).

A dispatcher holds the consumers of one subscription on one partition and
answers :meth:`Dispatcher.select`: the consumer that should receive a message
with this key now, or ``None`` when it must wait (no permits, or a Key_Shared
key still held by another consumer).  It never blocks and does no I/O; the
subscription calls it from its dispatch loop.

* Exclusive: one consumer; adding a second raises :class:`ConsumerBusy`.
* Failover: the consumers with the best (lowest) priority, sorted by name, take
  partitions in turn: partition ``p`` goes to ``best[p % len(best)]``; the rest
  stand by.  :meth:`Dispatcher.active` tells the subscription when it changes.
* Shared: round-robin over consumers with permits.
* Key_Shared: the key hash space ``[0, 65536)`` is split in one contiguous range
  per consumer.  A joining consumer takes the upper half of the largest range;
  a leaving consumer's range goes to its lower neighbour (the upper one when it
  had the lowest range).  Per-key order across these moves: while a consumer
  holds unacknowledged messages of a key, no other consumer receives that key
  (the subscription reports deliveries and releases with
  :meth:`Dispatcher.on_delivered` / :meth:`Dispatcher.on_released`).  This is
  Pulsar's "recently joined consumers" rule applied per key instead of per
  read position.
"""

from __future__ import annotations

import zlib
from typing import Generic, Protocol, TypeVar

from core.subscriptions.errors import ConsumerBusy
from core.subscriptions.types import SubscriptionType

__all__ = [
    "HASH_RANGE",
    "Dispatcher",
    "ExclusiveDispatcher",
    "FailoverDispatcher",
    "KeySharedDispatcher",
    "SharedDispatcher",
    "Target",
    "key_hash",
    "make_dispatcher",
]

HASH_RANGE = 1 << 16


class Target(Protocol):
    """What a dispatcher needs to know about a consumer."""

    @property
    def consumer_id(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def priority(self) -> int: ...

    @property
    def permits(self) -> int: ...


T = TypeVar("T", bound=Target)


def key_hash(key: bytes | None) -> int:
    """The position of ``key`` in the hash space (keyless messages share one)."""
    return zlib.crc32(key or b"") % HASH_RANGE


class Dispatcher(Generic[T]):
    """Base class: the consumer list and the hooks; subclasses choose."""

    type: SubscriptionType

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.consumers: list[T] = []

    def add(self, consumer: T) -> None:
        """Attach ``consumer`` (raises :class:`ConsumerBusy` when the type forbids it)."""
        self.consumers.append(consumer)

    def remove(self, consumer: T) -> None:
        """Detach ``consumer`` (no-op when absent)."""
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    def select(self, key: bytes | None) -> T | None:
        """The consumer to receive the next message with ``key`` now, or None."""
        raise NotImplementedError

    def active(self) -> T | None:
        """For Exclusive/Failover: the one consumer that may receive; None otherwise."""
        return None

    def in_order(self) -> bool:
        """Whether a message that cannot be dispatched blocks every later one."""
        return True

    def on_delivered(self, consumer: T, key: bytes | None) -> None:
        """A message with ``key`` went to ``consumer``."""

    def on_released(self, consumer: T, key: bytes | None) -> None:
        """``consumer`` no longer holds a message with ``key`` (acked or taken back)."""


class ExclusiveDispatcher(Dispatcher[T]):
    type = SubscriptionType.EXCLUSIVE

    def add(self, consumer: T) -> None:
        if self.consumers:
            name = self.consumers[0].name
            raise ConsumerBusy(f"exclusive subscription already has consumer {name!r}")
        super().add(consumer)

    def active(self) -> T | None:
        return self.consumers[0] if self.consumers else None

    def select(self, key: bytes | None) -> T | None:
        c = self.active()
        return c if c is not None and c.permits > 0 else None


class FailoverDispatcher(Dispatcher[T]):
    type = SubscriptionType.FAILOVER

    def active(self) -> T | None:
        if not self.consumers:
            return None
        best = min(c.priority for c in self.consumers)
        top = sorted(
            (c for c in self.consumers if c.priority == best),
            key=lambda c: (c.name, c.consumer_id),
        )
        return top[self.partition % len(top)]

    def standbys(self) -> list[T]:
        """Consumers not active, in the order they would take over."""
        active = self.active()
        rest = [c for c in self.consumers if c is not active]
        return sorted(rest, key=lambda c: (c.priority, c.name, c.consumer_id))

    def select(self, key: bytes | None) -> T | None:
        c = self.active()
        return c if c is not None and c.permits > 0 else None


class SharedDispatcher(Dispatcher[T]):
    type = SubscriptionType.SHARED

    def __init__(self, partition: int) -> None:
        super().__init__(partition)
        self._next = 0

    def select(self, key: bytes | None) -> T | None:
        n = len(self.consumers)
        for i in range(n):
            index = (self._next + i) % n
            c = self.consumers[index]
            if c.permits > 0:
                self._next = (index + 1) % n
                return c
        return None


class KeySharedDispatcher(Dispatcher[T]):
    type = SubscriptionType.KEY_SHARED

    def __init__(self, partition: int) -> None:
        super().__init__(partition)
        # contiguous ranges covering [0, HASH_RANGE): starts[i] .. starts[i+1] owned by owners[i]
        self._starts: list[int] = []
        self._owners: list[T] = []
        self._held: dict[bytes | None, tuple[T, int]] = {}

    def in_order(self) -> bool:
        return False

    def add(self, consumer: T) -> None:
        super().add(consumer)
        if not self._owners:
            self._starts, self._owners = [0], [consumer]
            return
        ends = [*self._starts[1:], HASH_RANGE]
        sizes = [end - start for start, end in zip(self._starts, ends, strict=True)]
        i = sizes.index(max(sizes))
        if sizes[i] < 2:
            return  # more consumers than hash values: this one stands by
        mid = self._starts[i] + sizes[i] // 2
        self._starts.insert(i + 1, mid)
        self._owners.insert(i + 1, consumer)

    def remove(self, consumer: T) -> None:
        super().remove(consumer)
        if consumer not in self._owners:
            return
        i = self._owners.index(consumer)
        if len(self._owners) == 1:
            self._starts, self._owners = [], []
        elif i == 0:
            del self._owners[0]
            del self._starts[1]  # the next range now starts at 0
        else:
            del self._owners[i]
            del self._starts[i]  # the previous range grows over this one
        standby = [c for c in self.consumers if c not in self._owners]
        for c in standby:  # consumers that found no range before get one now
            self.consumers.remove(c)
            self.add(c)

    def ranges(self) -> list[tuple[int, int, T]]:
        """``(start, end, consumer)`` for every hash range, ascending."""
        ends = [*self._starts[1:], HASH_RANGE]
        return list(zip(self._starts, ends, self._owners, strict=True))

    def owner(self, key: bytes | None) -> T | None:
        """The consumer whose hash range holds ``key``."""
        if not self._owners:
            return None
        h = key_hash(key)
        lo, hi = 0, len(self._starts)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._starts[mid] <= h:
                lo = mid
            else:
                hi = mid
        return self._owners[lo]

    def holder(self, key: bytes | None) -> T | None:
        """The consumer holding unacknowledged messages with ``key``, if any."""
        held = self._held.get(key)
        return None if held is None else held[0]

    def select(self, key: bytes | None) -> T | None:
        owner = self.owner(key)
        if owner is None or owner.permits <= 0:
            return None
        held = self._held.get(key)
        if held is not None and held[0] is not owner:
            return None  # the key moved: wait until the previous consumer lets go
        return owner

    def on_delivered(self, consumer: T, key: bytes | None) -> None:
        held = self._held.get(key)
        count = 0 if held is None else held[1]
        self._held[key] = (consumer, count + 1)

    def on_released(self, consumer: T, key: bytes | None) -> None:
        held = self._held.get(key)
        if held is None or held[0] is not consumer:
            return
        if held[1] <= 1:
            del self._held[key]
        else:
            self._held[key] = (consumer, held[1] - 1)


def make_dispatcher(kind: SubscriptionType, partition: int) -> Dispatcher[T]:
    """A new dispatcher of ``kind`` for ``partition``."""
    classes: dict[SubscriptionType, type[Dispatcher[T]]] = {
        SubscriptionType.EXCLUSIVE: ExclusiveDispatcher,
        SubscriptionType.SHARED: SharedDispatcher,
        SubscriptionType.FAILOVER: FailoverDispatcher,
        SubscriptionType.KEY_SHARED: KeySharedDispatcher,
    }
    return classes[kind](partition)
