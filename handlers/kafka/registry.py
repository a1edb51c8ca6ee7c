"""api_key -> kafka-python message classes (request and response) for every known API.

kafka-python 3.x generates one class per message from Apache Kafka's JSON message specs
(``kafka/protocol/schemas/resources/*.json``).  A class is versionless; ``cls[v]`` gives the
wrapper for version ``v``, and decoding/encoding takes the version explicitly.  Flexible
versions (compact strings/arrays, tagged fields) are described by the schema's
``flexibleVersions`` and handled by the generated code.

What is *served* is decided by :mod:`handlers.kafka.apis`; this registry only knows what can be
*decoded*.  kafka-python widens every message's lower bound to 0 for decoding; ``min_version``
here is the spec's own lower bound.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from kafka.protocol.api_message import ApiMessage

__all__ = ["SPECS", "MessageSpec", "request_class", "response_class", "spec"]

_MODULES = (
    "kafka.protocol.metadata",
    "kafka.protocol.producer",
    "kafka.protocol.consumer",
    "kafka.protocol.admin",
    "kafka.protocol.sasl",
)


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """The request/response classes of one API and what its schema allows."""

    api_key: int
    name: str
    request: Any  # the primary (versionless) kafka-python ApiMessage subclass
    response: Any
    min_version: int
    max_version: int
    first_flexible: int | None  # None: no flexible version

    def is_flexible(self, version: int) -> bool:
        """True if ``version`` uses compact types and tagged fields."""
        return self.first_flexible is not None and version >= self.first_flexible

    def request_header_version(self, version: int) -> int:
        """Request header version: 2 for flexible request versions, else 1."""
        return 2 if self.is_flexible(version) else 1

    def response_header_version(self, version: int) -> int:
        """Response header version: 1 for flexible versions, else 0.

        ApiVersions always uses header v0, whatever its version: a client must be able to read
        the response to a version it had to guess.
        """
        if self.api_key == 18:
            return 0
        return 1 if self.is_flexible(version) else 0


def _first_flexible(cls: Any) -> int | None:
    flexible = cls._flexible_versions
    if flexible is None or flexible[0] < 0:
        return None
    return int(flexible[0])


def _load() -> Mapping[int, MessageSpec]:
    requests: dict[int, Any] = {}
    responses: dict[int, Any] = {}
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj: object = getattr(module, name)
            if not (isinstance(obj, type) and issubclass(obj, ApiMessage)):
                continue
            cls: Any = obj
            target = requests if cls.is_request() else responses
            target.setdefault(int(cls.API_KEY), cls)
    specs: dict[int, MessageSpec] = {}
    for api_key in sorted(requests.keys() & responses.keys()):
        req = requests[api_key]
        low, high = req.valid_versions
        specs[api_key] = MessageSpec(
            api_key=api_key,
            name=str(req.name).removesuffix("Request"),
            request=req,
            response=responses[api_key],
            min_version=int(low),
            max_version=int(high),
            first_flexible=_first_flexible(req),
        )
    return MappingProxyType(specs)


SPECS: Mapping[int, MessageSpec] = _load()
"""Every API kafka-python knows, by api key."""


def spec(api_key: int) -> MessageSpec | None:
    """The message spec for ``api_key``, or None if kafka-python has no classes for it."""
    return SPECS.get(api_key)


def request_class(api_key: int, version: int) -> Any:
    """The kafka-python request class for ``api_key`` at ``version`` (``cls[version]``).

    Raises KeyError for an unknown API and ValueError for a version beyond the schema.
    """
    return SPECS[api_key].request[version]


def response_class(api_key: int, version: int) -> Any:
    """The kafka-python response class for ``api_key`` at ``version``."""
    return SPECS[api_key].response[version]
