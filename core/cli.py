"""The ``polystream`` command.

::

    polystream serve [--config FILE] [--data-dir PATH] [--listener NAME=HOST:PORT ...]
                     [--log-level LEVEL]
    polystream users add NAME [--password P] [--loopback-only] [--replace]
    polystream users list
    polystream users delete NAME
    polystream --version

Exit codes: 0 success (also after a graceful SIGINT/SIGTERM shutdown); 1 a
runtime failure (a port in use, a handler that fails to import or start, a
crash, an unknown user); 2 a usage or configuration error (bad arguments,
invalid config file, unknown handler name) — reported as one message, no
traceback.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import tomllib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from core.config import Config, ConfigError, apply_overrides, load_config
from core.logsetup import LEVELS, setup_logging

if TYPE_CHECKING:
    from storage.api import MetadataStore

log = logging.getLogger("polystream")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _version() -> str:
    try:
        return version("polystream")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            with open(pyproject, "rb") as f:
                return f"{tomllib.load(f)['project']['version']} (source tree)"
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="polystream",
        description="Multi-protocol event-streaming gateway: Kafka, AMQP 0-9-1 and MQTT "
                    "clients on one durable log.",
    )
    parser.add_argument("--version", action="version", version=f"polystream {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    storage_opts = argparse.ArgumentParser(add_help=False)
    storage_opts.add_argument("--config", type=Path, metavar="FILE",
                              help="TOML configuration file (default: built-in defaults)")
    storage_opts.add_argument("--data-dir", type=Path, metavar="PATH",
                              help="where logs and metadata live (default ./polystream-data)")
    storage_opts.add_argument("--log-level", choices=LEVELS, default="info", type=str.lower,
                              help="log level (default info)")

    serve = commands.add_parser(
        "serve", parents=[storage_opts], help="run the gateway until SIGINT/SIGTERM",
        description="Run the gateway.  Without configured listeners, every installed "
                    "protocol handler listens on its default port on 0.0.0.0.",
    )
    serve.add_argument(
        "--listener", action="append", metavar="NAME=HOST:PORT",
        help="run this listener (repeatable; when given, exactly these run). NAME is a "
             "handler name or a listener name from the config file; port 0 picks a free port",
    )

    users = commands.add_parser("users", help="manage users (works while the server runs)")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = user_commands.add_parser("add", parents=[storage_opts], help="add a user")
    add.add_argument("name")
    add.add_argument("--password", help="the password (default: prompt, or read one line "
                                        "from stdin when it is not a terminal)")
    add.add_argument("--loopback-only", action="store_true",
                     help="the user may connect only from loopback addresses")
    add.add_argument("--replace", action="store_true", help="replace an existing user")
    user_commands.add_parser("list", parents=[storage_opts], help="list users")
    delete = user_commands.add_parser("delete", parents=[storage_opts], help="delete a user")
    delete.add_argument("name")
    return parser


def _error(message: str) -> None:
    print(f"polystream: error: {message}", file=sys.stderr)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polystream`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        config = load_config(args.config)
        config = apply_overrides(config, args.data_dir, getattr(args, "listener", None))
        config = replace(config, data_dir=config.data_dir.absolute())
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    setup_logging(args.log_level)
    if args.command == "serve":
        return _serve(config)
    return _users(config, args)


def _serve(config: Config) -> int:
    from core.broker import Broker, StartupError, run_until_signalled
    from core.gc_policy import tune_for_server
    from core.registry import HandlerLoadError

    try:
        broker = Broker(config)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except HandlerLoadError as exc:
        _error(str(exc))
        log.debug("handler load failure", exc_info=exc.__cause__)
        return EXIT_FAILURE
    tune_for_server()
    try:
        trio.run(run_until_signalled, broker)
    except BaseException as exc:  # reported below; a clean exit code
        leaf = _leaf(exc)
        if isinstance(leaf, StartupError):
            log.error("start-up failed: %s", leaf)
            return EXIT_FAILURE
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        if isinstance(leaf, SystemExit):
            raise
        log.critical("broker crashed", exc_info=exc)
        return EXIT_FAILURE
    return EXIT_OK


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        second = getpass.getpass("again: ")
        if first != second:
            raise ValueError("passwords do not match")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@asynccontextmanager
async def _open_metadata(config: Config) -> AsyncIterator[MetadataStore]:
    """The metadata store only: the server may be running on the same data directory.

    Opening the whole local storage would also recover the partition logs, which
    a running server is writing; the SQLite store is safe to share (WAL).
    """
    url = config.storage_url
    if url.startswith("file://") or "://" not in url:
        from storage.sqlite import open_sqlite_metadata

        directory = Path(url.removeprefix("file://"))
        await trio.Path(directory).mkdir(parents=True, exist_ok=True)
        async with open_sqlite_metadata(directory / "metadata.db") as store:
            yield store
    else:
        from storage import open_storage

        async with open_storage(url, config.durability) as storage:
            yield storage.metadata


async def _users_async(config: Config, args: argparse.Namespace, password: str | None) -> int:
    from core.users import UserError, UserStore

    async with _open_metadata(config) as metadata:
        store = UserStore(metadata, guest_loopback_only=config.core.guest_loopback_only)
        # as if the server had run once: adding a user to a fresh store must not suppress the
        # default guest, and deleting the guest must stick
        await store.ensure_default_guest()
        if args.users_command == "add":
            assert password is not None
            try:
                await store.add(args.name, password, loopback_only=args.loopback_only,
                                replace=args.replace)
            except UserError as exc:
                _error(str(exc))
                return EXIT_FAILURE
            print(f"user {args.name} {'replaced' if args.replace else 'added'}")
        elif args.users_command == "delete":
            if not await store.delete(args.name):
                _error(f"no such user: {args.name}")
                return EXIT_FAILURE
            print(f"user {args.name} deleted")
        else:
            for user in await store.list():
                suffix = "  (loopback only)" if user.loopback_only else ""
                print(f"{user.name}{suffix}")
    return EXIT_OK


def _users(config: Config, args: argparse.Namespace) -> int:
    password: str | None = None
    try:
        if args.users_command == "add":
            password = args.password
            if password is None:
                password = _read_password(args.name)
        result: int = trio.run(_users_async, config, args, password)
    except BaseException as exc:  # reported below; a clean exit code
        leaf = _leaf(exc)
        if isinstance(leaf, ValueError | LookupError):
            _error(str(leaf).strip("'\""))
            return EXIT_FAILURE
        if isinstance(leaf, KeyboardInterrupt | EOFError):
            return 130
        if isinstance(leaf, SystemExit):
            raise
        log.critical("users %s failed", args.users_command, exc_info=exc)
        return EXIT_FAILURE
    return result


if __name__ == "__main__":
    sys.exit(main())
