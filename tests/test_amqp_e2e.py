"""End to end with pika: the real ``polystream serve`` driven by unmodified RabbitMQ clients.

One server (AMQP and Kafka listeners) is shared by the tests of this module; each test uses its
own exchange and queue names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.slow

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("amqp-e2e"))
    try:
        yield factory("amqp", "kafka", log_level="info")
    finally:
        factory.close()


def connect(server: ServerProcess, **kwargs: Any) -> pika.BlockingConnection:
    host, port = server.address("amqp")
    params = pika.ConnectionParameters(host, port, connection_attempts=1,
                                       blocked_connection_timeout=TIMEOUT, **kwargs)
    return pika.BlockingConnection(params)


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[Any]:
    conn = connect(server)
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()


def get_body(ch: Any, queue: str) -> bytes | None:
    """``basic.get`` with auto-ack, retried briefly (the core reads the log asynchronously)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return bytes(body)
        time.sleep(0.05)
    return None


def drain(ch: Any, queue: str, expect: int) -> list[bytes]:
    """Consume ``expect`` messages with acks (or fewer if they do not come)."""
    got: list[bytes] = []
    for method, _, body in ch.consume(queue, inactivity_timeout=3):
        if method is None:
            break
        got.append(bytes(body))
        ch.basic_ack(method.delivery_tag)
        if len(got) == expect:
            break
    ch.cancel()
    return got


# -- connection --------------------------------------------------------------------------------


def test_login_refused_with_bad_password(server: ServerProcess) -> None:
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(server, credentials=pika.PlainCredentials("guest", "wrong"))


def test_unknown_vhost_is_refused(server: ServerProcess) -> None:
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        connect(server, virtual_host="no-such-vhost")
    assert "530" in str(info.value)


def test_heartbeat_is_the_clients_value(server: ServerProcess) -> None:
    conn = connect(server, heartbeat=7)
    try:
        assert conn._impl.params.heartbeat == 7
        conn.process_data_events(time_limit=0.1)
        assert conn.is_open
    finally:
        conn.close()


# -- exchanges and routing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "bindings", "publishes", "expected"),
    [
        ("direct", {"qa": "red", "qb": "blue"}, [("red", b"1"), ("blue", b"2"), ("green", b"3")],
         {"qa": [b"1"], "qb": [b"2"]}),
        ("fanout", {"qa": "", "qb": "ignored"}, [("x", b"1")], {"qa": [b"1"], "qb": [b"1"]}),
        ("topic", {"qa": "orders.*.eu", "qb": "orders.#"},
         [("orders.new.eu", b"1"), ("orders", b"2"), ("orders.new.us", b"3"), ("other", b"4")],
         {"qa": [b"1"], "qb": [b"1", b"2", b"3"]}),
    ],
)
def test_exchange_types_route(channel: Any, kind: str, bindings: dict[str, str],
                              publishes: list[tuple[str, bytes]],
                              expected: dict[str, list[bytes]]) -> None:
    exchange = f"route-{kind}"
    channel.exchange_declare(exchange, kind)
    for queue, key in bindings.items():
        channel.queue_declare(f"{exchange}-{queue}", exclusive=True)
        channel.queue_bind(f"{exchange}-{queue}", exchange, key)
    channel.confirm_delivery()
    for key, body in publishes:
        channel.basic_publish(exchange, key, body)
    for queue, bodies in expected.items():
        assert drain(channel, f"{exchange}-{queue}", len(bodies)) == bodies


def test_headers_exchange_all_and_any(channel: Any) -> None:
    channel.exchange_declare("route-headers", "headers")
    channel.queue_declare("h-all", exclusive=True)
    channel.queue_declare("h-any", exclusive=True)
    channel.queue_bind("h-all", "route-headers", "",
                       arguments={"x-match": "all", "format": "pdf", "size": 3})
    channel.queue_bind("h-any", "route-headers", "",
                       arguments={"x-match": "any", "format": "pdf", "type": "report"})
    channel.confirm_delivery()
    for body, headers in ((b"both", {"format": "pdf", "size": 3}), (b"type", {"type": "report"}),
                          (b"none", {"format": "zip"})):
        channel.basic_publish("route-headers", "", body, pika.BasicProperties(headers=headers))
    assert drain(channel, "h-all", 1) == [b"both"]
    assert drain(channel, "h-any", 2) == [b"both", b"type"]


def test_exchange_to_exchange_and_alternate_exchange(channel: Any) -> None:
    channel.exchange_declare("e2e-up", "topic")
    channel.exchange_declare("e2e-down", "direct")
    channel.exchange_declare("e2e-ae", "fanout")
    channel.exchange_declare("e2e-main", "direct", arguments={"alternate-exchange": "e2e-ae"})
    channel.exchange_bind("e2e-down", "e2e-up", "a.#")
    for q, ex, key in (("e2e-q1", "e2e-down", "a.b"), ("e2e-q2", "e2e-ae", ""),
                       ("e2e-q3", "e2e-main", "known")):
        channel.queue_declare(q, exclusive=True)
        channel.queue_bind(q, ex, key)
    channel.confirm_delivery()
    channel.basic_publish("e2e-up", "a.b", b"via-e2e")
    channel.basic_publish("e2e-main", "unknown", b"via-ae")
    channel.basic_publish("e2e-main", "known", b"direct")
    assert drain(channel, "e2e-q1", 1) == [b"via-e2e"]
    assert drain(channel, "e2e-q2", 1) == [b"via-ae"]
    assert drain(channel, "e2e-q3", 1) == [b"direct"]


def test_exchange_declare_errors(server: ServerProcess) -> None:
    conn = connect(server)
    try:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare("never-declared", passive=True)
        assert info.value.reply_code == 404
        ch = conn.channel()
        ch.exchange_declare("decl-x", "direct")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare("decl-x", "topic")
        assert info.value.reply_code == 406
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare("amq.mine", "direct")
        assert info.value.reply_code == 403
        ch = conn.channel()
        ch.exchange_declare("decl-internal", "fanout", internal=True)
        ch.exchange_delete("decl-x")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare("decl-x", passive=True)
        assert info.value.reply_code == 404
    finally:
        conn.close()


def test_mandatory_unroutable_is_returned(channel: Any) -> None:
    channel.exchange_declare("mand", "direct")
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        channel.basic_publish("mand", "nobody", b"lost", mandatory=True)
    returned = info.value.messages[0]
    assert returned.method.reply_code == 312
    assert returned.method.routing_key == "nobody"
    assert returned.body == b"lost"
    channel.basic_publish("mand", "nobody", b"dropped")  # not mandatory: acked, no return


def test_publish_to_missing_exchange_closes_channel(server: ServerProcess) -> None:
    conn = connect(server)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("no-such-exchange", "k", b"x")
        assert info.value.reply_code == 404
        assert conn.is_open
    finally:
        conn.close()


# -- queues ------------------------------------------------------------------------------------


def test_queue_declare_purge_delete(server: ServerProcess) -> None:
    conn = connect(server)
    try:
        ch = conn.channel()
        ok = ch.queue_declare("q-life", durable=True)
        assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", "q-life", f"m{i}".encode())
        assert ch.queue_declare("q-life", passive=True).method.message_count == 3
        assert ch.queue_purge("q-life").method.message_count == 3
        assert ch.queue_declare("q-life", passive=True).method.message_count == 0
        ch.basic_publish("", "q-life", b"again")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_delete("q-life", if_empty=True)
        assert info.value.reply_code == 406
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("q-life", durable=False)
        assert info.value.reply_code == 406
        ch = conn.channel()
        assert ch.queue_delete("q-life").method.message_count == 1
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("q-life", passive=True)
        assert info.value.reply_code == 404
    finally:
        conn.close()


def test_exclusive_queue_is_locked_and_deleted_with_its_connection(
        server: ServerProcess) -> None:
    owner = connect(server)
    other = connect(server)
    try:
        name = owner.channel().queue_declare("", exclusive=True).method.queue
        assert name.startswith("amq.gen-")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            other.channel().basic_consume(name, lambda *a: None)
        assert info.value.reply_code == 405
        owner.close()
        deadline = time.monotonic() + TIMEOUT
        while True:
            ch = other.channel()
            try:
                ch.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 404
                break
            assert time.monotonic() < deadline, "exclusive queue outlived its connection"
            time.sleep(0.05)
    finally:
        for c in (owner, other):
            if c.is_open:
                c.close()


def test_unbind_stops_routing(channel: Any) -> None:
    channel.exchange_declare("unbind-x", "direct")
    channel.queue_declare("unbind-q", exclusive=True)
    channel.queue_bind("unbind-q", "unbind-x", "a")
    channel.queue_bind("unbind-q", "unbind-x", "b")
    channel.confirm_delivery()
    channel.basic_publish("unbind-x", "a", b"a1")
    channel.queue_unbind("unbind-q", "unbind-x", "a")
    channel.basic_publish("unbind-x", "a", b"a2")
    channel.basic_publish("unbind-x", "b", b"b1")
    assert drain(channel, "unbind-q", 2) == [b"a1", b"b1"]


# -- consuming ---------------------------------------------------------------------------------


def test_properties_and_headers_restored(channel: Any) -> None:
    channel.queue_declare("props-q", exclusive=True)
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", delivery_mode=2,
        priority=5, correlation_id="c-1", reply_to="answers", expiration="60000",
        message_id="m-1", timestamp=1700000000, type="order", user_id="guest", app_id="tests",
        headers={"n": 7, "s": "text", "nested": {"a": [1, "b"]}, "flag": True})
    channel.basic_publish("", "props-q", b"body", props)
    method, got, body = None, None, None
    deadline = time.monotonic() + TIMEOUT
    while method is None and time.monotonic() < deadline:
        method, got, body = channel.basic_get("props-q", auto_ack=True)
    assert body == b"body"
    for attr in ("content_type", "content_encoding", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
                 "user_id", "app_id", "headers"):
        assert getattr(got, attr) == getattr(props, attr), attr


def test_nack_requeue_sets_redelivered_and_reject_drops(channel: Any) -> None:
    channel.queue_declare("redeliver-q", exclusive=True)
    channel.confirm_delivery()
    channel.basic_publish("", "redeliver-q", b"one")
    channel.basic_publish("", "redeliver-q", b"two")
    seen: list[tuple[bytes, bool]] = []
    for method, _, body in channel.consume("redeliver-q", inactivity_timeout=3):
        if method is None:
            break
        seen.append((bytes(body), method.redelivered))
        if body == b"one" and not method.redelivered:
            channel.basic_nack(method.delivery_tag, requeue=True)
        elif body == b"two":
            channel.basic_reject(method.delivery_tag, requeue=False)
        else:
            channel.basic_ack(method.delivery_tag)
        if len(seen) == 3:
            break
    channel.cancel()
    assert sorted(seen) == [(b"one", False), (b"one", True), (b"two", False)]
    assert channel.queue_declare("redeliver-q", passive=True).method.message_count == 0


def test_prefetch_limits_unacked(channel: Any) -> None:
    channel.queue_declare("prefetch-q", exclusive=True)
    channel.confirm_delivery()
    for i in range(10):
        channel.basic_publish("", "prefetch-q", str(i).encode())
    channel.basic_qos(prefetch_count=3)
    held: list[Any] = []
    channel.basic_consume("prefetch-q", lambda ch, m, p, b: held.append(m))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.1)
    assert len(held) == 3
    channel.basic_ack(held[-1].delivery_tag, multiple=True)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.1)
    assert len(held) == 6


def test_global_prefetch_is_shared_by_the_channels_consumers(channel: Any) -> None:
    channel.queue_declare("gq-a", exclusive=True)
    channel.queue_declare("gq-b", exclusive=True)
    channel.confirm_delivery()
    for q in ("gq-a", "gq-b"):
        for i in range(3):
            channel.basic_publish("", q, str(i).encode())
    channel.basic_qos(prefetch_count=2, global_qos=True)
    held: list[Any] = []
    for q in ("gq-a", "gq-b"):
        channel.basic_consume(q, lambda ch, m, p, b: held.append(m))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.1)
    assert len(held) == 2


def test_exclusive_consumer(server: ServerProcess) -> None:
    conn = connect(server)
    try:
        ch = conn.channel()
        ch.queue_declare("excl-consumer-q")
        ch.basic_consume("excl-consumer-q", lambda *a: None, exclusive=True)
        other = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            other.basic_consume("excl-consumer-q", lambda *a: None)
        assert info.value.reply_code == 403
        ch.queue_delete("excl-consumer-q")
    finally:
        conn.close()


def test_queue_delete_cancels_consumers(server: ServerProcess) -> None:
    conn = connect(server)
    try:
        ch = conn.channel()
        ch.queue_declare("cancel-q")
        cancelled: list[Any] = []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
        ch.basic_consume("cancel-q", lambda *a: None)
        other = conn.channel()
        other.queue_delete("cancel-q")
        deadline = time.monotonic() + TIMEOUT
        while not cancelled and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert cancelled and cancelled[0].method.NAME == "Basic.Cancel"
    finally:
        conn.close()


def test_recover_requeues_unacked(channel: Any) -> None:
    channel.queue_declare("recover-q", exclusive=True)
    channel.confirm_delivery()
    channel.basic_publish("", "recover-q", b"x")
    method, _, _ = None, None, None
    deadline = time.monotonic() + TIMEOUT
    while method is None and time.monotonic() < deadline:
        method, _, _ = channel.basic_get("recover-q")
    assert method is not None and not method.redelivered
    channel.basic_recover(requeue=True)
    method = None
    deadline = time.monotonic() + TIMEOUT
    while method is None and time.monotonic() < deadline:
        method, _, _ = channel.basic_get("recover-q", auto_ack=True)
    assert method is not None and method.redelivered


def test_tx_commit_and_rollback(channel: Any) -> None:
    channel.queue_declare("tx-q", exclusive=True)
    channel.tx_select()
    channel.basic_publish("", "tx-q", b"rolled back")
    channel.tx_rollback()
    channel.basic_publish("", "tx-q", b"committed")
    # stored, but invisible to the queue's (READ_COMMITTED) readers until the commit
    assert channel.basic_get("tx-q", auto_ack=True)[0] is None
    channel.tx_commit()
    assert get_body(channel, "tx-q") == b"committed"
    assert channel.basic_get("tx-q", auto_ack=True)[0] is None  # the rollback stored nothing


# -- publisher confirms under load ---------------------------------------------------------------


def test_confirms_under_load_select_connection(server: ServerProcess) -> None:
    """pika's SelectConnection publishes 500 messages without waiting; every one is acked."""
    host, port = server.address("amqp")
    total = 500
    acked: set[int] = set()
    state: dict[str, Any] = {}

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        state["ch"] = ch
        ch.confirm_delivery(on_confirm)
        ch.queue_declare("load-q", exclusive=True, callback=lambda _: publish_all(ch))

    def publish_all(ch: Any) -> None:
        for i in range(total):
            ch.basic_publish("", "load-q", f"m{i}".encode(),
                             pika.BasicProperties(delivery_mode=2))

    def on_confirm(frame: Any) -> None:
        method = frame.method
        assert method.NAME == "Basic.Ack"
        low = max(acked) + 1 if acked else 1
        tags = range(low, method.delivery_tag + 1) if method.multiple else [method.delivery_tag]
        acked.update(tags)
        if len(acked) == total:
            state["conn"].close()

    params = pika.ConnectionParameters(host, port, connection_attempts=1)
    conn = pika.SelectConnection(params, on_open_callback=on_open)
    state["conn"] = conn
    conn.ioloop.call_later(TIMEOUT * 2, conn.ioloop.stop)
    conn.add_on_close_callback(lambda *a: conn.ioloop.stop())
    conn.ioloop.start()
    assert acked == set(range(1, total + 1))


# -- cross-protocol ----------------------------------------------------------------------------


def test_published_message_is_readable_by_kafka(channel: Any, server: ServerProcess) -> None:
    import kafka

    channel.exchange_declare("orders", "topic", durable=True)
    channel.confirm_delivery()
    channel.basic_publish("orders", "orders.eu.new", b'{"id": 1}',
                          pika.BasicProperties(content_type="application/json",
                                               headers={"tenant": "acme"}))
    host, port = server.address("kafka")
    consumer = kafka.KafkaConsumer(bootstrap_servers=f"{host}:{port}", group_id=None,
                                   enable_auto_commit=False)
    try:
        tp = kafka.TopicPartition("orders", 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records: list[Any] = []
        deadline = time.monotonic() + TIMEOUT
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
    finally:
        consumer.close()
    assert records[0].key == b"orders.eu.new"
    assert records[0].value == b'{"id": 1}'
    headers = dict(records[0].headers)
    assert headers["tenant"] == b"acme"
    assert headers["ps.content-type"] == b"application/json"


# -- durability --------------------------------------------------------------------------------


def test_confirmed_persistent_messages_survive_sigkill(polystream_server: ServerFactory,
                                                       tmp_path: Any) -> None:
    data_dir = tmp_path / "amqp-data"
    first = polystream_server("amqp", data_dir=data_dir, log_level="info")
    conn = connect(first)
    ch = conn.channel()
    ch.exchange_declare("durable-x", "direct", durable=True)
    ch.queue_declare("durable-q", durable=True)
    ch.queue_bind("durable-q", "durable-x", "k")
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("durable-x", "k", f"p{i}".encode(), pika.BasicProperties(delivery_mode=2))
    first.kill()  # SIGKILL right after the last confirm
    second = polystream_server("amqp", data_dir=data_dir, log_level="info")
    conn = connect(second)
    try:
        ch = conn.channel()
        ch.exchange_declare("durable-x", passive=True)
        got = drain(ch, "durable-q", 20)
        assert got == [f"p{i}".encode() for i in range(20)]
    finally:
        conn.close()
