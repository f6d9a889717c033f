"""OpenAI-compatible presets and the ``azure`` provider type: the table, the body quirks, the config checks,
the translators built from the config, and the examples (accepted by ``gateway check``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest

from gateway.config import ConfigError, UpstreamConfig, load_config_text
from gateway.config.check import check_main
from gateway.engine import build_translator
from gateway.providers.azure import DEFAULT_API_VERSION
from gateway.providers.openai import OpenAITranslator
from gateway.providers.presets import PRESETS, BodyQuirks, base_url_of, quirks_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "providers-openai-compatible.md"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gateway.toml")
    return info.value.errors


def provider(table: str) -> str:
    return f"[providers.p]\n{table}\n[models.m]\nprovider = \"p\"\nupstream_model = \"dep-1\"\n"


# -- the table --------------------------------------------------------------------------------------


def test_every_asked_for_provider_has_a_preset() -> None:
    assert set(PRESETS) == {"mistral", "groq", "together", "deepseek", "fireworks", "xai", "openrouter",
                            "perplexity", "ollama", "vllm", "lmstudio"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_entries_are_well_formed(name: str) -> None:
    p = PRESETS[name]
    url = urlsplit(p.base_url)
    local = name in ("ollama", "vllm", "lmstudio")
    assert url.scheme == ("http" if local else "https") and url.netloc
    assert (p.key_env is None) == local
    assert not p.base_url.endswith("/")
    assert set(p.drop).isdisjoint(old for old, _ in p.rename)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_documented(name: str) -> None:
    """The docs table has a row per preset with its default base URL and a source."""
    rows = [ln for ln in DOCS.read_text(encoding="utf-8").splitlines() if ln.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"no single row for {name} in {DOCS.name}"
    assert PRESETS[name].base_url in rows[0]
    assert "](http" in rows[0]  # a cited source


# -- body quirks ------------------------------------------------------------------------------------


def test_plain_openai_and_quirkless_presets_have_no_quirks() -> None:
    config = load_config_text(provider('type = "openai"\nbase_url = "https://api.openai.com/v1"'), "t")
    assert quirks_of(config.providers["p"]) is None
    for name in ("deepseek", "together", "vllm"):
        assert BodyQuirks.of(PRESETS[name]) is None


def test_groq_drops_refused_fields_only_when_present() -> None:
    q = BodyQuirks.of(PRESETS["groq"])
    assert q is not None and q.ask_usage
    plain = b'{"model": "x",  "messages": [{"role": "user", "content": "hi"}], "n": 1}'
    assert q.body(plain) is plain  # untouched: no quirk field in it, not even decoded
    body = b'{"model":"x","logprobs":true,"top_logprobs":3,"logit_bias":{"50256":-100},"messages":[]}'
    assert json.loads(q.body(body)) == {"model": "x", "messages": []}


def test_a_field_name_inside_a_string_changes_nothing() -> None:
    q = BodyQuirks.of(PRESETS["groq"])
    assert q is not None
    body = b'{"model": "x", "messages": [{"role": "user", "content": "what are \\"logprobs\\"?"}]}'
    assert q.body(body) is body


def test_mistral_never_gets_stream_options_and_gets_max_tokens() -> None:
    q = BodyQuirks.of(PRESETS["mistral"])
    assert q is not None and not q.ask_usage
    body = (b'{"model":"m","stream":true,"stream_options":{"include_usage":true},'
            b'"max_completion_tokens":64,"messages":[]}')
    assert json.loads(q.body(body)) == {"model": "m", "stream": True, "max_tokens": 64, "messages": []}
    both = b'{"max_tokens":10,"max_completion_tokens":64}'
    assert json.loads(q.body(both)) == {"max_tokens": 10}


def test_apply_edits_the_decoded_top_level_object() -> None:
    q = BodyQuirks.of(PRESETS["groq"])
    assert q is not None
    top = msgspec.json.decode(b'{"model":"x","logprobs":false}', type=dict[str, msgspec.Raw])
    assert q.apply(top) is True and set(top) == {"model"}
    assert q.apply(top) is False


def test_a_body_that_is_not_an_object_is_left_to_the_provider() -> None:
    q = BodyQuirks.of(PRESETS["groq"])
    assert q is not None
    assert q.body(b'["logprobs"]') == b'["logprobs"]'
    assert q.body(b'{"logprobs": tru') == b'{"logprobs": tru'


# -- config ------------------------------------------------------------------------------------------


def test_a_preset_gives_the_base_url_and_the_config_may_override_it() -> None:
    config = load_config_text(provider('type = "openai"\npreset = "groq"'), "t")
    assert base_url_of(config.providers["p"]) == "https://api.groq.com/openai/v1"
    config = load_config_text(provider('type = "openai"\npreset = "vllm"\nbase_url = "http://10.1.2.3:8000/v1"'), "t")
    assert base_url_of(config.providers["p"]) == "http://10.1.2.3:8000/v1"


def test_unknown_preset_gets_a_hint() -> None:
    assert errors_of(provider('type = "openai"\npreset = "grok"')) == [
        'gateway.toml:3: providers.p.preset: unknown preset "grok"; did you mean "groq"?'
    ]


def test_openai_without_base_url_or_preset() -> None:
    (error,) = errors_of(provider('type = "openai"'))
    assert "providers.p.base_url: required" in error


@pytest.mark.parametrize(("table", "message"), [
    ('type = "azure"\napi_key = "env:AZ_KEY"', 'providers.p.base_url: required for type "azure"'),
    ('type = "azure"\nbase_url = "https://r.openai.azure.com"', "providers.p.api_key: required"),
    ('type = "azure"\nbase_url = "https://r.openai.azure.com"\napi_key = "env:AZ_KEY"\n'
     'azure_ad_token = "env:AZ_KEY"', "give either api_key or azure_ad_token, not both"),
    ('type = "azure"\nbase_url = "https://r.openai.azure.com/openai"\napi_key = "env:AZ_KEY"',
     'providers.p.base_url: the resource endpoint, without "/openai"'),
    ('type = "azure"\nbase_url = "https://r.openai.azure.com"\napi_key = "env:AZ_KEY"\napi_version = "v2"',
     "providers.p.api_version: must be a dated version"),
    ('type = "azure"\nbase_url = "https://r.openai.azure.com"\napi_key = "env:AZ_KEY"\nazure_path = "v1"\n'
     'api_version = "2024-10-21"', 'providers.p.api_version: with azure_path = "v1"'),
    ('type = "azure"\nbase_url = "https://r.openai.azure.com"\nazure_ad_token = "sk-literal"',
     "providers.p.azure_ad_token: must be a reference"),
    ('type = "azure"\nbase_url = "https://r.openai.azure.com"\napi_key = "env:AZ_KEY"\npreset = "groq"',
     'providers.p.preset: only for type "openai"'),
    ('type = "openai"\nbase_url = "https://x/v1"\nazure_path = "v1"', 'providers.p.azure_path: only for type "azure"'),
    ('type = "openai"\nbase_url = "https://x/v1"\napi_version = "2024-10-21"', "providers.p.api_version: only for"),
    ('type = "azure"\nbase_url = "https://r.openai.azure.com"\napi_key = "env:AZ_UNSET"',
     "environment variable AZ_UNSET is not set"),
])
def test_azure_config_problems(monkeypatch: pytest.MonkeyPatch, table: str, message: str) -> None:
    monkeypatch.setenv("AZ_KEY", "k")
    monkeypatch.delenv("AZ_UNSET", raising=False)
    errors = errors_of(provider(table))
    assert any(message in e for e in errors), errors


def test_azure_ad_token_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("eyJ0\n")
    path = tmp_path / "gateway.toml"
    path.write_text(provider('type = "azure"\nbase_url = "https://r.openai.azure.com"\nazure_ad_token = "file:token"'))
    from gateway.config import load_config

    config = load_config(path)
    assert config.providers["p"].azure_ad_token == f"file:{tmp_path / 'token'}"


# -- translators built from the config ----------------------------------------------------------------


def check_translator(config_text: str, check: Callable[[OpenAITranslator], None]) -> None:
    """Build provider ``p``'s translator (its pool needs a running loop), run ``check`` on it, close it."""
    config = load_config_text(config_text, "t")

    async def go() -> None:
        t = build_translator("p", config.providers["p"], UpstreamConfig())
        try:
            check(t)
        finally:
            await t.close()

    asyncio.run(go())


def test_azure_deployments_translator_prebuilds_a_head_per_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZ_KEY", "secret-1")

    def check(t: OpenAITranslator) -> None:
        a, b = t.for_model("dep/1"), t.for_model("dep-2")
        assert t.for_model("dep/1") is a and a is not t and a.transport is t.transport
        assert a.model_in_path and not t.model_in_path
        head = a._heads["chat"]
        assert head.startswith(b"POST /openai/deployments/dep%2F1/chat/completions?api-version="
                               + DEFAULT_API_VERSION.encode() + b" HTTP/1.1\r\n")
        assert b"\r\napi-key: secret-1\r\n" in head and b"authorization" not in head.lower()
        assert b"/openai/deployments/dep-2/embeddings?api-version=" in b._heads["embeddings"]

    check_translator(provider('type = "azure"\nbase_url = "https://r.openai.azure.com"\napi_key = "env:AZ_KEY"'),
                     check)


def test_azure_v1_translator_uses_the_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZ_TOKEN", "eyJ-token")

    def check(t: OpenAITranslator) -> None:
        assert t.for_model("dep-1") is t and not t.model_in_path
        head = t._heads["chat"]
        assert head.startswith(b"POST /openai/v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nauthorization: Bearer eyJ-token\r\n" in head and b"api-key" not in head

    check_translator(provider('type = "azure"\nbase_url = "https://r.openai.azure.com"\nazure_path = "v1"\n'
                              'azure_ad_token = "env:AZ_TOKEN"'), check)


def test_preset_translator_carries_its_quirks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk")

    def check(t: OpenAITranslator) -> None:
        assert isinstance(t.quirks, BodyQuirks) and t.quirks.drop == ("logprobs", "top_logprobs", "logit_bias")
        assert t._heads["chat"].startswith(b"POST /openai/v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nauthorization: Bearer gsk\r\n" in t._heads["chat"]

    check_translator(provider('type = "openai"\npreset = "groq"\napi_key = "env:GROQ_API_KEY"'), check)


# -- the examples ----------------------------------------------------------------------------------------


def test_example_azure_toml_is_accepted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", "t")
    assert check_main(str(EXAMPLES / "azure.toml")) == 0
    assert "(2 providers, 3 models)" in capsys.readouterr().out


def test_example_presets_toml_is_accepted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("MISTRAL_API_KEY", "GROQ_API_KEY", "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY"):
        monkeypatch.setenv(var, "k")
    assert check_main(str(EXAMPLES / "presets.toml")) == 0
    assert "(5 providers, 5 models)" in capsys.readouterr().out
