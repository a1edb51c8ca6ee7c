"""The memory metadata store applies a key's writes in the order they were called."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import outcome

from storage.memory import MemoryMetadataStore


class Stepped:
    """A write stepped by hand: :meth:`pause` runs it up to its checkpoint (where another task
    could run), :meth:`finish` resumes it as the scheduler would."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro

    def pause(self) -> None:
        self.coro.send(None)

    def finish(self) -> object:
        try:
            self.coro.send(outcome.Value(None))
        except StopIteration as done:
            return done.value
        raise AssertionError("the write yielded twice")


async def test_a_coalesced_write_made_during_a_put_wins() -> None:
    store = MemoryMetadataStore()
    put = Stepped(store.put("k", b"older"))
    put.pause()
    store.put_coalesced("k", b"newer")  # while the put waits in its checkpoint
    put.finish()
    got = await store.get("k")
    assert got is not None and got.value == b"newer"


async def test_a_coalesced_write_made_during_a_delete_wins() -> None:
    store = MemoryMetadataStore()
    await store.put("k", b"first")
    delete = Stepped(store.delete("k"))
    delete.pause()
    store.put_coalesced("k", b"after the delete")
    assert delete.finish() is True
    got = await store.get("k")
    assert got is not None and got.value == b"after the delete"
