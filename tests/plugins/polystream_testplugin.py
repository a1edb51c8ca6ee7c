"""Test-only protocol handlers, registered by ``polystream_testplugin-0.0.dist-info``.

Put this directory on ``sys.path``/``PYTHONPATH`` and ``echo`` and ``failstart``
become installed handlers, exactly as a third-party distribution would.

The echo protocol is line based (``\\n``-terminated, at most 4 KiB a line):

* ``!info`` → one JSON line: the handler's listeners (as bound), its settings,
  and this connection's info;
* ``!crash`` → ``serve`` raises (the broker must close only this connection);
* ``!quit`` → ``serve`` returns;
* anything else is sent back unchanged.
"""

from __future__ import annotations

import json
import logging
from typing import ClassVar

import trio

from core.handler import ConnectionInfo, HandlerContext, ProtocolHandler

MAX_LINE = 4096
log = logging.getLogger(__name__)


class EchoHandler(ProtocolHandler):
    """Echoes lines back; see the module docstring for its commands."""

    name: ClassVar[str] = "echo"
    default_port: ClassVar[int] = 7007

    def __init__(self) -> None:
        self.context: HandlerContext | None = None
        self.closed = False
        self.served = 0

    async def start(self, context: HandlerContext) -> None:
        self.context = context
        log.info("echo handler started with %d listener(s)", len(context.listeners))

    async def serve(self, stream: trio.abc.Stream, conn: ConnectionInfo) -> None:
        self.served += 1
        buffer = bytearray()
        while True:
            data = await stream.receive_some(MAX_LINE)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer = bytearray(rest)
                if line == b"!crash":
                    raise RuntimeError("echo handler asked to crash")
                if line == b"!quit":
                    return
                if line == b"!info":
                    await stream.send_all(self._info(conn) + b"\n")
                else:
                    await stream.send_all(line + b"\n")
            if len(buffer) > MAX_LINE:
                raise ValueError("line too long")

    def _info(self, conn: ConnectionInfo) -> bytes:
        assert self.context is not None
        return json.dumps({
            "listeners": [[a.name, a.host, a.port] for a in self.context.listeners],
            "settings": self.context.settings,
            "conn": {"listener": conn.listener, "peer_host": conn.peer_host,
                     "peer_is_loopback": conn.peer_is_loopback,
                     "local_port": conn.local_port},
        }).encode()

    async def close(self) -> None:
        self.closed = True
        log.info("echo handler closed")


class FailingStartHandler(ProtocolHandler):
    """A handler whose ``start`` raises: the broker must report it and exit non-zero."""

    name: ClassVar[str] = "failstart"
    default_port: ClassVar[int] = 7008

    async def start(self, context: HandlerContext) -> None:
        raise RuntimeError("failstart cannot start: missing widget")

    async def serve(self, stream: trio.abc.Stream, conn: ConnectionInfo) -> None:
        raise AssertionError("never served")
