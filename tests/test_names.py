"""Topic, namespace and tenant names."""

from __future__ import annotations

import pytest

from core.errors import InvalidName, InvalidTopicName
from core.names import NamespaceName, TopicName


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders", TopicName("public", "default", "orders")),
        ("persistent://acme/prod/orders", TopicName("acme", "prod", "orders")),
        ("acme/prod/orders", TopicName("acme", "prod", "orders")),
        ("a.b_c-D=9", TopicName("public", "default", "a.b_c-D=9")),
        ("orders-partition-3", TopicName("public", "default", "orders", 3)),
        ("persistent://t/n/x-partition-0", TopicName("t", "n", "x", 0)),
        # leading zeros are not a partition suffix: part of the name
        ("x-partition-01", TopicName("public", "default", "x-partition-01")),
        ("a" * 249, TopicName("public", "default", "a" * 249)),
    ],
)
def test_parse_valid(text: str, expected: TopicName) -> None:
    assert TopicName.parse(text) == expected


def test_short_names_use_the_given_defaults() -> None:
    assert TopicName.parse("t", "acme", "dev") == TopicName("acme", "dev", "t")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a b",
        "a:b",
        "caf\u00e9",
        ".",
        "..",
        "a" * 250,
        "non-persistent://public/default/x",
        "persistent://public/default",
        "persistent://x",
        "public/x",
        "t/n/x/y",
        "persistent://public//x",
        "persistent:///default/x",
        "persistent://public/default/",
        f"persistent://{'t' * 65}/n/x",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidTopicName):
        TopicName.parse(text)


def test_invalid_topic_name_is_an_invalid_name_and_value_error() -> None:
    with pytest.raises(InvalidName):
        TopicName.parse("bad name")
    with pytest.raises(ValueError):
        TopicName.parse("bad name")


def test_topic_names_may_not_end_in_a_partition_suffix() -> None:
    with pytest.raises(InvalidTopicName):
        TopicName("public", "default", "x-partition-2")


def test_partition_suffix_counts_toward_the_length_limit() -> None:
    with pytest.raises(InvalidTopicName):
        TopicName("public", "default", "a" * 245, 12345)
    with pytest.raises(InvalidTopicName):
        TopicName("public", "default", "a", -1)


def test_str_round_trips() -> None:
    for text in ("persistent://acme/prod/orders", "persistent://acme/prod/orders-partition-7"):
        assert str(TopicName.parse(text)) == text
    assert str(TopicName.parse("o")) == "persistent://public/default/o"


def test_partitions_and_log_names() -> None:
    topic = TopicName.parse("orders")
    part = topic.with_partition(2)
    assert str(part) == "persistent://public/default/orders-partition-2"
    assert part.base == topic
    assert topic.base is topic
    assert topic.log_name() == "persistent/public/default/orders/p-0"
    assert topic.log_name(5) == "persistent/public/default/orders/p-5"
    assert part.log_name() == "persistent/public/default/orders/p-2"
    assert topic.namespace_name == NamespaceName("public", "default")


def test_namespace_names() -> None:
    assert NamespaceName.parse("acme/prod") == NamespaceName("acme", "prod")
    assert str(NamespaceName("acme", "prod")) == "acme/prod"
    for bad in ("acme", "acme/prod/x", "/prod", "acme/", "ac me/prod", "acme/.."):
        with pytest.raises(InvalidName):
            NamespaceName.parse(bad)
