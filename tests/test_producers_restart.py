"""Dedup state and producer ids survive restart: clean close, lost snapshot, kill -9."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import ServerFactory
from test_kafka_service import (
    WireClient,
    decode_response,
    fetch_body,
    make_request,
    partitions_of,
    produce_body,
    records_of,
)

from core.api import open_core
from core.config import CoreSettings
from core.dedup import OutOfOrderSequence
from core.names import TopicName
from core.producers import state_key
from core.records import Message, build_batch, decode_batch
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.errors import ErrorCode
from storage import open_storage

T0 = 1_700_000_000_000
SETTINGS = CoreSettings(retention_check_interval_ms=0)
TIMEOUT_S = 20.0


def pbatch(pid: int, epoch: int, seq: int, *values: bytes) -> bytes:
    return build_batch([Message(b"k", v, timestamp_ms=T0) for v in values],
                       producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def log_name() -> str:
    return TopicName("public", "default", "t").log_name(0)


async def stored_values(url: str) -> list[bytes | None]:
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        entries = await core.read("t", 0, 0, 1 << 20)
        return [m.message.value for e in entries for m in decode_batch(e.batch)]


@pytest.mark.parametrize("lose_snapshot", [False, True])
async def test_retry_after_restart_is_deduplicated(tmp_path: Path, lose_snapshot: bool) -> None:
    url = f"file://{tmp_path}"
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        await core.create_topic("t")
        pid = await core.allocate_producer_id()
        await core.append("t", 0, pbatch(pid, 0, 0, b"a"))
        first = await core.append("t", 0, pbatch(pid, 0, 1, b"b", b"c"))
    if lose_snapshot:  # as after kill -9 before the coalesced snapshot was written
        async with open_storage(url) as storage:
            assert await storage.metadata.delete(state_key(log_name()))
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        retry = await core.append("t", 0, pbatch(pid, 0, 1, b"b", b"c"))
        assert (retry.base_offset, retry.last_offset) == (first.base_offset, first.last_offset)
        with pytest.raises(OutOfOrderSequence):
            await core.append("t", 0, pbatch(pid, 0, 5, b"gap"))
        assert (await core.append("t", 0, pbatch(pid, 0, 3, b"d"))).base_offset == 3
        assert await core.allocate_producer_id() > pid
    assert await stored_values(url) == [b"a", b"b", b"c", b"d"]


async def test_a_snapshot_ahead_of_the_log_is_cut_back(tmp_path: Path) -> None:
    """A log that lost its unsynced tail must not keep dedup entries for the lost batches."""
    url = f"file://{tmp_path}"
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        await core.create_topic("t")
        await core.append("t", 0, pbatch(5, 0, 0, b"a"))
        partition = (await core._topic("t")).partitions[0]
        # pretend batch seq 1 reached the snapshot at offset 2 but never the log
        partition.dedup.record(5, 0, 1, 1, 1, T0)
        snapshot = partition.dedup.snapshot(2)
    async with open_storage(url) as storage:
        await storage.metadata.put(state_key(log_name()), snapshot)
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        retry = await core.append("t", 0, pbatch(5, 0, 1, b"b"))
        assert retry.base_offset == 1  # written, not answered from the stale snapshot
    assert await stored_values(url) == [b"a", b"b"]


async def test_snapshots_are_taken_every_n_appends(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        core.producer_states.snapshot_every = 3
        await core.create_topic("t")
        for seq in range(4):
            await core.append("t", 0, pbatch(5, 0, seq, b"%d" % seq))
        await storage.metadata.flush()
        record = await storage.metadata.get(state_key(log_name()))
        assert record is not None
        assert b'"offset":3' in record.value  # taken after the 3rd append, not the 4th


async def test_deleting_a_topic_forgets_its_producer_state(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        await core.create_topic("t")
        await core.append("t", 0, pbatch(5, 0, 0, b"a"))
        await core.delete_topic("t")
        await core.create_topic("t")
        assert (await core.append("t", 0, pbatch(5, 0, 0, b"a again"))).base_offset == 0
        await core.delete_topic("t")
        await storage.metadata.flush()
        assert await storage.metadata.get(state_key(log_name())) is None


# -- kill -9 of a real server between the write and the retry ------------------------------------


async def init_producer_id(client: WireClient) -> int:
    cls = registry.request_class(ApiKey.InitProducerId, 4)
    response: Any = await client.call(ApiKey.InitProducerId, 4,
                                      cls(transactional_id=None, transaction_timeout_ms=60000,
                                          producer_id=-1, producer_epoch=-1))
    assert response.error_code == ErrorCode.NONE
    return int(response.producer_id)


async def produce(client: WireClient, frame_payload: bytes) -> Any:
    await client.send(frame_payload)
    payload = await client.read_frame()
    assert payload is not None
    _, response = decode_response(ApiKey.Produce, 7, payload)
    (part,) = partitions_of(response)
    return part


@pytest.mark.slow
async def test_retry_after_sigkill_is_not_written_twice(polystream_server: ServerFactory,
                                                        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = await polystream_server.start_async("kafka", data_dir=data_dir, log_level="info")
    with trio.fail_after(TIMEOUT_S):
        client = WireClient(await trio.open_tcp_stream(*server.address("kafka")))
        pid = await init_producer_id(client)
        first = make_request(ApiKey.Produce, 7, produce_body(
            "idem", {0: pbatch(pid, 0, 0, b"one", b"two")}), correlation_id=7)
        written = await produce(client, first)
        assert (written.error_code, written.base_offset) == (ErrorCode.NONE, 0)
        await client.stream.aclose()
    await trio.to_thread.run_sync(server.kill)  # SIGKILL: no snapshot flush, no shutdown

    restarted = await polystream_server.start_async("kafka", data_dir=data_dir,
                                                    log_level="info")
    with trio.fail_after(TIMEOUT_S):
        client = WireClient(await trio.open_tcp_stream(*restarted.address("kafka")))
        retried = await produce(client, first)  # the very same frame, sent again
        assert (retried.error_code, retried.base_offset) == (ErrorCode.NONE, 0)
        after = make_request(ApiKey.Produce, 7, produce_body(
            "idem", {0: pbatch(pid, 0, 2, b"three")}), correlation_id=8)
        assert (await produce(client, after)).base_offset == 2
        assert await init_producer_id(client) > pid  # ids are not reused after a restart
        fetched = await client.call(ApiKey.Fetch, 11, fetch_body([("idem", 0, 0)]), 9)
        (part,) = partitions_of(fetched)
        assert records_of(part.records) == [(0, b"one"), (1, b"two"), (2, b"three")]
        await client.stream.aclose()
