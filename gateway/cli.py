"""``gateway serve | check | mock``, and the admin commands ``keys | tenants | subscriptions | audit``
(``gateway.admin.cli``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

log = logging.getLogger("gateway.cli")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, default_config
    from gateway.config.snapshot import read_snapshot, snapshot_of
    from gateway.store.datadir import StateDirError, prepare_state_dir

    try:
        snapshot = read_snapshot(args.config) if args.config else snapshot_of(default_config())
    except ConfigError as exc:
        print(f"gateway: invalid config:\n{exc}", file=sys.stderr)
        return 1
    config = snapshot.config
    try:
        prepare_state_dir(config)
    except StateDirError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    _setup_logging(config.log.level)
    srv = config.server
    host = args.host or srv.host
    port = srv.port if args.port is None else args.port
    try:
        _warn_if_not_compiled()
    except ImportError as exc:  # GATEWAY_REQUIRE_EXTENSIONS=1 and a module is not compiled
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    workers = args.workers if args.workers is not None else srv.workers
    if workers <= 0:
        from gateway.server.cpus import default_workers

        workers = default_workers()  # the CPUs this process may use: affinity and cgroup quota
    from gateway.server.cpus import ENV_WORKERS

    os.environ[ENV_WORKERS] = str(workers)  # the workers' per-worker shares divide by the count started
    frontend = args.server or srv.frontend
    if frontend == "granian":
        from gateway.server.rsgi import serve_granian

        return serve_granian(config, args.config, workers, host, port)
    from gateway.server.supervisor import Supervisor

    return Supervisor(snapshot, args.config, workers, host, port).run()


def _not_compiled() -> list[str]:
    """The modules of the compiled core that run as pure Python in this process."""
    from gateway._core import compiled

    return sorted(name for name, is_compiled in compiled().items() if not is_compiled)


def _warn_if_not_compiled() -> None:
    from gateway._core import NO_EXTENSIONS

    missing = _not_compiled()
    if missing:
        why = ("GATEWAY_NO_EXTENSIONS=1 is set" if NO_EXTENSIONS else
               "reinstall with a C compiler and the Python headers available (with "
               "GATEWAY_REQUIRE_EXTENSIONS=1 the install fails instead of falling back)")
        log.warning("!!! THE COMPILED CORE IS NOT IN USE: %s run as pure Python, slower on every "
                    "request; %s !!!", ", ".join(missing), why)


class _VersionAction(argparse.Action):
    """``gateway --version``: the installed package's version and whether its core is compiled."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("llm-gateway")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from gateway import __version__ as release
        missing = _not_compiled()
        core = "compiled" if not missing else "NOT compiled (pure Python: " + ", ".join(missing) + ")"
        print(f"llm-gateway {release}, core {core}, Python {sys.version.split()[0]}")
        parser.exit()


def _cmd_check(args: argparse.Namespace) -> int:
    from gateway.config.check import check_main

    return check_main(args.config)


def _cmd_mock(args: argparse.Namespace) -> int:
    from gateway.server.mockserver import run_mock_server

    _setup_logging("warning" if args.quiet else "info")
    return run_mock_server(
        host=args.host, port=args.port, workers=args.workers, latency_ms=args.latency_ms,
        stream_chunks=args.chunks, chunk_delay_ms=args.chunk_delay_ms, dialect=args.dialect,
        api_key=args.api_key,
    )


def build_parser() -> argparse.ArgumentParser:
    """Every command and option of ``gateway`` (the docs' tests parse their command lines with it)."""
    parser = argparse.ArgumentParser(
        prog="gateway", description="llm-gateway: an OpenAI-compatible AI gateway"
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and whether the compiled core is in use, and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", "-c", help="TOML config file (default: the embedded mock config)")
    p.add_argument("--workers", "-w", type=int,
                   help="worker processes (default: server.workers; 0 = one per CPU usable: affinity, quota)")
    p.add_argument("--host", help="bind address (default: server.host)")
    p.add_argument("--port", "-p", type=int, help="port (default: server.port)")
    p.add_argument("--server", choices=["native", "granian"], help="front end (default: server.frontend)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check", help="validate a config file and report every error")
    p.add_argument("--config", "-c", help="TOML config file (default: the embedded config)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "mock", help="run the deterministic mock LLM as an OpenAI, Anthropic or Azure OpenAI server"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", "-p", type=int, default=9000)
    p.add_argument("--workers", "-w", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before each response")
    p.add_argument("--chunks", type=int, default=8, help="content chunks per streamed response")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between streamed chunks")
    p.add_argument("--dialect", choices=["openai", "anthropic", "azure", "gemini", "bedrock", "cohere"],
                   default="openai",
                   help="wire format to answer in (default: openai)")
    p.add_argument("--api-key", help="require this key in the dialect's credential header (default: none)")
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only")
    p.set_defaults(func=_cmd_mock)

    from gateway.admin.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
