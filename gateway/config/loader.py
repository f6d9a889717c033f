"""Loading the TOML configuration, with messages that point at the file, the line and the key.

A configuration is accepted or rejected whole: ``load_config`` either returns a valid ``Config`` or raises
``ConfigError`` carrying *every* problem found, each as ``FILE:LINE: KEY.PATH: what is wrong``. Reload
relies on this: a file that fails here is rejected and the running snapshot keeps serving.

Theory of operation:

1. ``tomllib`` parses the text. Its syntax errors carry a line and column; we only add the file name.
2. ``msgspec.convert`` turns the data into the frozen schema Structs. That is the fast path for a good file.
   When it fails, msgspec reports only the first problem, and names dict entries ``[...]`` rather than by
   key, so we walk the data against the schema ourselves: the walk finds every unknown key, missing key
   and wrong type with its exact key path, and builds a *cleaned* copy of the data without them, which
   converts and lets the semantic checks run too (more errors per round trip for the person editing).
3. Semantic checks (references between tables, ranges, credential references) run on the ``Config``.
   Credential references are resolved once, so a missing variable or unreadable key file fails the load.
4. Line numbers: ``tomllib`` keeps none, so ``_TomlLineIndex`` scans the text once (only when there is an
   error to report) and records the line where each key path is first defined; a missing key is reported
   at the line of its table.

Secrets are never echoed: not the literal in a misplaced ``api_key``, not header values, not the contents
of an environment variable or a key file.
"""

from __future__ import annotations

import bisect
import datetime
import json
import math
import os
import re
import ssl
import tomllib
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from difflib import get_close_matches
from typing import Any, Literal, NamedTuple, Union
from urllib.parse import SplitResult, urlsplit

import msgspec

from gateway.config.schema import Config, ModelConfig, ProviderConfig
from gateway.config.snapshot import read_secret_file
from gateway.observe.anomaly import anomaly_problems
from gateway.observe.config import records_problems
from gateway.observe.tracing import tracing_problems
from gateway.observe.usage import usage_problems
from gateway.prompts.config import prompt_problems
from gateway.redisconn import SCHEMES as REDIS_SCHEMES
from gateway.redisconn import parse_url as parse_redis_url

__all__ = [
    "DEFAULT_CONFIG_SOURCE",
    "DEFAULT_CONFIG_TOML",
    "ConfigError",
    "ConfigFileError",
    "check_servable",
    "default_config",
    "load_config",
    "load_config_bytes",
    "load_config_text",
    "read_config_file",
    "resolve_secret",
]

_AZURE_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")

#: The embedded default configuration (``gateway serve`` without ``--config``). ``examples/gateway.toml``
#: holds the same text; a test keeps the two equal.
DEFAULT_CONFIG_TOML = """\
# gateway.toml: the embedded default configuration.
#
# `gateway serve` without --config runs exactly this file: a built-in deterministic mock provider
# behind three models, so the OpenAI SDK and curl examples work with no upstream and no key.
# Every key shown here has this value as its default too; see docs/configuration.md for all keys.
# Durations are seconds, sizes are bytes. Validate an edited copy with `gateway check --config FILE`.

[server]
host = "127.0.0.1"
port = 8080
workers = 0                     # worker processes; 0 = one per CPU core
frontend = "native"             # "native" (uvloop + Cython parser) or "granian" (HTTP/2, TLS)
max_header_bytes = 16384
max_body_bytes = 4194304        # 4 MiB
max_connections = 10000         # open client connections per worker
header_timeout = 10.0           # a client must send its request head within this time
body_timeout = 30.0             # ... and its body within this time after the head
keepalive_timeout = 75.0        # idle keep-alive connections are closed after this time
drain_timeout = 30.0            # on SIGTERM, in-flight requests get this long to finish
overhead_header = "x-gateway-overhead-ms"
# tls_cert = "/etc/gateway/cert.pem"   # granian front end only; give both or neither
# tls_key = "/etc/gateway/key.pem"

[upstream]                      # connection-pool defaults for every provider (each may override)
connect_timeout = 10.0
read_timeout = 120.0            # longest silence between two reads, time to first byte included
pool_size = 512                 # connections per upstream origin per worker
pool_timeout = 10.0             # wait for a free pooled connection at most this long
idle_timeout = 60.0             # idle pooled connections are closed after this time
max_answer_bytes = 67108864     # 64 MiB: largest non-stream answer from an upstream (502 beyond)
verify_tls = true
# ca_file = "/etc/ssl/private-ca.pem"

[log]
level = "info"                  # "debug", "info", "warning" or "error"
call_records = true             # one JSON call record per request on stderr (batched)

# Providers: where requests go. "mock" answers in process, deterministically.
[providers.mock]
type = "mock"

[providers.mock.mock]
latency_ms = 0.0                # delay before the response (or first chunk), milliseconds
stream_chunks = 8               # content chunks in a streamed response
chunk_delay_ms = 0.0            # delay between streamed chunks, milliseconds
completion_words = 12           # words in a completion when the request gives no max_tokens
embedding_dimensions = 16       # when the request does not ask for a number of dimensions
models = ["mock-1", "mock-embed-1"]

# Models: the names clients send as "model", each served by one provider.
[models.mock-1]
provider = "mock"
endpoints = ["chat", "completions"]

[models.mock-embed-1]
provider = "mock"
endpoints = ["embeddings"]

# So that examples written for the OpenAI SDK run unchanged against the default gateway.
[models.gpt-4o-mini]
provider = "mock"
endpoints = ["chat", "completions"]
"""

#: how the embedded default is named in messages
DEFAULT_CONFIG_SOURCE = "<default config>"


class ConfigError(Exception):
    """A configuration was rejected. ``errors`` holds every problem, each a complete one-line message."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__(*self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


class ConfigFileError(ConfigError):
    """The configuration file itself could not be read (missing, a directory, no permission)."""


# --------------------------------------------------------------------------------------------------------
# Public entry points


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the TOML file at ``path``.

    Relative ``file:`` credential references are made absolute against the file's directory, so they
    resolve the same whatever the working directory of the process that later reads them.
    """
    source = os.fspath(path)
    return load_config_bytes(read_config_file(source), source)


def read_config_file(source: str) -> bytes:
    """The bytes of the configuration file at ``source``; ``ConfigFileError`` when it cannot be read."""
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigFileError([f"{source}: cannot read the configuration file: {reason}"]) from None


def load_config_bytes(raw: bytes, source: str) -> Config:
    """Validate the bytes of the file at ``source`` (as ``load_config``, which reads them)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [f"{source}:{line}: the file is not valid UTF-8 (byte 0x{raw[exc.start]:02x})"]
        ) from None
    return load_config_text(text, source, base_dir=os.path.dirname(os.path.abspath(source)))


def load_config_text(
    text: str, source: str = "<string>", *, base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """Parse and validate TOML ``text``; ``source`` names it in messages.

    ``base_dir``, when given, is the directory relative ``file:`` references are made absolute against.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_error(source, text, str(exc))]) from None

    problems: list[_Problem] = []
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError:
        # Slow path, only for a bad file: find every schema problem, then convert what is left.
        walker = _SchemaWalker()
        cleaned = walker.walk(Config, data, ())
        problems.extend(walker.problems)
        try:
            config = msgspec.convert(cleaned if isinstance(cleaned, dict) else {}, Config)
        except msgspec.ValidationError as exc:  # the walk should have caught it; never hide it
            problems.append(_from_msgspec_error(str(exc)))
            raise ConfigError(_render(problems, source, text)) from None

    if base_dir is not None:
        config = _absolute_file_refs(config, os.fspath(base_dir))
    # Models may name a provider whose table had a schema problem: that is not a second error.
    providers_raw = data.get("providers", {})
    provider_names = set(providers_raw) if isinstance(providers_raw, dict) else None
    schema_paths = {p.path for p in problems}
    for problem in _semantic_problems(config, provider_names):
        if not any(_is_prefix(bad, problem.path) for bad in schema_paths):
            problems.append(problem)
    if problems:
        raise ConfigError(_render(problems, source, text))
    return config


def check_servable(config: Config, source: str) -> None:
    """Refuse (``ConfigError``) a valid configuration that cannot serve: one without models, which would
    answer 404 to every request (an empty file, or one cut short). ``gateway serve`` and ``gateway check``
    ask this at startup and at every reload; a partial config built in code need not pass it."""
    if not config.models:
        raise ConfigError([
            f"{source}: no models are defined: the gateway would answer 404 to every request (is the file "
            "empty or cut short?); define at least one [models.NAME] table"
        ])


def default_config() -> Config:
    """The embedded default: the mock provider behind ``mock-1``, ``mock-embed-1`` and ``gpt-4o-mini``."""
    return load_config_text(DEFAULT_CONFIG_TOML, DEFAULT_CONFIG_SOURCE)


def resolve_secret(ref: str) -> str:
    """The credential a reference names: ``env:NAME`` (an environment variable) or ``file:PATH`` (the
    file's contents, surrounding whitespace stripped).

    Raises ``ConfigError`` when the reference is malformed, the variable is unset or empty, or the file is
    unreadable or empty. Messages name the variable or the file, never a value.
    """
    parsed = _parse_secret_ref(ref)
    if parsed is None:
        raise ConfigError(["must be a reference (env:NAME or file:PATH), not a literal"])
    scheme, target = parsed
    if scheme == "env":
        value = os.environ.get(target)
        if value is None:
            raise ConfigError([f"environment variable {target} is not set"])
        if not value.strip():
            raise ConfigError([f"environment variable {target} is empty"])
        return _one_line(value.strip(), f"environment variable {target}")
    path = os.path.expanduser(target)
    try:
        value = read_secret_file(path)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError([f"cannot read key file {path}: {reason}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"key file {path} is not UTF-8 text"]) from None
    if not value.strip():
        raise ConfigError([f"key file {path} is empty"])
    return _one_line(value.strip(), f"key file {path}")


#: what a credential must not hold: it goes into an HTTP header (a line break there ends the header and
#: starts another: a request the upstream reads differently, or refuses)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise ConfigError([f"{what} holds a line break or another control character inside the value (a "
                           "credential is one line of text)"])
    return value


# --------------------------------------------------------------------------------------------------------
# Problems and how they are rendered

#: a key path: table and key names, and list indices
_Path = tuple[str | int, ...]


class _Problem(NamedTuple):
    path: _Path
    message: str


def _is_prefix(prefix: _Path, path: _Path) -> bool:
    return path[: len(prefix)] == prefix


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def _format_key_path(path: _Path) -> str:
    """``("models", "gpt-4o", "endpoints", 1)`` -> ``models.gpt-4o.endpoints[1]``; odd keys are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.match(part) else json.dumps(part, ensure_ascii=False)
            out = f"{out}.{key}" if out else key
    return out


def _render(problems: Iterable[_Problem], source: str, text: str) -> list[str]:
    """``FILE:LINE: KEY.PATH: message`` lines, in file order."""
    index = _TomlLineIndex(text)
    located: list[tuple[float, int, str]] = []
    for seq, problem in enumerate(problems):
        line = index.line_of(problem.path)
        where = f"{source}:{line}" if line is not None else source
        key = _format_key_path(problem.path)
        message = f"{where}: {key}: {problem.message}" if key else f"{where}: {problem.message}"
        located.append((line if line is not None else math.inf, seq, message))
    located.sort()
    return [message for _, _, message in located]


_TOML_POSITION = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$", re.DOTALL)


def _syntax_error(source: str, text: str, message: str) -> str:
    m = _TOML_POSITION.match(message)
    if m is not None:
        return f"{source}:{m['line']}:{m['col']}: TOML syntax error: {m['msg']}"
    # "(at end of document)": point at the likely culprit when the scan can tell, else the last line.
    index = _TomlLineIndex(text)
    line = None
    if message.startswith("Cannot overwrite"):
        line = index.duplicate_line
    elif message.startswith("Unterminated"):
        line = index.unterminated_line
    if line is None:
        line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    return f"{source}:{line}: TOML syntax error: {message}"


# msgspec's own message, for the (unexpected) case the schema walk let something through.
_MSGSPEC_ERROR = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MSGSPEC_TYPE = re.compile(r"^Expected `(?P<expected>[^`]*)`, got `(?P<found>[^`]*)`$")
_MSGSPEC_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "array": "an array",
    "object": "a table",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
}


def _from_msgspec_error(message: str) -> _Problem:
    m = _MSGSPEC_ERROR.match(message)
    assert m is not None  # the pattern matches any string
    path: list[str | int] = []
    for token in re.findall(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]", m["path"] or ""):
        name, index = token
        if name:
            path.append(name)
        else:
            path.append("*" if index == "..." else int(index))
    text = m["msg"]
    t = _MSGSPEC_TYPE.match(text)
    field = re.match(r"^Object (contains unknown|missing required) field `([^`]*)`$", text)
    if field is not None:
        path.append(field[2])
        text = "unknown key" if field[1] == "contains unknown" else "required key is missing"
    elif t is not None:
        expected = " or ".join(
            _MSGSPEC_NAMES.get(name, name) for name in t["expected"].split(" | ") if name != "null"
        )
        text = f"expected {expected}, found {_MSGSPEC_NAMES.get(t['found'], t['found'])}"
    return _Problem(tuple(path), text)


# --------------------------------------------------------------------------------------------------------
# Schema walk: every structural problem, with its key path


class _Drop:
    """Marks a value the walk removed from the cleaned data."""


_DROP = _Drop()
_SENSITIVE_KEYS = frozenset({"api_key", "headers"})


class _SchemaWalker:
    def __init__(self) -> None:
        self.problems: list[_Problem] = []

    def walk(self, tp: Any, value: Any, path: _Path) -> Any:
        """``value`` checked against type ``tp``: the cleaned value, or ``_DROP`` when it is unusable."""
        tp = _strip_none(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            return self._struct(tp, value, path)
        if origin is dict:
            if not isinstance(value, dict):
                return self._wrong(tp, value, path)
            value_type = typing.get_args(tp)[1]
            out: dict[str, Any] = {}
            for key, item in value.items():
                cleaned = self.walk(value_type, item, (*path, key))
                if cleaned is not _DROP:
                    out[key] = cleaned
            return out
        if origin is list:
            if not isinstance(value, list):
                return self._wrong(tp, value, path)
            item_type = typing.get_args(tp)[0]
            items = [self.walk(item_type, item, (*path, i)) for i, item in enumerate(value)]
            return _DROP if any(item is _DROP for item in items) else items
        try:
            msgspec.convert(value, tp)
        except msgspec.ValidationError:
            return self._wrong(tp, value, path)
        return value

    def _struct(self, tp: type[msgspec.Struct], value: Any, path: _Path) -> Any:
        if not isinstance(value, dict):
            return self._wrong(tp, value, path)
        fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
        out: dict[str, Any] = {}
        usable = True
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                hint = get_close_matches(key, list(fields), n=1)
                suffix = f' (did you mean "{hint[0]}"?)' if hint else ""
                if not hint and isinstance(item, dict) and len(path) >= 2 and isinstance(path[-1], str):
                    # ``[models.gpt-3.5-turbo]`` is three keys deep: the name needed quotes.
                    whole = _format_key_path((*path[:-1], f"{path[-1]}.{key}"))
                    suffix = f"; if the name contains a dot, quote it: [{whole}]"
                self.problems.append(_Problem((*path, key), f"unknown key{suffix}"))
                continue
            cleaned = self.walk(field.type, item, (*path, key))
            if cleaned is _DROP:
                usable = usable and not field.required
            else:
                out[key] = cleaned
        for name, field in fields.items():
            if field.required and name not in value:
                self.problems.append(_Problem((*path, name), "required key is missing"))
                usable = False
        return out if usable else _DROP

    def _wrong(self, tp: Any, value: Any, path: _Path) -> _Drop:
        sensitive = any(part in _SENSITIVE_KEYS for part in path)
        found = _describe_value(value, echo=not sensitive)
        self.problems.append(_Problem(path, f"expected {_describe_type(tp)}, found {found}"))
        return _DROP


def _strip_none(tp: Any) -> Any:
    """``X | None`` -> ``X`` (TOML has no null, so the ``None`` half can never be what is written)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _describe_type(tp: Any) -> str:
    tp = _strip_none(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return "an array"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        return "a table"
    names = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _describe_value(value: Any, *, echo: bool = True) -> str:
    def shown(kind: str, literal: str) -> str:
        return f"{kind} ({literal})" if echo else kind

    if isinstance(value, bool):
        return shown("a boolean", "true" if value else "false")
    if isinstance(value, int):
        return shown("an integer", str(value))
    if isinstance(value, float):
        return shown("a float", repr(value))
    if isinstance(value, str):
        literal = value if len(value) <= 60 else value[:57] + "..."
        return shown("a string", json.dumps(literal, ensure_ascii=False))
    if isinstance(value, datetime.datetime):
        return shown("a date-time", value.isoformat())
    if isinstance(value, datetime.date):
        return shown("a date", value.isoformat())
    if isinstance(value, datetime.time):
        return shown("a time", value.isoformat())
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------------
# Semantic checks: what the types alone cannot say

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _parse_secret_ref(ref: str) -> tuple[Literal["env", "file"], str] | None:
    scheme, sep, target = ref.partition(":")
    if not sep:
        return None
    if scheme == "env" and _ENV_NAME.match(target):
        return "env", target
    if scheme == "file" and target.strip():
        return "file", target
    return None


def _semantic_problems(config: Config, provider_names: set[str] | None) -> Iterator[_Problem]:
    """Problems the types cannot express. ``provider_names``: the names models may refer to (``None``:
    unknown, because ``providers`` itself was malformed)."""
    s = config.server
    if not s.host:
        yield _Problem(("server", "host"), "must not be empty")
    if not 1 <= s.port <= 65535:
        yield _Problem(("server", "port"), f"must be between 1 and 65535, found {s.port}")
    if s.workers < 0:
        yield _Problem(("server", "workers"), f"must be 0 (one per CPU core) or more, found {s.workers}")
    yield from _positive_ints(("server",), s, ("max_header_bytes", "max_body_bytes", "max_connections"))
    yield from _positive_durations(
        ("server",), s, ("header_timeout", "body_timeout", "keepalive_timeout", "drain_timeout")
    )
    # (a drain_timeout that is itself wrong is reported above, once; a nan drain_delay is refused here)
    if math.isfinite(s.drain_timeout) and s.drain_timeout > 0 and not 0.0 <= s.drain_delay < s.drain_timeout:
        yield _Problem(("server", "drain_delay"), f"must be 0 or more and below drain_timeout "
                       f"({_num(s.drain_timeout)}), found {_num(s.drain_delay)}")
    if not s.overhead_header or not _HEADER_NAME.match(s.overhead_header):
        yield _Problem(("server", "overhead_header"), "must be a valid HTTP header name")
    if (s.tls_cert is None) != (s.tls_key is None):
        given, missing = ("tls_cert", "tls_key") if s.tls_key is None else ("tls_key", "tls_cert")
        yield _Problem(("server", given), f"{missing} must be given too (TLS needs both or neither)")
    yield from _positive_durations(("server",), s, ("watch_interval",))
    if not (math.isfinite(s.worker_heartbeat_timeout) and s.worker_heartbeat_timeout >= 0):
        yield _Problem(("server", "worker_heartbeat_timeout"),
                       f"must be 0 (off) or more seconds, found {_num(s.worker_heartbeat_timeout)}")

    u = config.upstream
    yield from _positive_durations(
        ("upstream",), u, ("connect_timeout", "read_timeout", "pool_timeout", "idle_timeout")
    )
    yield from _positive_ints(("upstream",), u, ("pool_size", "max_answer_bytes"))
    if u.ca_file is not None:
        yield from _ca_file_problems(("upstream", "ca_file"), u.ca_file)

    for name, provider in config.providers.items():
        yield from _provider_problems(("providers", name), provider)

    for name, model in config.models.items():
        yield from _model_problems(("models", name), model, provider_names)
    yield from _routing_problems(config, provider_names)

    if config.store.data_dir is not None and not config.store.data_dir.strip():
        yield _Problem(("store", "data_dir"), "must not be empty (leave it out for the default)")
    yield from _auth_problems(config)
    yield from _limits_problems(config)
    yield from _metrics_problems(config)
    yield from _positive_durations(("responses",), config.responses, ("retention",))
    yield from (_Problem(p, m) for p, m in records_problems(config.records, config.metrics.labels))
    yield from (_Problem(p, m) for p, m in usage_problems(config.usage))
    yield from (_Problem(p, m) for p, m in anomaly_problems(config.anomaly))
    yield from (_Problem(p, m) for p, m in tracing_problems(config.tracing))
    yield from _cache_problems(config)
    yield from _guardrail_problems(config)
    for path, message in prompt_problems(config.prompts, config.models):
        yield _Problem(path, message)
    yield from _images_problems(config)


def _images_problems(config: Config) -> Iterator[_Problem]:
    im = config.images
    yield from _positive_ints(("images",), im, ("max_bytes", "max_images"))
    yield from _positive_durations(("images",), im, ("timeout",))
    if im.max_redirects < 0:
        yield _Problem(("images", "max_redirects"), f"must be 0 or more, found {im.max_redirects}")
    for i, t in enumerate(im.allowed_types):
        if not t.startswith("image/") or t != t.strip().lower() or ";" in t:
            yield _Problem(("images", "allowed_types", i),
                           f'must be a lower-case image type such as "image/png", found {json.dumps(t)}')


def _limits_problems(config: Config) -> Iterator[_Problem]:
    from gateway.limits.policy import policy_problems
    from gateway.limits.pricing import price_problems

    principals: list[tuple[_Path, str | None, str | None]] = [
        (("auth", "keys", i), k.limit_policy, k.budget) for i, k in enumerate(config.auth.keys)
    ]
    principals += [(("tenants", t), tc.limit_policy, tc.budget) for t, tc in config.tenants.items()]
    for path, message in policy_problems(config.limits, set(config.models), principals=principals):
        yield _Problem(path, message)
    for path, message in price_problems(config.pricing):
        yield _Problem(path, message)


def _cache_problems(config: Config) -> Iterator[_Problem]:
    from gateway.cache.config import cache_problems

    for path, message in cache_problems(config.cache, config.models, config.store.url):
        yield _Problem(path, message)


def _guardrail_problems(config: Config) -> Iterator[_Problem]:
    from gateway.guard.config import guardrail_problems

    for path, message in guardrail_problems(config.guardrails, set(config.models)):
        yield _Problem(path, message)


#: paths the data plane answers itself or proxies: the metrics endpoint must not shadow them
_RESERVED_PATHS = ("/healthz", "/readyz")


def _metrics_problems(config: Config) -> Iterator[_Problem]:
    m = config.metrics
    path = m.path
    if not path.startswith("/"):
        yield _Problem(("metrics", "path"), f'must start with "/", found {json.dumps(path)}')
    elif any(c in path for c in "?# \t\r\n\0"):
        yield _Problem(
            ("metrics", "path"), "must be a plain path: no query, fragment, spaces or control characters"
        )
    elif path in _RESERVED_PATHS or path == "/v1" or path.startswith("/v1/"):
        yield _Problem(("metrics", "path"), f"{path} is served by the gateway already; choose another path")
    if m.token is not None:
        yield from _digest_problems(("metrics", "token"), m.token)
        if m.token.startswith("hmac-sha256:") and config.auth.pepper is None:
            yield _Problem(
                ("metrics", "token"), "an hmac-sha256 digest needs the [auth] pepper it was made with"
            )
    yield from _positive_durations(("metrics",), m, ("interval",))
    if m.dir is not None and not m.dir.strip():
        yield _Problem(("metrics", "dir"), "must not be empty (leave it out for a fresh temporary directory)")


_TENANT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
#: the longest a store write may wait for its replicas (the admin API cuts a store call at 10 s)
_MAX_ACK_TIMEOUT = 5.0
_KEY_ENDPOINTS = {"*", "chat", "completions", "embeddings", "messages", "models", "responses"}


def _digest_problems(path: _Path, value: str) -> Iterator[_Problem]:
    from gateway.auth.keyformat import MalformedDigest, digest_scheme

    try:
        digest_scheme(value)
    except MalformedDigest as exc:
        yield _Problem(path, str(exc))


def _residency_problems(config: Config) -> Iterator[_Problem]:
    """Data residency of static keys and tenants: names the deployments of the file have, keys within
    their tenant's regions."""
    from gateway.routing.residency import residency_problems

    deployments = [d for m in config.models.values() for d in m.deployments]
    regions = {d.region for d in deployments if d.region}
    tags = {t for d in deployments for t in d.tags}
    for name, tc in config.tenants.items():
        for path, msg in residency_problems(("tenants", name), tc.regions, tc.required_tags, regions, tags):
            yield _Problem(path, msg)
    for i, key in enumerate(config.auth.keys):
        tenant = config.tenants.get(key.tenant)
        within = tenant.regions if tenant is not None else None
        for path, msg in residency_problems(
            ("auth", "keys", i), key.regions, key.required_tags, regions, tags, within, key.tenant
        ):
            yield _Problem(path, msg)
    if not config.auth.required:  # keys are not read then: a residency would be silently ignored
        pinned: list[_Path] = [
            ("tenants", n) for n, t in config.tenants.items() if t.regions is not None or t.required_tags
        ]
        pinned += [
            ("auth", "keys", i)
            for i, k in enumerate(config.auth.keys)
            if k.regions is not None or k.required_tags
        ]
        if pinned:
            yield _Problem(
                pinned[0], "a data residency (regions, required_tags) needs [auth] required = true: "
                "without it keys are not read and requests may go to any deployment",
            )


def _auth_problems(config: Config) -> Iterator[_Problem]:
    from gateway.auth.keyformat import is_key_id

    a = config.auth
    if a.pepper is not None:
        yield from _secret_problems(("auth", "pepper"), a.pepper)
    yield from _positive_durations(("auth",), a, ("resync_interval",))
    if not (math.isfinite(a.rotation_grace) and a.rotation_grace >= 0):
        yield _Problem(
            ("auth", "rotation_grace"), f"must be 0 or more seconds, found {_num(a.rotation_grace)}"
        )
    seen: dict[str, int] = {}
    for i, key in enumerate(a.keys):
        kpath: _Path = ("auth", "keys", i)
        if not is_key_id(key.id):
            yield _Problem(
                (*kpath, "id"), "must be a key id: 12 characters of a-z and 2-7 (<id> in gw-<id>-<secret>)"
            )
        elif key.id in seen:
            yield _Problem((*kpath, "id"), f"the key id is also used by auth.keys[{seen[key.id]}]")
        else:
            seen[key.id] = i
        yield from _digest_problems((*kpath, "digest"), key.digest)
        if not _TENANT_ID.match(key.tenant):
            yield _Problem((*kpath, "tenant"), "must be 1-64 characters of A-Z a-z 0-9 . _ -")
        for j, ep in enumerate(key.endpoints):
            if ep not in _KEY_ENDPOINTS:
                allowed = ", ".join(sorted(_KEY_ENDPOINTS))
                yield _Problem((*kpath, "endpoints", j), f"must be one of {allowed}")
        if not key.models:
            yield _Problem((*kpath, "models"), 'must list at least one model or pattern ("*" for all)')
    for name in config.tenants:
        if not _TENANT_ID.match(name):
            yield _Problem(("tenants", name), "a tenant id must be 1-64 characters of A-Z a-z 0-9 . _ -")
    yield from _residency_problems(config)

    st = config.store
    scheme, sep, rest = st.url.partition("://")
    if not sep or scheme not in ("sqlite", *REDIS_SCHEMES) or not rest:
        yield _Problem(
            ("store", "url"),
            "must be sqlite://FILE, sqlite:///ABSOLUTE/FILE, redis://HOST:PORT/DB,"
            " redis+sentinel://HOST:26379,.../MASTER/DB or redis+cluster://HOST:PORT,...",
        )
    elif scheme != "sqlite":
        try:
            parse_redis_url(st.url)
        except ValueError as exc:
            yield _Problem(("store", "url"), str(exc))
    yield from _positive_durations(("store",), st, ("poll_interval", "busy_timeout", "replica_ack_timeout"))
    if st.min_replicas_acked is not None and st.min_replicas_acked < 0:
        yield _Problem(("store", "min_replicas_acked"), f"must be 0 or more, found {st.min_replicas_acked}")
    if st.replica_ack_timeout > _MAX_ACK_TIMEOUT:
        yield _Problem(
            ("store", "replica_ack_timeout"),
            f"must be at most {_MAX_ACK_TIMEOUT:g} seconds (the admin API gives a store call 10), "
            f"found {st.replica_ack_timeout:g}",
        )

    ad = config.admin
    yield from _positive_durations(("admin",), ad, ("apply_timeout",))
    if not 1 <= ad.port <= 65535:
        yield _Problem(("admin", "port"), f"must be between 1 and 65535, found {ad.port}")
    elif ad.enabled and ad.port == config.server.port and ad.host == config.server.host:
        yield _Problem(("admin", "port"), "must differ from server.port: the admin API has its own listener")
    if ad.operator_token is not None:
        yield from _digest_problems(("admin", "operator_token"), ad.operator_token)
    for tenant, token in ad.tenant_tokens.items():
        if not _TENANT_ID.match(tenant):
            yield _Problem(
                ("admin", "tenant_tokens", tenant), "a tenant id must be 1-64 characters of A-Z a-z 0-9 . _ -"
            )
        yield from _digest_problems(("admin", "tenant_tokens", tenant), token)


def _provider_problems(path: _Path, p: ProviderConfig) -> Iterator[_Problem]:
    if not path[-1]:
        yield _Problem(path, "the provider name must not be empty")
    if p.type == "openai" and p.base_url is None and p.preset is None:
        yield _Problem(
            (*path, "base_url"),
            'required for type "openai" (for example "https://api.openai.com/v1")',
        )
    elif p.type == "azure" and p.base_url is None:
        yield _Problem((*path, "base_url"), 'required for type "azure": the resource endpoint, for example '
                       '"https://NAME.openai.azure.com"')
    if p.base_url is not None and p.type != "mock":
        yield from _base_url_problems((*path, "base_url"), p.base_url)
    if p.ca_file is not None:
        yield from _ca_file_problems((*path, "ca_file"), p.ca_file)
    if p.type == "anthropic":
        yield from _anthropic_problems(path, p)
    elif p.sampling is not None:  # the others get the client's sampling fields as they are
        yield _Problem((*path, "sampling"), 'only for type "anthropic"')
    yield from _google_problems(path, p)
    yield from _bedrock_problems(path, p)
    if p.api_key is not None:
        yield from _secret_problems((*path, "api_key"), p.api_key)
    yield from _preset_problems(path, p)
    yield from _azure_problems(path, p)
    for header, value in p.headers.items():
        if not _HEADER_NAME.match(header):
            yield _Problem((*path, "headers", header), "is not a valid HTTP header name")
        elif any(c in value for c in "\r\n\0"):
            yield _Problem((*path, "headers", header), "the value must not contain CR, LF or NUL")
    for i, name in enumerate(p.forward_headers or ()):
        if not _HEADER_NAME.match(name):
            yield _Problem((*path, "forward_headers", i), "is not a valid HTTP header name")
        elif name.lower() in _NOT_FORWARDED:
            yield _Problem((*path, "forward_headers", i),
                           f"{name} is set by the gateway itself (framing, routing or the credential)")
    yield from _positive_durations(path, p, ("connect_timeout", "read_timeout"))
    yield from _positive_ints(path, p, ("pool_size", "max_answer_bytes"))

    m, mpath = p.mock, (*path, "mock")
    for key in ("latency_ms", "chunk_delay_ms"):
        v: float = getattr(m, key)
        if not (math.isfinite(v) and v >= 0):
            yield _Problem((*mpath, key), f"must be a finite number of 0 or more, found {_num(v)}")
    if m.completion_words < 0:
        yield _Problem((*mpath, "completion_words"), f"must be 0 or more, found {m.completion_words}")
    yield from _positive_ints(mpath, m, ("stream_chunks", "embedding_dimensions"))


def _split_url(url: str) -> SplitResult | None:
    """``url`` split; None when it cannot be (a bracketed host left open) or its port is out of range or
    not a number (``.port`` raises then)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    return parts


def _base_url_problems(path: _Path, url: str) -> Iterator[_Problem]:
    """What the upstream pool's ``parse_origin`` would refuse, refused here (by ``gateway check`` and a
    reload), not by every worker as it builds the provider."""
    split = _split_url(url)
    if split is None:
        yield _Problem(path, "is not a valid URL (a port out of range or not a number, or a malformed host)")
    elif split.scheme not in ("http", "https") or not split.hostname:
        yield _Problem(path, "must be an http:// or https:// URL with a host")


def _ca_file_problems(path: _Path, ca_file: str) -> Iterator[_Problem]:
    """The CA bundle must load, as the upstream pool will load it (by ``gateway check`` and a reload, not
    by every worker as it builds the provider)."""
    try:
        ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            yield _Problem(path, f"{ca_file} holds no PEM certificate the TLS library can load "
                           f"({exc.reason})")
        else:
            yield _Problem(path, f"cannot read {ca_file}: {exc.strerror or exc.__class__.__name__}")


def _preset_problems(path: _Path, p: ProviderConfig) -> Iterator[_Problem]:
    from gateway.providers.presets import PRESETS

    if p.preset is None:
        return
    if p.type != "openai":
        yield _Problem((*path, "preset"), 'only for type "openai"')
    elif p.preset not in PRESETS:
        hint = get_close_matches(p.preset, sorted(PRESETS), n=1)
        suffix = f'; did you mean "{hint[0]}"?' if hint else f" (known: {', '.join(sorted(PRESETS))})"
        yield _Problem((*path, "preset"), f"unknown preset {json.dumps(p.preset)}{suffix}")


def _azure_problems(path: _Path, p: ProviderConfig) -> Iterator[_Problem]:
    if p.type != "azure":
        given = (("azure_path", p.azure_path != "deployments"), ("api_version", p.api_version is not None),
                 ("azure_ad_token", p.azure_ad_token is not None))
        for key, set_ in given:
            if set_:
                yield _Problem((*path, key), 'only for type "azure"')
        return
    if p.azure_ad_token is not None:
        yield from _secret_problems((*path, "azure_ad_token"), p.azure_ad_token)
        if p.api_key is not None:
            yield _Problem((*path, "azure_ad_token"), "give either api_key or azure_ad_token, not both")
    elif p.api_key is None:
        yield _Problem((*path, "api_key"), 'required for type "azure" (or azure_ad_token, an Entra ID token)')
    split = _split_url(p.base_url) if p.base_url is not None else None
    if split is not None and split.path.rstrip("/").endswith(("/openai", "/openai/v1")):
        yield _Problem((*path, "base_url"), 'the resource endpoint, without "/openai" (azure_path adds it)')
    v = p.api_version
    if v is not None:
        if p.azure_path == "deployments" and not _AZURE_VERSION.match(v):
            yield _Problem((*path, "api_version"), 'must be a dated version such as "2024-10-21" or '
                           '"2025-04-01-preview"')
        elif p.azure_path == "v1" and v not in ("preview", "latest"):
            yield _Problem((*path, "api_version"), 'with azure_path = "v1": leave it out, or "preview"')


def _anthropic_problems(path: _Path, p: ProviderConfig) -> Iterator[_Problem]:
    """An anthropic provider: base_url optional (the public API by default; checked with the others),
    header values sane."""
    if not p.anthropic_version or any(c in p.anthropic_version for c in "\r\n\0,"):
        yield _Problem((*path, "anthropic_version"), 'must be a version such as "2023-06-01"')
    for i, beta in enumerate(p.beta):
        if not beta or not _HEADER_TOKEN.match(beta):
            yield _Problem((*path, "beta", i), "must be a beta name such as \"prompt-caching-2024-07-31\"")


_LOCATION = re.compile(r"^(global|[a-z]+-[a-z]+[0-9]+)$")


def _google_problems(path: _Path, p: ProviderConfig) -> Iterator[_Problem]:
    """project/location/credentials_file are Vertex AI's; Vertex takes Google credentials, not api_key."""
    if p.type != "vertex":
        for key in ("project", "location", "credentials_file"):
            if getattr(p, key) is not None:
                yield _Problem((*path, key), 'only for type "vertex"')
        return
    if p.api_key is not None:
        yield _Problem((*path, "api_key"), 'not for type "vertex": it authenticates with Google credentials '
                       "(credentials_file, or Application Default Credentials)")
    if p.location is not None and not _LOCATION.match(p.location):
        yield _Problem((*path, "location"), 'must be a region such as "us-central1", or "global"')
    if p.project is not None and not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", p.project):
        yield _Problem((*path, "project"), "must be a Google Cloud project id (6-30 lower-case letters, "
                       "digits and hyphens)")
    if p.credentials_file is not None and not os.path.isfile(os.path.expanduser(p.credentials_file)):
        yield _Problem((*path, "credentials_file"), f"no such file: {p.credentials_file}")
_AWS_KEYS = ("aws_profile", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def _bedrock_problems(path: _Path, p: ProviderConfig) -> Iterator[_Problem]:
    """A bedrock provider: a region (or AWS_REGION), static keys as references and in pairs."""
    if p.type == "cohere" and p.api_key is None:
        yield _Problem((*path, "api_key"), 'required for type "cohere" (sent as Authorization: Bearer)')
    if p.type != "bedrock":
        for key in ("region", *_AWS_KEYS):
            if getattr(p, key) is not None:
                yield _Problem((*path, key), 'only for type "bedrock"')
        return
    region = p.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region or not _AWS_REGION.match(region):
        yield _Problem((*path, "region"), 'required for type "bedrock" (or AWS_REGION), e.g. "us-east-1"')
    for key in _AWS_KEYS[1:]:
        ref = getattr(p, key)
        if ref is not None:
            yield from _secret_problems((*path, key), ref)
    if (p.aws_access_key_id is None) != (p.aws_secret_access_key is None):
        yield _Problem((*path, "aws_secret_access_key"), "aws_access_key_id and aws_secret_access_key go "
                       "together")


_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


#: client headers a provider's forward_headers may not name
_NOT_FORWARDED = frozenset({
    "host", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive", "te",
    "upgrade", "trailer", "proxy-authorization", "authorization", "x-api-key", "api-key", "cookie",
    "x-request-id", "expect",
})
_HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _secret_problems(path: _Path, ref: str) -> Iterator[_Problem]:
    if _parse_secret_ref(ref) is None:
        # Never echo ``ref``: it is most likely the key itself.
        yield _Problem(path, "must be a reference (env:NAME or file:PATH), not a literal")
        return
    try:
        resolve_secret(ref)
    except ConfigError as exc:
        for error in exc.errors:
            yield _Problem(path, error)


def _routing_problems(config: Config, provider_names: set[str] | None) -> Iterator[_Problem]:
    from gateway.routing.config import routing_problems

    routings = {name: m.routing() for name, m in config.models.items() if m.deployments or m.provider}
    for problem in routing_problems(routings, provider_names):
        name = problem.path[1]
        if not config.models[str(name)].deployments and problem.path[2:3] == ("deployments",):
            continue  # a single-provider model: its provider was checked above, under its own key
        yield _Problem(problem.path, problem.message)


def _model_problems(path: _Path, model: ModelConfig, provider_names: set[str] | None) -> Iterator[_Problem]:
    if not path[-1]:
        yield _Problem(path, "the model name must not be empty")
    if model.deployments:
        if model.provider is not None or model.upstream_model is not None:
            yield _Problem(
                (*path, "provider"), "give either provider (and upstream_model) or deployments, not both"
            )
    elif model.provider is None:
        yield _Problem(
            (*path, "provider"), "required: the provider that serves this model (or list deployments)"
        )
    elif provider_names is not None and model.provider not in provider_names:
        known = ", ".join(sorted(provider_names)) or "none"
        hint = get_close_matches(model.provider, sorted(provider_names), n=1)
        suffix = f'; did you mean "{hint[0]}"?' if hint else f" (defined: {known})"
        yield _Problem(
            (*path, "provider"), f"no provider named {json.dumps(model.provider)} is defined{suffix}"
        )
    if model.upstream_model is not None and not model.upstream_model:
        yield _Problem((*path, "upstream_model"), "must not be empty (leave it out to send the model name)")
    if not model.endpoints:
        yield _Problem((*path, "endpoints"), "must list at least one endpoint")
    seen: set[str] = set()
    for i, endpoint in enumerate(model.endpoints):
        if endpoint in seen:
            yield _Problem((*path, "endpoints", i), f'"{endpoint}" is listed twice')
        seen.add(endpoint)


def _positive_ints(path: _Path, obj: object, keys: Iterable[str]) -> Iterator[_Problem]:
    for key in keys:
        v: int | None = getattr(obj, key)
        if v is not None and v < 1:
            yield _Problem((*path, key), f"must be 1 or more, found {v}")


def _positive_durations(path: _Path, obj: object, keys: Iterable[str]) -> Iterator[_Problem]:
    for key in keys:
        v: float | None = getattr(obj, key)
        if v is not None and not (math.isfinite(v) and v > 0):
            yield _Problem((*path, key), f"must be a finite number of seconds above 0, found {_num(v)}")


def _num(v: float) -> str:
    """``5.0`` -> ``5`` (as most likely written), other floats as Python shows them."""
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _absolute_file_refs(config: Config, base_dir: str) -> Config:
    """``file:`` references made absolute against ``base_dir`` (the config file's directory)."""
    changed: dict[str, ProviderConfig] = {}
    for name, provider in config.providers.items():
        for field in ("api_key", "azure_ad_token"):
            ref = getattr(changed.get(name, provider), field)
            parsed = _parse_secret_ref(ref) if ref else None
            if parsed is not None and parsed[0] == "file":
                target = os.path.expanduser(parsed[1])
                if not os.path.isabs(target):
                    absolute = os.path.normpath(os.path.join(base_dir, target))
                    changed[name] = msgspec.structs.replace(
                        changed.get(name, provider), **{field: f"file:{absolute}"})
        for field in ("credentials_file", "ca_file"):  # a Vertex credentials file, a CA bundle: plain paths
            given = getattr(changed.get(name, provider), field)
            if given is not None and not os.path.isabs(os.path.expanduser(given)):
                absolute = os.path.normpath(os.path.join(base_dir, os.path.expanduser(given)))
                changed[name] = msgspec.structs.replace(changed.get(name, provider), **{field: absolute})
    if changed:
        config = msgspec.structs.replace(config, providers={**config.providers, **changed})
    ca = config.upstream.ca_file
    if ca is not None and not os.path.isabs(os.path.expanduser(ca)):
        absolute = os.path.normpath(os.path.join(base_dir, os.path.expanduser(ca)))
        upstream = msgspec.structs.replace(config.upstream, ca_file=absolute)
        config = msgspec.structs.replace(config, upstream=upstream)
    if config.auth.pepper is not None:
        parsed = _parse_secret_ref(config.auth.pepper)
        if parsed is not None and parsed[0] == "file" and not os.path.isabs(os.path.expanduser(parsed[1])):
            absolute = os.path.normpath(os.path.join(base_dir, os.path.expanduser(parsed[1])))
            config = msgspec.structs.replace(
                config, auth=msgspec.structs.replace(config.auth, pepper=f"file:{absolute}")
            )
    mdir = config.metrics.dir
    if mdir and mdir.strip():
        # like the store's file: relative to the config file, whatever directory the gateway starts in
        absolute = os.path.normpath(os.path.join(base_dir, os.path.expanduser(mdir)))
        if absolute != mdir:
            config = msgspec.structs.replace(
                config, metrics=msgspec.structs.replace(config.metrics, dir=absolute)
            )
    return _state_paths(config, base_dir)


def _state_paths(config: Config, base_dir: str) -> Config:
    """``[store] data_dir`` made absolute (or chosen: ``gateway.store.datadir``), and a relative SQLite
    path made absolute in it, not wherever the gateway was started."""
    from gateway.store.datadir import default_data_dir

    st = config.store
    if st.data_dir is not None and not st.data_dir.strip():
        return config  # reported by the semantic checks
    if st.data_dir is not None:
        data_dir = os.path.normpath(os.path.join(base_dir, os.path.expanduser(st.data_dir)))
    else:
        data_dir = default_data_dir(base_dir)
    url = st.url
    scheme, sep, rest = url.partition("://")
    if scheme == "sqlite" and sep and rest and not rest.startswith("/"):
        url = f"sqlite://{os.path.normpath(os.path.join(data_dir, rest))}"
    return msgspec.structs.replace(config, store=msgspec.structs.replace(st, url=url, data_dir=data_dir))


# --------------------------------------------------------------------------------------------------------
# Line numbers: where each key path is defined in the TOML text


_BARE_KEY_AT = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_AT = re.compile(r"[^,\]}\n#]*")


class _TomlLineIndex:
    """Scans TOML text once and records the line where each key path is first defined.

    Understands table headers (``[a."b.c"]``), arrays of tables (``[[x]]``, paths ``x[0]``, ``x[1]``),
    dotted and quoted keys, inline tables and multi-line arrays and strings. It is lenient: it runs on
    text tomllib has accepted, or (for syntax errors) to find a duplicate key or an unterminated string,
    and never raises; whatever it could not scan simply has no line.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[_Path, int] = {}
        self.duplicate_line: int | None = None
        self.unterminated_line: int | None = None
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._assigned: set[_Path] = set()
        self._table_arrays: dict[_Path, int] = {}
        try:
            self._document()
        except (IndexError, ValueError):
            pass

    def line_of(self, path: _Path) -> int | None:
        """The line defining ``path``, else that of its nearest defined ancestor table."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    # -- scanning

    def _line_at(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def _record(self, path: _Path, line: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def _peek(self, k: int = 1) -> str:
        return self.text[self.pos : self.pos + k]

    def _skip_blank(self, newlines: bool) -> None:
        """Skip spaces and tabs, comments, and (when ``newlines``) line ends."""
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            else:
                return

    def _skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def _document(self) -> None:
        table: _Path = ()
        n = len(self.text)
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= n:
                return
            start = self.pos
            try:
                table = self._statement(table)
            except ValueError:
                pass
            self._skip_line()
            if self.pos <= start:  # no progress: never loop forever on odd input
                self.pos = start + 1

    def _statement(self, table: _Path) -> _Path:
        """One header or key/value line; returns the table that is current after it."""
        line = self._line_at(self.pos)
        if self._peek(2) == "[[":
            self.pos += 2
            keys = self._key()
            parent = self._resolve(keys[:-1])
            base = (*parent, keys[-1])
            index = self._table_arrays.get(base, 0)
            self._table_arrays[base] = index + 1
            table = (*base, index)
            self._record(table, line)
        elif self._peek() == "[":
            self.pos += 1
            table = self._resolve(self._key())
            self._record(table, line)
        else:
            keys = self._key()
            self._skip_blank(newlines=False)
            if self._peek() == "=":
                self.pos += 1
                self._assign((*table, *keys), line)
        return table

    def _resolve(self, keys: Sequence[str]) -> _Path:
        """Key names to a path, entering the current element of any array of tables on the way."""
        path: _Path = ()
        for key in keys:
            path = (*path, key)
            count = self._table_arrays.get(path)
            if count:
                path = (*path, count - 1)
        return path

    def _assign(self, path: _Path, line: int) -> None:
        if path in self._assigned and self.duplicate_line is None:
            self.duplicate_line = line
        self._assigned.add(path)
        self._record(path, line)
        self._value(path)

    def _key(self) -> list[str]:
        """A dotted key (``a."b.c".'d'``) at ``pos``; stops before ``=``, ``]`` or anything else."""
        keys: list[str] = []
        text, n = self.text, len(self.text)
        while True:
            self._skip_blank(newlines=False)
            if self.pos >= n:
                break
            c = text[self.pos]
            if c in "\"'":
                keys.append(self._string_body(c))
            else:
                m = _BARE_KEY_AT.match(text, self.pos)
                if m is None:
                    break
                keys.append(m.group())
                self.pos = m.end()
            self._skip_blank(newlines=False)
            if self._peek() != ".":
                break
            self.pos += 1
        if not keys:
            raise ValueError("no key")
        return keys

    def _value(self, path: _Path) -> None:
        self._skip_blank(newlines=False)
        c = self._peek()
        if c == "[":
            self.pos += 1
            index = 0
            while True:
                self._skip_blank(newlines=True)
                c = self._peek()
                if c in ("]", ""):
                    self.pos += 1
                    return
                if c == ",":
                    self.pos += 1
                    continue
                start = self.pos
                self._record((*path, index), self._line_at(start))
                self._value((*path, index))
                index += 1
                if self.pos <= start:
                    self.pos = start + 1
        elif c == "{":
            self.pos += 1
            while True:
                self._skip_blank(newlines=True)
                c = self._peek()
                if c in ("}", ""):
                    self.pos += 1
                    return
                if c == ",":
                    self.pos += 1
                    continue
                line = self._line_at(self.pos)
                keys = self._key()
                self._skip_blank(newlines=False)
                if self._peek() != "=":
                    raise ValueError("expected =")
                self.pos += 1
                self._assign((*path, *keys), line)
        elif c in ("'", '"'):
            self._string_body(c)
        else:
            m = _SCALAR_AT.match(self.text, self.pos)
            assert m is not None  # matches the empty string at worst
            self.pos = m.end()

    def _string_body(self, quote: str) -> str:
        """A string at ``pos`` (any of the four kinds); returns its value, decoded well enough for keys."""
        text, n = self.text, len(self.text)
        start_line = self._line_at(self.pos)
        multi = text.startswith(quote * 3, self.pos)
        self.pos += 3 if multi else 1
        out: list[str] = []
        while self.pos < n:
            c = text[self.pos]
            if multi and text.startswith(quote * 3, self.pos):
                self.pos += 3
                while self._peek() == quote:  # up to two quotes may end the content
                    out.append(quote)
                    self.pos += 1
                return "".join(out)
            if not multi and c == quote:
                self.pos += 1
                return "".join(out)
            if not multi and c == "\n":
                break
            if c == "\\" and quote == '"':
                out.append(self._escape())
                continue
            out.append(c)
            self.pos += 1
        if self.unterminated_line is None:
            self.unterminated_line = start_line
        return "".join(out)

    _ESCAPES: typing.ClassVar[dict[str, str]] = {
        "b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b",
    }  # fmt: skip

    def _escape(self) -> str:
        text = self.text
        c = text[self.pos + 1 : self.pos + 2]
        if c in ("u", "U"):
            width = 4 if c == "u" else 8
            digits = text[self.pos + 2 : self.pos + 2 + width]
            self.pos += 2 + width
            try:
                return chr(int(digits, 16))
            except ValueError:
                return ""
        if c in self._ESCAPES:
            self.pos += 2
            return self._ESCAPES[c]
        # a line-ending backslash in a multi-line string: the line break and leading blanks vanish
        self.pos += 1
        while self.pos < len(text) and text[self.pos] in " \t\r\n":
            self.pos += 1
        return ""
