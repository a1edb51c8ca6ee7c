"""The core topics that MQTT filters starting with ``+`` or ``#`` span.

How it works
------------
A filter whose first level is ``+`` or ``#`` spans every core topic of the MQTT namespace,
including topics created later, through any protocol.  One :class:`TopicDirectory` per handler
keeps the set of those topics (:attr:`TopicDirectory.topics`) and a counter,
:attr:`TopicDirectory.generation`, that grows whenever a topic joins the set.  Deliverers wait
on it with :meth:`TopicDirectory.wait_changed` (passing the generation they last looked at, so
a change made while they were busy is not missed) and attach to the new topics.

The set follows the core:

* a topic created by an MQTT publish is added at once (:meth:`TopicDirectory.add`);
* any other creation or deletion (a Kafka produce, an AMQP exchange, an admin call) is
  announced by the core (:meth:`core.api.Core.wait_topics_changed`): while some deliverer
  watches, :meth:`TopicDirectory.run` then lists the namespace again (:meth:`refresh`);
* as a fallback for topics the core does not announce, the namespace is also listed every
  ``scan_interval`` seconds while someone watches.

A refresh adds what is new and drops what the listing no longer holds, unless a topic was
created or deleted while the listing ran (then a new refresh follows and decides).
"""

from __future__ import annotations

import logging

import trio

from core.api import Core
from core.errors import CoreError
from core.names import NamespaceName

from .retained import RETAINED_TOPIC
from .topic_mapping import TopicNotMappable, unescape_level

__all__ = ["TopicDirectory"]

log = logging.getLogger(__name__)


class TopicDirectory:
    """The core topics of the MQTT namespace that MQTT can reach (see the module docstring)."""

    def __init__(self, core: Core, namespace: NamespaceName, scan_interval: float = 2.0) -> None:
        self.core = core
        self.namespace = namespace
        #: seconds between fallback rescans while someone watches
        self.scan_interval = scan_interval
        #: the reachable core topics (local names) known to exist
        self.topics: set[str] = set()
        #: grows by one each time topics join :attr:`topics`
        self.generation = 0
        self._changed = trio.Event()
        self._due = trio.Event()  # a refresh is due: the core announced a change, or forget()
        self._watchers = 0
        self._watching = trio.Event()

    @staticmethod
    def reachable(name: str) -> bool:
        """Whether a core topic has an MQTT first level (see ``topic_mapping``).

        The retained-message topic of :mod:`handlers.mqtt.retained` is not.
        """
        if name == RETAINED_TOPIC:
            return False
        try:
            unescape_level(name)
        except TopicNotMappable:
            return False
        return True

    def _bump(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    def add(self, name: str) -> None:
        """A topic exists (an MQTT publish created it): wake the watchers when it is new."""
        if name not in self.topics and self.reachable(name):
            self.topics.add(name)
            self._bump()

    def forget(self, name: str) -> None:
        """A topic seems gone (deleted): drop it now, and list the namespace again soon (it
        comes back if it was created again meanwhile)."""
        self.topics.discard(name)
        self._due.set()

    async def refresh(self) -> None:
        """List the namespace's topics now (finds topics created through other protocols)."""
        before = self.core.topic_generation
        try:
            infos = await self.core.list_topics(self.namespace)
        except CoreError as exc:
            log.debug("mqtt: cannot list topics of %s: %s", self.namespace, exc)
            return
        listed = {info.name.local for info in infos if self.reachable(info.name.local)}
        if self.core.topic_generation == before:
            # nothing was created or deleted during the listing: what it lacks is gone
            self.topics &= listed
        new = listed - self.topics
        if new:
            self.topics |= new
            self._bump()

    async def wait_changed(self, after: int) -> None:
        """Wait until :attr:`generation` exceeds ``after`` (registers the caller as a watcher,
        which keeps :meth:`run` following the core)."""
        self._watchers += 1
        self._watching.set()
        try:
            while self.generation <= after:
                await self._changed.wait()
        finally:
            self._watchers -= 1
            if not self._watchers:
                self._watching = trio.Event()

    async def run(self) -> None:
        """Keep :attr:`topics` current while someone watches (runs until cancelled)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_core)
            while True:
                await self._watching.wait()
                with trio.move_on_after(self.scan_interval):
                    await self._due.wait()
                self._due = trio.Event()
                if self._watchers:
                    await self.refresh()

    async def _follow_core(self) -> None:
        generation = self.core.topic_generation
        while True:
            generation = await self.core.wait_topics_changed(generation)
            self._due.set()
