"""ApiVersions: answered from the table of implemented APIs (:mod:`handlers.kafka.apis`).

An ApiVersions request at a version we do not serve never reaches this module: the codec turns
it into :class:`~handlers.kafka.codec.UnsupportedApiVersionsRequest` and the session answers it
with :func:`~handlers.kafka.codec.encode_unsupported_api_versions`.
"""

from __future__ import annotations

from handlers.kafka.codec import KafkaRequest, api_versions_response
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Every implemented API with its served version range."""
    return api_versions_response(request.api_version)
