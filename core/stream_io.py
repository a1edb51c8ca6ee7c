"""Cheaper reads and writes on a connection's socket, for a handler's busiest loops.

How it works
------------
``trio.SocketStream.receive_some`` and ``send_all`` are general: each call enters a conflict
detector and an error-translation context, checks for cancellation, and yields to the scheduler
even when the socket had data or room at once.  At a few thousand small packets a second those
fixed costs are most of what a connection's reader and writer spend (each scheduler round is
several microseconds in CPython).  :class:`SocketIO` does the same work with ``os.read`` and
``os.write`` on the socket's file descriptor, waits with :func:`trio.lowlevel.wait_readable` /
:func:`~trio.lowlevel.wait_writable` only when the socket has nothing to give or no room, and
raises the errors ``SocketStream`` raises (:class:`trio.BrokenResourceError` for a broken
connection, :class:`trio.ClosedResourceError` once the stream is closed).

It does not yield when it did not have to wait: the caller must reach a checkpoint regularly
(:meth:`SocketIO.receive` yields on its own after :data:`YIELD_EVERY` calls in a row that did not
wait, so a reader fed without pause cannot starve the other tasks, and stays cancellable).

:func:`socket_io` gives one for a plain ``trio.SocketStream`` and ``None`` for anything else
(a TLS stream, a test's memory stream): callers then keep using the stream itself.  The
descriptor is looked up through the trio socket at every call, so a stream closed meanwhile is
never read through a descriptor number the kernel has given to another connection.
"""

from __future__ import annotations

import errno
import os

import trio

__all__ = ["YIELD_EVERY", "SocketIO", "socket_io"]

#: calls to :meth:`SocketIO.receive` that found data at once before one yields anyway
YIELD_EVERY = 16

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable


class SocketIO:
    """Unbuffered reads and writes on the socket of a ``trio.SocketStream``.

    One task may read and one other task may write at a time (as with the stream itself).
    """

    __slots__ = ("_drained", "_sock", "_unyielded")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._sock = stream.socket
        self._unyielded = 0
        self._drained = False  # the last read took all there was

    def _fd(self) -> int:
        fd = self._sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the stream is closed")
        return fd

    async def receive(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at end of stream (like ``receive_some``).

        After a read that did not fill ``max_bytes`` the socket is most likely empty, so the
        next call waits for it first instead of trying a read that would fail.  A cancellation
        is only taken before reading (never after bytes were read, which would lose them):
        while waiting, and at the check every :data:`YIELD_EVERY` calls.
        """
        if self._drained:  # wait first: a read now would most likely find nothing
            self._unyielded = 0
            await _wait_readable(self._sock)
        else:
            self._unyielded += 1
            if self._unyielded >= YIELD_EVERY:
                self._unyielded = 0
                await trio.lowlevel.checkpoint_if_cancelled()
                await trio.lowlevel.cancel_shielded_checkpoint()
        while True:
            try:
                data = os.read(self._fd(), max_bytes)
            except BlockingIOError:
                self._unyielded = 0
                await _wait_readable(self._sock)
                continue
            except OSError as exc:
                raise _broken(exc) from exc
            self._drained = len(data) < max_bytes
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting for room as needed."""
        rest = data
        while True:
            try:
                sent = os.write(self._fd(), rest)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise _broken(exc) from exc
            if sent == len(rest):
                return
            rest = memoryview(rest)[sent:]
            await _wait_writable(self._sock)


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the stream is closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


def socket_io(stream: trio.abc.Stream) -> SocketIO | None:
    """A :class:`SocketIO` for a plain ``trio.SocketStream``; None for any other stream."""
    if type(stream) is trio.SocketStream:
        return SocketIO(stream)
    return None
