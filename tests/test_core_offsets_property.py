"""Property: offsets stay contiguous and monotonic across appends, restarts and retention.

Each example drives a core on the embedded file backend (tiny segments, so
retention really drops data) through a random mix of appends, restarts (core
and storage closed and reopened on the same directory) and retention passes,
checking after every step that:

* each append gets the offsets right after the previous one;
* ``latest_offset`` equals the number of records ever appended;
* reading from ``earliest_offset`` returns batches that tile
  ``[earliest, latest)`` with no gap or overlap, and every record's value
  still names the offset it was given.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.api import Core, open_core
from core.config import CoreSettings
from core.records import Message, decode_batch
from storage.local import open_local_storage

T0 = 1_700_000_000_000
SETTINGS = CoreSettings(retention_check_interval_ms=0, retention_ms=1000)

append_op = st.tuples(st.just("append"), st.lists(st.integers(1, 4), min_size=1, max_size=3))
ops = st.lists(
    st.one_of(
        append_op,
        append_op,
        st.tuples(st.just("restart"), st.just([])),
        st.tuples(st.just("retention"), st.just([])),
    ),
    min_size=1,
    max_size=14,
)


@dataclass
class Model:
    next_offset: int = 0
    clock: int = T0
    dropped: int = 0


def batch_bytes(first: int, count: int, ts: int) -> bytes:
    from core.records import build_batch

    return build_batch([Message(None, str(first + i).encode(), [], ts) for i in range(count)])


async def check(core: Core, model: Model) -> None:
    latest = await core.latest_offset("t", 0)
    earliest = await core.earliest_offset("t", 0)
    assert latest == model.next_offset
    assert 0 <= earliest <= latest
    offset = earliest
    while offset < latest:
        entries = await core.read("t", 0, offset, 700)
        assert entries
        for entry in entries:
            assert entry.base_offset == offset  # no gap, no overlap
            assert entry.last_offset >= entry.base_offset
            records = decode_batch(entry.batch)
            assert [r.offset for r in records] == list(range(entry.base_offset,
                                                             entry.last_offset + 1))
            assert [r.message.value for r in records] == [
                str(r.offset).encode() for r in records
            ]
            offset = entry.last_offset + 1
    assert offset == latest


async def run_ops(path: str, steps: list[tuple[str, list[int]]]) -> Model:
    model = Model()
    restarts = 0
    while True:
        async with (
            open_local_storage(path, segment_bytes=400) as storage,
            open_core(storage, SETTINGS, clock_ms=lambda: model.clock) as core,
        ):
            if restarts == 0:
                await core.create_topic("t")
            await check(core, model)
            while steps:
                op, counts = steps.pop(0)
                if op == "restart":
                    break
                if op == "retention":
                    model.clock += 5000
                    model.dropped += await core.apply_retention()
                else:
                    data = b""
                    first = model.next_offset
                    for count in counts:
                        data += batch_bytes(model.next_offset, count, model.clock)
                        model.next_offset += count
                    result = await core.append("t", 0, data)
                    assert (result.base_offset, result.last_offset) == (
                        first, model.next_offset - 1
                    )
                await check(core, model)
            else:
                return model
        restarts += 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_offsets_contiguous_across_restarts_and_retention(
    steps: list[tuple[str, list[int]]],
) -> None:
    with tempfile.TemporaryDirectory() as path:
        trio.run(run_ops, path, list(steps))


def test_retention_then_restart_keeps_counting() -> None:
    steps = [("append", [4, 4])] * 12 + [("retention", []), ("restart", []), ("append", [1])]
    with tempfile.TemporaryDirectory() as path:
        model = trio.run(run_ops, path, steps)
    assert model.dropped > 0
    assert model.next_offset == 97
