"""Record codec benchmark: ``core.records`` against kafka-python's record classes.

Run: ``python bench/records_bench.py [--records N] [--repeat R]``  (a few seconds)

For 500-record batches (by default) whose messages carry a 16-byte key, two
headers and a 16 B or 1 KiB value, it times encoding (``build_batch`` against
kafka-python's ``DefaultRecordBatchBuilder``) and decoding (``decode_batch``
against iterating kafka-python's ``DefaultRecordBatch`` into the same
``StoredMessage`` objects, which is what ``core.records`` did before it had its
own codec), uncompressed and with lz4.  Printed: microseconds per record, the
best of ``R`` runs, and the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kafka.record.default_records import (  # noqa: E402
    DefaultRecordBatch,
    DefaultRecordBatchBuilder,
)

from core.batch import CONTROL_MASK  # noqa: E402
from core.records import (  # noqa: E402
    CODEC_LZ4,
    CODEC_NONE,
    Message,
    StoredMessage,
    build_batch,
    decode_batch,
)


def kafka_python_build(messages: list[Message], compression: int) -> bytes:
    """The encoder ``core.records`` used before (kafka-python's builder)."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=compression, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=2**31 - 1,
    )
    for i, msg in enumerate(messages):
        builder.append(i, msg.timestamp_ms, msg.key, msg.value, list(msg.headers))
    return bytes(builder.build())


def kafka_python_decode(batch: bytes) -> list[StoredMessage]:
    """The decoder ``core.records`` used before (kafka-python's batch iterator)."""
    parsed = DefaultRecordBatch(batch)
    control = bool(parsed.attributes & CONTROL_MASK)
    out = []
    for record in parsed:
        headers = [(k, v if v is not None else b"") for k, v in record.headers]
        msg = Message(record.key, record.value, headers, record.timestamp)
        out.append(StoredMessage(record.offset, msg, control))
    return out


def best_us_per_record(fn: Callable[[], object], records: int, repeat: int) -> float:
    """Best wall-clock time of ``repeat`` calls of ``fn``, in µs per record."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e6 / records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    n: int = args.records
    print(f"{n}-record batches, best of {args.repeat}, µs per record")
    print(f"{'case':<28}{'kafka-python':>14}{'core.records':>14}{'speed-up':>10}")
    for size in (16, 1024):
        messages = [
            Message(
                f"key-{i:012d}".encode(),
                bytes([i % 251]) * size,
                [("content-type", b"application/octet-stream"), ("seq", str(i).encode())],
                1_700_000_000_000 + i,
            )
            for i in range(n)
        ]
        for codec, codec_name in ((CODEC_NONE, "none"), (CODEC_LZ4, "lz4")):
            batch = build_batch(messages, codec)
            assert batch == kafka_python_build(messages, codec) or codec != CODEC_NONE
            cases = (
                ("encode", lambda m=messages, c=codec: kafka_python_build(m, c),
                 lambda m=messages, c=codec: build_batch(m, c)),
                ("decode", lambda b=batch: kafka_python_decode(b),
                 lambda b=batch: decode_batch(b)),
            )
            for verb, before, after in cases:
                old = best_us_per_record(before, n, args.repeat)
                new = best_us_per_record(after, n, args.repeat)
                label = f"{verb} {size} B value, {codec_name}"
                print(f"{label:<28}{old:>14.2f}{new:>14.2f}{old / new:>9.1f}x")


if __name__ == "__main__":
    main()
