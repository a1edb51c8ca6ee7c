"""Configuration: TOML parsing with clear errors, overrides, and the CLI's exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.cli import main
from core.config import (
    Config,
    ConfigError,
    ListenerConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_host_port,
)
from storage.api import DurabilityPolicy, SyncMode


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "polystream.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_defaults_need_no_file() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.data_dir == Path("polystream-data") and cfg.listeners is None
    assert cfg.durability == DurabilityPolicy() and cfg.shutdown_grace_s == 10.0


def test_full_file_is_parsed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
data_dir = "data"
durability = "interval:50"
shutdown_grace_s = 2

[core]
default_namespace = "ns"
max_message_bytes = 2048
auto_create_topics = false

[users]
guest_loopback_only = false

[[listeners]]
handler = "kafka"
host = "127.0.0.1"

[[listeners]]
name = "kafka-public"
handler = "kafka"
port = 19092
max_connections = 5

[handlers.kafka]
advertised_host = "example.org"
"""))
    assert cfg.data_dir == tmp_path / "data"  # relative to the file
    assert cfg.durability == DurabilityPolicy(SyncMode.INTERVAL, 50)
    assert cfg.shutdown_grace_s == 2.0
    assert cfg.core.default_namespace == "ns" and cfg.core.max_message_bytes == 2048
    assert cfg.core.auto_create_topics is False and cfg.core.guest_loopback_only is False
    assert cfg.listeners == (
        ListenerConfig(name="kafka", handler="kafka", host="127.0.0.1", port=None),
        ListenerConfig(name="kafka-public", handler="kafka", port=19092, max_connections=5),
    )
    assert cfg.handler_settings("kafka") == {"advertised_host": "example.org"}
    assert cfg.handler_settings("mqtt") == {}


@pytest.mark.parametrize(("text", "message"), [
    ("bogus = 1\nother = 2", "unknown top-level settings: bogus, other"),
    ("[core]\nnope = 1", "core: unknown setting 'nope'"),
    ('[core]\nmax_message_bytes = "big"',
     "core.max_message_bytes: expected an integer, got a string ('big')"),
    ("[core]\nretention_ms = true", "core.retention_ms: expected an integer, got True"),
    ("[core]\nauto_create_topics = 1", "core.auto_create_topics: expected true or false, got an "
     "integer (1)"),
    ("core = 3", "core: expected a table, got an integer (3)"),
    ("[users]\nadmins = []", "users: unknown setting 'admins'"),
    ('[users]\nguest_loopback_only = "yes"',
     "users.guest_loopback_only: expected true or false, got a string ('yes')"),
    ("data_dir = 5", "data_dir: expected a string, got an integer (5)"),
    ('durability = "sometimes"', "durability: unknown durability policy 'sometimes'"),
    ('durability = "interval:0"', "durability: interval needs a positive number"),
    ("shutdown_grace_s = -1", "shutdown_grace_s: must be at least 0, got -1"),
    ('shutdown_grace_s = "soon"', "shutdown_grace_s: expected a number, got a string ('soon')"),
    ('listeners = "kafka"', "listeners: expected an array, got a string ('kafka')"),
    ("[[listeners]]\nport = 1", 'listeners[0]: needs handler = "<handler name>"'),
    ('[[listeners]]\nhandler = "kafka"\nprot = 1', "listeners[0]: unknown settings prot"),
    ('[[listeners]]\nhandler = "kafka"\nport = "9092"',
     "listeners[0].port: expected an integer, got a string ('9092')"),
    ('[[listeners]]\nhandler = "kafka"\nport = 70000',
     "listeners[0].port: must be 0..65535, got 70000"),
    ('[[listeners]]\nhandler = "kafka"\nmax_connections = 0',
     "listeners[0].max_connections: must be at least 1, got 0"),
    ('[[listeners]]\nhandler = "kafka"\n[[listeners]]\nhandler = "mqtt"\n'
     '[[listeners]]\nhandler = "kafka"\nport = 1',
     "listeners: names must be unique; repeated: kafka"),
    ('[[listeners]]\nhandler = 7', "listeners[0].handler: expected a string, got an integer"),
    ('handlers = { kafka = 1 }', "handlers.kafka: expected a table, got an integer (1)"),
])
def test_invalid_settings_have_clear_messages(tmp_path: Path, text: str, message: str) -> None:
    assert message in error_of(tmp_path, text)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "data_dir = \n")
    assert message.startswith(str(tmp_path / "polystream.toml"))
    assert "line 1" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*absent\.toml"):
        load_config(tmp_path / "absent.toml")


def test_listener_override_adds_exactly_those_listeners() -> None:
    cfg = config_from_dict({"listeners": [
        {"name": "public", "handler": "kafka", "port": 9092, "max_connections": 7},
        {"handler": "mqtt"},
    ]})
    out = apply_overrides(cfg, Path("/d"), ["public=127.0.0.1:0", "amqp=[::1]:5673"])
    assert out.data_dir == Path("/d")
    assert out.listeners == (
        ListenerConfig(name="public", handler="kafka", host="127.0.0.1", port=0,
                       max_connections=7),
        ListenerConfig(name="amqp", handler="amqp", host="::1", port=5673),
    )
    assert apply_overrides(cfg, None, None) == cfg
    assert apply_overrides(cfg, None, []) == cfg


@pytest.mark.parametrize(("specs", "message"), [
    (["kafka"], "--listener: expected NAME=HOST:PORT, got 'kafka'"),
    (["=127.0.0.1:1"], "--listener: expected NAME=HOST:PORT"),
    (["kafka=localhost"], "--listener kafka: expected HOST:PORT, got 'localhost'"),
    (["kafka=h:99999"], "--listener kafka: port out of range: 99999"),
    (["kafka=h:1", "kafka=h:2"], "--listener: each name may be given once"),
])
def test_bad_listener_overrides(specs: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), None, specs)
    assert message in str(info.value)


def test_parse_host_port() -> None:
    assert parse_host_port(":9092", "x") == ("0.0.0.0", 9092)
    assert parse_host_port("[::]:1", "x") == ("::", 1)
    assert parse_host_port("example.org:0", "x") == ("example.org", 0)


def test_cli_config_error_exits_2_with_message_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, "[core]\nmax_message_bytes = \"big\"\n")
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == ("polystream: error: core.max_message_bytes: expected an integer, "
                   "got a string ('big')\n")


def test_cli_toml_error_and_bad_listener_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--config", str(write(tmp_path, "[core\n"))]) == 2
    assert "polystream: error: " in capsys.readouterr().err
    assert main(["serve", "--listener", "kafka:9092"]) == 2
    assert "expected NAME=HOST:PORT" in capsys.readouterr().err
    assert main(["users", "list", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["users"]) == 2
    assert main(["serve", "--log-level", "chatty"]) == 2
    assert "usage: polystream" in capsys.readouterr().err
