"""The handler registry: entry-point discovery, loading, and listener resolution."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
from conftest import BROKEN_PLUGINS_DIR, PLUGINS_DIR

from core.config import Config, ListenerConfig
from core.handler import ProtocolHandler
from core.registry import (
    ENTRY_POINT_GROUP,
    HandlerLoadError,
    HandlerRegistry,
    UnknownHandlerError,
)


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


@pytest.fixture
def plugins_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))


@pytest.mark.usefixtures("plugins_on_path")
def test_discovers_test_plugin_distribution_through_entry_points() -> None:
    registry = HandlerRegistry.from_environment()
    assert {"echo", "failstart"} <= set(registry.names())
    cls = registry.load("echo")
    assert issubclass(cls, ProtocolHandler)
    assert cls.__name__ == "EchoHandler" and cls.default_port == 7007
    assert "polystream-testplugin 0.0" in registry.describe("echo")
    handler = registry.create("echo")
    assert isinstance(handler, cls)
    assert registry.load("echo") is cls  # cached


def test_without_plugin_dir_the_test_handlers_are_not_installed() -> None:
    assert "echo" not in HandlerRegistry.from_environment()


@pytest.mark.usefixtures("plugins_on_path")
def test_unknown_handler_lists_known_ones() -> None:
    registry = HandlerRegistry.from_environment()
    with pytest.raises(UnknownHandlerError) as info:
        registry.load("nope")
    message = str(info.value)
    assert "unknown handler 'nope'" in message
    assert "echo" in message and "failstart" in message


def test_unknown_handler_when_none_installed_says_so() -> None:
    registry = HandlerRegistry([])
    cfg = Config(listeners=(ListenerConfig(name="k1", handler="kafka"),))
    with pytest.raises(UnknownHandlerError) as info:
        registry.resolve_listeners(cfg)
    assert "unknown handler 'kafka' (listener 'k1')" in str(info.value)
    assert f"none installed (entry-point group {ENTRY_POINT_GROUP})" in str(info.value)


def test_import_failure_is_reported_with_entry_point_and_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BROKEN_PLUGINS_DIR))
    registry = HandlerRegistry.from_environment()
    assert "broken" in registry.names()  # listed without importing it
    with pytest.raises(HandlerLoadError) as info:
        registry.load("broken")
    message = str(info.value)
    assert "broken = polystream_brokenplugin:BrokenHandler" in message
    assert "failed to import" in message
    assert "ImportError: polystream_brokenplugin needs a library" in message


def test_missing_module_and_missing_attribute_are_load_errors() -> None:
    registry = HandlerRegistry([ep("gone", "no_such_module_xyz:Handler"),
                                ep("noattr", "core.handler:NoSuchHandler")])
    with pytest.raises(HandlerLoadError, match="ModuleNotFoundError"):
        registry.load("gone")
    with pytest.raises(HandlerLoadError, match="AttributeError"):
        registry.load("noattr")


def test_entry_point_that_is_not_a_handler_class_is_rejected() -> None:
    registry = HandlerRegistry([ep("cfg", "core.config:Config"),
                                ep("fn", "core.config:load_config")])
    with pytest.raises(HandlerLoadError, match="not a ProtocolHandler subclass"):
        registry.load("cfg")
    with pytest.raises(HandlerLoadError, match="not a ProtocolHandler subclass"):
        registry.load("fn")


def test_first_declaration_of_a_name_wins() -> None:
    registry = HandlerRegistry([ep("echo", "polystream_testplugin:EchoHandler"),
                                ep("echo", "elsewhere:Other")])
    assert registry.names() == ["echo"]
    assert "polystream_testplugin:EchoHandler" in registry.describe("echo")


@pytest.mark.usefixtures("plugins_on_path")
def test_no_listeners_configured_means_every_handler_on_its_default_port() -> None:
    registry = HandlerRegistry([ep("echo", "polystream_testplugin:EchoHandler"),
                                ep("other", "polystream_testplugin:FailingStartHandler")])
    listeners = registry.resolve_listeners(Config())
    assert listeners == [
        ListenerConfig(name="echo", handler="echo", host="0.0.0.0", port=7007),
        ListenerConfig(name="other", handler="other", host="0.0.0.0", port=7008),
    ]


@pytest.mark.usefixtures("plugins_on_path")
def test_configured_listener_without_port_gets_the_handler_default() -> None:
    registry = HandlerRegistry([ep("echo", "polystream_testplugin:EchoHandler")])
    cfg = Config(listeners=(ListenerConfig(name="a", handler="echo", host="127.0.0.1"),
                            ListenerConfig(name="b", handler="echo", port=0)))
    a, b = registry.resolve_listeners(cfg)
    assert (a.name, a.host, a.port) == ("a", "127.0.0.1", 7007)
    assert (b.name, b.port) == ("b", 0)


def test_no_handlers_and_no_listeners_resolves_to_nothing() -> None:
    assert HandlerRegistry([]).resolve_listeners(Config()) == []
