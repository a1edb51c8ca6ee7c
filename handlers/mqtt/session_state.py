"""Sans-IO state of one MQTT client session: subscriptions, in-flight QoS 1/2, topic aliases.

No sockets and no trio here.  :class:`SessionState` outlives connections (it belongs to the
client id, see :mod:`handlers.mqtt.sessions`); :class:`ConnectionState` lives for one network
connection (topic aliases and the inbound receive-maximum count are per connection in MQTT 5).

How it works
------------
* Subscriptions are kept per topic filter (``$share/<group>/<filter>`` is its own entry).
  :meth:`SessionState.match` folds every non-shared subscription matching a topic name into
  one :class:`Match`: the highest granted QoS, every subscription identifier, *retain as
  published* if any matching subscription asked for it.  So overlapping subscriptions are
  delivered once, at the highest QoS.
* Inbound QoS 2: the packet id is remembered from the PUBLISH (after the durable append) until
  PUBREL; a PUBLISH repeating a remembered id is answered with PUBREC and not stored again.
* Outbound QoS 1/2: :meth:`SessionState.start_outbound` allocates a free packet id and keeps an
  opaque ``token`` (the core ack handle); PUBACK, or PUBREC for QoS 2, hands the token back.
  QoS 2 ids then wait for PUBCOMP (they survive a reconnect: :meth:`pending_releases`).
* Re-sending after a reconnect (MQTT-4.4.0-1): deliveries still unacknowledged when the
  connection ends go back to the core, which redelivers them to the resumed session.  Their
  packet ids are kept meanwhile (:meth:`SessionState.keep_for_resend`, keyed by where the
  message is in the log: :data:`ResendKey`; stored with the session) and not given to other
  messages, so the redelivery goes out under its original packet id
  (:meth:`SessionState.resend_id`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Generic, TypeVar

from .errors import ProtocolError
from .reason_codes import ReasonCode
from .topic_mapping import topic_matches
from .topics import SHARED_PREFIX

__all__ = [
    "MAX_RESEND",
    "ConnectionState",
    "InboundResult",
    "Match",
    "OutboundAliases",
    "OutboundFlight",
    "ResendKey",
    "SessionState",
    "SubscriptionEntry",
]

T = TypeVar("T")

MAX_PACKET_ID = 0xFFFF

#: packet ids kept for re-sending at most (the rest stay free for new deliveries)
MAX_RESEND = 16384
#: a delivered message's place in the log: (core topic, shared filter or None, partition, offset)
ResendKey = tuple[str, str | None, int, int]


@dataclass(frozen=True, slots=True)
class SubscriptionEntry:
    """One granted subscription (``topic_filter`` as the client sent it)."""

    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None

    @property
    def share_group(self) -> str | None:
        """The share name of a ``$share/<group>/<filter>`` subscription, else None."""
        if not self.topic_filter.startswith(SHARED_PREFIX):
            return None
        return self.topic_filter[len(SHARED_PREFIX):].partition("/")[0]

    @property
    def match_filter(self) -> str:
        """The filter matched against topic names (without the ``$share/<group>/`` part)."""
        if self.share_group is None:
            return self.topic_filter
        return self.topic_filter[len(SHARED_PREFIX):].partition("/")[2]


@dataclass(frozen=True, slots=True)
class Match:
    """How one message is delivered to a session (overlapping subscriptions folded)."""

    qos: int
    identifiers: tuple[int, ...]
    retain_as_published: bool
    no_local: bool


@dataclass(slots=True)
class OutboundFlight(Generic[T]):
    """A QoS 1/2 PUBLISH sent to the client and not yet acknowledged."""

    packet_id: int
    qos: int
    token: T


class InboundResult:
    """What to do with an inbound QoS 2 PUBLISH."""

    STORE = "store"  # new packet id: store, then remember it and send PUBREC
    DUPLICATE = "duplicate"  # already stored: only send PUBREC again


@dataclass
class SessionState(Generic[T]):
    """Everything the broker keeps for one client id between connections.

    ``T`` is the type of the tokens attached to outbound messages (the core's ack handle).
    """

    client_id: str
    protocol_level: int = 5
    #: seconds the session outlives its connection; 0xFFFFFFFF never expires
    expiry_interval: int = 0
    subscriptions: dict[str, SubscriptionEntry] = field(default_factory=dict)
    inbound_qos2: set[int] = field(default_factory=set)
    outbound: dict[int, OutboundFlight[T]] = field(default_factory=dict)
    #: QoS 2 packet ids whose PUBREC came back; PUBREL sent, PUBCOMP awaited
    releasing: set[int] = field(default_factory=set)
    #: packet ids of deliveries unacknowledged at a disconnect, until they are sent again
    resend: dict[ResendKey, int] = field(default_factory=dict)
    _reserved: set[int] = field(default_factory=set, compare=False, repr=False)
    _next_id: int = 1
    #: bumped by every subscribe/unsubscribe (lets deliverers cache per-topic matches)
    subscription_changes: int = field(default=0, compare=False, repr=False)

    # ------------------------------------------------------------ subscriptions

    def subscribe(self, entry: SubscriptionEntry) -> bool:
        """Add or replace a subscription; True when the filter already existed."""
        existed = entry.topic_filter in self.subscriptions
        self.subscriptions[entry.topic_filter] = entry
        self.subscription_changes += 1
        return existed

    def unsubscribe(self, topic_filter: str) -> bool:
        """Remove a subscription; False when there was none."""
        self.subscription_changes += 1
        return self.subscriptions.pop(topic_filter, None) is not None

    def match(self, topic: str, share_filter: str | None = None) -> Match | None:
        """How a message on ``topic`` is delivered, or None when nothing matches.

        Without ``share_filter`` only non-shared subscriptions count; with it, only that one
        shared subscription (``$share/...`` filter) does.
        """
        if share_filter is not None:
            entry = self.subscriptions.get(share_filter)
            if entry is None or not topic_matches(entry.match_filter, topic):
                return None
            own = () if entry.identifier is None else (entry.identifier,)
            return Match(entry.qos, own, entry.retain_as_published, entry.no_local)
        qos = -1
        ids: list[int] = []
        rap = False
        no_local = True
        for entry in self.subscriptions.values():
            if entry.share_group is not None or not topic_matches(entry.topic_filter, topic):
                continue
            qos = max(qos, entry.qos)
            if entry.identifier is not None and entry.identifier not in ids:
                ids.append(entry.identifier)
            rap = rap or entry.retain_as_published
            no_local = no_local and entry.no_local
        if qos < 0:
            return None
        return Match(qos, tuple(ids), rap, no_local)

    # ------------------------------------------------------------ inbound QoS 2

    def classify_qos2(self, packet_id: int) -> str:
        """Classify an inbound QoS 2 PUBLISH (see :class:`InboundResult`)."""
        return InboundResult.DUPLICATE if packet_id in self.inbound_qos2 else InboundResult.STORE

    def stored_qos2(self, packet_id: int) -> None:
        """The QoS 2 message with ``packet_id`` is durably stored; PUBREC follows."""
        self.inbound_qos2.add(packet_id)

    def release(self, packet_id: int) -> bool:
        """PUBREL received: forget the id; False when it was unknown (reason 0x92)."""
        if packet_id in self.inbound_qos2:
            self.inbound_qos2.discard(packet_id)
            return True
        return False

    # ------------------------------------------------------------ outbound QoS 1/2

    @property
    def outbound_in_flight(self) -> int:
        """QoS 1/2 messages sent and not yet completed (counted against Receive Maximum)."""
        return len(self.outbound) + len(self.releasing)

    def _allocate(self) -> int:
        for _ in range(MAX_PACKET_ID):
            pid = self._next_id
            self._next_id = 1 if pid == MAX_PACKET_ID else pid + 1
            if pid not in self.outbound and pid not in self.releasing and (
                    pid not in self._reserved):
                return pid
        raise RuntimeError("no free packet identifier")

    def start_outbound(self, qos: int, token: T, packet_id: int | None = None) -> int:
        """Allocate a packet id for a QoS 1/2 delivery carrying ``token`` (``packet_id``: the
        one :meth:`resend_id` gave back)."""
        if qos not in (1, 2):
            raise ValueError(f"QoS {qos} has no packet identifier")
        pid = self._allocate() if packet_id is None else packet_id
        self.outbound[pid] = OutboundFlight(pid, qos, token)
        return pid

    def keep_for_resend(self, key: ResendKey, packet_id: int) -> None:
        """Remember the packet id of a delivery left unacknowledged by a disconnect.

        At most :data:`MAX_RESEND` are kept (the oldest go first): a message that never comes
        back (a shared subscription gave it to another member) must not hold its id forever.
        """
        old = self.resend.pop(key, None)
        if old is not None:
            self._reserved.discard(old)
        while len(self.resend) >= MAX_RESEND:
            self._reserved.discard(self.resend.pop(next(iter(self.resend))))
        self.resend[key] = packet_id
        self._reserved.add(packet_id)

    def resend_id(self, key: ResendKey) -> int | None:
        """The original packet id when the message at ``key`` is being sent again, else None
        (the id is then free for :meth:`start_outbound`)."""
        pid = self.resend.pop(key, None)
        if pid is None:
            return None
        self._reserved.discard(pid)
        if pid in self.outbound or pid in self.releasing:
            return None
        return pid

    def puback(self, packet_id: int) -> OutboundFlight[T] | None:
        """PUBACK received: the finished QoS 1 delivery (None when the id is unknown)."""
        flight = self.outbound.get(packet_id)
        if flight is None or flight.qos != 1:
            return None
        del self.outbound[packet_id]
        return flight

    def pubrec(self, packet_id: int, reason_code: int = 0) -> tuple[bool, OutboundFlight[T] | None]:
        """PUBREC received: ``(send PUBREL?, the delivered QoS 2 flight or None)``.

        A PUBREC with an error reason code ends the exchange without PUBREL.  A repeated
        PUBREC for an id already released asks for PUBREL again (no flight then).
        """
        flight = self.outbound.get(packet_id)
        if flight is None or flight.qos != 2:
            return (packet_id in self.releasing, None)
        del self.outbound[packet_id]
        if reason_code >= 0x80:
            return (False, flight)
        self.releasing.add(packet_id)
        return (True, flight)

    def pubcomp(self, packet_id: int) -> bool:
        """PUBCOMP received; False when the id was not waiting for one."""
        if packet_id in self.releasing:
            self.releasing.discard(packet_id)
            return True
        return False

    def drop_outbound(self) -> list[T]:
        """Forget every unacknowledged delivery (the connection ended); return their tokens.

        The messages stay in the log and come back through the core's redelivery.
        """
        tokens = [f.token for f in self.outbound.values()]
        self.outbound.clear()
        return tokens

    def pending_releases(self) -> Iterator[int]:
        """QoS 2 ids whose PUBREL must be sent again after a reconnect."""
        return iter(sorted(self.releasing))

    # ------------------------------------------------------------ persistence

    def to_json(self) -> bytes:
        """The durable part as JSON: subscriptions, expiry, protocol level, the inbound
        QoS 2 packet ids awaiting PUBREL (so a PUBLISH re-sent after a restart is not stored
        twice) and the packet ids kept for re-sending (:attr:`resend`)."""
        return json.dumps({
            "client_id": self.client_id,
            "protocol_level": self.protocol_level,
            "expiry_interval": self.expiry_interval,
            "subscriptions": [asdict(e) for e in self.subscriptions.values()],
            "inbound_qos2": sorted(self.inbound_qos2),
            "resend": [[*key, pid] for key, pid in self.resend.items()],
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SessionState[T]:
        """Inverse of :meth:`to_json`; raises ValueError on bad data."""
        try:
            raw = json.loads(data)
            state: SessionState[T] = cls(str(raw["client_id"]), int(raw["protocol_level"]),
                                         int(raw["expiry_interval"]))
            for item in raw["subscriptions"]:
                entry = SubscriptionEntry(**item)
                state.subscriptions[entry.topic_filter] = entry
            state.inbound_qos2 = {int(pid) for pid in raw.get("inbound_qos2", [])}
            for topic, shared, partition, offset, pid in raw.get("resend", []):
                if not 0 < int(pid) <= MAX_PACKET_ID:
                    raise ValueError(f"packet id {pid}")
                state.keep_for_resend(
                    (str(topic), None if shared is None else str(shared), int(partition),
                     int(offset)), int(pid))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"bad stored MQTT session: {exc}") from exc
        return state


class ConnectionState:
    """Per-connection limits: inbound topic aliases and the inbound Receive Maximum."""

    def __init__(self, topic_alias_maximum: int, receive_maximum: int) -> None:
        self.topic_alias_maximum = topic_alias_maximum
        self.receive_maximum = receive_maximum
        self._aliases: dict[int, str] = {}

    def resolve_topic(self, topic: str, alias: int | None) -> str:
        """The topic name of an inbound PUBLISH, applying and recording a topic alias.

        Raises :class:`ProtocolError` with 0x94 for an alias out of range or unknown.
        """
        if alias is None:
            if not topic:
                raise ProtocolError("PUBLISH without topic name or alias",
                                    ReasonCode.PROTOCOL_ERROR)
            return topic
        if not 1 <= alias <= self.topic_alias_maximum:
            raise ProtocolError(f"topic alias {alias} out of range",
                                ReasonCode.TOPIC_ALIAS_INVALID)
        if topic:
            self._aliases[alias] = topic
            return topic
        known = self._aliases.get(alias)
        if known is None:
            raise ProtocolError(f"unknown topic alias {alias}", ReasonCode.PROTOCOL_ERROR)
        return known

    def check_receive_maximum(self, in_flight: int) -> None:
        """Raise 0x93 when one more QoS 1/2 PUBLISH would exceed our Receive Maximum."""
        if in_flight >= self.receive_maximum:
            raise ProtocolError(
                f"more than {self.receive_maximum} QoS 1/2 publications in flight",
                ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)


class OutboundAliases:
    """Topic aliases the server uses towards one client (MQTT 5, per connection).

    The first ``maximum`` distinct topics get aliases 1..``maximum``; later topics are sent
    in full.  :meth:`lookup` does not change anything: the caller calls :meth:`commit` once
    the PUBLISH that establishes a new alias is queued, so a dropped packet never leaves the
    client without the mapping.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._by_topic: dict[str, int] = {}

    def lookup(self, topic: str) -> tuple[int | None, bool]:
        """``(alias, established)``: an alias to send and whether the client knows it."""
        alias = self._by_topic.get(topic)
        if alias is not None:
            return alias, True
        if len(self._by_topic) < self.maximum:
            return len(self._by_topic) + 1, False
        return None, False

    def lookup_next(self, pending: int) -> int | None:
        """The alias a new topic gets when ``pending`` new aliases wait to be committed."""
        alias = len(self._by_topic) + pending + 1
        return alias if alias <= self.maximum else None

    def commit_many(self, fresh: dict[str, int]) -> None:
        """Commit the aliases of :meth:`lookup_next`, in the order they were handed out."""
        for topic, alias in fresh.items():
            self.commit(topic, alias)

    def commit(self, topic: str, alias: int) -> None:
        """The PUBLISH carrying ``topic`` with ``alias`` was queued: the alias is set."""
        if topic not in self._by_topic and alias == len(self._by_topic) + 1 <= self.maximum:
            self._by_topic[topic] = alias
