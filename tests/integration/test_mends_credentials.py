"""A provider's 403: a bad credential or a missing permission, as the provider's own translator tells.

AWS answers a wrong key or signature with 403 (``upstream_authentication``), its AccessDenied with 403
too (``upstream_permission``); that reading of the body is Bedrock's knowledge. Another provider's 403
is a missing permission whatever words its message happens to hold. Real processes on loopback:
``gateway mock --dialect bedrock`` (SigV4 checked with its secret), an OpenAI-compatible upstream in this
process that answers 403, and one ``gateway serve`` in front of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import HOST
from .test_bedrock_upstream import CLAUDE
from .test_dialects_new_providers import bedrock_mock  # noqa: F401  # its fixture, shared
from .test_mends_answer_ids import provider_env
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(120)

#: an OpenAI-compatible upstream's 403 whose message quotes words AWS uses for a bad credential
FORBIDDEN = json.dumps({"error": {
    "message": "This project may not use the model: the security token included in the request is "
               "scoped to another project (ExpiredToken rotation pending)",
    "type": "invalid_request_error", "code": "model_not_allowed"}}).encode()


def _forbidden(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    return 403, "application/json", FORBIDDEN


def _config(bedrock_port: int, tiny_port: int) -> str:
    base = f"http://{HOST}:{bedrock_port}"
    return f"""
[server]
drain_timeout = 2.0

[providers.aws-wrong-secret]
type = "bedrock"
base_url = "{base}"
region = "us-east-1"
aws_access_key_id = "env:AWS_ACCESS_KEY_ID"
aws_secret_access_key = "env:WRONG_SECRET"

[providers.aws-denied]
type = "bedrock"
base_url = "{base}"
[providers.aws-denied.headers]
x-mock = "status=403"

[providers.compatible]
type = "openai"
base_url = "http://{HOST}:{tiny_port}/v1"
api_key = "env:MOCK_KEY"

[models.bedrock-wrong-secret]
provider = "aws-wrong-secret"
upstream_model = "{CLAUDE}"

[models.bedrock-denied]
provider = "aws-denied"
upstream_model = "{CLAUDE}"

[models.compatible]
provider = "compatible"
upstream_model = "m-1"
"""


@pytest.fixture(scope="module")
def gw(bedrock_mock: int, logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:  # noqa: F811
    tiny = TinyUpstream(_forbidden)
    try:
        with provider_env():
            gateway = _launch("gateway-mends-credentials", logs_dir, config_text=_config(bedrock_mock, tiny.port),
                              workers=1, frontend="native")
            failed = request.session.testsfailed
            try:
                yield gateway
            finally:
                _stop(gateway.process, request, failed)
    finally:
        tiny.close()


def _refusal(gw: Gateway, model: str, stream: bool) -> dict[str, str]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    r = httpx.post(f"http://{HOST}:{gw.port}/v1/chat/completions", json=body, timeout=30.0)
    assert r.status_code == 502, r.text
    err: dict[str, str] = r.json()["error"]
    assert err["type"] == "upstream_error" and "credentials" in err["message"], err
    return err


@pytest.mark.parametrize("stream", [False, True])
def test_an_aws_403_for_a_wrong_signature_is_a_bad_credential(gw: Gateway, stream: bool) -> None:
    assert _refusal(gw, "bedrock-wrong-secret", stream)["code"] == "upstream_authentication"


@pytest.mark.parametrize("stream", [False, True])
def test_an_aws_access_denied_is_a_missing_permission(gw: Gateway, stream: bool) -> None:
    assert _refusal(gw, "bedrock-denied", stream)["code"] == "upstream_permission"


@pytest.mark.parametrize("stream", [False, True])
def test_another_providers_403_is_a_missing_permission_whatever_its_words(gw: Gateway, stream: bool) -> None:
    """AWS's words for a bad credential in another provider's 403 do not make it one: only Bedrock's
    translator reads them."""
    err = _refusal(gw, "compatible", stream)
    assert err["code"] == "upstream_permission"
    assert "ExpiredToken" not in err["message"]  # the provider's words go to the log, not the client
