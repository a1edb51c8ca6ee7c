"""The server connection state machine: handshake, tuning, closing, errors, output helpers."""

from __future__ import annotations

import struct

import pytest
from fixtures.amqp.client_codec import (
    ConnectionPair,
    assert_connection_close,
    method_frame,
    parse_server_output,
)
from pamqp import commands

from handlers.amqp import (
    CAPABILITIES,
    AuthenticationRequest,
    ConnectionClosed,
    ConnectionClosing,
    ConnectionState,
    ConnectionTuned,
    LocalProtocolError,
    MethodReceived,
    ReplyCode,
    ServerConnection,
    ServerSettings,
)
from handlers.amqp.frames import PROTOCOL_HEADER, encode_heartbeat


def start_ok(mechanism: str = "PLAIN", response: str = "\0guest\0guest", **props: object) -> bytes:
    return method_frame(
        0,
        commands.Connection.StartOk(
            client_properties={"product": "test", **props},
            mechanism=mechanism,
            response=response,
            locale="en_US",
        ),
    )


# --------------------------------------------------------------------------- handshake


def test_start_announces_capabilities_and_mechanisms() -> None:
    pair = ConnectionPair()
    ((channel, start),) = pair.send(PROTOCOL_HEADER)
    assert channel == 0 and isinstance(start, commands.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms.split() == ["PLAIN", "AMQPLAIN"]
    caps = start.server_properties["capabilities"]
    assert caps == CAPABILITIES
    for name in (
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ):
        assert caps[name] is True


@pytest.mark.parametrize(
    "header", [b"AMQP\x01\x01\x00\x09", b"AMQP\x00\x00\x08\x00", b"GET / HTTP/1.1\r\n"]
)
def test_wrong_protocol_header_gets_ours_and_close(header: bytes) -> None:
    conn = ServerConnection()
    conn.receive_data(header)
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed) and not event.by_peer
    assert "protocol header" in event.reply_text
    assert conn.data_to_send() == PROTOCOL_HEADER
    assert conn.state is ConnectionState.CLOSED
    conn.receive_data(b"more")
    assert conn.next_event() is None and conn.data_to_send() == b""


def test_full_handshake_events_and_negotiation() -> None:
    pair = ConnectionPair()
    pair.handshake(heartbeat=30, frame_max=8192)
    tuned = next(e for e in pair.events if isinstance(e, ConnectionTuned))
    assert tuned == ConnectionTuned(channel_max=2047, frame_max=8192, heartbeat=30)
    assert pair.server.heartbeat_interval == 30
    assert pair.server.frame_max == 8192
    assert pair.server.state is ConnectionState.OPEN
    assert pair.server.vhost == "/" and pair.server.username == "guest"


def test_next_event_pauses_until_auth_is_answered() -> None:
    conn = ServerConnection()
    conn.receive_data(PROTOCOL_HEADER)
    assert conn.next_event() is None
    conn.data_to_send()
    # The client pipelines tune-ok and open (no client should, but nothing may be lost).
    conn.receive_data(
        start_ok()
        + method_frame(0, commands.Connection.TuneOk(channel_max=0, frame_max=131072))
        + method_frame(0, commands.Connection.Open(virtual_host="/"))
    )
    assert isinstance(conn.next_event(), AuthenticationRequest)
    assert conn.next_event() is None  # paused
    with pytest.raises(LocalProtocolError):
        conn.accept_vhost()
    conn.accept_auth()
    assert isinstance(conn.next_event(), ConnectionTuned)
    assert conn.next_event().__class__.__name__ == "VhostRequest"


def test_amqplain_credentials() -> None:
    table = b"\x05LOGINS\x00\x00\x00\x04user\x08PASSWORDS\x00\x00\x00\x06s3cret"
    pair = ConnectionPair()
    pair.send(PROTOCOL_HEADER)
    pair.send(start_ok("AMQPLAIN", table.decode()))
    request = pair.events[-1]
    assert isinstance(request, AuthenticationRequest)
    assert (request.mechanism, request.username, request.password) == ("AMQPLAIN", "user", "s3cret")


@pytest.mark.parametrize(
    ("mechanism", "response", "code"),
    [
        ("EXTERNAL", "", ReplyCode.COMMAND_INVALID),
        ("PLAIN", "guest:guest", ReplyCode.ACCESS_REFUSED),
        ("AMQPLAIN", "\x05LOGINS\x00\x00\x00\x01u", ReplyCode.ACCESS_REFUSED),
    ],
)
def test_bad_mechanism_or_credentials(mechanism: str, response: str, code: ReplyCode) -> None:
    pair = ConnectionPair()
    pair.send(PROTOCOL_HEADER)
    replies = pair.send(start_ok(mechanism, response))
    assert_connection_close(replies, code)
    assert isinstance(pair.events[-1], ConnectionClosing)
    pair.method(0, commands.Connection.CloseOk())
    closed = pair.events[-1]
    assert isinstance(closed, ConnectionClosed) and closed.reply_code == code


def test_reject_auth_closes_with_access_refused() -> None:
    pair = ConnectionPair()
    pair.send(PROTOCOL_HEADER)
    pair.send(start_ok(response="\0guest\0wrong"))
    pair.server.reject_auth("bad password for guest")
    replies = parse_server_output(pair.server.data_to_send())
    assert_connection_close(replies, ReplyCode.ACCESS_REFUSED)
    assert pair.pump() == [ConnectionClosing(ReplyCode.ACCESS_REFUSED, "bad password for guest")]
    # Anything but close/close-ok is ignored while closing.
    assert pair.method(0, commands.Connection.TuneOk(frame_max=4096)) == []
    pair.method(0, commands.Connection.CloseOk())
    assert pair.events[-1] == ConnectionClosed(403, "bad password for guest", by_peer=False)


@pytest.mark.parametrize(
    ("channel_max", "frame_max"),
    [(0, 4095), (0, 131073), (2048, 131072)],
)
def test_tune_ok_out_of_bounds_is_not_allowed(channel_max: int, frame_max: int) -> None:
    pair = ConnectionPair()
    pair.send(PROTOCOL_HEADER)
    pair.send(start_ok())
    pair.server.accept_auth()
    pair.server.data_to_send()
    replies = pair.method(
        0, commands.Connection.TuneOk(channel_max=channel_max, frame_max=frame_max)
    )
    assert_connection_close(replies, ReplyCode.NOT_ALLOWED)


@pytest.mark.parametrize(
    ("server", "client", "expected"),
    [(60, 0, 0), (60, 30, 30), (60, 120, 120), (0, 10, 10), (0, 0, 0)],
)
def test_heartbeat_is_the_clients_value(server: int, client: int, expected: int) -> None:
    pair = ConnectionPair(ServerSettings(heartbeat=server))
    pair.handshake(heartbeat=client)
    assert pair.server.heartbeat_interval == expected


def test_client_without_heartbeats_is_not_dropped_when_idle() -> None:
    pair = ConnectionPair(ServerSettings(heartbeat=60))
    pair.handshake(heartbeat=0)
    assert pair.server.heartbeat_interval == 0  # the client's tune-ok value (RabbitMQ)
    assert pair.server.expects_heartbeats is False
    pair.server.timer_expired()
    assert pair.pump() == []
    assert pair.server.state is ConnectionState.OPEN


def test_tune_ok_zero_frame_max_means_ours() -> None:
    pair = ConnectionPair(ServerSettings(frame_max=65536))
    pair.handshake(frame_max=0)
    assert pair.server.frame_max == 65536


def test_reject_vhost_is_not_allowed() -> None:
    pair = ConnectionPair()
    pair.send(PROTOCOL_HEADER)
    pair.send(start_ok())
    pair.server.accept_auth()
    pair.server.data_to_send()
    pair.method(0, commands.Connection.TuneOk(frame_max=131072))
    pair.method(0, commands.Connection.Open(virtual_host="nope"))
    pair.server.reject_vhost("vhost 'nope' does not exist")
    assert_connection_close(parse_server_output(pair.server.data_to_send()), ReplyCode.NOT_ALLOWED)


def test_unexpected_method_during_handshake() -> None:
    pair = ConnectionPair()
    pair.send(PROTOCOL_HEADER)
    replies = pair.method(0, commands.Connection.Open(virtual_host="/"))
    assert_connection_close(replies, ReplyCode.COMMAND_INVALID)


def test_client_close_during_handshake() -> None:
    pair = ConnectionPair()
    pair.send(PROTOCOL_HEADER)
    replies = pair.method(
        0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
    )
    assert isinstance(replies[-1][1], commands.Connection.CloseOk)
    assert pair.events[-1] == ConnectionClosed(200, "bye", by_peer=True)


# ------------------------------------------------------------------ open connection


def test_client_close_gets_close_ok() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    replies = pair.method(
        0, commands.Connection.Close(reply_code=200, reply_text="Normal", class_id=0, method_id=0)
    )
    assert [type(m) for _, m in replies] == [commands.Connection.CloseOk]
    assert pair.events[-1] == ConnectionClosed(200, "Normal", by_peer=True)
    assert pair.server.open_channels == frozenset()


def test_server_close_waits_for_close_ok() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.server.close(ReplyCode.CONNECTION_FORCED, "broker shutdown")
    replies = parse_server_output(pair.server.data_to_send())
    assert_connection_close(replies, ReplyCode.CONNECTION_FORCED)
    assert pair.pump() == []
    assert pair.method(1, commands.Channel.Open()) == []  # ignored while closing
    pair.method(0, commands.Connection.CloseOk())
    assert pair.events[-1] == ConnectionClosed(320, "broker shutdown", by_peer=False)


def test_close_crossing_client_close_is_answered() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.server.close()
    pair.server.data_to_send()
    replies = pair.method(
        0, commands.Connection.Close(reply_code=200, reply_text="x", class_id=0, method_id=0)
    )
    assert [type(m) for _, m in replies] == [commands.Connection.CloseOk]
    assert isinstance(pair.events[-1], ConnectionClosed)


def test_bad_frame_end_is_501_and_final() -> None:
    pair = ConnectionPair()
    pair.handshake()
    data = bytearray(method_frame(1, commands.Channel.Open()))
    data[-1] = 0
    replies = pair.send(bytes(data))
    assert_connection_close(replies, ReplyCode.FRAME_ERROR)
    closed = pair.events[-1]
    assert isinstance(closed, ConnectionClosed) and closed.reply_code == 501
    assert "end octet" in closed.reply_text
    assert pair.send(method_frame(0, commands.Connection.CloseOk())) == []


def test_frame_above_negotiated_frame_max_is_501() -> None:
    pair = ConnectionPair()
    pair.handshake(frame_max=4096)
    replies = pair.send(struct.pack(">BHI", 3, 1, 5000))
    assert_connection_close(replies, ReplyCode.FRAME_ERROR)
    assert isinstance(pair.events[-1], ConnectionClosed)


def test_unknown_method_is_not_implemented() -> None:
    pair = ConnectionPair()
    pair.handshake()
    payload = struct.pack(">HH", 70, 10)
    replies = pair.send(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
    assert_connection_close(replies, ReplyCode.NOT_IMPLEMENTED)


def test_heartbeats_ignored_on_channel_zero_and_rejected_elsewhere() -> None:
    pair = ConnectionPair()
    pair.handshake()
    assert pair.send(encode_heartbeat()) == []
    assert pair.pump() == []
    replies = pair.send(b"\x08\x00\x01\x00\x00\x00\x00\xce")
    assert_connection_close(replies, ReplyCode.FRAME_ERROR)


def test_non_connection_method_on_channel_zero() -> None:
    pair = ConnectionPair()
    pair.handshake()
    replies = pair.method(0, commands.Basic.Qos(prefetch_count=1))
    assert_connection_close(replies, ReplyCode.COMMAND_INVALID)


def test_update_secret_goes_upward() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.method(0, commands.Connection.UpdateSecret(new_secret="t", reason="refresh"))
    event = pair.events[-1]
    assert isinstance(event, MethodReceived) and event.channel == 0


def test_eof_is_connection_closed_by_peer() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.server.receive_data(b"")
    closed = pair.pump()[-1]
    assert isinstance(closed, ConnectionClosed) and closed.by_peer and closed.reply_code == 0


def test_timer_expired_per_state() -> None:
    handshake = ServerConnection()
    handshake.receive_data(PROTOCOL_HEADER)
    handshake.next_event()
    handshake.timer_expired()
    closed = handshake.next_event()
    assert isinstance(closed, ConnectionClosed) and "handshake timeout" in closed.reply_text

    pair = ConnectionPair()
    pair.handshake(heartbeat=5)
    pair.server.timer_expired()
    closed = pair.pump()[-1]
    assert isinstance(closed, ConnectionClosed) and "heartbeat" in closed.reply_text

    closing = ConnectionPair()
    closing.handshake()
    closing.server.close()
    closing.server.timer_expired()
    closed = closing.pump()[-1]
    assert isinstance(closed, ConnectionClosed) and "close-ok" in closed.reply_text
    closing.server.timer_expired()  # idempotent once closed
    assert closing.pump() == []


def test_send_heartbeat_only_when_open() -> None:
    conn = ServerConnection()
    conn.send_heartbeat()
    assert conn.data_to_send() == b""
    pair = ConnectionPair()
    pair.handshake(heartbeat=10)
    pair.server.send_heartbeat()
    assert pair.server.data_to_send() == encode_heartbeat()


def test_blocked_needs_client_capability() -> None:
    pair = ConnectionPair()
    pair.handshake()  # the test client announces no capabilities
    assert pair.server.send_blocked("low memory") is False
    assert pair.server.data_to_send() == b""

    conn = ServerConnection()
    conn.receive_data(PROTOCOL_HEADER + start_ok(capabilities={"connection.blocked": True}))
    assert isinstance(conn.next_event(), AuthenticationRequest)
    conn.accept_auth()
    conn.receive_data(method_frame(0, commands.Connection.TuneOk(frame_max=131072)))
    conn.receive_data(method_frame(0, commands.Connection.Open(virtual_host="/")))
    conn.next_event()
    conn.next_event()
    conn.accept_vhost()
    conn.data_to_send()
    assert conn.send_blocked("low memory") is True
    assert conn.send_unblocked() is True
    assert conn.send_unblocked() is False
    sent = [m for _, m in parse_server_output(conn.data_to_send())]
    assert isinstance(sent[0], commands.Connection.Blocked) and sent[0].reason == "low memory"
    assert isinstance(sent[1], commands.Connection.Unblocked)


def test_send_api_misuse_is_local_error() -> None:
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(LocalProtocolError):
        pair.server.send_method(0, commands.Basic.QosOk())
    with pytest.raises(LocalProtocolError):
        pair.server.send_method(1, commands.Connection.CloseOk())
    with pytest.raises(LocalProtocolError):
        pair.server.send_method(70000, commands.Basic.QosOk())
    # A channel that is not (or no longer) open: nothing sent, no exception.
    assert pair.server.send_method(5, commands.Basic.QosOk()) is False
    assert pair.server.data_to_send() == b""


def test_table_nesting_and_keys_are_checked() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    nested: dict[str, object] = {"leaf": 1}
    for _ in range(20):
        nested = {"n": nested}
    replies = pair.method(1, commands.Queue.Declare(queue="q", arguments=nested))  # type: ignore[arg-type]
    assert_connection_close(replies, ReplyCode.SYNTAX_ERROR)

    other = ConnectionPair()
    other.handshake()
    other.open_channel(1)
    # pamqp truncates long keys when encoding, so build the table by hand.
    entry = bytes([200]) + b"k" * 200 + b"I" + struct.pack(">i", 1)
    table = struct.pack(">I", len(entry)) + entry
    payload = struct.pack(">HHH", 50, 10, 0) + b"\x01q\x00" + table
    replies = other.send(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
    assert_connection_close(replies, ReplyCode.SYNTAX_ERROR)
