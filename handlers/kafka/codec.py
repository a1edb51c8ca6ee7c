"""Decode Kafka request frames and encode response frames (sans-IO, no trio).

Theory of operation
-------------------
A Kafka request frame (after its 4-byte size prefix, see :mod:`handlers.kafka.framing`) is a
*request header* followed by the *body*:

* header v1: ``api_key:int16 api_version:int16 correlation_id:int32 client_id:nullable_string``
  (``client_id`` always has an int16 length, even in flexible versions, so that any broker can
  read the header of an ApiVersions request it does not understand);
* header v2 (used by flexible request versions): v1 followed by a tagged-field section.
  (Header v0, without ``client_id``, only ever served ControlledShutdown v0, which we do not
  implement.)

The header is parsed here by hand (it is tiny, and it must be readable before we know whether
the API and version are served).  The body is decoded by the code kafka-python generates from
the API's JSON schema, compiled by us with zero-copy globals (see :func:`_body_decoder`).  We
call it directly because it reports where decoding stopped, which lets us reject truncated
fields and trailing bytes (kafka-python's public ``decode`` ignores both).  Any exception the
generated code raises on hostile input becomes
:class:`~handlers.kafka.errors.MalformedRequestError`.

A response frame is ``size:int32`` + response header + body.  Response header v0 is just the
correlation id; v1 (flexible versions) adds an empty tagged-field section -- except for
ApiVersions, which always uses v0 so a client can read the answer to a version it guessed.

Record batches are never decoded record by record: the schema type ``records`` is a plain
byte string.  In a decoded Produce request each partition's ``records`` is a ``memoryview``
slice of the request frame (no copy); a Fetch response accepts ``bytes``/``memoryview``
batches and copies them verbatim into the frame (one copy into kafka-python's pooled encode
buffer, one out of it).
"""

from __future__ import annotations

import builtins
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka.protocol.schemas.fields.codecs import EncodeBufferPool
from kafka.protocol.schemas.fields.codegen import CodegenContext

from handlers.kafka import registry
from handlers.kafka.apis import SUPPORTED_APIS, ApiVersionRange
from handlers.kafka.errors import (
    ErrorCode,
    MalformedRequestError,
    UnsupportedApiKeyError,
    UnsupportedVersionError,
)

__all__ = [
    "API_VERSIONS_KEY",
    "KafkaRequest",
    "RequestHeader",
    "UnsupportedApiVersionsRequest",
    "api_versions_response",
    "decode_request",
    "decode_request_header",
    "encode_request",
    "encode_response",
    "encode_unsupported_api_versions",
]

API_VERSIONS_KEY = 18

_FIXED_HEADER = struct.Struct(">hhi")
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_RESPONSE_PREFIX = struct.Struct(">ii")  # frame size, correlation id


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """A decoded request header (v1 or v2)."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    header_version: int = 1
    unknown_tags: Mapping[int, bytes] = field(default_factory=dict)
    """Tagged fields of a v2 header, raw (RequestHeader v2 defines none)."""

    def encode(self) -> bytes:
        """The header's wire bytes (canonical: tags in ascending order)."""
        parts = [_FIXED_HEADER.pack(self.api_key, self.api_version, self.correlation_id)]
        if self.client_id is None:
            parts.append(_INT16.pack(-1))
        else:
            raw = self.client_id.encode("utf-8")
            parts += [_INT16.pack(len(raw)), raw]
        if self.header_version >= 2:
            parts.append(_uvarint(len(self.unknown_tags)))
            for tag in sorted(self.unknown_tags):
                value = self.unknown_tags[tag]
                parts += [_uvarint(tag), _uvarint(len(value)), value]
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class KafkaRequest:
    """A decoded request: its header and its kafka-python body object.

    ``body`` is an instance of the API's request class (see :mod:`handlers.kafka.registry`),
    with snake_case attributes named after the JSON schema fields (``body.topic_data[0]
    .partition_data[0].records`` for Produce); ``body.version`` is ``header.api_version``.
    """

    header: RequestHeader
    body: Any

    @property
    def api_key(self) -> int:
        """Shortcut for ``header.api_key``."""
        return self.header.api_key

    @property
    def api_version(self) -> int:
        """Shortcut for ``header.api_version``."""
        return self.header.api_version

    @property
    def correlation_id(self) -> int:
        """Shortcut for ``header.correlation_id``."""
        return self.header.correlation_id


@dataclass(frozen=True, slots=True)
class UnsupportedApiVersionsRequest:
    """An ApiVersions request at a version we do not serve.

    Kafka answers it (rather than closing) with ``UNSUPPORTED_VERSION`` in the v0 format and
    the ApiVersions range it does serve (KIP-511), so the client can retry at a version we
    know: see :func:`encode_unsupported_api_versions`.  The body is not decoded.
    """

    header: RequestHeader


def decode_request_header(frame: bytes | bytearray | memoryview) -> tuple[RequestHeader, int]:
    """Decode the request header at the start of ``frame``; return it and the body offset.

    The header version follows from the api key and version (v2 for flexible versions of an
    API kafka-python knows, v1 otherwise).  Raises MalformedRequestError.
    """
    data = memoryview(frame)
    if len(data) < _FIXED_HEADER.size + _INT16.size:
        raise MalformedRequestError(f"request frame too short for a header ({len(data)} bytes)")
    api_key, api_version, correlation_id = _FIXED_HEADER.unpack_from(data, 0)
    ids = {"api_key": api_key, "api_version": api_version, "correlation_id": correlation_id}
    pos = _FIXED_HEADER.size
    (length,) = _INT16.unpack_from(data, pos)
    pos += _INT16.size
    client_id: str | None = None
    if length >= 0:
        if pos + length > len(data):
            raise MalformedRequestError("client_id runs past the end of the frame", **ids)
        try:
            client_id = str(data[pos : pos + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedRequestError("client_id is not valid UTF-8", **ids) from exc
        pos += length
    elif length != -1:
        raise MalformedRequestError(f"invalid client_id length {length}", **ids)
    spec = registry.spec(api_key)
    header_version = 1
    tags: dict[int, bytes] = {}
    if spec is not None and spec.is_flexible(api_version):
        header_version = 2
        try:
            pos = _read_tagged_fields(data, pos, tags)
        except ValueError as exc:
            raise MalformedRequestError(f"bad header tagged fields: {exc}", **ids) from exc
    header = RequestHeader(api_key, api_version, correlation_id, client_id, header_version, tags)
    return header, pos


def decode_request(
    frame: bytes | bytearray | memoryview,
    apis: Mapping[int, ApiVersionRange] = SUPPORTED_APIS,
) -> KafkaRequest | UnsupportedApiVersionsRequest:
    """Decode one request frame (without its size prefix).

    Only APIs and versions in ``apis`` are accepted.  Returns a :class:`KafkaRequest`, or an
    :class:`UnsupportedApiVersionsRequest` for an ApiVersions request at an unserved version.
    Raises UnsupportedApiKeyError, UnsupportedVersionError or MalformedRequestError.
    """
    data = memoryview(frame)
    if len(data) >= _FIXED_HEADER.size:
        api_key, api_version, correlation_id = _FIXED_HEADER.unpack_from(data, 0)
        ids = {"api_key": api_key, "api_version": api_version, "correlation_id": correlation_id}
        served = apis.get(api_key)
        spec = registry.spec(api_key)
        if served is None or spec is None:
            raise UnsupportedApiKeyError(f"unsupported api key {api_key}", **ids)
        if api_version not in served or not spec.min_version <= api_version <= spec.max_version:
            if api_key == API_VERSIONS_KEY:
                return UnsupportedApiVersionsRequest(_lenient_header(data, api_version))
            raise UnsupportedVersionError(
                f"unsupported version {api_version} of {spec.name} "
                f"(served {served.min_version}-{served.max_version})",
                **ids,
            )
    header, offset = decode_request_header(data)
    spec = registry.SPECS[header.api_key]  # checked above: len(data) >= 8 if we got here
    body = _decode_body(spec, header, data, offset)
    return KafkaRequest(header, body)


def encode_request(header: RequestHeader, body: Any) -> bytes:
    """Encode ``header`` and ``body`` as a request frame's payload (no size prefix).

    Used to check canonical round trips and by test clients; the broker never sends requests.
    """
    spec = registry.SPECS[header.api_key]
    if spec.request_header_version(header.api_version) != header.header_version:
        raise ValueError(f"header v{header.header_version} does not match {spec.name} "
                         f"v{header.api_version}")
    return header.encode() + bytes(body.encode(version=header.api_version))


def encode_response(api_key: int, api_version: int, correlation_id: int, body: Any) -> bytes:
    """Encode a complete response frame: size prefix, response header and ``body``.

    ``body`` is an instance of the API's kafka-python response class (``bytes``, ``bytearray``
    or ``memoryview`` are accepted for ``records`` fields and copied verbatim).  Raises
    ValueError if the body is not a response of ``api_key`` or the version is out of range;
    invalid field values raise whatever kafka-python's encoder raises (a programming error).
    """
    spec = registry.SPECS[api_key]
    if not isinstance(body, spec.response):
        raise ValueError(f"{type(body).__name__} is not a {spec.name} response")
    if not 0 <= api_version <= spec.max_version:
        raise ValueError(f"{spec.name} v{api_version} is beyond the schema")
    flexible = spec.is_flexible(api_version)
    encode_body = spec.response._struct.compiled_encode_into(
        api_version, compact=flexible, tagged=flexible
    )
    # One pass into kafka-python's pooled (thread-local, reused) buffer, then one copy out.
    with EncodeBufferPool.acquire() as out:
        out.ensure(_RESPONSE_PREFIX.size + 1)
        _RESPONSE_PREFIX.pack_into(out.buf, 0, 0, correlation_id)
        out.pos = _RESPONSE_PREFIX.size
        if spec.response_header_version(api_version) == 1:
            out.buf[out.pos] = 0  # header v1: empty tagged-field section
            out.pos += 1
        encode_body(body, out)
        _INT32.pack_into(out.buf, 0, out.pos - 4)
        return bytes(memoryview(out.buf)[: out.pos])


def api_versions_response(
    version: int,
    apis: Mapping[int, ApiVersionRange] = SUPPORTED_APIS,
    *,
    error_code: int = ErrorCode.NONE,
    throttle_time_ms: int = 0,
) -> Any:
    """Build the ApiVersions response body listing ``apis`` (encode with encode_response)."""
    cls = registry.SPECS[API_VERSIONS_KEY].response
    keys = [cls.ApiVersion(api_key=int(r.api_key), min_version=r.min_version,
                           max_version=r.max_version, version=version)
            for r in apis.values()]
    return cls(version=version, error_code=int(error_code), api_keys=keys,
               throttle_time_ms=throttle_time_ms)


def encode_unsupported_api_versions(
    correlation_id: int, apis: Mapping[int, ApiVersionRange] = SUPPORTED_APIS
) -> bytes:
    """The full response frame to an ApiVersions request at a version we do not serve.

    As Apache Kafka does: v0 format, ``UNSUPPORTED_VERSION``, and a single ``api_keys`` entry
    giving the ApiVersions range we serve.
    """
    own = apis[API_VERSIONS_KEY]
    body = api_versions_response(0, {API_VERSIONS_KEY: own},
                                 error_code=ErrorCode.UNSUPPORTED_VERSION)
    return encode_response(API_VERSIONS_KEY, 0, correlation_id, body)


# -- internals ---------------------------------------------------------------------------------


def _decode_body(
    spec: registry.MessageSpec, header: RequestHeader, data: memoryview, offset: int
) -> Any:
    ids = {"api_key": header.api_key, "api_version": header.api_version,
           "correlation_id": header.correlation_id}
    version = header.api_version
    try:
        body, end = _body_decoder(spec, version)(data, offset)
    except Exception as exc:
        # kafka-python's generated decoder has no input validation of its own: a hostile frame
        # surfaces as struct.error, IndexError, ValueError (bad UTF-8), AssertionError, ...
        raise MalformedRequestError(
            f"cannot decode {spec.name} v{version} body: {type(exc).__name__}: {exc}", **ids
        ) from exc
    if end > len(data):
        raise MalformedRequestError(f"truncated {spec.name} v{version} body", **ids)
    # Bytes after a complete body are ignored, as Kafka's own request parser does: librdkafka
    # 2.16's AdminClient sends 3 extra bytes after its all-topics Metadata v11 body, and real
    # brokers answer it.
    # The generated decoder bypasses ApiMessage.__init__; these slots must exist for encode().
    body._header = None
    body._min_version = None
    body._max_version = None
    return body


_Decoder = Callable[[memoryview, int], tuple[Any, int]]
_DECODERS: dict[tuple[int, int], _Decoder] = {}  # bounded: one per (api key, version)


def _body_decoder(spec: registry.MessageSpec, version: int) -> _Decoder:
    """kafka-python's generated decoder for a request body, compiled with zero-copy globals.

    kafka-python emits straight-line Python for each (message, version) and exec()s it with a
    dict of globals.  We emit the same code through its public codegen hooks but give it our
    own globals, and keep our own cache (kafka-python's cached decoders are left untouched):

    * ``bytes`` -> :func:`_view`: ``bytes``/``records`` fields become ``memoryview`` slices of
      the frame instead of copies (a Produce body's record batches are never copied);
    * ``_BytesIO`` -> :class:`_ViewReader`: kafka-python reads a non-empty tagged-field section
      from ``BytesIO(bytes(data[pos:]))``, a copy of the *rest of the frame* per tagged
      struct, which is quadratic in hostile input (thousands of partitions each carrying a tag);
    * ``_uuid_cls`` gets real ``bytes``, as ``uuid.UUID`` insists.
    """
    key = (spec.api_key, version)
    decoder = _DECODERS.get(key)
    if decoder is None:
        flexible = spec.is_flexible(version)
        schema = spec.request._struct
        ctx = CodegenContext()
        ctx.lines.append("def _decode(data, pos):")
        saved = schema._data_class
        schema._data_class = spec.request  # as kafka-python's compiled_decode_from does
        try:
            schema.emit_decode_from(ctx, "obj", "    ", version=version, compact=flexible,
                                    tagged=flexible)
        finally:
            schema._data_class = saved
        ctx.emit("    ", "return obj, pos")
        ctx.globs.update(bytes=_view, _BytesIO=_ViewReader, _uuid_cls=_uuid_from_view)
        name = f"<polystream-decode:{spec.name}Request_v{version}>"
        exec(compile(ctx.source(), name, "exec"), ctx.globs)
        decoder = ctx.globs["_decode"]
        _DECODERS[key] = decoder
    return decoder


def _view(chunk: Any) -> Any:
    """Stands in for ``bytes()`` in generated decoders: keep memoryview slices as views."""
    return chunk if isinstance(chunk, memoryview) else builtins.bytes(chunk)


def _uuid_from_view(*, bytes: Any) -> uuid.UUID:
    return uuid.UUID(bytes=builtins.bytes(bytes))


class _ViewReader:
    """The file-like ``read``/``tell`` that kafka-python's tagged-field decoder needs."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        start = self._pos
        end = len(self._data) if n < 0 else min(start + n, len(self._data))
        self._pos = end
        return builtins.bytes(self._data[start:end])

    def tell(self) -> int:
        return self._pos


def _lenient_header(data: memoryview, api_version: int) -> RequestHeader:
    """Best-effort header of a request whose body we will not read (client_id may be None)."""
    api_key, _, correlation_id = _FIXED_HEADER.unpack_from(data, 0)
    client_id: str | None = None
    if len(data) >= _FIXED_HEADER.size + _INT16.size:
        (length,) = _INT16.unpack_from(data, _FIXED_HEADER.size)
        start = _FIXED_HEADER.size + _INT16.size
        if 0 <= length <= len(data) - start:
            client_id = str(data[start : start + length], "utf-8", "replace")
    return RequestHeader(api_key, api_version, correlation_id, client_id)


def _read_uvarint(data: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 35, 7):
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ValueError("varint longer than 5 bytes")


def _read_tagged_fields(data: memoryview, pos: int, into: dict[int, bytes]) -> int:
    count, pos = _read_uvarint(data, pos)
    previous = -1
    for _ in range(count):
        tag, pos = _read_uvarint(data, pos)
        size, pos = _read_uvarint(data, pos)
        if tag <= previous:
            raise ValueError("tags not in ascending order")
        if pos + size > len(data):
            raise ValueError("tagged field runs past the end of the frame")
        into[tag] = bytes(data[pos : pos + size])
        previous = tag
        pos += size
    return pos


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
