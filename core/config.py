"""Gateway configuration: embedded defaults, a TOML file, and command-line overrides.

A configuration file is optional; every setting has a default::

    data_dir = "./polystream-data"      # where logs and metadata live
    storage = ""                        # backend URL; "" = local files under data_dir
    durability = "always"               # always | interval:<ms> | never

    [core]
    default_tenant = "public"
    default_namespace = "default"
    max_message_bytes = 1048588          # largest entry (record batch) accepted
    retention_ms = 604800000             # -1 = keep forever
    retention_bytes = -1                 # per partition, -1 = unlimited
    retention_check_interval_ms = 300000
    auto_create_topics = true

    [users]
    guest_loopback_only = true          # guest/guest may connect only from loopback

    [[listeners]]                         # when absent: every installed handler on its port
    name = "kafka"                        # listener name (defaults to the handler name)
    handler = "kafka"
    host = "0.0.0.0"
    port = 9092                           # default: the handler's own default port
    max_connections = 10000

    [handlers.kafka]                      # free-form settings passed to the handler
    advertised_host = "localhost"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from storage.api import DurabilityPolicy


class ConfigError(Exception):
    """The configuration is invalid; the message says where and why."""


DEFAULT_PORTS: dict[str, int] = {"kafka": 9092, "amqp": 5672, "mqtt": 1883}


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One listening socket served by one protocol handler."""

    name: str
    handler: str
    host: str = "0.0.0.0"
    # None: the handler's own ``default_port`` (resolved by the registry)
    port: int | None = None
    max_connections: int = 10_000


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """Settings the core (topics, namespaces, entries) uses."""

    default_tenant: str = "public"
    default_namespace: str = "default"
    max_message_bytes: int = 1_048_588
    retention_ms: int = 7 * 24 * 3600 * 1000
    retention_bytes: int = -1
    retention_check_interval_ms: int = 300_000
    auto_create_topics: bool = True
    guest_loopback_only: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    """The whole gateway configuration."""

    data_dir: Path = Path("./polystream-data")
    storage: str = ""
    durability: DurabilityPolicy = field(default_factory=DurabilityPolicy)
    core: CoreSettings = field(default_factory=CoreSettings)
    # None means "every installed handler on its default port"
    listeners: tuple[ListenerConfig, ...] | None = None
    handlers: dict[str, dict[str, Any]] = field(default_factory=dict)
    shutdown_grace_s: float = 10.0

    @property
    def storage_url(self) -> str:
        return self.storage or f"file://{self.data_dir}"

    def handler_settings(self, name: str) -> dict[str, Any]:
        return dict(self.handlers.get(name, {}))


_TYPE_NAMES: dict[type, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false",
    dict: "a table", list: "an array",
}


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def _toml_type(value: Any) -> str:
    for kind in (bool, int, float, str, dict, list):
        if isinstance(value, kind):
            return _TYPE_NAMES[kind]
    return type(value).__name__


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got {_toml_type(value)} "
                          f"({value!r})")
    return value


def _expect_range(value: int | float, where: str, *, minimum: float,
                  maximum: float | None = None) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum:g}" if maximum is None else f"{minimum:g}..{maximum:g}"
        raise ConfigError(f"{where}: must be {bound}, got {value!r}")


def parse_host_port(text: str, where: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` allowed)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{where}: expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port out of range: {port}")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def config_from_dict(data: dict[str, Any], base_dir: Path = Path(".")) -> Config:
    """Build a :class:`Config` from parsed TOML, rejecting unknown keys."""
    known = {"data_dir", "storage", "durability", "core", "users", "listeners", "handlers",
             "shutdown_grace_s"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown top-level settings: {', '.join(sorted(unknown))}")
    cfg = Config()
    if "data_dir" in data:
        cfg = replace(cfg, data_dir=base_dir / _expect(data["data_dir"], str, "data_dir"))
    if "storage" in data:
        cfg = replace(cfg, storage=_expect(data["storage"], str, "storage"))
    if "durability" in data:
        try:
            policy = DurabilityPolicy.parse(_expect(data["durability"], str, "durability"))
        except ValueError as exc:
            raise ConfigError(f"durability: {exc}") from None
        cfg = replace(cfg, durability=policy)
    if "shutdown_grace_s" in data:
        grace = _expect(data["shutdown_grace_s"], (int, float), "shutdown_grace_s")
        _expect_range(grace, "shutdown_grace_s", minimum=0)
        cfg = replace(cfg, shutdown_grace_s=float(grace))
    core = cfg.core
    core_data = dict(_expect(data.get("core", {}), dict, "core"))
    users = _expect(data.get("users", {}), dict, "users")
    for key, value in users.items():
        if key != "guest_loopback_only":
            raise ConfigError(f"users: unknown setting {key!r}")
        core_data["guest_loopback_only"] = _expect(value, bool, "users.guest_loopback_only")
    for key, value in core_data.items():
        if key not in CoreSettings.__dataclass_fields__:
            raise ConfigError(f"core: unknown setting {key!r}")
        expected = type(getattr(core, key))
        core = replace(core, **{key: _expect(value, expected, f"core.{key}")})
    cfg = replace(cfg, core=core)
    if "listeners" in data:
        listeners = []
        for i, item in enumerate(_expect(data["listeners"], list, "listeners")):
            where = f"listeners[{i}]"
            item = _expect(item, dict, where)
            extra = set(item) - {"name", "handler", "host", "port", "max_connections"}
            if extra:
                raise ConfigError(f"{where}: unknown settings {', '.join(sorted(extra))}")
            if "handler" not in item and "name" not in item:
                raise ConfigError(f'{where}: needs handler = "<handler name>"')
            handler = _expect(item.get("handler", item.get("name")), str, f"{where}.handler")
            name = _expect(item.get("name", handler), str, f"{where}.name")
            port: int | None = None
            if "port" in item:
                port = _expect(item["port"], int, f"{where}.port")
                _expect_range(port, f"{where}.port", minimum=0, maximum=65535)
            max_connections = _expect(item.get("max_connections", 10_000), int,
                                      f"{where}.max_connections")
            _expect_range(max_connections, f"{where}.max_connections", minimum=1)
            listeners.append(ListenerConfig(
                name=name, handler=handler,
                host=_expect(item.get("host", "0.0.0.0"), str, f"{where}.host"),
                port=port,
                max_connections=max_connections,
            ))
        names = [lc.name for lc in listeners]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"listeners: names must be unique; repeated: {', '.join(duplicates)}"
                              " (set name = \"...\" to tell listeners of one handler apart)")
        cfg = replace(cfg, listeners=tuple(listeners))
    if "handlers" in data:
        handlers = _expect(data["handlers"], dict, "handlers")
        for name, settings in handlers.items():
            _expect(settings, dict, f"handlers.{name}")
        cfg = replace(cfg, handlers={k: dict(v) for k, v in handlers.items()})
    return cfg


def load_config(path: Path | None) -> Config:
    """Read a TOML file (paths inside it are relative to the file), or the defaults."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config_from_dict(data, base_dir=path.parent)


def apply_overrides(
    cfg: Config, data_dir: Path | None, listeners: list[str] | None
) -> Config:
    """Apply ``--data-dir`` and ``--listener NAME=HOST:PORT`` (exactly those listeners run)."""
    if data_dir is not None:
        cfg = replace(cfg, data_dir=data_dir)
    if listeners:
        configured = {lc.name: lc for lc in cfg.listeners or ()}
        chosen: list[ListenerConfig] = []
        for spec in listeners:
            name, sep, addr = spec.partition("=")
            if not sep or not name:
                raise ConfigError(f"--listener: expected NAME=HOST:PORT, got {spec!r}")
            host, port = parse_host_port(addr, f"--listener {name}")
            base = configured.get(name, ListenerConfig(name=name, handler=name))
            chosen.append(replace(base, host=host, port=port))
        names = [lc.name for lc in chosen]
        if len(set(names)) != len(names):
            raise ConfigError("--listener: each name may be given once")
        cfg = replace(cfg, listeners=tuple(chosen))
    return cfg
