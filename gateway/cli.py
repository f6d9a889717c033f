"""``gateway serve | check | mock``, and the admin commands ``keys | tenants | subscriptions | audit``
(``gateway.admin.cli``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]


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
    workers = args.workers if args.workers is not None else srv.workers
    if workers <= 0:
        workers = os.cpu_count() or 1
    frontend = args.server or srv.frontend
    if frontend == "granian":
        from gateway.server.rsgi import serve_granian

        return serve_granian(config, args.config, workers, host, port)
    from gateway.server.supervisor import Supervisor

    return Supervisor(snapshot, args.config, workers, host, port).run()


def _cmd_check(args: argparse.Namespace) -> int:
    from gateway.config.check import check_main

    return check_main(args.config)


def _cmd_mock(args: argparse.Namespace) -> int:
    from gateway.server.mockserver import run_mock_server

    _setup_logging("warning" if args.quiet else "info")
    return run_mock_server(
        host=args.host, port=args.port, workers=args.workers, latency_ms=args.latency_ms,
        stream_chunks=args.chunks, chunk_delay_ms=args.chunk_delay_ms,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway", description="llm-gateway: an OpenAI-compatible AI gateway"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", "-c", help="TOML config file (default: the embedded mock config)")
    p.add_argument("--workers", "-w", type=int, help="worker processes (default: server.workers, 0 = cores)")
    p.add_argument("--host", help="bind address (default: server.host)")
    p.add_argument("--port", "-p", type=int, help="port (default: server.port)")
    p.add_argument("--server", choices=["native", "granian"], help="front end (default: server.frontend)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check", help="validate a config file and report every error")
    p.add_argument("--config", "-c", help="TOML config file (default: the embedded config)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("mock", help="run the deterministic mock LLM as an OpenAI-compatible server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", "-p", type=int, default=9000)
    p.add_argument("--workers", "-w", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before each response")
    p.add_argument("--chunks", type=int, default=8, help="content chunks per streamed response")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between streamed chunks")
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only")
    p.set_defaults(func=_cmd_mock)

    from gateway.admin.cli import add_commands

    add_commands(sub)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
