"""``gateway check``: validate a configuration file without serving it.

Exit codes: 0 the file is valid, 1 it was read but rejected (every problem is printed), 2 it could not be
read at all. The CLI calls ``check_main``; ``python -m gateway.config.check [FILE]`` works too.
"""

from __future__ import annotations

import sys

from gateway.config.loader import (
    DEFAULT_CONFIG_SOURCE,
    ConfigError,
    ConfigFileError,
    check_servable,
    default_config,
    load_config,
)

__all__ = ["check_main"]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def check_main(path: str | None) -> int:
    """Validate ``path`` (or the embedded default when ``None``); report on stdout/stderr; exit code."""
    try:
        config = default_config() if path is None else load_config(path)
        check_servable(config, DEFAULT_CONFIG_SOURCE if path is None else path)
    except ConfigFileError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 2
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    name = DEFAULT_CONFIG_SOURCE if path is None else path
    providers = _count(len(config.providers), "provider")
    models = _count(len(config.models), "model")
    print(f"ok: {name} ({providers}, {models})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(check_main(sys.argv[1] if len(sys.argv) > 1 else None))
