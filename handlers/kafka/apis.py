"""The Kafka APIs the gateway implements, with their version ranges.

This table is the single source for the ApiVersions response and for which requests the codec
accepts: a request outside it is refused (:mod:`handlers.kafka.errors`), except ApiVersions,
which is answered with ``UNSUPPORTED_VERSION``.

Why these ranges (from the JSON message specs shipped with kafka-python 3.x):

* **ApiVersions 0-3** -- v3 is the first flexible version; v4 only changes how
  ``SupportedFeatures`` with ``MinVersion = 0`` are reported, and we report no features.
* **Metadata 0-11** -- v12 "supports topic Id": a v12+ request may name a topic only by its
  ID (``Name`` null).  v10/v11 carry a ``TopicId`` field that the spec says must not be used,
  and we answer it with the null (all-zero) UUID.
* **Produce 3-12** -- v3 is the first version that carries v2 record batches (our log's entry
  format); v0-v2 carry legacy message sets.  v13 replaces topic names with topic IDs.  (Apache
  Kafka 4 *advertises* Produce v0-v2 but rejects them, a workaround for old librdkafka,
  KAFKA-18659; we advertise what we accept.)
* **Fetch 4-12** -- v4 is the first version whose clients must accept v2 record batches, so
  stored batches are returned as-is (no down-conversion).  v13 replaces topic names with topic
  IDs.
* **ListOffsets 1-7** -- v7 adds the max-timestamp query (KIP-734); v8+ add tiered-storage
  queries (KIP-405, KIP-1005, KIP-1075, KIP-1023) that the first handler does not serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kafka.protocol.api_key import ApiKey

__all__ = ["SUPPORTED_APIS", "ApiKey", "ApiVersionRange", "is_supported", "version_range"]


@dataclass(frozen=True, slots=True)
class ApiVersionRange:
    """An implemented API and the inclusive range of versions served for it."""

    api_key: ApiKey
    min_version: int
    max_version: int

    def __post_init__(self) -> None:
        if not 0 <= self.min_version <= self.max_version:
            raise ValueError(f"bad version range {self.min_version}-{self.max_version}")

    def __contains__(self, version: object) -> bool:
        return isinstance(version, int) and self.min_version <= version <= self.max_version


def _table(*ranges: ApiVersionRange) -> Mapping[int, ApiVersionRange]:
    return MappingProxyType({int(r.api_key): r for r in ranges})


SUPPORTED_APIS: Mapping[int, ApiVersionRange] = _table(
    ApiVersionRange(ApiKey.Produce, 3, 12),
    ApiVersionRange(ApiKey.Fetch, 4, 12),
    ApiVersionRange(ApiKey.ListOffsets, 1, 7),
    ApiVersionRange(ApiKey.Metadata, 0, 11),
    ApiVersionRange(ApiKey.ApiVersions, 0, 3),
    # consumer groups (handlers/kafka/groups/, service/{find_coordinator,...,delete_groups}.py):
    # FindCoordinator 0-5: v6 adds share-group keys (KIP-932).
    ApiVersionRange(ApiKey.FindCoordinator, 0, 5),
    ApiVersionRange(ApiKey.JoinGroup, 0, 9),
    ApiVersionRange(ApiKey.SyncGroup, 0, 5),
    ApiVersionRange(ApiKey.Heartbeat, 0, 4),
    ApiVersionRange(ApiKey.LeaveGroup, 0, 5),
    # OffsetCommit 2-9 (v9 = v8 for classic groups); v10 names topics by TopicId.
    ApiVersionRange(ApiKey.OffsetCommit, 2, 9),
    # OffsetFetch 1-8: v9 adds KIP-848 member epochs, v10 topic ids.
    ApiVersionRange(ApiKey.OffsetFetch, 1, 8),
    ApiVersionRange(ApiKey.OffsetDelete, 0, 0),
    ApiVersionRange(ApiKey.ListGroups, 0, 5),
    ApiVersionRange(ApiKey.DescribeGroups, 0, 6),
    ApiVersionRange(ApiKey.DeleteGroups, 0, 2),
    # admin and SASL (handlers/kafka/service/{create_topics,...,sasl_authenticate}.py):
    # CreateTopics 2-6: v7 only adds the TopicId of created topics (topic ids not supported).
    ApiVersionRange(ApiKey.CreateTopics, 2, 6),
    # DeleteTopics 1-5: v6 names topics by TopicId.
    ApiVersionRange(ApiKey.DeleteTopics, 1, 5),
    ApiVersionRange(ApiKey.DeleteRecords, 0, 2),
    ApiVersionRange(ApiKey.DescribeConfigs, 1, 4),
    ApiVersionRange(ApiKey.AlterConfigs, 0, 2),
    ApiVersionRange(ApiKey.IncrementalAlterConfigs, 0, 1),
    ApiVersionRange(ApiKey.CreatePartitions, 0, 3),
    ApiVersionRange(ApiKey.DescribeCluster, 0, 2),
    # SaslHandshake 0-1: v0 is followed by raw SASL tokens, v1 by SaslAuthenticate requests.
    ApiVersionRange(ApiKey.SaslHandshake, 0, 1),
    # SaslAuthenticate 0-2: v1+ report session lifetime 0 (no re-authentication, KIP-368).
    ApiVersionRange(ApiKey.SaslAuthenticate, 0, 2),
    # InitProducerId 0-5: idempotent and transactional producers; v4/v5 only add error codes
    # for transactions; v6 adds 2PC fields (KIP-939, unstable spec).
    ApiVersionRange(ApiKey.InitProducerId, 0, 5),
    # transactions (handlers/kafka/service/{add_partitions_to_txn,...,describe_producers}.py):
    # AddPartitionsToTxn 0-3: v4+ batch transactions and are for brokers only (KIP-890).
    ApiVersionRange(ApiKey.AddPartitionsToTxn, 0, 3),
    ApiVersionRange(ApiKey.AddOffsetsToTxn, 0, 4),
    # EndTxn 0-4 and TxnOffsetCommit 0-4: v5 are transactions v2 (KIP-890 part 2: an epoch
    # bump per transaction, implicit AddOffsetsToTxn), which we do not advertise.
    ApiVersionRange(ApiKey.EndTxn, 0, 4),
    ApiVersionRange(ApiKey.TxnOffsetCommit, 0, 4),
    ApiVersionRange(ApiKey.DescribeProducers, 0, 0),
    ApiVersionRange(ApiKey.DescribeTransactions, 0, 0),
    # ListTransactions 0: v1 adds a duration filter (no start times kept), v2 an id pattern.
    ApiVersionRange(ApiKey.ListTransactions, 0, 0),
)
"""api_key -> served version range; read-only, ordered by api key."""


def version_range(
    api_key: int, apis: Mapping[int, ApiVersionRange] = SUPPORTED_APIS
) -> ApiVersionRange | None:
    """The served range for ``api_key``, or None if the API is not implemented."""
    return apis.get(api_key)


def is_supported(
    api_key: int, api_version: int, apis: Mapping[int, ApiVersionRange] = SUPPORTED_APIS
) -> bool:
    """True if ``api_key`` is implemented at ``api_version``."""
    served = apis.get(api_key)
    return served is not None and api_version in served
