"""OpenAI-compatible providers by name: their default base URL and their known quirks, written down once.

``type = "openai"`` with ``preset = "groq"`` (say) is the plain OpenAI pass-through with three things
from the table below: the default ``base_url`` (the config's own, if given, wins), the environment
variable the docs suggest for the key, and the preset's **body quirks**: request fields the provider
refuses outright (a 400 or 422 for a field any OpenAI client may send) are dropped or renamed before the
request goes upstream, and ``stream_options`` is neither added by the gateway nor forwarded when the
provider refuses it. Everything else passes through byte for byte, as for any ``openai`` provider.

Theory of operation (``BodyQuirks``, built once per provider at config load):

======================  ==========================================================================
the request body         what goes upstream
======================  ==========================================================================
no quirk field in it     the client's bytes (one substring scan per quirk field: the bytes are not
                         decoded)
a quirk field in it      the top-level object decoded (values stay raw bytes), the refused fields
                         dropped, the renamed ones renamed, re-encoded
======================  ==========================================================================

Only top-level fields are handled: a quirk inside ``messages`` (Groq's ``messages[].name``) would need
every message decoded on every request, so it is documented, and the provider's own error passes through.
The table's sources are cited in ``docs/providers-openai-compatible.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, Literal

import msgspec

from gateway.config import ProviderConfig, resolve_secret

__all__ = ["PRESETS", "BodyQuirks", "Preset", "StreamUsage", "base_url_of", "credentials_of", "quirks_of"]

#: how a provider reports usage in a stream: only when asked (``stream_options.include_usage``, as
#: OpenAI), on its last chunk whether asked or not, on every chunk (cumulative: the last one counts), or
#: not at all (such a stream's call record has no token counts)
StreamUsage = Literal["include_usage", "always", "every_chunk", "never"]


class Preset(msgspec.Struct, frozen=True, kw_only=True):
    """One OpenAI-compatible provider's defaults and quirks."""

    name: str
    title: str
    #: the default base URL, version prefix included
    base_url: str
    #: the environment variable its docs and SDKs use for the key (None: a local server with no key)
    key_env: str | None
    #: top-level request fields the provider answers 400/422 to: dropped when present
    drop: tuple[str, ...] = ()
    #: top-level fields the provider knows under another name: (OpenAI's name, the provider's name)
    rename: tuple[tuple[str, str], ...] = ()
    #: False: the provider refuses ``stream_options`` (the gateway never adds it; a client's is dropped)
    stream_options: bool = True
    stream_usage: StreamUsage = "include_usage"


PRESETS: Final[dict[str, Preset]] = {p.name: p for p in (
    Preset(name="mistral", title="Mistral AI", base_url="https://api.mistral.ai/v1",
           key_env="MISTRAL_API_KEY", rename=(("max_completion_tokens", "max_tokens"),),
           stream_options=False, stream_usage="always"),
    Preset(name="groq", title="Groq", base_url="https://api.groq.com/openai/v1", key_env="GROQ_API_KEY",
           drop=("logprobs", "top_logprobs", "logit_bias")),
    Preset(name="together", title="Together AI", base_url="https://api.together.ai/v1",
           key_env="TOGETHER_API_KEY"),
    Preset(name="deepseek", title="DeepSeek", base_url="https://api.deepseek.com/v1",
           key_env="DEEPSEEK_API_KEY"),
    Preset(name="fireworks", title="Fireworks AI", base_url="https://api.fireworks.ai/inference/v1",
           key_env="FIREWORKS_API_KEY"),
    Preset(name="xai", title="xAI", base_url="https://api.x.ai/v1", key_env="XAI_API_KEY"),
    Preset(name="openrouter", title="OpenRouter", base_url="https://openrouter.ai/api/v1",
           key_env="OPENROUTER_API_KEY", stream_usage="always"),
    Preset(name="perplexity", title="Perplexity", base_url="https://api.perplexity.ai",
           key_env="PERPLEXITY_API_KEY", stream_usage="every_chunk"),
    Preset(name="ollama", title="Ollama", base_url="http://localhost:11434/v1", key_env=None),
    Preset(name="vllm", title="vLLM", base_url="http://localhost:8000/v1", key_env=None),
    Preset(name="lmstudio", title="LM Studio", base_url="http://localhost:1234/v1", key_env=None,
           stream_usage="never"),
)}

_decode_top = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


class BodyQuirks:
    """A preset's request-body changes, built once per provider (see the module docstring).

    The engine asks ``applies`` of every request body bound for the provider; only when it says yes (or
    the body is decoded anyway, to set the model id or ask for usage) does ``apply`` edit the decoded
    top-level object.
    """

    __slots__ = ("ask_usage", "drop", "needles", "rename")

    def __init__(self, preset: Preset) -> None:
        drop = list(preset.drop)
        if not preset.stream_options:
            drop.append("stream_options")
        self.drop: tuple[str, ...] = tuple(drop)
        self.rename = preset.rename
        #: False: the gateway must not add ``stream_options`` to ask for usage
        self.ask_usage = preset.stream_options
        # PERF: the quoted names, searched for in the raw body; no decode unless one occurs
        names = [*self.drop, *(old for old, _ in self.rename)]
        self.needles = tuple(b'"' + n.encode() + b'"' for n in names)

    @classmethod
    def of(cls, preset: Preset) -> BodyQuirks | None:
        """The quirks of ``preset``, or None when it has none (its bodies pass through untouched)."""
        if not preset.drop and not preset.rename and preset.stream_options:
            return None
        return cls(preset)

    def applies(self, body: bytes) -> bool:
        """Whether ``body`` may hold a field to change (a name may also occur inside a string: then
        ``apply`` finds nothing to do)."""
        for needle in self.needles:
            if needle in body:
                return True
        return False

    def apply(self, top: dict[str, msgspec.Raw]) -> bool:
        """Edit a decoded top-level request object in place; True when something changed."""
        changed = False
        for name in self.drop:
            if top.pop(name, None) is not None:
                changed = True
        for old, new in self.rename:
            value = top.pop(old, None)
            if value is not None:
                changed = True
                if new not in top:  # both given: the provider's own name wins
                    top[new] = value
        return changed

    def body(self, body: bytes) -> bytes:
        """``body`` with the quirks applied (the same bytes when there is nothing to change, or when it
        is not a JSON object: the provider answers that as it would)."""
        if not self.applies(body):
            return body
        try:
            top = _decode_top(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return body
        return _encode(top) if self.apply(top) else body


def _bedrock_url(p: ProviderConfig) -> str:
    region = p.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    return f"https://bedrock-runtime.{region}.amazonaws.com"


#: the default base URL of provider types with their own wire format (the loader checked what they need)
NATIVE_BASE_URLS: Final[dict[str, Callable[[ProviderConfig], str]]] = {
    "bedrock": _bedrock_url,
    "cohere": lambda p: "https://api.cohere.com",
}


def base_url_of(p: ProviderConfig) -> str:
    """The provider's base URL: its own, else its preset's (the loader has checked that one exists)."""
    if p.base_url is not None:
        return p.base_url
    if p.type in NATIVE_BASE_URLS:
        return NATIVE_BASE_URLS[p.type](p)
    assert p.preset is not None
    return PRESETS[p.preset].base_url


def quirks_of(p: ProviderConfig) -> BodyQuirks | None:
    """The provider's body quirks: its preset's, if it has a preset with any."""
    return BodyQuirks.of(PRESETS[p.preset]) if p.preset is not None else None


def credentials_of(p: ProviderConfig) -> tuple[str, ...]:
    """The provider's credentials as they read now (references resolved). A reload compares them with the
    ones its translator was built with: a key or token rotated behind an unchanged reference (a
    rewritten secret file) gets a new translator."""
    refs = (p.api_key, p.azure_ad_token, p.aws_access_key_id, p.aws_secret_access_key, p.aws_session_token)
    found = tuple(resolve_secret(ref) for ref in refs if ref)
    if p.credentials_file is not None:  # a Vertex key file rewritten in place (a rotated Secret)
        from gateway.providers.google_auth import file_digest

        found += (file_digest(p.credentials_file),)
    return found
