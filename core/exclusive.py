"""Producer access modes (Pulsar 2.8's exclusive producer) and topic-epoch fencing.

A producer opened with :meth:`core.api.Core.open_producer` asks for one of:

* ``SHARED`` (default) -- any number of writers; refused with :class:`ProducerBusy`
  while an exclusive producer holds the topic.
* ``EXCLUSIVE`` -- the only writer; refused at once with :class:`ProducerBusy`
  when any other producer is open on the topic.
* ``WAIT_FOR_EXCLUSIVE`` -- waits (no polling; wrap in ``trio.move_on_after``)
  until no other producer is open, then becomes the exclusive one.
* ``EXCLUSIVE_WITH_FENCING`` -- takes exclusive access at once; every producer
  open on the topic is fenced (as Pulsar 2.10's mode of that name).

Every exclusive grant bumps the topic's *epoch*, kept in the metadata store under
``core/producer-epochs/<tenant>/<namespace>/<topic>`` with compare-and-set, so it
only grows, across restarts too.  A producer carries the epoch it was granted
under; :meth:`ProducerHandle.append` refuses with :class:`ProducerFenced` when the
topic's epoch has moved past it (another producer took over) or the handle was
closed, so a zombie exclusive producer never writes after its successor.  The
check and the offset assignment happen with no checkpoint in between.

Access is per topic (every partition).  Plain :meth:`core.api.Core.append` is not
subject to access modes.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from core.errors import CoreError
from core.names import TopicName
from core.records import Message, build_batch
from storage.api import MetadataStore, VersionConflictError

if TYPE_CHECKING:
    from core.api import Core, TopicRef
    from core.partition import AppendResult

__all__ = [
    "PRODUCER_EPOCHS_PREFIX",
    "AccessMode",
    "ProducerAccess",
    "ProducerBusy",
    "ProducerFenced",
    "ProducerHandle",
]

PRODUCER_EPOCHS_PREFIX = "core/producer-epochs/"
_CAS_ATTEMPTS = 16


class AccessMode(enum.Enum):
    """How a producer shares its topic with other producers."""

    SHARED = "shared"
    EXCLUSIVE = "exclusive"
    WAIT_FOR_EXCLUSIVE = "wait_for_exclusive"
    EXCLUSIVE_WITH_FENCING = "exclusive_with_fencing"


class ProducerBusy(CoreError):
    """The access mode cannot be granted: another producer holds the topic."""


class ProducerFenced(CoreError):
    """The producer lost its access (a newer exclusive producer took over, or it closed)."""


class _Topic:
    """Access state of one topic."""

    __slots__ = ("changed", "epoch", "exclusive", "granting", "shared", "waiting")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.exclusive: ProducerHandle | None = None
        self.granting = False  # an exclusive grant is writing the new epoch
        self.shared: set[ProducerHandle] = set()
        self.waiting = 0
        self.changed = trio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @property
    def busy(self) -> bool:
        return self.granting or self.exclusive is not None or bool(self.shared)

    @property
    def idle(self) -> bool:
        return not self.busy and not self.waiting


def epoch_key(topic: TopicName) -> str:
    """The metadata key of a topic's producer epoch."""
    return f"{PRODUCER_EPOCHS_PREFIX}{topic.base.metadata_path}"


class ProducerAccess:
    """Grants and releases producer access for every topic of one core."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._md = metadata
        self._topics: dict[TopicName, _Topic] = {}
        self._load_lock = trio.Lock()

    async def _state(self, topic: TopicName) -> _Topic:
        found = self._topics.get(topic)
        if found is not None:
            return found
        async with self._load_lock:
            found = self._topics.get(topic)
            if found is None:
                record = await self._md.get(epoch_key(topic))
                epoch = 0 if record is None else int(json.loads(record.value)["epoch"])
                found = self._topics[topic] = _Topic(epoch)
            return found

    async def current_epoch(self, topic: TopicName) -> int:
        """The topic's producer epoch (0 before the first exclusive grant)."""
        found = self._topics.get(topic)
        if found is not None:
            return found.epoch
        record = await self._md.get(epoch_key(topic))
        return 0 if record is None else int(json.loads(record.value)["epoch"])

    async def acquire(self, handle: ProducerHandle) -> None:
        """Grant ``handle`` its access mode (sets ``handle.epoch``) or raise ProducerBusy."""
        state = await self._state(handle.topic)
        mode = handle.access_mode
        if mode is AccessMode.SHARED:
            if state.exclusive is not None or state.granting:
                raise ProducerBusy(f"{handle.topic} has an exclusive producer")
            handle.epoch = state.epoch
            state.shared.add(handle)
            return
        if mode is AccessMode.EXCLUSIVE and state.busy:
            raise ProducerBusy(f"{handle.topic} already has producers")
        state.waiting += 1
        try:
            if mode is AccessMode.WAIT_FOR_EXCLUSIVE:
                while state.busy:
                    await state.changed.wait()
            elif mode is AccessMode.EXCLUSIVE_WITH_FENCING:
                while state.granting:
                    await state.changed.wait()
        except BaseException:
            state.waiting -= 1
            self._forget_if_idle(handle.topic, state)
            raise
        state.waiting -= 1
        # reserve before the metadata write (a checkpoint) so no one else gets in
        state.granting = True
        try:
            epoch = await self._bump(handle.topic)
        except BaseException:
            state.granting = False
            state.notify()
            self._forget_if_idle(handle.topic, state)
            raise
        state.granting = False
        state.notify()
        if mode is AccessMode.EXCLUSIVE_WITH_FENCING:
            if state.exclusive is not None:
                state.exclusive.fenced = True
            for other in state.shared:
                other.fenced = True
            state.shared.clear()
        state.epoch = epoch
        handle.epoch = epoch
        state.exclusive = handle

    async def _bump(self, topic: TopicName) -> int:
        key = epoch_key(topic)
        for _ in range(_CAS_ATTEMPTS):
            record = await self._md.get(key)
            epoch = 1 if record is None else int(json.loads(record.value)["epoch"]) + 1
            try:
                await self._md.put(key, json.dumps({"epoch": epoch}).encode(),
                                   expected_version=0 if record is None else record.version)
            except VersionConflictError:
                continue
            return epoch
        raise VersionConflictError(key, None, None)

    def check(self, handle: ProducerHandle) -> None:
        """Raise :class:`ProducerFenced` unless ``handle`` may still write (synchronous)."""
        state = self._topics.get(handle.topic)
        if handle.fenced or handle.closed or state is None or handle.epoch < state.epoch:
            raise ProducerFenced(
                f"producer {handle.name!r} on {handle.topic} (epoch {handle.epoch}) was fenced")

    def release(self, handle: ProducerHandle) -> None:
        """Give up ``handle``'s access and wake waiting producers."""
        handle.closed = True
        state = self._topics.get(handle.topic)
        if state is None:
            return
        if state.exclusive is handle:
            state.exclusive = None
        state.shared.discard(handle)
        state.notify()
        self._forget_if_idle(handle.topic, state)

    def _forget_if_idle(self, topic: TopicName, state: _Topic) -> None:
        # memory stays bounded by the topics in use; the epoch lives on in metadata
        if state.idle and self._topics.get(topic) is state:
            del self._topics[topic]


class ProducerHandle:
    """A producer's grant on one topic; obtain it from :meth:`core.api.Core.open_producer`."""

    def __init__(self, core: Core, access: ProducerAccess, topic: TopicName, ref: TopicRef,
                 access_mode: AccessMode, name: str) -> None:
        self._core = core
        self._access = access
        self._ref = ref
        self.topic = topic
        self.access_mode = access_mode
        self.name = name
        self.epoch = -1
        self.fenced = False
        self.closed = False

    async def append(self, partition: int, batches: bytes | bytearray | memoryview
                     ) -> AppendResult:
        """:meth:`core.api.Core.append`, refused with :class:`ProducerFenced` once fenced."""
        return await self._core._append_checked(self._ref, partition, batches,
                                                lambda: self._access.check(self))

    async def append_messages(self, partition: int, messages: Iterable[Message],
                              compression: int = 0) -> AppendResult:
        """:meth:`core.api.Core.append_messages`, refused once fenced."""
        return await self.append(partition, build_batch(messages, compression))
