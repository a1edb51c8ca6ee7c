"""Sans-IO MQTT session state: subscriptions, overlap folding, QoS 1/2 both ways, aliases."""

from __future__ import annotations

import pytest

from handlers.mqtt.errors import ProtocolError
from handlers.mqtt.handler import MqttSettings
from handlers.mqtt.reason_codes import ReasonCode
from handlers.mqtt.session_state import (
    ConnectionState,
    InboundResult,
    Match,
    OutboundAliases,
    SessionState,
    SubscriptionEntry,
)


def test_overlapping_subscriptions_fold_to_highest_qos_and_all_identifiers() -> None:
    s: SessionState[str] = SessionState("c")
    s.subscribe(SubscriptionEntry("a/#", 0, identifier=1))
    s.subscribe(SubscriptionEntry("a/+/c", 2, identifier=2, retain_as_published=True))
    s.subscribe(SubscriptionEntry("b/#", 1, identifier=3))
    assert s.match("a/b/c") == Match(2, (1, 2), True, False)
    assert s.match("a/x") == Match(0, (1,), False, False)
    assert s.match("c") is None


def test_no_local_only_when_every_matching_subscription_asks_for_it() -> None:
    s: SessionState[str] = SessionState("c")
    s.subscribe(SubscriptionEntry("a/#", 1, no_local=True))
    match = s.match("a/b")
    assert match is not None and match.no_local
    s.subscribe(SubscriptionEntry("a/b", 1))
    match = s.match("a/b")
    assert match is not None and not match.no_local


def test_shared_subscriptions_are_matched_separately() -> None:
    s: SessionState[str] = SessionState("c")
    s.subscribe(SubscriptionEntry("$share/g/a/#", 1))
    assert s.match("a/b") is None
    assert s.match("a/b", "$share/g/a/#") == Match(1, (), False, False)
    assert s.match("x/b", "$share/g/a/#") is None
    entry = s.subscriptions["$share/g/a/#"]
    assert entry.share_group == "g" and entry.match_filter == "a/#"


def test_dollar_topics_do_not_match_wildcards() -> None:
    s: SessionState[str] = SessionState("c")
    s.subscribe(SubscriptionEntry("#", 1))
    assert s.match("$SYS/x") is None
    s.subscribe(SubscriptionEntry("$SYS/#", 0))
    assert s.match("$SYS/x") == Match(0, (), False, False)


def test_subscribe_replaces_and_unsubscribe_reports() -> None:
    s: SessionState[str] = SessionState("c")
    assert not s.subscribe(SubscriptionEntry("a", 0))
    assert s.subscribe(SubscriptionEntry("a", 2))
    assert s.subscriptions["a"].qos == 2
    assert s.unsubscribe("a")
    assert not s.unsubscribe("a")


def test_inbound_qos2_is_stored_once_until_pubrel() -> None:
    s: SessionState[str] = SessionState("c")
    assert s.classify_qos2(7) == InboundResult.STORE
    s.stored_qos2(7)
    assert s.classify_qos2(7) == InboundResult.DUPLICATE
    assert s.release(7)
    assert not s.release(7)
    assert s.classify_qos2(7) == InboundResult.STORE


def test_outbound_qos1_and_qos2_flows() -> None:
    s: SessionState[str] = SessionState("c")
    p1 = s.start_outbound(1, "one")
    p2 = s.start_outbound(2, "two")
    assert p1 != p2 and s.outbound_in_flight == 2
    assert s.pubrec(p1) == (False, None)  # wrong kind of ack for QoS 1
    flight = s.puback(p1)
    assert flight is not None and flight.token == "one"
    assert s.puback(p1) is None
    release, flight2 = s.pubrec(p2)
    assert release and flight2 is not None and flight2.token == "two"
    assert list(s.pending_releases()) == [p2]
    assert s.outbound_in_flight == 1
    assert s.pubrec(p2) == (True, None)  # a repeated PUBREC asks for PUBREL again
    assert s.pubcomp(p2) and not s.pubcomp(p2)
    assert s.outbound_in_flight == 0


def test_pubrec_with_error_code_ends_the_exchange() -> None:
    s: SessionState[str] = SessionState("c")
    pid = s.start_outbound(2, "t")
    release, flight = s.pubrec(pid, 0x80)
    assert not release and flight is not None
    assert s.outbound_in_flight == 0


def test_packet_ids_skip_those_in_use_and_wrap() -> None:
    s: SessionState[int] = SessionState("c")
    s._next_id = 0xFFFF
    first = s.start_outbound(1, 0)
    second = s.start_outbound(1, 1)
    assert (first, second) == (0xFFFF, 1)
    s._next_id = 1
    assert s.start_outbound(1, 2) == 2
    assert sorted(s.drop_outbound()) == [0, 1, 2]
    assert s.outbound_in_flight == 0


def test_start_outbound_refuses_qos0() -> None:
    with pytest.raises(ValueError):
        SessionState[int]("c").start_outbound(0, 1)


def test_persistence_round_trip() -> None:
    s: SessionState[int] = SessionState("client/1", 5, 300)
    s.subscribe(SubscriptionEntry("a/#", 1, True, True, 2, 9))
    s.subscribe(SubscriptionEntry("$share/g/b", 2))
    back: SessionState[int] = SessionState.from_json(s.to_json())
    assert back.client_id == "client/1" and back.expiry_interval == 300
    assert back.subscriptions == s.subscriptions
    with pytest.raises(ValueError):
        SessionState.from_json(b"{}")


def test_topic_aliases() -> None:
    c = ConnectionState(topic_alias_maximum=2, receive_maximum=3)
    assert c.resolve_topic("a/b", None) == "a/b"
    assert c.resolve_topic("a/b", 1) == "a/b"
    assert c.resolve_topic("", 1) == "a/b"
    assert c.resolve_topic("c", 1) == "c"
    with pytest.raises(ProtocolError) as bad:
        c.resolve_topic("x", 3)
    assert bad.value.reason_code == ReasonCode.TOPIC_ALIAS_INVALID
    with pytest.raises(ProtocolError):
        c.resolve_topic("", 2)  # never set
    with pytest.raises(ProtocolError):
        c.resolve_topic("", None)


def test_receive_maximum() -> None:
    c = ConnectionState(topic_alias_maximum=0, receive_maximum=2)
    c.check_receive_maximum(1)
    with pytest.raises(ProtocolError) as exc:
        c.check_receive_maximum(2)
    assert exc.value.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


def test_outbound_aliases() -> None:
    a = OutboundAliases(2)
    assert a.lookup("x") == (1, False)
    assert a.lookup("x") == (1, False)  # not committed: still new
    a.commit("x", 1)
    assert a.lookup("x") == (1, True)
    assert a.lookup("y") == (2, False)
    a.commit("y", 2)
    assert a.lookup("z") == (None, False)
    a.commit("z", 3)  # ignored: out of range
    assert a.lookup("z") == (None, False)
    assert OutboundAliases(0).lookup("x") == (None, False)


def test_settings_parse() -> None:
    s = MqttSettings.parse({"namespace": "t/ns", "receive_maximum": 10, "allow_anonymous": True,
                            "retained_store": "metadata", "connect_timeout": 2})
    assert (s.namespace, s.receive_maximum, s.allow_anonymous, s.retained_store) == (
        "t/ns", 10, True, "metadata")
    assert MqttSettings.parse({}) == MqttSettings()
    for bad in ({"nope": 1}, {"receive_maximum": 0}, {"receive_maximum": True},
                {"namespace": "no-slash"}, {"allow_anonymous": "yes"},
                {"retained_store": "disk"}, {"connect_timeout": 0},
                {"max_packet_size": 1}):
        with pytest.raises(ValueError):
            MqttSettings.parse(bad)
