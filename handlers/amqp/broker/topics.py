"""Core topic names of AMQP entities: vhost → namespace, exchange/queue → topic.

Exchange ``X`` is the topic ``X`` of the vhost's namespace, with characters outside the
core's topic alphabet escaped as ``=`` + two hex digits per UTF-8 byte (``a b`` → ``a=20b``);
a queue's default-exchange copy is the topic ``amq.queue.<escaped name>``.
"""

from __future__ import annotations

import hashlib
import re

from core.errors import InvalidName
from core.names import NamespaceName, TopicName

__all__ = [
    "NAME_MEMO_SIZE",
    "QUEUE_TOPIC_PREFIX",
    "TopicNames",
    "exchange_topic_name",
    "namespace_for_vhost",
]

QUEUE_TOPIC_PREFIX = "amq.queue."
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]")
_MAX_TOPIC = 200
#: names memoised per kind by :class:`TopicNames`; the memo restarts when full
NAME_MEMO_SIZE = 4096


def namespace_for_vhost(vhost: str, default: NamespaceName) -> NamespaceName | None:
    """The namespace a vhost maps to (see the module docstring); None when invalid."""
    if vhost in ("", "/"):
        return default
    try:
        if "/" in vhost:
            return NamespaceName.parse(vhost)
        return NamespaceName(default.tenant, vhost)
    except InvalidName:
        return None


def exchange_topic_name(name: str) -> str:
    """The local core topic name of exchange ``name`` (escaped, see the module docstring)."""
    out = []
    for ch in name:
        if _TOPIC_CHARS.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode("utf-8"))
    text = "".join(out)
    if text in (".", ".."):
        text = text.replace(".", "=2E")
    if len(text) > _MAX_TOPIC:
        text = text[:160] + "=" + hashlib.sha256(name.encode()).hexdigest()[:32]
    return text


class TopicNames:
    """Memoised topic names of one vhost's exchanges and queues (looked up per message)."""

    def __init__(self, namespace: NamespaceName) -> None:
        self.namespace = namespace
        self._exchanges: dict[str, TopicName] = {}
        self._queues: dict[str, TopicName] = {}

    def exchange_topic(self, exchange: str) -> TopicName:
        """The core topic backing ``exchange``."""
        topic = self._exchanges.get(exchange)
        if topic is None:
            topic = TopicName(self.namespace.tenant, self.namespace.namespace,
                              exchange_topic_name(exchange))
            _remember(self._exchanges, exchange, topic)
        return topic

    def queue_topic(self, queue: str) -> TopicName:
        """The core topic of ``queue``'s default-exchange messages."""
        topic = self._queues.get(queue)
        if topic is None:
            topic = TopicName(self.namespace.tenant, self.namespace.namespace,
                              QUEUE_TOPIC_PREFIX + exchange_topic_name(queue))
            _remember(self._queues, queue, topic)
        return topic


def _remember(memo: dict[str, TopicName], name: str, topic: TopicName) -> None:
    if len(memo) >= NAME_MEMO_SIZE:
        memo.clear()
    memo[name] = topic
