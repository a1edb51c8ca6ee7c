"""Kafka wire protocol handler.

The sans-IO layer (:mod:`~handlers.kafka.framing`, :mod:`~handlers.kafka.codec`,
:mod:`~handlers.kafka.apis`) decodes requests and encodes responses; :mod:`~handlers.kafka.session`
is the thin trio session; :mod:`handlers.kafka.service` holds one module per Kafka API.
"""

from handlers.kafka.handler import KafkaHandler, KafkaSettings

__all__ = ["KafkaHandler", "KafkaSettings"]
