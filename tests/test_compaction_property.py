"""Property: the compacted view equals a model dict built from the full log.

Each example appends random batches of keyed, keyless, empty and null (tombstone)
records, runs compactions at random points (with small batches, so views span many
entries), moves the broker clock past the tombstone retention now and then, and
restarts the core on the file backend.  After every step:

* ``latest_by_key`` equals the model: each key's last record unless it is a tombstone;
* folding every record read through ``read_compacted`` (in offset order, offsets
  strictly increasing) gives the same dict, and each record read is the record the
  log holds at that offset;
* below the horizon the view holds only each key's last record before the horizon:
  all of them except tombstones older than the retention at the last run, which
  may or may not be gone yet.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.api import Core, open_core
from core.compacted_view import latest_by_key, read_compacted
from core.compaction import CompactionSettings, compact_now, compactor_for, configure_compaction
from core.config import CoreSettings
from core.names import TopicName
from core.records import Message, decode_batch
from storage.local import open_local_storage

T0 = 1_700_000_000_000
RETENTION = 1000
NAME = TopicName("public", "default", "t")
COMPACTION = CompactionSettings(batch_records=3, append_entries=2, read_bytes=300,
                                tombstone_retention_ms=RETENTION)

values = st.one_of(st.none(), st.just(b""), st.binary(min_size=1, max_size=4))
keys = st.one_of(st.none(), st.sampled_from([b"a", b"b", b"c", b"d", b"e"]))
batch_op = st.tuples(st.just("batch"), st.lists(st.tuples(keys, values), min_size=1, max_size=4))
ops = st.lists(
    st.one_of(batch_op, batch_op, batch_op,
              st.tuples(st.just("compact"), st.just([])),
              st.tuples(st.just("compact"), st.just([])),
              st.tuples(st.just("advance"), st.just([])),
              st.tuples(st.just("restart"), st.just([]))),
    min_size=1, max_size=16,
)

Rec = tuple[bytes | None, bytes | None]


@dataclass
class Model:
    clock: int = T0
    log: list[tuple[bytes | None, bytes | None, int]] = field(default_factory=list)
    last_run_now: int = T0

    def latest(self, end: int | None = None) -> dict[bytes, tuple[int, bytes | None, int]]:
        out: dict[bytes, tuple[int, bytes | None, int]] = {}
        for offset, (key, value, ts) in enumerate(self.log[:end]):
            if key is not None:
                out[key] = (offset, value, ts)
        return out

    def view(self) -> dict[bytes, bytes]:
        return {k: v for k, (_, v, _) in self.latest().items() if v is not None}


async def check(core: Core, model: Model) -> None:
    snapshot = await latest_by_key(core, "t", 0)
    assert {k: r.message.value for k, r in snapshot.items()} == model.view()
    assert all(model.log[r.offset][0] == k for k, r in snapshot.items())
    hw = await core.latest_offset("t", 0)
    assert hw == len(model.log)
    horizon = (await compactor_for(core).view(NAME, 0)).state.horizon
    folded: dict[bytes, bytes | None] = {}
    below: set[int] = set()
    last = -1
    offset = 0
    while offset < hw:
        entries = await read_compacted(core, "t", 0, offset, 200)
        assert entries
        for entry in entries:
            for r in decode_batch(entry.batch):
                if r.offset < offset:
                    continue
                assert r.offset > last
                last = r.offset
                key, value, _ = model.log[r.offset]
                assert (r.message.key, r.message.value) == (key, value)
                if r.offset < horizon:
                    below.add(r.offset)
                if key is not None:
                    folded[key] = value
            offset = entry.last_offset + 1
    assert {k: v for k, v in folded.items() if v is not None} == model.view()
    latest = model.latest(horizon).values()
    # values and young tombstones must be there; old tombstones may linger (batch age)
    must = {o for o, v, ts in latest if v is not None or ts >= model.last_run_now - RETENTION}
    assert must <= below <= {o for o, _, _ in latest}


async def run_ops(path: str, steps: list[tuple[str, list[Rec]]]) -> None:
    model = Model()
    first = True
    while True:
        async with (
            open_local_storage(path, segment_bytes=600) as storage,
            open_core(storage, CoreSettings(retention_check_interval_ms=0),
                      clock_ms=lambda: model.clock) as core,
        ):
            configure_compaction(core, COMPACTION)
            if first:
                await core.create_topic("t")
                first = False
            await check(core, model)
            while steps:
                op, records = steps.pop(0)
                if op == "restart":
                    break
                if op == "advance":
                    model.clock += RETENTION // 2 + 1
                elif op == "compact":
                    (result,) = await compact_now(core, "t", 0)
                    if result.compacted:
                        model.last_run_now = model.clock
                else:
                    await core.append_messages(
                        "t", 0, [Message(k, v, [], model.clock) for k, v in records])
                    model.log.extend((k, v, model.clock) for k, v in records)
                await check(core, model)
            else:
                return


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_compacted_view_equals_the_model(steps: list[tuple[str, list[Rec]]]) -> None:
    with tempfile.TemporaryDirectory() as path:
        trio.run(run_ops, path, list(steps))
