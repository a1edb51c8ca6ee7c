"""Vhosts on a memory:// core: namespace mapping, topics, persistence, routing into topics,
queue lifecycle and ``x-expires`` on trio's MockClock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.names import NamespaceName
from core.records import Message, decode_batch
from core.subscriptions import SubscriptionManager, open_subscription_manager
from handlers.amqp.broker.bindings import DestinationKind
from handlers.amqp.broker.topics import NAME_MEMO_SIZE, TopicNames
from handlers.amqp.broker.vhosts import (
    VhostDirectory,
    VirtualHost,
    exchange_topic_name,
    namespace_for_vhost,
)
from handlers.amqp.errors import AMQPChannelError, ReplyCode
from storage import open_storage

DEFAULT = NamespaceName("public", "default")
Q = DestinationKind.QUEUE


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage("memory://") as storage, open_core(storage, settings) as c:
        yield c


@pytest.fixture
async def subs(core: Core) -> AsyncIterator[SubscriptionManager]:
    async with open_subscription_manager(core) as m:
        yield m


def test_vhost_names_map_to_namespaces() -> None:
    assert namespace_for_vhost("/", DEFAULT) == DEFAULT
    assert namespace_for_vhost("", DEFAULT) == DEFAULT
    assert namespace_for_vhost("shop", DEFAULT) == NamespaceName("public", "shop")
    assert namespace_for_vhost("acme/prod", DEFAULT) == NamespaceName("acme", "prod")
    assert namespace_for_vhost("a/b/c", DEFAULT) is None
    assert namespace_for_vhost("bad name!", DEFAULT) is None


def test_exchange_topic_names_escape_what_topics_cannot_hold() -> None:
    assert exchange_topic_name("orders") == "orders"
    assert exchange_topic_name("amq.topic") == "amq.topic"
    assert exchange_topic_name("a b/c") == "a=20b=2Fc"
    assert exchange_topic_name("x=y") == "x=3Dy"
    assert exchange_topic_name("é") == "=C3=A9"
    long = exchange_topic_name("é" * 127)
    assert len(long) <= 200 and long != exchange_topic_name("é" * 126 + "a")


def test_topic_names_are_memoised_within_a_bound() -> None:
    names = TopicNames(NamespaceName("acme", "prod"))
    topic = names.exchange_topic("a b")
    assert str(topic) == "persistent://acme/prod/a=20b"
    assert names.exchange_topic("a b") is topic
    assert str(names.queue_topic("a b")) == "persistent://acme/prod/amq.queue.a=20b"
    for i in range(NAME_MEMO_SIZE + 10):
        assert names.queue_topic(f"q{i}").local == f"amq.queue.q{i}"
    assert len(names._queues) <= NAME_MEMO_SIZE
    assert names.exchange_topic("a b") is topic  # the other kind's memo is untouched


async def test_unknown_vhost_is_refused(core: Core, subs: SubscriptionManager) -> None:
    vhosts = VhostDirectory(core, subs)
    assert await vhosts.open("nope") is None
    assert await vhosts.open("a/b/c") is None
    await core.create_namespace("public/shop")
    shop = await vhosts.open("shop")
    assert shop is not None and shop.namespace == NamespaceName("public", "shop")
    assert await vhosts.open("shop") is shop


async def read_all(core: Core, topic: str) -> list[Message]:
    out: list[Message] = []
    for entry in await core.read(topic, 0, 0, 1 << 20):
        out += [m.message for m in decode_batch(entry.batch)]
    return out


async def test_publish_appends_to_exchange_topic_and_queue_topics(
        core: Core, subs: SubscriptionManager) -> None:
    vhost = VirtualHost("/", DEFAULT, core, subs)
    await vhost.declare_exchange("orders", "topic", durable=True, auto_delete=False,
                                 internal=False, arguments={}, passive=False)
    await vhost.declare_queue("eu", durable=True, exclusive=False, auto_delete=False,
                              arguments={}, passive=False, connection_id=1)
    await vhost.bind(Q, "eu", "orders", "orders.eu.*", {}, 1)
    routed = []
    for key in ("orders.eu.new", "orders.us.new"):
        message = Message(key.encode(), b"v", [], 1)
        routed.append((message, vhost.route("orders", message)))
    direct = Message(b"eu", b"direct", [], 1)
    routed.append((direct, vhost.route("", direct)))
    assert [r.routed for _, r in routed] == [True, False, True]
    await vhost.store(routed)
    assert [m.key for m in await read_all(core, "orders")] == [b"orders.eu.new",
                                                              b"orders.us.new"]
    assert [m.value for m in await read_all(core, "amq.queue.eu")] == [b"direct"]
    # the queue holds its direct message and the matching one (the other is filtered on read)
    consumer = await vhost.attach(vhost.registry.queue("eu"), "orders", "c", 10)
    consumer.flow(10)
    with trio.fail_after(5):
        delivery = await consumer.receive()
    assert delivery.message.key == b"orders.eu.new"
    consumer.close()


async def test_durable_entities_come_back(core: Core, subs: SubscriptionManager) -> None:
    first = VirtualHost("/", DEFAULT, core, subs)
    await first.declare_exchange("keep", "direct", durable=True, auto_delete=False,
                                 internal=False, arguments={"alternate-exchange": "ae"},
                                 passive=False)
    await first.declare_exchange("temp", "direct", durable=False, auto_delete=False,
                                 internal=False, arguments={}, passive=False)
    for name, durable in (("kept-q", True), ("temp-q", False)):
        await first.declare_queue(name, durable=durable, exclusive=False, auto_delete=False,
                                  arguments={"x-max-length": 5}, passive=False,
                                  connection_id=1)
    await first.bind(Q, "kept-q", "keep", "k", {"a": 1}, 1)
    await first.bind(Q, "temp-q", "keep", "k", {}, 1)
    again = VirtualHost("/", DEFAULT, core, subs)
    await again.load()
    assert again.registry.exchanges["keep"].alternate_exchange == "ae"
    assert "temp" not in again.registry.exchanges
    assert set(again.registry.queues) == {"kept-q"}
    assert again.registry.queues["kept-q"].parsed.max_length == 5
    [binding] = again.registry.bindings_to(Q, "kept-q")
    assert (binding.routing_key, binding.arguments) == ("k", {"a": 1})
    await first.delete_queue("kept-q", if_unused=False, if_empty=False, connection_id=1)
    third = VirtualHost("/", DEFAULT, core, subs)
    await third.load()
    assert "kept-q" not in third.registry.queues and not third.registry.bindings_from("keep")


async def test_queue_errors(core: Core, subs: SubscriptionManager) -> None:
    vhost = VirtualHost("/", DEFAULT, core, subs)
    await vhost.declare_queue("mine", durable=False, exclusive=True, auto_delete=False,
                              arguments={}, passive=False, connection_id=1)
    with pytest.raises(AMQPChannelError) as info:
        await vhost.declare_queue("mine", durable=False, exclusive=True, auto_delete=False,
                                  arguments={}, passive=False, connection_id=2)
    assert info.value.reply_code is ReplyCode.RESOURCE_LOCKED
    with pytest.raises(AMQPChannelError) as info:
        await vhost.bind(Q, "mine", "", "k", {}, 1)
    assert info.value.reply_code is ReplyCode.ACCESS_REFUSED
    with pytest.raises(AMQPChannelError) as info:
        await vhost.bind(Q, "mine", "no-such-exchange", "k", {}, 1)
    assert info.value.reply_code is ReplyCode.NOT_FOUND
    await vhost.delete_owned_by(1)
    assert "mine" not in vhost.registry.queues
    assert await vhost.delete_queue("mine", if_unused=True, if_empty=True,
                                    connection_id=1) == 0


async def test_unused_queue_expires_on_the_trio_clock(
        core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        vhost = VirtualHost("/", DEFAULT, core, subs, nursery)
        await vhost.declare_queue("brief", durable=False, exclusive=False, auto_delete=False,
                                  arguments={"x-expires": 60_000}, passive=False,
                                  connection_id=1)
        await trio.sleep(50)
        await vhost.declare_queue("brief", durable=False, exclusive=False, auto_delete=False,
                                  arguments={"x-expires": 60_000}, passive=True,
                                  connection_id=1)  # a use: the clock starts again
        await trio.sleep(50)
        assert "brief" in vhost.registry.queues
        await trio.sleep(20)
        assert "brief" not in vhost.registry.queues


async def test_restart_sweeps_what_transient_queues_left(
        core: Core, subs: SubscriptionManager) -> None:
    first = VirtualHost("/", DEFAULT, core, subs)
    await first.declare_exchange("ex", "direct", durable=True, auto_delete=False,
                                 internal=False, arguments={}, passive=False)
    for name, durable in (("stays", True), ("goes", False)):
        await first.declare_queue(name, durable=durable, exclusive=False, auto_delete=False,
                                  arguments={}, passive=False, connection_id=1)
        await first.bind(Q, name, "ex", "k", {}, 1)
    assert subs.get("ex", "amqp-queue:goes") is not None
    again = VirtualHost("/", DEFAULT, core, subs)  # as after a crash: nothing was deleted
    await again.load()
    topics = {t.name.local for t in await core.list_topics(DEFAULT)}
    assert "amq.queue.stays" in topics and "amq.queue.goes" not in topics
    assert subs.get("ex", "amqp-queue:goes") is None
    assert subs.get("ex", "amqp-queue:stays") is not None
