"""Loading and validating the TOML configuration: the defaults, the examples, and the error messages."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from gateway.config import (
    DEFAULT_CONFIG_TOML,
    Config,
    ConfigError,
    ConfigFileError,
    default_config,
    load_config,
    load_config_text,
    resolve_secret,
)
from gateway.config.check import check_main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

OPENAI_PROVIDER = """\
[providers.openai]
type = "openai"
base_url = "https://api.openai.com/v1"
"""


def errors_of(text: str, source: str = "gateway.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source)
    return info.value.errors


# -- the embedded default and the examples


def test_default_config_loads() -> None:
    config = default_config()
    assert isinstance(config, Config)
    assert config.providers["mock"].type == "mock"
    assert config.models["mock-1"].endpoints == ["chat", "completions"]
    assert config.models["mock-embed-1"].endpoints == ["embeddings"]
    assert config.models["gpt-4o-mini"].provider == "mock"
    assert config.server.port == 8080


def test_example_gateway_toml_is_the_embedded_default() -> None:
    text = (EXAMPLES / "gateway.toml").read_text(encoding="utf-8")
    assert tomllib.loads(text) == tomllib.loads(DEFAULT_CONFIG_TOML)
    loaded = load_config(EXAMPLES / "gateway.toml")
    # a relative SQLite path is made absolute against the file's directory; the embedded default has none
    assert loaded.store.url == f"sqlite://{EXAMPLES.resolve() / 'gateway.db'}"
    assert msgspec.structs.replace(loaded, store=default_config().store) == default_config()


def test_default_spells_out_the_schema_defaults() -> None:
    """The default file shows keys with their default values; it must not drift from the schema."""
    config = default_config()
    assert config.server == type(config.server)()
    assert config.upstream == type(config.upstream)()
    assert config.log == type(config.log)()
    assert config.providers["mock"].mock == type(config.providers["mock"].mock)()


def test_example_openai_toml_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = load_config(EXAMPLES / "openai.toml")
    assert config.providers["openai"].base_url == "https://api.openai.com/v1"
    assert config.providers["openai"].api_key == "env:OPENAI_API_KEY"
    assert set(config.models) == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
    assert config.models["text-embedding-3-small"].endpoints == ["embeddings"]


def test_example_openai_toml_without_the_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLES / "openai.toml")
    (error,) = info.value.errors
    assert "providers.openai.api_key" in error
    assert "OPENAI_API_KEY is not set" in error


# -- schema errors: path, line, expected and found


def test_unknown_key_reported_with_path_and_line() -> None:
    text = '[server]\nhost = "127.0.0.1"\nprot = 8080\n'
    assert errors_of(text) == ['gateway.toml:3: server.prot: unknown key (did you mean "port"?)']


def test_unknown_top_level_table() -> None:
    assert errors_of('[log]\nlevel = "info"\n\n[rooutes.a]\nmodel = "x"\n') == [
        "gateway.toml:4: rooutes: unknown key"
    ]


def test_wrong_type_reported_with_expected_found_and_line() -> None:
    text = OPENAI_PROVIDER + 'connect_timeout = "ten"\n'
    assert errors_of(text) == [
        'gateway.toml:4: providers.openai.connect_timeout: expected a number, found a string ("ten")'
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("port = 1.5", "server.port: expected an integer, found a float (1.5)"),
        ("port = true", "server.port: expected an integer, found a boolean (true)"),
        (
            'frontend = "apache"',
            'server.frontend: expected one of "native", "granian", found a string ("apache")',
        ),
        ("host = [1]", "server.host: expected a string, found an array"),
        ("tls_cert = 3", "server.tls_cert: expected a string, found an integer (3)"),
    ],
)
def test_wrong_types(line: str, expected: str) -> None:
    assert errors_of(f"\n[server]\n{line}\n") == [f"gateway.toml:3: {expected}"]


def test_missing_required_key_points_at_its_table() -> None:
    text = '[providers.p]\nbase_url = "http://x"\n\n[models.m]\nprovider = "p"\n'
    assert errors_of(text) == ["gateway.toml:1: providers.p.type: required key is missing"]


def test_lines_for_dotted_keys_inline_tables_and_multiline_arrays() -> None:
    text = (
        "[providers]\n"
        'mock.type = "mock"\n'
        "mock.mock = { latency_ms = 1, stream_chunks = true }\n"
        "\n"
        '[models."meta-llama/Llama-3"]\n'
        'provider = "mock"\n'
        "endpoints = [\n"
        '  "chat",  # a comment with "quotes" and [brackets]\n'
        '  "images",\n'
        "]\n"
    )
    assert errors_of(text) == [
        "gateway.toml:3: providers.mock.mock.stream_chunks: expected an integer, found a boolean (true)",
        'gateway.toml:9: models."meta-llama/Llama-3".endpoints[1]: '
        'expected one of "chat", "completions", "embeddings", found a string ("images")',
    ]


def test_multiline_string_contents_are_not_mistaken_for_tables() -> None:
    text = '[providers.p]\ntype = "mock"\n[providers.p.mock]\nmodels = ["""\n[server]\nport = 1\n"""]\n'
    text += "[server]\nport = 0\n"
    assert errors_of(text) == ["gateway.toml:9: server.port: must be between 1 and 65535, found 0"]


def test_dotted_model_name_hint() -> None:
    text = '[providers.p]\ntype = "mock"\n\n[models.gpt-3.5-turbo]\nprovider = "p"\n'
    errors = errors_of(text)
    assert errors[0] == (
        "gateway.toml:4: models.gpt-3.5-turbo: unknown key; "
        'if the name contains a dot, quote it: [models."gpt-3.5-turbo"]'
    )


# -- TOML syntax errors


def test_syntax_error_has_file_line_and_column() -> None:
    assert errors_of('[server]\nport = \nhost = "x"\n') == [
        "gateway.toml:2:8: TOML syntax error: Invalid value"
    ]


def test_syntax_error_at_end_of_document_points_at_the_unterminated_string() -> None:
    (error,) = errors_of('a = 1\nb = """never closed\nc = 2\n')
    assert error.startswith("gateway.toml:2: TOML syntax error: Unterminated string")


def test_syntax_error_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}:1:")


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}:2: the file is not valid UTF-8 (byte 0xe9)"]


# -- semantic errors


def test_missing_provider_reference() -> None:
    text = '[providers.openai]\ntype = "mock"\n\n[models.m]\nprovider = "opnai"\n'
    assert errors_of(text) == [
        'gateway.toml:5: models.m.provider: no provider named "opnai" is defined; did you mean "openai"?'
    ]
    text = '[providers.a]\ntype = "mock"\n[providers.b]\ntype = "mock"\n[models.m]\nprovider = "zzz"\n'
    assert errors_of(text) == [
        'gateway.toml:6: models.m.provider: no provider named "zzz" is defined (defined: a, b)'
    ]


def test_literal_api_key_rejected_without_echoing_it() -> None:
    secret = "sk-proj-SECRET0123456789"
    errors = errors_of(OPENAI_PROVIDER + f'api_key = "{secret}"\n')
    assert errors == [
        "gateway.toml:4: providers.openai.api_key: must be a reference (env:NAME or file:PATH), not a literal"
    ]
    assert all(secret not in e and "SECRET" not in e for e in errors)


def test_api_key_of_wrong_type_is_not_echoed_either() -> None:
    errors = errors_of(OPENAI_PROVIDER + "api_key = 123456789\n")
    assert errors == ["gateway.toml:4: providers.openai.api_key: expected a string, found an integer"]


def test_header_values_are_not_echoed() -> None:
    errors = errors_of(OPENAI_PROVIDER + 'headers = "Bearer SECRET"\n')
    assert errors == ["gateway.toml:4: providers.openai.headers: expected a table, found a string"]


def test_env_reference_unset_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_MISSING_KEY", raising=False)
    errors = errors_of(OPENAI_PROVIDER + 'api_key = "env:GW_TEST_MISSING_KEY"\n')
    assert errors == [
        "gateway.toml:4: providers.openai.api_key: environment variable GW_TEST_MISSING_KEY is not set"
    ]


def test_env_reference_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_KEY", "  sk-from-env\n")
    config = load_config_text(OPENAI_PROVIDER + 'api_key = "env:GW_TEST_KEY"\n')
    assert config.providers["openai"].api_key == "env:GW_TEST_KEY"  # the reference is kept, not the value
    assert resolve_secret("env:GW_TEST_KEY") == "sk-from-env"


def test_file_reference(tmp_path: Path) -> None:
    key_file = tmp_path / "openai.key"
    key_file.write_text("sk-from-file\n", encoding="utf-8")
    assert resolve_secret(f"file:{key_file}") == "sk-from-file"
    config = load_config_text(OPENAI_PROVIDER + f'api_key = "file:{key_file}"\n')
    assert resolve_secret(config.providers["openai"].api_key or "") == "sk-from-file"


def test_relative_file_reference_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("sk-relative", encoding="utf-8")
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(OPENAI_PROVIDER + 'api_key = "file:secrets/key"\n', encoding="utf-8")
    monkeypatch.chdir("/")
    config = load_config(config_path)
    ref = config.providers["openai"].api_key
    assert ref == f"file:{tmp_path / 'secrets' / 'key'}"
    assert resolve_secret(ref) == "sk-relative"


def test_file_reference_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    errors = errors_of(OPENAI_PROVIDER + f'api_key = "file:{missing}"\n')
    assert errors == [
        f"gateway.toml:4: providers.openai.api_key: cannot read key file {missing}: No such file or directory"
    ]


def test_resolve_secret_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_EMPTY", "")
    with pytest.raises(ConfigError, match="GW_TEST_EMPTY is empty"):
        resolve_secret("env:GW_TEST_EMPTY")
    with pytest.raises(ConfigError, match="not a literal"):
        resolve_secret("sk-abc")
    empty = tmp_path / "empty.key"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_secret(f"file:{empty}")


def test_openai_provider_needs_an_http_base_url() -> None:
    assert errors_of('[providers.o]\ntype = "openai"\n') == [
        'gateway.toml:1: providers.o.base_url: required for type "openai" (for example "https://api.openai.com/v1")'
    ]
    assert errors_of('[providers.o]\ntype = "openai"\nbase_url = "api.openai.com/v1"\n') == [
        "gateway.toml:3: providers.o.base_url: must be an http:// or https:// URL with a host"
    ]


def test_base_url_a_worker_could_not_open_is_a_config_error() -> None:
    """What the upstream pool refuses when a worker builds the provider is refused by the loader: a reload
    that every worker rejects must not be taken as the node's config (a respawn would fail with it)."""
    for url in ("http://127.0.0.1:99999/v1", "http://[::1/v1", "http://127.0.0.1:port/v1"):
        assert errors_of(f'[providers.o]\ntype = "openai"\nbase_url = "{url}"\n') == [
            "gateway.toml:3: providers.o.base_url: is not a valid URL (a port out of range or not a number, "
            "or a malformed host)"
        ], url
    assert errors_of('[providers.o]\ntype = "openai"\nbase_url = "http://:80/v1"\n') == [
        "gateway.toml:3: providers.o.base_url: must be an http:// or https:// URL with a host"
    ]
    assert errors_of('[providers.a]\ntype = "azure"\napi_key = "env:HOME"\nbase_url = "https://[x/"\n') == [
        "gateway.toml:4: providers.a.base_url: is not a valid URL (a port out of range or not a number, "
        "or a malformed host)"
    ]


def test_ca_file_must_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import certifi

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n", encoding="utf-8")
    missing = tmp_path / "missing.pem"
    provider = '[providers.o]\ntype = "openai"\nbase_url = "https://example.test/v1"\n'
    assert errors_of(provider + f'ca_file = "{missing}"\n') == [
        f"gateway.toml:4: providers.o.ca_file: cannot read {missing}: No such file or directory"
    ]
    [error] = errors_of(f'[upstream]\nca_file = "{bad}"\n')
    assert error.startswith(f"gateway.toml:2: upstream.ca_file: {bad} holds no PEM certificate")
    load_config_text(provider + f'ca_file = "{certifi.where()}"\n')
    # relative to the config file, like every other path in it, wherever the gateway starts
    (tmp_path / "ca.pem").write_bytes(Path(certifi.where()).read_bytes())
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(f'[upstream]\nca_file = "ca.pem"\n\n{provider}ca_file = "ca.pem"\n', encoding="utf-8")
    monkeypatch.chdir("/")
    config = load_config(config_path)
    assert config.upstream.ca_file == config.providers["o"].ca_file == str(tmp_path / "ca.pem")


def test_credentials_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A credential goes into a header: a line break or control byte inside it would split or corrupt the
    upstream request, so it is a config error (whitespace around it is stripped, as before)."""
    key = tmp_path / "k.key"
    key.write_bytes(b"line1\nline2\x01")
    with pytest.raises(ConfigError, match="holds a line break or another control character"):
        resolve_secret(f"file:{key}")
    monkeypatch.setenv("GW_TEST_TWO_LINES", "sk-a\r\nX-Injected: 1")
    with pytest.raises(ConfigError, match="environment variable GW_TEST_TWO_LINES holds a line break"):
        resolve_secret("env:GW_TEST_TWO_LINES")
    assert errors_of(OPENAI_PROVIDER + f'api_key = "file:{key}"\n') == [
        f"gateway.toml:4: providers.openai.api_key: key file {key} holds a line break or another control "
        "character inside the value (a credential is one line of text)"
    ]
    key.write_bytes(b"  sk-ok\n")
    assert resolve_secret(f"file:{key}") == "sk-ok"


def test_ranges() -> None:
    text = (
        "[server]\n"
        "port = 65536\n"
        "workers = -1\n"
        "max_body_bytes = 0\n"
        "header_timeout = 0\n"
        "drain_timeout = nan\n"
        'tls_key = "key.pem"\n'
        "[upstream]\n"
        "read_timeout = -1\n"
        "pool_size = 0\n"
        "[providers.m]\n"
        'type = "mock"\n'
        "connect_timeout = 0.0\n"
        "mock = { latency_ms = -1, stream_chunks = 0, embedding_dimensions = 0, completion_words = -1 }\n"
    )
    assert errors_of(text) == [
        "gateway.toml:2: server.port: must be between 1 and 65535, found 65536",
        "gateway.toml:3: server.workers: must be 0 (one per CPU core) or more, found -1",
        "gateway.toml:4: server.max_body_bytes: must be 1 or more, found 0",
        "gateway.toml:5: server.header_timeout: must be a finite number of seconds above 0, found 0",
        "gateway.toml:6: server.drain_timeout: must be a finite number of seconds above 0, found nan",
        "gateway.toml:7: server.tls_key: tls_cert must be given too (TLS needs both or neither)",
        "gateway.toml:9: upstream.read_timeout: must be a finite number of seconds above 0, found -1",
        "gateway.toml:10: upstream.pool_size: must be 1 or more, found 0",
        "gateway.toml:13: providers.m.connect_timeout: must be a finite number of seconds above 0, found 0",
        "gateway.toml:14: providers.m.mock.latency_ms: must be a finite number of 0 or more, found -1",
        "gateway.toml:14: providers.m.mock.completion_words: must be 0 or more, found -1",
        "gateway.toml:14: providers.m.mock.stream_chunks: must be 1 or more, found 0",
        "gateway.toml:14: providers.m.mock.embedding_dimensions: must be 1 or more, found 0",
    ]


def test_models_need_a_name_and_endpoints() -> None:
    text = '[providers.p]\ntype = "mock"\n[models.""]\nprovider = "p"\n'
    text += '[models.m]\nprovider = "p"\nendpoints = []\n'
    assert errors_of(text) == [
        'gateway.toml:3: models."": the model name must not be empty',
        "gateway.toml:7: models.m.endpoints: must list at least one endpoint",
    ]


def test_several_errors_reported_at_once_in_file_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_MISSING_KEY", raising=False)
    text = (
        "[server]\n"  # 1
        "port = 0\n"  # 2
        "prot = 1\n"  # 3
        "\n"  # 4
        "[providers.openai]\n"  # 5
        'type = "openai"\n'  # 6
        'base_url = "https://api.openai.com/v1"\n'  # 7
        'api_key = "env:GW_TEST_MISSING_KEY"\n'  # 8
        'read_timeout = "slow"\n'  # 9
        "\n"  # 10
        "[models.a]\n"  # 11
        'provider = "nowhere"\n'  # 12
        "[models.b]\n"  # 13
        'provider = "openai"\n'  # 14
        "endpoints = []\n"  # 15
    )
    errors = errors_of(text)
    assert [e.split(":")[1] for e in errors] == ["2", "3", "8", "9", "12", "15"]
    assert "server.port: must be between 1 and 65535" in errors[0]
    assert "server.prot: unknown key" in errors[1]
    assert "GW_TEST_MISSING_KEY is not set" in errors[2]
    assert 'providers.openai.read_timeout: expected a number, found a string ("slow")' in errors[3]
    assert 'models.a.provider: no provider named "nowhere"' in errors[4]
    assert "models.b.endpoints: must list at least one endpoint" in errors[5]
    assert str(ConfigError(errors)) == "\n".join(errors)


def test_a_model_of_a_broken_provider_is_not_a_second_error() -> None:
    text = '[providers.p]\ntype = "grpc"\n[models.m]\nprovider = "p"\n'
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].startswith('gateway.toml:2: providers.p.type: expected one of "openai", ')
    assert errors[0].endswith('found a string ("grpc")')


def test_a_wrong_value_is_not_also_reported_as_a_semantic_error() -> None:
    assert errors_of('[providers.o]\ntype = "openai"\nbase_url = 5\n') == [
        "gateway.toml:3: providers.o.base_url: expected a string, found an integer (5)"
    ]


def test_valid_config_converts_types() -> None:
    config = load_config_text("[server]\nheader_timeout = 5\n")
    assert config.server.header_timeout == 5.0
    assert isinstance(config.server.header_timeout, float)
    assert msgspec.to_builtins(config)["server"]["port"] == 8080


# -- file problems and `gateway check`


def test_missing_file_is_a_config_file_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.errors == [
        f"{tmp_path / 'absent.toml'}: cannot read the configuration file: No such file or directory"
    ]


def test_check_main_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(None) == 0
    assert capsys.readouterr().out == "ok: <default config> (1 provider, 3 models)\n"
    path = tmp_path / "gw.toml"
    path.write_text(DEFAULT_CONFIG_TOML, encoding="utf-8")
    assert check_main(str(path)) == 0
    captured = capsys.readouterr()
    assert captured.out == f"ok: {path} (1 provider, 3 models)\n"
    assert captured.err == ""


def test_check_main_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[server]\nprot = 1\n[models.m]\nprovider = "x"\n', encoding="utf-8")
    assert check_main(str(path)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f'{path}:2: server.prot: unknown key (did you mean "port"?)',
        f'{path}:4: models.m.provider: no provider named "x" is defined (defined: none)',
    ]


def test_check_main_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[server]\nport = = 1\n", encoding="utf-8")
    assert check_main(str(path)) == 1
    assert capsys.readouterr().err.startswith(f"{path}:2:")


def test_check_main_unreadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(str(tmp_path / "absent.toml")) == 2
    assert "cannot read the configuration file: No such file or directory" in capsys.readouterr().err
    assert check_main(str(tmp_path)) == 2  # a directory
    assert "cannot read the configuration file" in capsys.readouterr().err


def test_routing_example_loads_and_builds_routers() -> None:
    from gateway.routing.router import build_routers

    config = load_config(EXAMPLES / "routing.toml")
    chat = config.models["chat"]
    assert not chat.direct() and config.models["chat-backup"].direct()
    routers = build_routers({name: m.routing() for name, m in config.models.items()})
    assert [d.name for d in routers["chat"].deployments] == ["east", "west"]
    assert routers["chat"].fallback_models == ("chat-backup",) or list(routers["chat"].fallback_models) == [
        "chat-backup"
    ]


def test_data_residency_example_passes_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(EXAMPLES / "data_residency.toml")
    assert config.tenants["acme-eu"].regions == ["eu"]
    assert [d.region for d in config.models["chat"].deployments] == ["eu", "us"]
    assert check_main(str(EXAMPLES / "data_residency.toml")) == 0


def test_routing_problems_are_reported_with_key_paths() -> None:
    text = (EXAMPLES / "routing.toml").read_text(encoding="utf-8")
    text = text.replace('split = { stable = 95, candidate = 5 }', 'split = { stable = 95, candidate = 4 }')
    text = text.replace('fallbacks = ["chat-backup"]', 'fallbacks = ["chat-backupp"]')
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    message = str(info.value)
    assert "models.canary.split" in message and "100" in message
    assert "models.chat.fallbacks" in message and "chat-backup" in message


def test_a_model_needs_a_provider_or_deployments() -> None:
    base = '[providers.p]\ntype = "mock"\n'
    with pytest.raises(ConfigError, match=r"models\.m\.provider"):
        load_config_text(base + "[models.m]\n")
    with pytest.raises(ConfigError, match="not both"):
        load_config_text(base + '[models.m]\nprovider = "p"\n[[models.m.deployments]]\nprovider = "p"\n')


def test_routing_docs_worked_configs_load() -> None:
    import re

    doc = (EXAMPLES.parent / "docs" / "routing.md").read_text(encoding="utf-8")
    providers = (EXAMPLES / "routing.toml").read_text(encoding="utf-8").split("# The model clients call.")[0]
    worked = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if "[models.fast]" in b]
    assert len(worked) == 1
    config = load_config_text(providers + worked[0])
    assert {m.strategy for m in config.models.values()} == {"least_latency", "least_busy", "cost"}
