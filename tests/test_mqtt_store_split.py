"""A run of publishes too big for one record batch is stored in a few appends, not one each."""

from __future__ import annotations

from typing import Any

import trio

from core.api import open_core
from core.config import CoreSettings
from core.errors import MessageTooLarge
from core.handler import HandlerContext
from core.names import TopicName
from core.records import decode_batch
from handlers.mqtt import Publish
from handlers.mqtt.handler import MqttHandler, StoredAt
from storage import open_storage


async def test_a_run_over_the_batch_limit_is_split_in_halves() -> None:
    settings = CoreSettings(retention_check_interval_ms=0, max_message_bytes=8192)
    async with (
        open_storage("memory://") as storage,
        open_core(storage, settings) as core,
        trio.open_nursery() as nursery,
    ):
        handler = MqttHandler()
        await handler.start(HandlerContext(core, {"allow_anonymous": True}, nursery, [],
                                           trio.Event()))
        ctx = handler.context
        assert ctx is not None
        appends = 0
        real = core.append_messages

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal appends
            result = await real(*args, **kwargs)
            appends += 1  # appends that stored something
            return result

        core.append_messages = counting  # type: ignore[method-assign]
        payloads = [bytes([i]) * 1000 for i in range(32)] + [b"x" * 9000] + [b"tail" * 10]
        publishes = [Publish(f"big/{i}", p, qos=1, packet_id=i + 1)
                     for i, p in enumerate(payloads)]
        results = await ctx.store_many(publishes)
        stored = [r for r in results if isinstance(r, StoredAt)]
        assert len(stored) == 33
        assert isinstance(results[32], MessageTooLarge)  # too big alone: only it fails
        offsets = [r.offset for r in stored]
        assert offsets == sorted(offsets) and len(set(offsets)) == 33  # in order, once each
        assert appends <= 12  # ~7 messages per batch; one append per message would be 33
        values = [m.message.value for m in await _read_all(core, "big")]
        assert values == [p for p in payloads if len(p) < 9000]
        await handler.close()
        nursery.cancel_scope.cancel()


async def _read_all(core: Any, topic: str) -> list[Any]:
    name = TopicName.parse(f"persistent://public/default/{topic}")
    out: list[Any] = []
    offset = 0
    while True:
        entries = await core.read(name, 0, offset, 1 << 20)
        if not entries:
            return out
        for entry in entries:
            out.extend(decode_batch(entry.batch))
        offset = entries[-1].last_offset + 1
