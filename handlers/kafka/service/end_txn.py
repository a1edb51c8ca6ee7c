"""EndTxn (v0-4): commit or abort the producer's transaction.

Answered once the core has written every marker and applied the held offsets
(:meth:`TransactionCoordinator.end`, which runs shielded: a client that goes away mid-commit does
not stop it).  A retried EndTxn with the same outcome succeeds; the other outcome gets
``INVALID_TXN_STATE``; an EndTxn of an old epoch gets ``PRODUCER_FENCED``
(``INVALID_PRODUCER_EPOCH`` before v2); of a transaction the core aborted on timeout,
``INVALID_PRODUCER_EPOCH``.  An EndTxn with no transaction at all gets ``INVALID_TXN_STATE``, as
Kafka answers in its Empty state (clients skip EndTxn for an empty transaction).
v5 bumps the epoch on every transaction (transactions v2, KIP-890): not served.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from core.errors import CoreError
from core.transactions import InvalidTxnState, ProducerFenced, TxnId
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.add_partitions_to_txn import txn_error_code
from handlers.kafka.service.context import Reply, ServiceContext
from handlers.kafka.service.init_producer_id import current_epoch

if TYPE_CHECKING:
    from core.api import Core

__all__ = ["ENDED_KEPT", "end_transaction", "ended_transactions", "handle"]

ENDED_KEPT: Final = 1000
"""Producers whose last ended transaction is remembered (to answer retried EndTxns)."""

_ENDED: weakref.WeakKeyDictionary[Core, OrderedDict[int, TxnId]] = weakref.WeakKeyDictionary()


def _ended(core: Core) -> OrderedDict[int, TxnId]:
    found = _ENDED.get(core)
    if found is None:
        found = _ENDED[core] = OrderedDict()
    return found


def ended_transactions(core: Core) -> list[TxnId]:
    """The last transaction each producer ended through EndTxn, oldest first."""
    return list(_ended(core).values())


def _remember(core: Core, txn: TxnId) -> None:
    ended = _ended(core)
    ended.pop(txn.producer_id, None)
    ended[txn.producer_id] = txn
    while len(ended) > ENDED_KEPT:
        ended.popitem(last=False)


async def end_transaction(core: Core, producer_id: int, epoch: int, commit: bool) -> None:
    """Commit or abort the producer's current (or, for a retry, last ended) transaction."""
    txn = core.transactions.current(producer_id)
    known = current_epoch(core, producer_id)
    if known is not None and epoch < known:
        raise ProducerFenced(f"producer {producer_id} epoch {epoch} is fenced by {known}")
    if txn is None:
        txn = _ended(core).get(producer_id)
        if txn is None:
            raise InvalidTxnState(f"producer {producer_id} has no transaction to end")
    if epoch < txn.epoch:
        raise ProducerFenced(f"producer {producer_id} epoch {epoch} is fenced by {txn.epoch}")
    if epoch > txn.epoch:
        raise InvalidTxnState(f"producer {producer_id} epoch {epoch} has no transaction")
    await core.transactions.end(txn, commit)
    _remember(core, txn)


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """End the transaction; the answer comes once it is complete."""
    body: Any = request.body
    cls = registry.response_class(ApiKey.EndTxn, request.api_version)
    code = int(ErrorCode.NONE)
    try:
        await end_transaction(ctx.core, body.producer_id, body.producer_epoch, body.committed)
    except CoreError as exc:
        code = txn_error_code(exc, request.api_version)
    return cls(throttle_time_ms=0, error_code=code, producer_id=-1, producer_epoch=-1)
