"""The bedrock and cohere provider types: their config keys and checks, the examples, the credential chain,
credentials refreshed off the request path, and the translator each type builds."""

from __future__ import annotations

import asyncio
import datetime
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import RefreshableCredentials

from gateway.config import ConfigError, load_config, load_config_text
from gateway.config.schema import UpstreamConfig
from gateway.engine import build_translator
from gateway.providers.aws import AwsCredentials, SigV4Signer, resolve_credentials
from gateway.providers.bedrock import BedrockTranslator
from gateway.providers.cohere import CohereTranslator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NO_AWS_FILES = {"AWS_CONFIG_FILE": "/nonexistent/config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/creds",
                "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_REGION",
              "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in NO_AWS_FILES.items():
        monkeypatch.setenv(k, v)
    return monkeypatch


def test_examples_load(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("OPENAI_API_KEY", "sk-test")
    aws_env.setenv("COHERE_API_KEY", "co-test")
    bedrock = load_config(EXAMPLES / "bedrock.toml")
    assert bedrock.providers["bedrock"].type == "bedrock" and bedrock.providers["bedrock"].region == "us-east-1"
    assert bedrock.models["titan-embed"].endpoints == ["embeddings"]
    cohere = load_config(EXAMPLES / "cohere.toml")
    assert cohere.providers["cohere"].type == "cohere"


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    return "\n".join(info.value.errors)


def test_bedrock_needs_a_region(aws_env: pytest.MonkeyPatch) -> None:
    text = '[providers.b]\ntype = "bedrock"\n[models.m]\nprovider = "b"\n'
    assert "region" in _problems(text)
    aws_env.setenv("AWS_REGION", "eu-west-3")
    assert load_config_text(text).providers["b"].region is None  # the environment's is used


def test_bedrock_keys_are_references_in_pairs_and_only_for_bedrock(aws_env: pytest.MonkeyPatch) -> None:
    problems = _problems('[providers.b]\ntype = "bedrock"\nregion = "us-east-1"\naws_access_key_id = "AKIA"\n'
                         '[models.m]\nprovider = "b"\n')
    assert "aws_access_key_id" in problems and "aws_secret_access_key" in problems
    assert 'only for type "bedrock"' in _problems('[providers.o]\ntype = "openai"\nbase_url = "http://x"\n'
                                                  'region = "us-east-1"\n[models.m]\nprovider = "o"\n')


def test_cohere_needs_its_key() -> None:
    assert "api_key" in _problems('[providers.c]\ntype = "cohere"\n[models.m]\nprovider = "c"\n')


def test_the_chain_reads_the_environment_and_says_when_it_finds_nothing(aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_credentials()
    assert "no AWS credentials" in info.value.errors[0]
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert resolve_credentials().get_frozen_credentials().access_key == "AKIDENV"
    assert resolve_credentials(None, "AKIDSTATIC", "s2").access_key == "AKIDSTATIC"


def test_web_identity_role_is_found_by_the_chain(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """IRSA: a role ARN and a token file in the environment give refreshable credentials (fetched later,
    from STS, by the refresh task; resolving them calls nothing)."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    aws_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/gateway")
    aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    aws_env.setenv("AWS_REGION", "us-east-1")
    creds = resolve_credentials()
    assert isinstance(creds, RefreshableCredentials) and creds.method == "assume-role-with-web-identity"


def _refreshable(calls: list[str]) -> RefreshableCredentials:
    def refresh() -> dict[str, Any]:
        calls.append(threading.current_thread().name)
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=60)
        return {"access_key": f"AKID{len(calls)}", "secret_key": "s", "token": f"t{len(calls)}",
                "expiry_time": expiry.isoformat()}

    return RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")


def test_credentials_are_frozen_once_and_refreshed_off_the_request_path() -> None:
    calls: list[str] = []
    creds = AwsCredentials(_refreshable(calls), check_every=3600)
    assert creds.refreshable and creds.frozen.access_key == "AKID1"
    # five minutes from expiry: inside botocore's mandatory refresh window
    creds._creds._expiry_time = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    signer = SigV4Signer(creds, "us-east-1", "https://h", "h")
    for _ in range(50):  # near expiry (5 minutes left), yet a request never refreshes
        headers = dict(signer.headers("/model/m/converse", b"{}"))
    assert len(calls) == 1 and headers["x-amz-security-token"] == "t1"

    async def refresh_now() -> None:
        await creds.refresh()

    asyncio.run(refresh_now())
    assert len(calls) == 2 and calls[1] != threading.current_thread().name  # in a worker thread
    assert creds.frozen.access_key == "AKID2"
    assert dict(signer.headers("/model/m/converse", b"{}"))["x-amz-security-token"] == "t2"


def test_the_refresh_task_runs_and_stops() -> None:
    calls: list[str] = []
    creds = AwsCredentials(_refreshable(calls), check_every=0.0)
    creds._creds._expiry_time = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)

    async def run() -> None:
        creds.start()
        deadline = asyncio.get_running_loop().time() + 10
        while len(calls) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await creds.close()

    asyncio.run(run())
    assert len(calls) >= 2 and creds.frozen.access_key != "AKID1"


def test_build_translator_for_both_types(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    aws_env.setenv("CO_KEY", "co")
    config = load_config_text(
        '[providers.b]\ntype = "bedrock"\nregion = "eu-central-1"\n'
        '[providers.c]\ntype = "cohere"\napi_key = "env:CO_KEY"\n'
        '[models.m]\nprovider = "b"\nupstream_model = "anthropic.claude-3-haiku-20240307-v1:0"\n')

    async def build() -> tuple[Any, Any]:
        b = build_translator("b", config.providers["b"], UpstreamConfig())
        c = build_translator("c", config.providers["c"], UpstreamConfig())
        await b.close()
        await c.close()
        return b, c

    b, c = asyncio.run(build())
    assert isinstance(b, BedrockTranslator) and isinstance(c, CohereTranslator)
    assert b.transport.host_header == "bedrock-runtime.eu-central-1.amazonaws.com"
    child = b.for_model("anthropic.claude-3-haiku-20240307-v1:0")
    assert child.model_in_path and child._paths["stream"] == \
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
    assert c.transport.host_header == "api.cohere.com" and c._paths["chat"] == "/v2/chat"


def test_a_stream_request_goes_to_converse_stream() -> None:
    """The stream flag picks the path: a stream request must never reach /converse, nor the reverse."""
    from gateway.config.schema import MockConfig
    from gateway.providers.mock import MockTransport

    t = BedrockTranslator("b", MockTransport(MockConfig()), "", "us-east-1", None, "key", {}, "m")
    assert t._request("chat", b"{}", True, None)[0] == "stream"
    assert t._request("messages", b"{}", True, None)[0] == "stream"
    assert t._request("chat", b"{}", False, None)[0] == "chat"
    assert t._request("chat", b"{}\n", False, None)[0] == "chat"  # the body marks nothing
    assert t._request("embeddings", b"{}", False, None)[0] == "embeddings"


def test_shared_file_profiles_and_role_assumption(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``aws_profile`` picks a profile of the shared files; one with ``role_arn`` assumes that role (through
    STS, later, by the refresh task: resolving it calls nothing)."""
    creds_file = tmp_path / "credentials"
    creds_file.write_text("[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = s\n")
    config_file = tmp_path / "config"
    config_file.write_text("[profile gateway]\nrole_arn = arn:aws:iam::123456789012:role/gateway\n"
                           "source_profile = base\nregion = us-east-1\n")
    aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds_file))
    aws_env.setenv("AWS_CONFIG_FILE", str(config_file))
    assert resolve_credentials("base").get_frozen_credentials().access_key == "AKIDBASE"
    role = resolve_credentials("gateway")
    assert isinstance(role, RefreshableCredentials) and role.method == "assume-role"
