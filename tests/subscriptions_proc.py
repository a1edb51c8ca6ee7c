"""Helper process for the cursor SIGKILL test: consume, ack, report what is durable.

Usage: ``python tests/subscriptions_proc.py DATA_DIR``

Opens ``file://DATA_DIR`` and the core, subscribes ``s`` (Shared, from the
earliest offset) to topic ``t`` (created with its messages by the test) and
receives every message.  It acks every message whose offset is not a multiple
of ``SKIP`` (those stay unacknowledged) and writes to stdout, flushed:

* ``ack P O`` right after acking offset ``O`` of partition ``P`` (made, not yet
  durable: it may be redelivered after a crash);
* ``flushed`` after ``await core.subscriptions.flush()`` returned: every ack
  reported before this line is durable (see :mod:`core.subscriptions`).

It flushes after every ``FLUSH_EVERY`` acks, prints ``done`` when the backlog is
consumed and then waits to be killed (at most ``MAX_SECONDS``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import trio  # noqa: E402

from core.api import open_core  # noqa: E402
from core.config import CoreSettings  # noqa: E402
from core.subscriptions import InitialPosition, SubscriptionType  # noqa: E402
from storage import open_storage  # noqa: E402

TOPIC = "t"
SUBSCRIPTION = "s"
SKIP = 4
FLUSH_EVERY = 5
MAX_SECONDS = 60


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(data_dir: str) -> None:
    settings = CoreSettings(retention_check_interval_ms=0)
    with trio.move_on_after(MAX_SECONDS):
        async with open_storage(f"file://{data_dir}") as storage, open_core(
            storage, settings
        ) as core:
            subs = core.subscriptions
            consumer = await subs.subscribe(
                TOPIC, SUBSCRIPTION, SubscriptionType.SHARED,
                initial_position=InitialPosition.EARLIEST,
            )
            (info,) = await subs.list_subscriptions(TOPIC)
            consumer.flow(100)
            unflushed = 0
            for _ in range(info.backlog):
                d = await consumer.receive()
                consumer.flow(1)
                if d.offset % SKIP == 0:
                    continue
                consumer.ack(d.partition, d.offset)
                say(f"ack {d.partition} {d.offset}")
                unflushed += 1
                if unflushed == FLUSH_EVERY:
                    await subs.flush()
                    say("flushed")
                    unflushed = 0
            say("done")
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
