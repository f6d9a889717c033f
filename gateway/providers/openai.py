"""Translator for OpenAI-compatible upstreams: OpenAI itself, vLLM, Ollama, Groq, Mistral, ... and the mock.

Client shape and upstream shape are the same, so translation is: pick the upstream path, set the
upstream model id and the credential, ask for usage on streams; responses pass through unchanged
(the engine strips the usage chunk when the client did not ask for it).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Final

from gateway._core.http import build_request
from gateway.providers.base import Transport, UpstreamResponse
from gateway.server.pool import HeadCallback, OriginPool

__all__ = ["ENDPOINT_PATHS", "OpenAITranslator"]

ENDPOINT_PATHS: Final = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


class OpenAITranslator:
    """One per configured provider; holds the prebuilt header list and the transport."""

    __slots__ = ("_headers", "_heads", "_paths", "_pool", "_prefix", "name", "transport")

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
        self._prefix = path_prefix
        self._paths = {ep: path_prefix + p for ep, p in ENDPOINT_PATHS.items()}
        headers = [("content-type", "application/json"), ("user-agent", "llm-gateway")]
        if api_key:
            headers.append(("authorization", f"Bearer {api_key}"))
        headers.extend((k.lower(), v) for k, v in extra_headers.items())
        self._headers = headers
        # PERF: with the HTTP pool, the request head is prebuilt per endpoint; per request only the
        # request id and the length are formatted in
        self._pool = transport if isinstance(transport, OriginPool) else None
        self._heads: dict[str, bytes] = {}
        if self._pool is not None:
            for ep, path in self._paths.items():
                self._heads[ep] = self._pool.build_head("POST", path, headers, -1) + b"x-request-id: "

    def send(self, endpoint: str, body: bytes, request_id: str) -> Awaitable[UpstreamResponse]:
        """Send one request upstream; the awaitable gives the response once its head has arrived."""
        pool = self._pool
        if pool is not None:
            return pool.send_data(build_request(self._heads[endpoint], request_id, body))
        headers = [*self._headers, ("x-request-id", request_id)]
        return self.transport.request("POST", self._paths[endpoint], headers, body)

    def send_cb(self, endpoint: str, body: bytes, request_id: str, cb: HeadCallback) -> bool:
        """``send`` with a callback (see ``OriginPool.send_cb``); False, having sent nothing, when the
        transport has no idle connection at hand or is not the HTTP pool."""
        pool = self._pool
        if pool is None:
            return False
        return pool.send_cb(build_request(self._heads[endpoint], request_id, body), cb)

    def send_within(
        self, endpoint: str, body: bytes, request_id: str, connect_timeout: float
    ) -> Awaitable[UpstreamResponse]:
        """``send`` whose new upstream connection, if it needs one, must be up within ``connect_timeout``
        seconds (a routed deployment's own) instead of the provider's; transports without connections
        (the in-process mock) ignore it."""
        pool = self._pool
        if pool is not None:
            return pool.send_within(build_request(self._heads[endpoint], request_id, body), connect_timeout)
        return self.send(endpoint, body, request_id)

    def probe(self, method: str, path: str, body: bytes) -> Awaitable[UpstreamResponse]:
        """A health-check request: ``path`` below the provider's base URL, with its credential."""
        headers = [h for h in self._headers if h[0] != "content-type" or body]
        return self.transport.request(method, self._prefix + path, headers, body)

    async def close(self) -> None:
        await self.transport.close()
