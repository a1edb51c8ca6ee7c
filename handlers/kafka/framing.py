"""Server-side Kafka request framing, h11-style (sans-IO: bytes in, request events out).

Usage by a session::

    conn = KafkaServerConnection(max_request_size=config.max_request_size)
    while True:
        data = await stream.receive_some()
        conn.receive_data(data)          # b"" means the peer closed
        while (event := conn.next_request()) is not None:
            ...                           # KafkaRequest or UnsupportedApiVersionsRequest
        if conn.closed:
            break

How it works: every Kafka request is ``size:int32`` followed by ``size`` bytes.  Received
chunks are kept as a queue of read-only views, not copied into one growing buffer.  When 4
bytes are available the size is read and checked at once -- a negative or oversized frame
raises :class:`~handlers.kafka.errors.FrameSizeError` before any of its body is buffered.  When
the whole body has arrived it is handed over as one buffer (a view of the chunk, without
copying, if it arrived within one chunk; otherwise one join of the pieces) and decoded by
:func:`handlers.kafka.codec.decode_request`; record batches in a Produce body are slices of it.

Errors are sticky: after a :class:`~handlers.kafka.errors.KafkaCodecError` the byte stream is
out of sync (or the request is refused, as Kafka does by closing) and every further call
raises the same error.  Only ``UnsupportedApiVersionsRequest`` is an event, not an error,
because Kafka answers it.

Bounds: an incomplete frame never exceeds ``max_request_size + 4`` bytes.  Complete frames are
only held until ``next_request`` is called; a session must drain ``next_request`` after each
``receive_data`` (it should also stop reading while it processes a request, as Kafka does).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Mapping

from handlers.kafka.apis import SUPPORTED_APIS, ApiVersionRange
from handlers.kafka.codec import KafkaRequest, UnsupportedApiVersionsRequest, decode_request
from handlers.kafka.errors import FrameSizeError, KafkaCodecError, TruncatedFrameError

__all__ = ["DEFAULT_MAX_REQUEST_SIZE", "KafkaServerConnection", "RequestEvent", "frame"]

DEFAULT_MAX_REQUEST_SIZE = 100 * 1024 * 1024
"""Kafka's default ``socket.request.max.bytes`` (104857600)."""

_SIZE = struct.Struct(">i")

RequestEvent = KafkaRequest | UnsupportedApiVersionsRequest


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Prefix ``payload`` with its int32 size (a test and client helper)."""
    return _SIZE.pack(len(payload)) + bytes(payload)


class KafkaServerConnection:
    """The receiving half of one Kafka connection, as seen by the broker."""

    def __init__(
        self,
        *,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        apis: Mapping[int, ApiVersionRange] = SUPPORTED_APIS,
    ) -> None:
        if not 0 < max_request_size <= 0x7FFFFFFF:
            raise ValueError(f"max_request_size must be in 1..2**31-1, got {max_request_size}")
        self.max_request_size = max_request_size
        self._apis = apis
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._frame_size: int | None = None  # size of the frame being received, once known
        self._eof = False
        self._error: KafkaCodecError | None = None

    @property
    def closed(self) -> bool:
        """True once the peer has closed and every complete request has been returned."""
        return self._eof and self._buffered == 0 and self._frame_size is None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as requests (excluding consumed size prefixes)."""
        return self._buffered

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer closed the stream.

        Mutable buffers are copied; ``bytes`` are kept by reference.
        """
        if self._eof:
            raise RuntimeError("receive_data() after end of stream")
        if not data:
            self._eof = True
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        self._chunks.append(memoryview(data))
        self._buffered += len(data)

    def next_request(self) -> RequestEvent | None:
        """The next decoded request, or None if more data is needed (or the stream ended).

        Raises FrameSizeError, TruncatedFrameError, MalformedRequestError,
        UnsupportedApiKeyError or UnsupportedVersionError (see the module docstring).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except KafkaCodecError as exc:
            self._error = exc
            raise

    def _next(self) -> RequestEvent | None:
        if self._frame_size is None:
            if self._buffered < _SIZE.size:
                self._check_eof()
                return None
            (size,) = _SIZE.unpack(self._take(_SIZE.size))
            if not 0 <= size <= self.max_request_size:
                raise FrameSizeError(size, self.max_request_size)
            self._frame_size = size
        if self._buffered < self._frame_size:
            self._check_eof()
            return None
        payload = self._take(self._frame_size)
        self._frame_size = None
        return decode_request(payload, self._apis)

    def _check_eof(self) -> None:
        if self._eof and (self._buffered or self._frame_size is not None):
            raise TruncatedFrameError(self._buffered)

    def _take(self, n: int) -> bytes | memoryview:
        """Remove and return the first ``n`` buffered bytes (``n <= self._buffered``).

        Bytes that lie within one received chunk are returned as a read-only view of it (or the
        chunk itself); only bytes spread over several chunks are joined, with one copy.
        """
        if n == 0:
            return b""
        self._buffered -= n
        head = self._chunks[0]
        if len(head) >= n:
            if len(head) == n:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[n:]
            if head.obj.__class__ is bytes and len(head.obj) == n:
                return head.obj
            return head[:n]
        parts: list[memoryview] = []
        while n:
            head = self._chunks[0]
            if len(head) <= n:
                parts.append(self._chunks.popleft())
                n -= len(head)
            else:
                parts.append(head[:n])
                self._chunks[0] = head[n:]
                n = 0
        return b"".join(parts)
