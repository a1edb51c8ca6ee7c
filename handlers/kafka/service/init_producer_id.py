"""InitProducerId: give an idempotent producer its producer id and epoch.

* ``transactional_id`` null (an idempotent, non-transactional producer): a fresh
  producer id from :meth:`core.api.Core.allocate_producer_id`, epoch 0.  As in Kafka,
  the ``producer_id``/``producer_epoch`` of v3+ (a producer asking to bump its epoch
  after an error, KIP-360) get a new id with epoch 0 too: without a transactional id
  there is nothing to fence, and a new id starts a clean sequence.  The core then
  deduplicates the producer's batches per partition (see :mod:`core.dedup`).
* ``transactional_id`` set: :meth:`TransactionCoordinator.init_producer` maps it to a
  producer id and bumps the epoch (logged), which fences every older instance (a
  zombie) and aborts its open transaction before answering.  ``transaction_timeout_ms``
  outside the coordinator's range gets ``INVALID_TRANSACTION_TIMEOUT``.  The Kafka
  offset committer is installed here too (see
  :func:`handlers.kafka.service.txn_offset_commit.install_offset_committer`).
  The ``producer_id``/``producer_epoch`` of v3+ are not checked against the current
  epoch: every InitProducerId bumps it.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext
from handlers.kafka.service.txn_offset_commit import install_offset_committer

if TYPE_CHECKING:
    from core.api import Core

__all__ = ["EPOCHS_KEPT", "INITIAL_EPOCH", "current_epoch", "handle"]

INITIAL_EPOCH = 0

EPOCHS_KEPT = 10_000
"""Transactional producers whose latest epoch is remembered (see :func:`current_epoch`)."""

_EPOCHS: weakref.WeakKeyDictionary[Core, OrderedDict[int, int]] = weakref.WeakKeyDictionary()


def current_epoch(core: Core, producer_id: int) -> int | None:
    """The latest epoch this broker gave transactional producer ``producer_id`` since it
    started (None if unknown): requests of an older epoch come from a fenced zombie."""
    epochs = _EPOCHS.get(core)
    return None if epochs is None else epochs.get(producer_id)


def _remember(core: Core, producer_id: int, epoch: int) -> None:
    epochs = _EPOCHS.get(core)
    if epochs is None:
        epochs = _EPOCHS[core] = OrderedDict()
    epochs.pop(producer_id, None)
    epochs[producer_id] = epoch
    while len(epochs) > EPOCHS_KEPT:
        epochs.popitem(last=False)


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Allocate a producer id (idempotent producer) or bump a transactional id's epoch."""
    cls = registry.response_class(ApiKey.InitProducerId, request.api_version)
    transactional_id = request.body.transactional_id
    if transactional_id is not None:
        install_offset_committer(ctx.core)
        try:
            producer_id, epoch = await ctx.core.transactions.init_producer(
                transactional_id, request.body.transaction_timeout_ms)
        except CoreError as exc:
            return cls(throttle_time_ms=0, error_code=int(error_code(exc)), producer_id=-1,
                       producer_epoch=-1)
        _remember(ctx.core, producer_id, epoch)
        return cls(throttle_time_ms=0, error_code=int(ErrorCode.NONE), producer_id=producer_id,
                   producer_epoch=epoch)
    try:
        producer_id = await ctx.core.allocate_producer_id()
    except CoreError as exc:
        return cls(throttle_time_ms=0, error_code=int(error_code(exc)), producer_id=-1,
                   producer_epoch=-1)
    return cls(throttle_time_ms=0, error_code=int(ErrorCode.NONE), producer_id=producer_id,
               producer_epoch=INITIAL_EPOCH)
