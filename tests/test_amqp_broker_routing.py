"""Exchange types, bindings and routing over the in-memory registry (sans-IO)."""

from __future__ import annotations

import pytest

from handlers.amqp.broker.bindings import Binding, DestinationKind
from handlers.amqp.broker.exchanges import ExchangeType, make_matcher, topic_matches
from handlers.amqp.broker.queues import Queue, QueueArguments, server_generated_name
from handlers.amqp.broker.registry import Registry
from handlers.amqp.errors import AMQPChannelError, AMQPConnectionError, ReplyCode

Q = DestinationKind.QUEUE
X = DestinationKind.EXCHANGE


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b.c", "a.b.c", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#", "", True),
        ("#.c", "a.b.c", True),
        ("#.b.#", "a.b.c", True),
        ("#.b.#", "b", True),
        ("*", "", True),
        ("*", "a.b", False),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("*.*", "a.b", True),
        ("#.#", "a", True),
    ],
)
def test_topic_patterns(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_headers_matching() -> None:
    all_ = make_matcher(ExchangeType.HEADERS, "", {"x-match": "all", "a": "1", "n": 2})
    any_ = make_matcher(ExchangeType.HEADERS, "", {"x-match": "any", "a": "1", "b": None})
    assert all_("", [("a", b"1"), ("n", b"2")])
    assert not all_("", [("a", b"1")])
    assert any_("", [("b", b"anything")])
    assert any_("", [("a", b"1")])
    assert not any_("", [("a", b"2")])
    empty_any = make_matcher(ExchangeType.HEADERS, "", {"x-match": "any"})
    assert not empty_any("", [])
    assert make_matcher(ExchangeType.HEADERS, "", {})("", [])
    with_x = make_matcher(ExchangeType.HEADERS, "", {"x-match": "all-with-x", "x-k": "v"})
    assert with_x("", [("x-k", b"v")]) and not with_x("", [])


def registry_with(*queues: str) -> Registry:
    reg = Registry("/")
    for q in queues:
        reg.add_queue(Queue(q))
    return reg


def declare(reg: Registry, name: str, kind: str, **kw: object) -> None:
    args = {"durable": True, "auto_delete": False, "internal": False, "arguments": {},
            "passive": False}
    args.update(kw)
    reg.declare_exchange(name, kind, **args)  # type: ignore[arg-type]


def test_direct_fanout_routing_and_default_exchange() -> None:
    reg = registry_with("q1", "q2")
    declare(reg, "d", "direct")
    declare(reg, "f", "fanout")
    reg.add_binding(Binding.create("d", Q, "q1", "k"))
    reg.add_binding(Binding.create("f", Q, "q1", ""))
    reg.add_binding(Binding.create("f", Q, "q2", "x"))
    r = reg.route("d", "k", [])
    assert (r.exchanges, r.queues, r.routed) == (["d"], {"q1"}, True)
    r = reg.route("d", "other", [])
    assert (r.exchanges, r.queues, r.routed) == (["d"], set(), False)
    assert reg.route("f", "whatever", []).queues == {"q1", "q2"}
    r = reg.route("", "q2", [])
    assert (r.exchanges, r.direct_queue, r.routed) == ([], "q2", True)
    assert not reg.route("", "nope", []).routed


def test_exchange_to_exchange_copies_and_stops_cycles() -> None:
    reg = registry_with("q")
    declare(reg, "a", "topic")
    declare(reg, "b", "direct")
    reg.add_binding(Binding.create("a", X, "b", "#"))
    reg.add_binding(Binding.create("b", X, "a", "k"))  # a cycle
    reg.add_binding(Binding.create("b", Q, "q", "k"))
    r = reg.route("a", "k", [])
    assert r.exchanges == ["a", "b"] and r.queues == {"q"}


def test_alternate_exchange_only_when_unrouted() -> None:
    reg = registry_with("main-q", "ae-q")
    declare(reg, "ae", "fanout")
    declare(reg, "main", "direct", arguments={"alternate-exchange": "ae"})
    reg.add_binding(Binding.create("main", Q, "main-q", "known"))
    reg.add_binding(Binding.create("ae", Q, "ae-q", ""))
    assert reg.route("main", "known", []).queues == {"main-q"}
    r = reg.route("main", "unknown", [])
    assert r.exchanges == ["main", "ae"] and r.queues == {"ae-q"}


def test_declare_equivalence_and_errors() -> None:
    reg = Registry("/")
    declare(reg, "x", "direct")
    declare(reg, "x", "direct")  # same: fine
    with pytest.raises(AMQPChannelError) as info:
        declare(reg, "x", "fanout")
    assert info.value.reply_code is ReplyCode.PRECONDITION_FAILED
    with pytest.raises(AMQPChannelError) as info:
        declare(reg, "x", "direct", durable=False)
    assert "durable" in info.value.reply_text
    with pytest.raises(AMQPChannelError) as info:
        declare(reg, "missing", "direct", passive=True)
    assert info.value.reply_code is ReplyCode.NOT_FOUND
    with pytest.raises(AMQPConnectionError) as cinfo:
        declare(reg, "y", "x-weird")
    assert cinfo.value.reply_code is ReplyCode.COMMAND_INVALID
    assert "amq.topic" in reg.exchanges and "" in reg.exchanges


def test_delete_exchange_if_unused_and_bindings_removed() -> None:
    reg = registry_with("q")
    declare(reg, "x", "direct")
    reg.add_binding(Binding.create("x", Q, "q", "k"))
    with pytest.raises(AMQPChannelError):
        reg.delete_exchange("x", if_unused=True)
    removed = reg.delete_exchange("x", if_unused=False)
    assert len(removed) == 1 and not reg.bindings_to(Q, "q")
    assert reg.delete_exchange("x", if_unused=False) == []


def test_binding_identity_includes_arguments() -> None:
    a = Binding.create("x", Q, "q", "k", {"n": 1})
    b = Binding.create("x", Q, "q", "k", {"n": 1})
    c = Binding.create("x", Q, "q", "k", {"n": 2})
    assert a == b and hash(a) == hash(b) and a != c
    assert Binding.from_json(a.to_json()) == a
    assert Binding.from_json(a.to_json()).arguments == {"n": 1}
    reg = registry_with("q")
    declare(reg, "x", "headers")
    assert reg.add_binding(a) and not reg.add_binding(b) and reg.add_binding(c)
    assert reg.remove_binding(b) and not reg.remove_binding(a)


def test_queue_arguments_validation() -> None:
    parsed = QueueArguments.parse({"x-message-ttl": 10, "x-dead-letter-exchange": "d",
                                   "x-overflow": "reject-publish",
                                   "x-single-active-consumer": True})
    assert parsed.message_ttl_ms == 10 and parsed.dead_letter_exchange == "d"
    assert parsed.overflow == "reject-publish" and parsed.single_active_consumer
    for bad in ({"x-max-length": -1}, {"x-expires": 0}, {"x-message-ttl": "1"},
                {"x-overflow": "explode"}):
        with pytest.raises(AMQPChannelError) as info:
            QueueArguments.parse(bad)
        assert info.value.reply_code is ReplyCode.PRECONDITION_FAILED
    name = server_generated_name()
    assert name.startswith("amq.gen-") and len(name) == 30
