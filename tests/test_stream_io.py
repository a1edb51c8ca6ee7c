"""core.stream_io: reads and writes on a real socket pair behave as the trio stream's would."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from core.stream_io import YIELD_EVERY, SocketIO, socket_io


async def stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_only_plain_socket_streams_get_one() -> None:
    left, right = await stream_pair()
    assert isinstance(socket_io(left), SocketIO)
    memory, _ = trio.testing.memory_stream_pair()
    assert socket_io(memory) is None
    await left.aclose()
    await right.aclose()


async def test_receive_waits_for_data_and_sees_the_end() -> None:
    left, right = await stream_pair()
    io = SocketIO(left)
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def read() -> None:
            got.append(await io.receive(1024))

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing sent yet: waiting
        await right.send_all(b"hello")
    assert got == [b"hello"]
    await right.send_all(b"more")
    assert await io.receive(2) == b"mo"
    assert await io.receive(1024) == b"re"
    await right.aclose()
    assert await io.receive(1024) == b""
    await left.aclose()


async def test_a_cancelled_wait_loses_nothing() -> None:
    left, right = await stream_pair()
    io = SocketIO(left)
    with trio.move_on_after(0.01):
        await io.receive(1024)
    await right.send_all(b"kept")
    assert await io.receive(1024) == b"kept"
    await left.aclose()
    await right.aclose()


async def test_send_all_waits_for_room_and_keeps_the_order() -> None:
    left, right = await stream_pair()
    io = SocketIO(left)
    data = bytes(range(256)) * 16 * 1024  # 4 MiB: far more than the socket buffers hold
    expected = data + b"ail"
    received = bytearray()

    async def drain() -> None:
        while len(received) < len(expected):
            chunk = await right.receive_some(65536)
            assert chunk
            received.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await io.send_all(data)
        await io.send_all(memoryview(b"tail")[1:])
    assert bytes(received) == expected
    await left.aclose()
    await right.aclose()


async def test_a_reader_fed_without_pause_still_lets_others_run() -> None:
    a, b = socket.socketpair()
    left = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    io = SocketIO(left)
    ran = 0

    async def other() -> None:
        nonlocal ran
        while True:
            ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        before = ran
        b.sendall(b"x" * (YIELD_EVERY * 3 + 1))  # a plain socket: sending never yields
        for _ in range(YIELD_EVERY * 3):
            # each read finds what it asks for: never short, so it never waits
            assert await io.receive(1) == b"x"
        assert ran > before
        nursery.cancel_scope.cancel()
    await left.aclose()
    b.close()


async def test_errors_are_the_stream_errors() -> None:
    left, right = await stream_pair()
    io = SocketIO(left)
    await right.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the first writes may still be accepted
            await io.send_all(b"x" * 65536)
    await left.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await io.receive(10)
    with pytest.raises(trio.ClosedResourceError):
        await io.send_all(b"x")
