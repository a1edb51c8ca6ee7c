"""The trio session of one Kafka connection: bytes in -> framing -> services -> bytes out.

How it works
------------
Three kinds of task share one nursery per connection:

* the *reader* receives bytes, feeds :class:`~handlers.kafka.framing.KafkaServerConnection`
  and, for each decoded request, reserves a response slot in a bounded channel and starts a
  *request task* with ``nursery.start``;
* each *request task* runs the request's service (:func:`handlers.kafka.service.dispatch`)
  and fills its slot with the encoded response;
* the *writer* takes the slots in request order, waits for each to be filled and writes it.

So requests are pipelined -- a long-poll Fetch or a Produce waiting for its fsync does not hold
back the requests behind it -- while responses always go out in request order.  At most
``max_in_flight`` requests are in flight: when every slot is taken the reader stops reading the
socket and TCP flow control holds the client back.

Order of appends: ``nursery.start`` returns only once a request task reports that everything
order-sensitive is done (``task_status.started()``); a Produce reports it once its appends have
been given their offsets (see :mod:`handlers.kafka.service.produce`), other APIs at once.  So
the batches of pipelined Produce requests reach each partition in the order they were sent,
and still share the storage's group commit.

Errors: a codec error (oversized or malformed frame, an API or version we do not serve) stops
the reader after a log line; the requests before it are still answered, then the connection
closes.  :class:`~handlers.kafka.service.CloseConnection` from a service, or an unexpected
exception (logged with its traceback), closes the connection once the responses before it are
written.  Other connections are never affected.  ``UnsupportedApiVersionsRequest`` is
answered (``UNSUPPORTED_VERSION`` in the v0 format), as Kafka does.

SASL gate: on a listener with SASL on, the session holds a
:class:`~handlers.kafka.sasl.KafkaSaslServer`.  Until it is authenticated, requests are served
one at a time (the handshake decides how the next bytes are framed), only ApiVersions,
SaslHandshake and SaslAuthenticate are accepted (anything else closes the connection after a
log line, as Kafka does), and after a SaslHandshake v0 the reader takes raw token frames
(:class:`~handlers.kafka.sasl.RawTokenReader`) until the exchange is done.  A failed exchange
is logged with its reason and the connection closes after the error answer (v1) or at once
(v0).

When the broker begins stopping, the reader stops taking requests; the requests in flight
finish (a long-poll Fetch returns early), their responses are written, and the connection
closes.
"""

from __future__ import annotations

import logging

import trio

from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import (
    KafkaRequest,
    UnsupportedApiVersionsRequest,
    encode_response,
    encode_unsupported_api_versions,
)
from handlers.kafka.errors import KafkaCodecError, TruncatedFrameError
from handlers.kafka.framing import DEFAULT_MAX_REQUEST_SIZE, KafkaServerConnection, RequestEvent
from handlers.kafka.registry import spec
from handlers.kafka.sasl import KafkaSaslServer, RawTokenReader, SaslFailure, frame_token
from handlers.kafka.service import (
    NO_RESPONSE,
    CloseConnection,
    ServiceContext,
    dispatch,
    sasl_authenticate,
    sasl_handshake,
)
from handlers.kafka.service.fetch import FetchResponse

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "RECEIVE_SIZE", "KafkaSession"]

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 16
"""Requests a connection may have in flight (read but not yet answered)."""

RECEIVE_SIZE = 64 * 1024
"""Bytes asked for per ``receive_some``."""

_STREAM_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)
_SASL_APIS = frozenset({int(ApiKey.SaslHandshake), int(ApiKey.SaslAuthenticate)})


class _Slot:
    """The response to one request, filled in by its request task."""

    __slots__ = ("close", "done", "frame")

    def __init__(self) -> None:
        self.done = trio.Event()
        # None: nothing to send (Produce acks=0); a list: buffers of one frame (Fetch)
        self.frame: bytes | list[bytearray | bytes | memoryview] | None = None
        self.close = False  # close the connection after this request


class _StartGate:
    """Passes the first ``started()`` on to ``nursery.start``'s task status; ignores repeats."""

    __slots__ = ("_opened", "_status")

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status = status
        self._opened = False

    def started(self, value: None = None) -> None:
        if not self._opened:
            self._opened = True
            self._status.started()


class KafkaSession:
    """Serves one connected Kafka client; :meth:`run` returns when the connection is done."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        ctx: ServiceContext,
        *,
        peer: str = "?",
        max_request_bytes: int = DEFAULT_MAX_REQUEST_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        sasl: KafkaSaslServer | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._stream = stream
        self._ctx = ctx
        self._peer = peer
        self._framing = KafkaServerConnection(max_request_size=max_request_bytes)
        self._max_in_flight = max_in_flight
        self._sasl = sasl
        self._stopping = False
        self._receiving: trio.CancelScope | None = None
        self.served = 0
        """Requests answered (or accepted without an answer) so far."""

    async def run(self) -> None:
        """Serve requests until the client closes, a codec error, or the broker stops."""
        # one slot is held by the writer, the others wait in the channel
        send, receive = trio.open_memory_channel[_Slot](self._max_in_flight - 1)
        async with trio.open_nursery() as nursery:
            if self._ctx.stopping is not None:
                nursery.start_soon(self._watch_stopping, self._ctx.stopping)
            nursery.start_soon(self._read_requests, send, nursery)
            await self._write_responses(receive)
            nursery.cancel_scope.cancel()

    # -- reader --------------------------------------------------------------------------------

    async def _read_requests(
        self, slots: trio.MemorySendChannel[_Slot], nursery: trio.Nursery
    ) -> None:
        async with slots:
            while not self._framing.closed:
                data = await self._receive()
                if data is None:
                    return
                self._framing.receive_data(data)
                while not self._stopping:
                    try:
                        event = self._framing.next_request()
                    except TruncatedFrameError as exc:
                        log.info("kafka client %s: %s", self._peer, exc)
                        return
                    except KafkaCodecError as exc:
                        log.warning("kafka client %s: closing connection: %s", self._peer, exc)
                        return
                    if event is None:
                        break
                    if not self._sasl_allows(event):
                        return
                    slot = _Slot()
                    await slots.send(slot)  # blocks while max_in_flight are in flight
                    await nursery.start(self._serve_request, event, slot)
                    if self._sasl is not None and not self._sasl.authenticated:
                        # SASL gate: before authentication one request at a time, since the
                        # handshake decides how the next bytes are framed
                        await slot.done.wait()
                        if slot.close:
                            return
                        if self._sasl.raw_tokens and not await self._read_raw_tokens(slots):
                            return

    async def _receive(self) -> bytes | bytearray | None:
        """The next bytes from the client (``b""`` at its end); None: stop reading."""
        if self._stopping:
            return None
        with trio.CancelScope() as scope:
            self._receiving = scope
            try:
                return await self._stream.receive_some(RECEIVE_SIZE)
            except _STREAM_GONE:
                return None
            finally:
                self._receiving = None
        return None  # cancelled: the broker is stopping

    # -- request tasks -------------------------------------------------------------------------

    async def _serve_request(
        self, event: RequestEvent, slot: _Slot,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        gate = _StartGate(task_status)
        try:
            if isinstance(event, UnsupportedApiVersionsRequest):
                slot.frame = encode_unsupported_api_versions(event.header.correlation_id)
            elif self._sasl is not None and event.api_key in _SASL_APIS:
                gate.started()
                slot.frame, slot.close = await self._serve_sasl(self._sasl, event)
            else:
                slot.frame = await self._serve(event, gate)
        except CloseConnection as exc:
            log.info("kafka client %s: closing connection: %s", self._peer, exc)
            slot.close = True
        except Exception:
            log.exception("kafka client %s: %s failed; closing the connection", self._peer,
                          _describe(event))
            slot.close = True
        finally:
            gate.started()
            slot.done.set()

    # -- SASL gate -----------------------------------------------------------------------------

    def _sasl_allows(self, event: RequestEvent) -> bool:
        """False (and a log line) for a request that must not be served before SASL is done."""
        if self._sasl is None or isinstance(event, UnsupportedApiVersionsRequest):
            return True
        if self._sasl.allows(event.api_key):
            return True
        log.warning("kafka client %s: %s before SASL authentication; closing the connection",
                    self._peer, _describe(event))
        return False

    async def _serve_sasl(self, sasl: KafkaSaslServer, request: KafkaRequest
                          ) -> tuple[bytes, bool]:
        """The encoded answer to SaslHandshake/SaslAuthenticate, and whether to close after."""
        if request.api_key == ApiKey.SaslHandshake:
            reply, failure = sasl_handshake.handshake(sasl, request)
        else:
            reply, failure = await sasl_authenticate.authenticate(self._ctx, sasl, request)
        if failure is not None:
            self._log_sasl_failure(failure)
        elif sasl.authenticated:
            log.info("kafka client %s: authenticated as %r (%s)", self._peer, sasl.user,
                     sasl.mechanism)
        frame = encode_response(request.api_key, request.api_version, request.correlation_id,
                                reply)
        return frame, failure is not None

    def _log_sasl_failure(self, failure: SaslFailure) -> None:
        log.warning("kafka client %s: SASL authentication failed: %s; closing the connection",
                    self._peer, failure.reason)

    async def _read_raw_tokens(self, slots: trio.MemorySendChannel[_Slot]) -> bool:
        """After a SaslHandshake v0: raw token frames until authenticated (False: close)."""
        sasl = self._sasl
        assert sasl is not None
        if self._framing.buffered:
            log.warning("kafka client %s: data sent before the SaslHandshake v0 response; "
                        "closing the connection", self._peer)
            return False
        reader = RawTokenReader()
        while not sasl.authenticated:
            try:
                token = reader.next_token()
            except SaslFailure as exc:
                self._log_sasl_failure(exc)
                return False
            if token is None:
                data = await self._receive()
                if not data:
                    return False
                reader.receive_data(data)
                continue
            slot = _Slot()
            await slots.send(slot)
            try:
                reply = await sasl_authenticate.exchange_token(self._ctx, sasl, token)
                slot.frame = frame_token(reply)
                if sasl.authenticated:
                    log.info("kafka client %s: authenticated as %r (%s, SaslHandshake v0)",
                             self._peer, sasl.user, sasl.mechanism)
            except SaslFailure as exc:
                self._log_sasl_failure(exc)
                slot.close = True
                return False
            finally:
                slot.done.set()
        leftover = reader.leftover()
        if leftover:
            self._framing.receive_data(leftover)
        return True

    async def _serve(self, request: KafkaRequest, gate: _StartGate
                     ) -> bytes | list[bytearray | bytes | memoryview] | None:
        reply = await dispatch(self._ctx, request, task_status=gate)
        if reply is NO_RESPONSE:
            return None
        if isinstance(reply, FetchResponse):  # encodes itself, stored batches by reference
            return reply.encode_frame(request.correlation_id)
        return encode_response(request.api_key, request.api_version, request.correlation_id,
                               reply)

    # -- writer --------------------------------------------------------------------------------

    async def _write_responses(self, slots: trio.MemoryReceiveChannel[_Slot]) -> None:
        async with slots:
            async for slot in slots:
                await slot.done.wait()
                frame = slot.frame
                if frame is not None:  # with ``close``: a last answer (SASL failures)
                    try:
                        if isinstance(frame, list):
                            for buffer in frame:
                                await self._stream.send_all(buffer)
                        else:
                            await self._stream.send_all(frame)
                    except _STREAM_GONE:
                        return
                if slot.close:
                    return
                self.served += 1

    # -- shutdown ------------------------------------------------------------------------------

    async def _watch_stopping(self, stopping: trio.Event) -> None:
        await stopping.wait()
        self._stopping = True
        if self._receiving is not None:
            self._receiving.cancel()


def _describe(request: RequestEvent) -> str:
    found = spec(request.header.api_key)
    name = found.name if found is not None else f"api {request.header.api_key}"
    return (f"{name} v{request.header.api_version} "
            f"(correlation id {request.header.correlation_id})")
