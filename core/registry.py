"""Finding protocol handlers: the ``polystream.handlers`` entry-point group.

Every handler, built-in or third-party, is a distribution that declares an entry
point in this group; the entry point's *name* is the handler name used in the
configuration (``[[listeners]] handler = "kafka"``, ``--listener kafka=...``) and
its value names a :class:`~core.handler.ProtocolHandler` subclass::

    [project.entry-points."polystream.handlers"]
    kafka = "handlers.kafka:KafkaHandler"

Discovery only reads distribution metadata; a handler's module is imported when
the handler is first needed (:meth:`HandlerRegistry.load`), so one broken
third-party plugin does not stop the others from being listed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from importlib.metadata import EntryPoint, entry_points

from core.config import Config, ConfigError, ListenerConfig
from core.handler import ProtocolHandler

ENTRY_POINT_GROUP = "polystream.handlers"

log = logging.getLogger(__name__)


class UnknownHandlerError(ConfigError):
    """The configuration names a handler no installed distribution provides."""


class HandlerLoadError(Exception):
    """A handler's entry point exists but cannot be imported or instantiated."""


class HandlerRegistry:
    """The installed protocol handlers, by name (the entry-point name)."""

    def __init__(self, points: Iterable[EntryPoint]) -> None:
        self._points: dict[str, EntryPoint] = {}
        for point in points:
            seen = self._points.get(point.name)
            if seen is not None:
                if seen.value != point.value:
                    log.warning("handler %r is declared twice (%s and %s); using %s",
                                point.name, seen.value, point.value, seen.value)
                continue
            self._points[point.name] = point
        self._classes: dict[str, type[ProtocolHandler]] = {}

    @classmethod
    def from_environment(cls) -> HandlerRegistry:
        """The handlers installed in this Python environment (``sys.path`` at call time)."""
        return cls(entry_points(group=ENTRY_POINT_GROUP))

    def names(self) -> list[str]:
        """Installed handler names, sorted."""
        return sorted(self._points)

    def __contains__(self, name: object) -> bool:
        return name in self._points

    def describe(self, name: str) -> str:
        """``name = module:attr`` (and the distribution, when known) for messages."""
        point = self._points[name]
        dist = getattr(point, "dist", None)
        origin = f" from {dist.name} {dist.version}" if dist is not None else ""
        return f"{name} = {point.value}{origin}"

    def _unknown(self, name: str, where: str) -> UnknownHandlerError:
        known = ", ".join(self.names()) or f"none installed (entry-point group {ENTRY_POINT_GROUP})"
        return UnknownHandlerError(f"unknown handler {name!r}{where}; known handlers: {known}")

    def load(self, name: str) -> type[ProtocolHandler]:
        """Import and return the handler class called ``name``.

        Raises :class:`UnknownHandlerError` for a name nothing provides and
        :class:`HandlerLoadError` when the import fails or the object is not a
        :class:`ProtocolHandler` subclass.
        """
        cached = self._classes.get(name)
        if cached is not None:
            return cached
        point = self._points.get(name)
        if point is None:
            raise self._unknown(name, "")
        try:
            obj = point.load()
        except Exception as exc:
            raise HandlerLoadError(
                f"handler {self.describe(name)} failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(obj, type) and issubclass(obj, ProtocolHandler)):
            raise HandlerLoadError(
                f"handler {self.describe(name)} is not a ProtocolHandler subclass: {obj!r}"
            )
        if not isinstance(getattr(obj, "default_port", None), int):
            raise HandlerLoadError(f"handler {self.describe(name)} has no integer default_port")
        if getattr(obj, "name", name) != name:
            log.warning("handler class %s.%s says name=%r, but its entry point is %r; "
                        "the entry-point name is used", obj.__module__, obj.__qualname__,
                        getattr(obj, "name", None), name)
        self._classes[name] = obj
        return obj

    def create(self, name: str) -> ProtocolHandler:
        """Load the class called ``name`` and instantiate it (no arguments)."""
        cls = self.load(name)
        try:
            return cls()
        except Exception as exc:
            raise HandlerLoadError(
                f"handler {self.describe(name)} could not be created: {type(exc).__name__}: {exc}"
            ) from exc

    def resolve_listeners(self, config: Config) -> list[ListenerConfig]:
        """The listeners to run, each with a known handler and a concrete port.

        With no listeners configured, every installed handler gets one listener
        named after it on ``0.0.0.0`` and its ``default_port``.  A listener
        naming an unknown handler raises :class:`UnknownHandlerError`.
        """
        if config.listeners is None:
            return [
                ListenerConfig(name=name, handler=name, port=self.load(name).default_port)
                for name in self.names()
            ]
        resolved: list[ListenerConfig] = []
        for lc in config.listeners:
            if lc.handler not in self._points:
                where = "" if lc.name == lc.handler else f" (listener {lc.name!r})"
                raise self._unknown(lc.handler, where)
            if lc.port is None:
                lc = replace(lc, port=self.load(lc.handler).default_port)
            resolved.append(lc)
        return resolved
