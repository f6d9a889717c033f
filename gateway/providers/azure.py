"""Azure OpenAI upstreams (``type = "azure"``): the OpenAI API behind Azure's paths and credentials.

Azure OpenAI speaks the OpenAI wire format, so an Azure provider is an ``OpenAITranslator`` (the
pass-through: the client's bytes go upstream, the answer comes back as it is) built with Azure's paths
and credential header. Nothing here runs per request: the paths and request heads are built once, at
config load.

Two ways in (``azure_path``):

* ``deployments`` (the default): ``/openai/deployments/{deployment}/chat/completions?api-version=V``
  (and ``/completions``, ``/embeddings``), where ``{deployment}`` is the model's ``upstream_model``.
  Each deployment gets its own translator, its request heads prebuilt, sharing the provider's
  connection pool. Azure takes the model from the path and ignores the body's ``model``, so the engine
  does not rewrite it (the client's bytes go up untouched).
* ``v1``: the OpenAI-compatible ``/openai/v1/chat/completions``, no ``api-version`` (or ``preview``);
  the body's ``model`` names the deployment, set by the engine's usual model-id rewrite.

Credentials: ``api_key`` is sent as ``api-key``; ``azure_ad_token`` (an Entra ID access token, by
reference) as ``Authorization: Bearer``. The token is read at config load (and on reload): Entra tokens
expire after about an hour, so whatever writes the file or variable must also reload the gateway; the
gateway does not fetch or refresh tokens itself.

Answers pass through: Azure's ``prompt_filter_results`` / ``content_filter_results`` and the first stream
chunk with empty ``choices`` are fields and chunks the engine's usage extraction skips; content-filter
refusals (400 ``content_filter``) and 429s keep their status and their ``retry-after`` /
``x-ratelimit-*`` headers, as OpenAI's do.
"""

from __future__ import annotations

from typing import Final

from gateway.config import ProviderConfig, resolve_secret
from gateway.providers.base import Transport
from gateway.providers.openai import ENDPOINT_PATHS, OpenAITranslator

__all__ = ["DEFAULT_API_VERSION", "azure_translator"]

#: the data-plane API version used on the deployments path when the config gives none: the latest GA
#: (generally available) inference version. Preview versions (``...-preview``) may be set explicitly.
DEFAULT_API_VERSION: Final = "2024-10-21"


def azure_translator(name: str, p: ProviderConfig, transport: Transport, prefix: str) -> OpenAITranslator:
    """The translator of an Azure provider; ``prefix``: the base URL's path (usually empty)."""
    extra = dict(p.headers)
    bearer: str | None = None
    if p.azure_ad_token is not None:
        bearer = resolve_secret(p.azure_ad_token)
    elif p.api_key is not None:
        extra["api-key"] = resolve_secret(p.api_key)
    if p.azure_path == "v1":
        query = f"?api-version={p.api_version}" if p.api_version else ""
        paths = {ep: f"{prefix}/openai/v1{path}{query}" for ep, path in ENDPOINT_PATHS.items()}
        return OpenAITranslator(name, transport, prefix, bearer, extra, paths=paths)
    version = p.api_version or DEFAULT_API_VERSION
    template = prefix + "/openai/deployments/{model}{endpoint}?api-version=" + version
    return OpenAITranslator(name, transport, prefix, bearer, extra, model_paths=template)

