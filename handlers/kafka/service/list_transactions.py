"""ListTransactions (v0): transactional ids with their producer and state.

Lists the transactions in progress and the last one each producer ended here (see
:mod:`handlers.kafka.service.describe_transactions`), filtered by state and producer id.
State filters that are not Kafka state names come back in ``UnknownStateFilters``.
v1 adds a duration filter (the core does not keep transaction start times), v2 an id pattern:
not served.
"""

from __future__ import annotations

from typing import Any, Final

import trio

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext
from handlers.kafka.service.describe_transactions import find_transactions

__all__ = ["KAFKA_STATES", "handle"]

KAFKA_STATES: Final = frozenset({
    "Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit", "CompleteAbort",
    "Dead", "PrepareEpochFence"})
"""Every transaction state name Kafka knows (the last two never occur here)."""


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """List the transactions that pass the request's filters."""
    body: Any = request.body
    cls = registry.response_class(ApiKey.ListTransactions, request.api_version)
    states = set(body.state_filters or ())
    pids = set(body.producer_id_filters or ())
    unknown = sorted(states - KAFKA_STATES)
    listed = [
        cls.TransactionState(transactional_id=tid, producer_id=info.txn_id.producer_id,
                             transaction_state=info.state.value)
        for tid, info in sorted(find_transactions(ctx.core).items())
        if (not states or info.state.value in states)
        and (not pids or info.txn_id.producer_id in pids)
    ]
    await trio.lowlevel.checkpoint()
    return cls(throttle_time_ms=0, error_code=int(ErrorCode.NONE), unknown_state_filters=unknown,
               transaction_states=listed)
