"""A translated answer's id is in the client's dialect: ``msg_`` for Messages, ``chatcmpl-`` for chat.

One gateway whose models sit on every upstream wire: ``gateway mock`` (OpenAI chat), ``gateway mock
--dialect anthropic|gemini|bedrock|cohere``; real processes on loopback, the official ``anthropic`` and
``openai`` SDKs as clients. An answer served from another wire keeps its upstream's id with the client
dialect's prefix (the same upstream answer always gets the same id); a same-wire answer passes through
unchanged. Responses mints its own ``resp_``/``msg_`` ids whatever the upstream.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from . import test_dialects_new_providers
from .conftest import Gateway, _launch, _stop
from .helpers import HOST
from .test_anthropic_upstream import (
    ANTH_KEY,
    anthropic_mock,  # noqa: F401  # its fixture, shared
)
from .test_bedrock_upstream import AWS_ENV, CLAUDE
from .test_cohere_upstream import CO_KEY
from .test_dialects_new_providers import bedrock_mock, cohere_mock, gemini_mock  # noqa: F401  # shared
from .test_gemini_upstream import KEY as GEMINI_KEY

pytestmark = pytest.mark.timeout(180)

#: the SDK clients' fixtures, on this module's ``gw``
claude = test_dialects_new_providers.claude
oai = test_dialects_new_providers.oai

USER = "Tell me something about gateways."
#: models on another wire than OpenAI chat (chat answers are translated)
NOT_OPENAI = ["claude", "gemini", "bedrock", "cohere"]
#: models on another wire than Anthropic Messages (Messages answers are translated)
NOT_ANTHROPIC = ["gpt", "gemini", "bedrock", "cohere"]


def _config(mock_port: int, anth_port: int, gem_port: int, bedrock_port: int, cohere_port: int) -> str:
    return f"""
[server]
drain_timeout = 2.0

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[providers.claude]
type = "anthropic"
base_url = "http://{HOST}:{anth_port}/v1"
api_key = "env:ANTH_KEY"

[providers.gemini]
type = "gemini"
base_url = "http://{HOST}:{gem_port}/v1beta"
api_key = "env:GEMINI_KEY"

[providers.aws]
type = "bedrock"
base_url = "http://{HOST}:{bedrock_port}"

[providers.co]
type = "cohere"
base_url = "http://{HOST}:{cohere_port}"
api_key = "env:CO_KEY"

[models.gpt]
provider = "openai"
upstream_model = "mock-1"

[models.claude]
provider = "claude"
upstream_model = "claude-mock"

[models.gemini]
provider = "gemini"
upstream_model = "gemini-2.5-flash"

[models.bedrock]
provider = "aws"
upstream_model = "{CLAUDE}"

[models.cohere]
provider = "co"
upstream_model = "command-a-03-2025"
"""


@contextlib.contextmanager
def provider_env() -> Iterator[None]:
    """The providers' credentials in the environment the gateway starts with (AWS's alone: no profile,
    role or container credentials of this machine)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"ANTH_KEY": ANTH_KEY, "GEMINI_KEY": GEMINI_KEY, "CO_KEY": CO_KEY,
                     "NO_PROXY": "127.0.0.1,localhost", **AWS_ENV}.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                  "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
            mp.delenv(k, raising=False)
        yield


@pytest.fixture(scope="module")
def gw(mock_port: int, anthropic_mock: int, gemini_mock: int, bedrock_mock: int,  # noqa: F811
       cohere_mock: int, logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:  # noqa: F811
    with provider_env():
        config = _config(mock_port, anthropic_mock, gemini_mock, bedrock_mock, cohere_mock)
        gateway = _launch("gateway-mends-ids", logs_dir, config_text=config, workers=1, frontend="native")
        failed = request.session.testsfailed
        try:
            yield gateway
        finally:
            _stop(gateway.process, request, failed)


def _post(gw: Gateway, path: str, body: dict[str, Any]) -> httpx.Response:
    r = httpx.post(f"http://{HOST}:{gw.port}{path}", json=body, timeout=30.0,
                   headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    return r


def _suffix(answer_id: str) -> str:
    """An id without its dialect prefix."""
    for prefix in ("chatcmpl-", "msg_"):
        if answer_id.startswith(prefix):
            return answer_id[len(prefix):]
    return answer_id


# -- Anthropic Messages: msg_ ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [*NOT_ANTHROPIC, "claude"])
def test_messages_ids_are_msg_ids(claude: anthropic.Anthropic, model: str) -> None:
    """``message.id`` and the stream's ``message_start.message.id`` start with ``msg_`` whatever the
    upstream (an OpenAI upstream's ``chatcmpl-`` id is re-prefixed; Anthropic's passes through)."""
    msg = claude.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": USER}])
    assert msg.id.startswith("msg_") and len(msg.id) > len("msg_"), msg.id
    assert not msg.id.startswith("msg_chatcmpl")
    with claude.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": USER}]) as stream:
        ids = [ev.message.id for ev in stream if ev.type == "message_start"]
        final = stream.get_final_message()
    assert len(ids) == 1 and ids[0].startswith("msg_") and len(ids[0]) > len("msg_"), ids
    assert final.id == ids[0]


def test_messages_id_is_derived_from_the_openai_upstream_id(gw: Gateway) -> None:
    """The mock's ids are ``chatcmpl-`` + a per-process token (12 hex digits) + a counter: the chat
    answer (pass-through) carries it as the upstream sent it, the Messages answer the upstream's id with
    ``msg_`` in place of ``chatcmpl-`` (the same token, then the next count)."""
    chat = _post(gw, "/v1/chat/completions", {"model": "gpt", "messages": [{"role": "user", "content": USER}]})
    upstream_id = chat.json()["id"]
    assert upstream_id.startswith("chatcmpl-")
    msgs = _post(gw, "/v1/messages", {"model": "gpt", "max_tokens": 64,
                                      "messages": [{"role": "user", "content": USER}]})
    token = upstream_id[len("chatcmpl-"):][:12]
    assert msgs.json()["id"].startswith("msg_" + token), (upstream_id, msgs.json()["id"])


def test_bedrock_ids_follow_the_request_id(gw: Gateway) -> None:
    """A Converse answer has no id: the gateway names it from the request id, in the client's dialect."""
    body = {"model": "bedrock", "max_tokens": 64, "messages": [{"role": "user", "content": USER}]}
    msgs = _post(gw, "/v1/messages", body)
    assert msgs.json()["id"] == "msg_" + msgs.headers["x-request-id"]
    chat = _post(gw, "/v1/chat/completions", body)
    assert chat.json()["id"] == "chatcmpl-" + chat.headers["x-request-id"]


# -- OpenAI chat: chatcmpl- --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [*NOT_OPENAI, "gpt"])
def test_chat_ids_are_chatcmpl_ids(oai: openai.OpenAI, model: str) -> None:
    """A chat completion and every chunk of a stream carry one ``chatcmpl-`` id whatever the upstream."""
    done = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": USER}])
    assert done.id.startswith("chatcmpl-") and len(done.id) > len("chatcmpl-"), done.id
    assert not done.id.startswith("chatcmpl-msg_")
    chunks = list(oai.chat.completions.create(model=model, messages=[{"role": "user", "content": USER}],
                                              stream=True))
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-"), ids


def test_chat_id_is_derived_from_the_anthropic_upstream_id(gw: Gateway) -> None:
    """An Anthropic answer's ``msg_…`` id reaches a chat client as ``chatcmpl-…`` with the upstream's
    suffix: the mock's ids are ``msg_01`` + a per-process token + a 12-hex-digit counter, so a
    pass-through Messages answer and a translated chat answer differ only in prefix and counter."""
    msgs = _post(gw, "/v1/messages", {"model": "claude", "max_tokens": 64,
                                      "messages": [{"role": "user", "content": USER}]}).json()["id"]
    chat = _post(gw, "/v1/chat/completions", {"model": "claude",
                                              "messages": [{"role": "user", "content": USER}]}).json()["id"]
    assert msgs.startswith("msg_") and chat.startswith("chatcmpl-")
    # the mock's ids: a per-process token then a 12-hex-digit counter
    assert _suffix(chat)[:-12] == _suffix(msgs)[:-12] and _suffix(chat).startswith("01")


# -- OpenAI Responses: resp_ and msg_ ----------------------------------------------------------------------


@pytest.mark.parametrize("model", [*NOT_OPENAI, "gpt"])
def test_responses_ids_are_openai_ids(oai: openai.OpenAI, model: str) -> None:
    """A response is ``resp_…`` and its message items ``msg_…``, non-stream and stream."""
    resp = oai.responses.create(model=model, input=USER, store=False)
    assert resp.id.startswith("resp_")
    assert [o.id[:4] for o in resp.output if o.type == "message"] == ["msg_"]
    with oai.responses.stream(model=model, input=USER, store=False) as stream:
        events = list(stream)
    created = [e.response.id for e in events if e.type == "response.created"]
    assert len(created) == 1 and created[0].startswith("resp_")
    items = [e.item.id for e in events if e.type == "response.output_item.added" and e.item.type == "message"]
    assert items and all(i.startswith("msg_") for i in items), json.dumps(items)
