"""Hypothesis: READ_COMMITTED never returns aborted or still-open data, over random
interleavings of transactional produce, plain produce, commit, abort and reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from txn_checker import committed_values, open_test_core

from core.records import Message
from core.transactions import TxnId
from storage.memory import open_memory_storage

SLOTS = 3
PARTITIONS = 2

#: (kind, transaction slot, partition, commit?)
Op = tuple[str, int, int, bool]
op = st.tuples(st.sampled_from(["begin", "write", "plain", "end", "read"]),
               st.integers(0, SLOTS - 1), st.integers(0, PARTITIONS - 1), st.booleans())


@dataclass
class Model:
    records: list[list[tuple[int, bytes, int | None]]] = field(
        default_factory=lambda: [[] for _ in range(PARTITIONS)])  # (offset, value, txn key)
    status: dict[int, str] = field(default_factory=dict)  # txn key -> open|committed|aborted
    hw: list[int] = field(default_factory=lambda: [0] * PARTITIONS)

    def lso(self, p: int) -> int:
        firsts = [o for o, _, k in self.records[p] if k is not None and self.status[k] == "open"]
        return min(firsts, default=self.hw[p])

    def visible(self, p: int) -> list[tuple[int, bytes]]:
        lso = self.lso(p)
        return [(o, v) for o, v, k in self.records[p]
                if o < lso and (k is None or self.status[k] == "committed")]


async def scenario(ops: list[Op]) -> None:
    async with open_memory_storage() as storage, open_test_core(storage) as core:
        await core.create_topic("t", partitions=PARTITIONS)
        txns = core.transactions
        model = Model()
        slots: dict[int, tuple[TxnId, int]] = {}

        async def check(p: int) -> None:
            got = await committed_values(core, "t", p)
            assert got == model.visible(p)
            assert await txns.last_stable_offset("t", p) == model.lso(p)
            for _, value in got:  # never aborted, never open
                assert value is not None
                if value.startswith(b"txn-"):
                    assert model.status[int(value.split(b"-")[1])] == "committed"

        def ended(key: int, status: str) -> None:
            model.status[key] = status
            for p in range(PARTITIONS):  # a marker took an offset where data was written
                if any(k == key for _, _, k in model.records[p]):
                    model.hw[p] += 1

        for step, (kind, slot, p, commit) in enumerate(ops):
            if kind == "begin" and slot not in slots:
                slots[slot] = (await txns.begin(), step)
                model.status[step] = "open"
            elif kind == "write" and slot in slots:
                txn, key = slots[slot]
                await txns.add_partitions(txn, [("t", p)])
                value = b"txn-%d-%d" % (key, step)
                r = await txns.append_messages(txn, "t", p, [Message(None, value)])
                model.records[p].append((r.base_offset, value, key))
                model.hw[p] = r.last_offset + 1
            elif kind == "plain":
                value = b"plain-%d" % step
                r = await core.append_messages("t", p, [Message(None, value)])
                model.records[p].append((r.base_offset, value, None))
                model.hw[p] = r.last_offset + 1
            elif kind == "end" and slot in slots:
                txn, key = slots.pop(slot)
                await txns.end(txn, commit)
                ended(key, "committed" if commit else "aborted")
            elif kind == "read":
                await check(p)
        for txn, key in slots.values():
            await txns.end(txn, commit=False)
            ended(key, "aborted")
        for p in range(PARTITIONS):
            await check(p)
            assert model.lso(p) == await core.latest_offset("t", p)


@settings(max_examples=60, deadline=None)
@given(st.lists(op, max_size=40))
def test_read_committed_matches_the_model(ops: list[Op]) -> None:
    trio.run(scenario, ops)
