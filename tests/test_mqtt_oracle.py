"""The MQTT 5 codec cross-checked against the Rust-backed ``mqtt5`` package as an oracle.

Three directions: fixtures decode to the same fields in both codecs; packets we encode decode
there with the same fields; packets it encodes decode here with the same fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mqtt5
import pytest

from handlers.mqtt import (
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    decode,
    encode,
)
from handlers.mqtt.packets import Packet

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "mqtt"
V5_FIXTURES = {
    p.stem: bytes.fromhex(p.read_text().strip()) for p in sorted(FIXTURE_DIR.glob("*_v5_*.hex"))
}


def _users(value: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in value]


def _will_ours(will: Will | None) -> dict[str, Any] | None:
    if will is None:
        return None
    p = will.properties
    return {
        "topic": will.topic, "payload": bytes(will.payload), "qos": will.qos,
        "retain": will.retain, "payload_format_indicator": p.payload_format_indicator or 0,
        "message_expiry_interval": p.message_expiry_interval, "content_type": p.content_type,
        "response_topic": p.response_topic, "correlation_data": p.correlation_data,
        "will_delay_interval": p.will_delay_interval or 0,
        "user_properties": list(p.user_properties),
    }


def _will_theirs(will: Any) -> dict[str, Any] | None:
    if will is None:
        return None
    return {
        "topic": will.topic, "payload": will.payload or b"", "qos": int(will.qos),
        "retain": will.retain, "payload_format_indicator": will.payload_format_indicator,
        "message_expiry_interval": will.message_expiry_interval,
        "content_type": will.content_type, "response_topic": will.response_topic,
        "correlation_data": will.correlation_data,
        "will_delay_interval": will.will_delay_interval,
        "user_properties": _users(will.user_properties),
    }


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def ours(packet: Packet) -> tuple[str, dict[str, Any]]:
    """Our packet in the oracle's vocabulary and defaults."""
    p: Properties = getattr(packet, "properties", Properties())
    users = list(p.user_properties)
    if isinstance(packet, Connect):
        return "connect", {
            "client_id": packet.client_id, "username": packet.username,
            "password": packet.password, "clean_start": packet.clean_start,
            "keep_alive": packet.keep_alive, "will": _will_ours(packet.will),
            "session_expiry_interval": p.session_expiry_interval or 0,
            "authentication_method": p.authentication_method,
            "authentication_data": p.authentication_data,
            "request_problem_info": bool(_default(p.request_problem_information, 1)),
            "request_response_info": bool(p.request_response_information),
            "receive_max": _default(p.receive_maximum, 65535),
            "topic_alias_max": p.topic_alias_maximum or 0,
            "max_packet_size": p.maximum_packet_size, "user_properties": users,
        }
    if isinstance(packet, ConnAck):
        return "connack", {
            "session_present": packet.session_present, "reason_code": packet.reason_code,
            "session_expiry_interval": p.session_expiry_interval,
            "assigned_client_id": p.assigned_client_identifier,
            "server_keep_alive": p.server_keep_alive,
            "authentication_method": p.authentication_method,
            "authentication_data": p.authentication_data,
            "response_info": p.response_information, "server_reference": p.server_reference,
            "reason_str": p.reason_string, "receive_max": _default(p.receive_maximum, 65535),
            "topic_alias_max": p.topic_alias_maximum or 0,
            "max_qos": _default(p.maximum_qos, 2),
            "retain_available": bool(_default(p.retain_available, 1)),
            "max_packet_size": p.maximum_packet_size,
            "wildcard_subscription_available": bool(
                _default(p.wildcard_subscription_available, 1)
            ),
            "subscription_id_available": bool(_default(p.subscription_identifier_available, 1)),
            "shared_subscription_available": bool(_default(p.shared_subscription_available, 1)),
            "user_properties": users,
        }
    if isinstance(packet, Publish):
        return "publish", {
            "topic": packet.topic, "payload": bytes(packet.payload), "qos": packet.qos,
            "retain": packet.retain, "packet_id": packet.packet_id, "duplicate": packet.dup,
            "payload_format_indicator": p.payload_format_indicator or 0,
            "message_expiry_interval": p.message_expiry_interval,
            "content_type": p.content_type, "response_topic": p.response_topic,
            "correlation_data": p.correlation_data,
            "subscription_ids": list(p.subscription_identifiers),
            "topic_alias": p.topic_alias, "user_properties": users,
        }
    if isinstance(packet, PubAck | PubRec | PubRel | PubComp):
        return type(packet).__name__.lower(), {
            "packet_id": packet.packet_id, "reason_code": packet.reason_code,
            "reason_str": p.reason_string, "user_properties": users,
        }
    if isinstance(packet, Subscribe):
        return "subscribe", {
            "packet_id": packet.packet_id,
            "topic_filters": [
                (s.topic_filter, s.qos, s.no_local, s.retain_as_published, s.retain_handling)
                for s in packet.subscriptions
            ],
            "subscription_id": (p.subscription_identifiers or (None,))[0],
            "user_properties": users,
        }
    if isinstance(packet, SubAck | UnsubAck):
        return type(packet).__name__.lower(), {
            "packet_id": packet.packet_id, "reason_codes": list(packet.reason_codes),
            "reason_str": p.reason_string, "user_properties": users,
        }
    if isinstance(packet, Unsubscribe):
        return "unsubscribe", {
            "packet_id": packet.packet_id, "patterns": list(packet.topic_filters),
            "user_properties": users,
        }
    if isinstance(packet, PingReq | PingResp):
        return type(packet).__name__.lower(), {}
    if isinstance(packet, Disconnect):
        return "disconnect", {
            "reason_code": packet.reason_code,
            "session_expiry_interval": p.session_expiry_interval,
            "server_reference": p.server_reference, "reason_str": p.reason_string,
            "user_properties": users,
        }
    assert isinstance(packet, Auth)
    return "auth", {
        "reason_code": packet.reason_code, "authentication_method": p.authentication_method,
        "authentication_data": p.authentication_data, "reason_str": p.reason_string,
        "user_properties": users,
    }


def theirs(packet: Any) -> tuple[str, dict[str, Any]]:
    """An ``mqtt5`` packet in the same normal form as :func:`ours`."""
    name = type(packet).__name__.removesuffix("Packet").lower()
    template = ours(_EXAMPLES[name])[1]
    out: dict[str, Any] = {}
    for key in template:
        if key == "will":
            out[key] = _will_theirs(packet.will)
        elif key == "topic_filters":
            out[key] = [
                (f.pattern, int(f.max_qos), f.no_local, f.retain_as_published,
                 int(f.retain_handling))
                for f in packet.topic_filters
            ]
        elif key in ("reason_codes", "subscription_ids"):
            out[key] = [int(c) for c in getattr(packet, key)]
        elif key == "user_properties":
            out[key] = _users(packet.user_properties)
        else:
            value = getattr(packet, key)
            out[key] = int(value) if isinstance(value, int) and not isinstance(
                value, bool
            ) else value
    return name, out


_FULL_PROPS = Properties(user_properties=(("k", "v"), ("k", "w")), reason_string="because")
_EXAMPLES: dict[str, Packet] = {
    "connect": Connect(
        "client-1", MQTT_5, clean_start=True, keep_alive=30, username="u", password=b"p",
        will=Will("will/t", b"gone", 1, True, Properties(
            will_delay_interval=9, payload_format_indicator=1, message_expiry_interval=50,
            content_type="text/plain", response_topic="r/t", correlation_data=b"c",
            user_properties=(("a", "b"),),
        )),
        properties=Properties(
            session_expiry_interval=60, receive_maximum=10, topic_alias_maximum=5,
            maximum_packet_size=100000, request_problem_information=0,
            request_response_information=1, authentication_method="SCRAM-SHA-256",
            authentication_data=b"first", user_properties=(("x", "1"), ("x", "2")),
        ),
    ),
    "connack": ConnAck(True, 0, Properties(
        session_expiry_interval=30, assigned_client_identifier="auto-1", server_keep_alive=20,
        receive_maximum=100, topic_alias_maximum=8, maximum_qos=1, retain_available=0,
        maximum_packet_size=65536, wildcard_subscription_available=0,
        subscription_identifier_available=0, shared_subscription_available=0,
        response_information="resp/", reason_string="ok", user_properties=(("a", "b"),),
    )),
    "publish": Publish("a/b", b"payload", 1, True, True, 77, Properties(
        payload_format_indicator=1, message_expiry_interval=10, content_type="c/t",
        response_topic="resp", correlation_data=b"\x00\x01", subscription_identifiers=(3,),
        topic_alias=2, user_properties=(("u", "1"), ("u", "2")),
    )),
    "puback": PubAck(1, 0x10, _FULL_PROPS),
    "pubrec": PubRec(2, 0x80, _FULL_PROPS),
    "pubrel": PubRel(3, 0x92, _FULL_PROPS),
    "pubcomp": PubComp(4, 0, _FULL_PROPS),
    "subscribe": Subscribe(5, (
        Subscription("a/+", 2, True, True, 2),
        Subscription("$share/g/b/#", 1, False, False, 1),
        Subscription("c", 0),
    ), Properties(subscription_identifiers=(99,), user_properties=(("s", "1"),))),
    "suback": SubAck(5, (2, 1, 0x87), _FULL_PROPS),
    "unsubscribe": Unsubscribe(6, ("a/+", "c"), Properties(user_properties=(("s", "1"),))),
    "unsuback": UnsubAck(6, (0, 0x11), _FULL_PROPS),
    "pingreq": PingReq(),
    "pingresp": PingResp(),
    "disconnect": Disconnect(0x04, Properties(
        session_expiry_interval=0, reason_string="bye", user_properties=(("d", "1"),),
    )),
    "auth": Auth(0x18, Properties(
        authentication_method="SCRAM-SHA-256", authentication_data=b"\x01\x02",
        reason_string="more", user_properties=(("a", "1"),),
    )),
}

_MINIMAL: list[Packet] = [
    Connect("c"), ConnAck(), Publish("t"), Publish("t", b"x", 2, packet_id=9), PubAck(1),
    PubRec(1), PubRel(1), PubComp(1), SubAck(1, (0,)), UnsubAck(1, (0,)),
    Subscribe(1, (Subscription("t"),)), Unsubscribe(1, ("t",)), Disconnect(),
    Disconnect(0x8E), PubAck(1, 0x10), Auth(0x19),
]


@pytest.mark.parametrize("name", sorted(V5_FIXTURES))
def test_fixture_decodes_the_same_in_both(name: str) -> None:
    data = V5_FIXTURES[name]
    their_packet, consumed = mqtt5.read(memoryview(data))
    assert consumed == len(data)
    our_packet, _ = decode(data, MQTT_5)
    assert ours(our_packet) == theirs(their_packet)


@pytest.mark.parametrize("packet", [*_EXAMPLES.values(), *_MINIMAL], ids=repr)
def test_what_we_encode_decodes_there(packet: Packet) -> None:
    data = encode(packet, MQTT_5)
    their_packet, consumed = mqtt5.read(memoryview(data))
    assert consumed == len(data)
    assert theirs(their_packet) == ours(packet)


@pytest.mark.xfail(
    raises=ValueError, strict=False,
    reason="mqtt5 0.8 wants a property length in AUTH; spec 3.15.2.1 allows remaining length 0",
)
def test_short_auth_decodes_there() -> None:
    data = encode(Auth(), MQTT_5)
    assert data == b"\xf0\x00"
    their_packet, _ = mqtt5.read(memoryview(data))
    assert theirs(their_packet) == ours(Auth())


def _their_examples() -> list[Any]:
    m = mqtt5
    return [
        m.ConnectPacket("c1"),
        m.ConnectPacket(
            "c2", username="u", password=b"p", clean_start=True, keep_alive=15,
            will=m.Will("w/t", payload=b"bye", qos=m.QoS.EXACTLY_ONCE, retain=True,
                        will_delay_interval=3, content_type="text/plain",
                        user_properties=[("a", "b")]),
            session_expiry_interval=100, receive_max=12, topic_alias_max=4,
            max_packet_size=2048, request_problem_info=False, request_response_info=True,
            user_properties=[("k", "v"), ("k", "v2")],
        ),
        m.ConnAckPacket(),
        m.ConnAckPacket(session_present=True, assigned_client_id="gen", receive_max=5,
                        max_qos=m.QoS.AT_LEAST_ONCE, retain_available=False, reason_str="hi",
                        user_properties=[("a", "b")]),
        m.ConnAckPacket(reason_code=m.ConnAckReasonCode.NOT_AUTHORIZED),
        m.PublishPacket("t/1", b"hello"),
        m.PublishPacket("t/2", b"\x00" * 300, qos=m.QoS.EXACTLY_ONCE, packet_id=65535,
                        retain=True, duplicate=True, payload_format_indicator=1,
                        message_expiry_interval=7, content_type="a/b", response_topic="r",
                        correlation_data=b"x", subscription_ids=[1, 268435455],
                        topic_alias=1, user_properties=[("x", "y"), ("x", "z")]),
        m.PubAckPacket(9),
        m.PubAckPacket(9, reason_code=m.PubAckReasonCode.NO_MATCHING_SUBSCRIBERS),
        m.PubRecPacket(9, reason_code=m.PubRecReasonCode.QUOTA_EXCEEDED, reason_str="q"),
        m.PubRelPacket(9, reason_code=m.PubRelReasonCode.PACKET_ID_NOT_FOUND),
        m.PubCompPacket(9, user_properties=[("a", "b")]),
        m.SubscribePacket(3, [m.TopicFilter("a/#", max_qos=m.QoS.AT_LEAST_ONCE,
                                            no_local=True, retain_as_published=False,
                                            retain_handling=m.RetainHandling.SEND_NEVER),
                              m.TopicFilter("+/b")], subscription_id=77),
        m.SubAckPacket(3, [m.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE,
                           m.SubAckReasonCode.TOPIC_FILTER_INVALID]),
        m.UnsubscribePacket(4, ["a/#", "+/b"], user_properties=[("u", "v")]),
        m.UnsubAckPacket(4, [m.UnsubAckReasonCode.SUCCESS,
                             m.UnsubAckReasonCode.NO_SUBSCRIPTION_EXISTED]),
        m.PingReqPacket(),
        m.PingRespPacket(),
        m.DisconnectPacket(),
        m.DisconnectPacket(reason_code=m.DisconnectReasonCode.SERVER_MOVED,
                           server_reference="other:1883", reason_str="moved"),
        m.AuthPacket(),
        m.AuthPacket(reason_code=m.AuthReasonCode.CONTINUE_AUTHENTICATION,
                     authentication_method="M", authentication_data=b"d"),
    ]


@pytest.mark.parametrize("their_packet", _their_examples(), ids=lambda p: type(p).__name__)
def test_what_they_encode_decodes_here(their_packet: Any) -> None:
    data = their_packet.write()
    packet, consumed = decode(data, MQTT_5)
    assert consumed == len(data)
    assert ours(packet) == theirs(their_packet)
