"""Translator for OpenAI-compatible upstreams: OpenAI itself, vLLM, Ollama, Groq, Mistral, ... and the mock.

Client shape and upstream shape are the same, so translation is: pick the upstream path, set the
upstream model id and the credential, ask for usage on streams; responses pass through unchanged
(the engine strips the usage chunk when the client did not ask for it).
"""

from __future__ import annotations

from typing import Final

from gateway.providers.base import Transport, UpstreamResponse

__all__ = ["ENDPOINT_PATHS", "OpenAITranslator"]

ENDPOINT_PATHS: Final = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


class OpenAITranslator:
    """One per configured provider; holds the prebuilt header list and the transport."""

    __slots__ = ("_headers", "_paths", "name", "transport")

    def __init__(
        self,
        name: str,
        transport: Transport,
        path_prefix: str,
        api_key: str | None,
        extra_headers: dict[str, str],
    ) -> None:
        self.name = name
        self.transport = transport
        # PERF: paths and static headers are built once per provider
        self._paths = {ep: path_prefix + p for ep, p in ENDPOINT_PATHS.items()}
        headers = [("content-type", "application/json"), ("user-agent", "llm-gateway")]
        if api_key:
            headers.append(("authorization", f"Bearer {api_key}"))
        headers.extend((k.lower(), v) for k, v in extra_headers.items())
        self._headers = headers

    async def send(self, endpoint: str, body: bytes, request_id: str) -> UpstreamResponse:
        headers = self._headers + [("x-request-id", request_id)]
        return await self.transport.request("POST", self._paths[endpoint], headers, body)

    async def close(self) -> None:
        await self.transport.close()
