"""The OpenAI embeddings dialect for translated upstreams: request → texts, vectors → ``list`` body.

Used when the upstream's embeddings API is not OpenAI's (Gemini's ``batchEmbedContents``, Vertex AI's
``predict``, Bedrock's Titan and Cohere, Cohere's ``/v2/embed``): every such translator reads the
request and writes the answer here, and keeps only its own wire. Pure: no I/O. ``encoding_format:
base64`` (what the ``openai`` SDK sends by default) gets each vector as little-endian float32 bytes in
base64, as OpenAI answers it.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Final, Literal

import msgspec

from gateway.errors import BadRequest

__all__ = ["EmbeddingsRequest", "decode_request", "encode_response"]


class EmbeddingsRequest(msgspec.Struct, frozen=True):
    model: str
    #: a text, a list of texts (token-id inputs are refused in ``texts``)
    input: str | list[Any]
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        """The inputs as texts (token-id inputs are refused: a translated upstream has its own tokenizer)."""
        if isinstance(self.input, str):
            return [self.input]
        if not self.input:
            raise BadRequest("input must not be empty", param="input")
        if not all(isinstance(t, str) for t in self.input):
            raise BadRequest("this model takes text inputs only, not token ids", param="input")
        return self.input


class _Item(msgspec.Struct, frozen=True):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    total_tokens: int


class _List(msgspec.Struct, frozen=True):
    data: list[_Item]
    model: str
    usage: _Usage
    object: str = "list"


_decoder: Final = msgspec.json.Decoder(EmbeddingsRequest)
_encode: Final = msgspec.json.Encoder().encode


def decode_request(body: bytes) -> EmbeddingsRequest:
    """An OpenAI embeddings request. Raises BadRequest."""
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as e:
        raise BadRequest(f"invalid request: {e}", param="body") from None
    except msgspec.DecodeError:
        raise BadRequest("the request body is not valid JSON", param="body") from None


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def encode_response(vectors: list[list[float]], model: str, prompt_tokens: int, as_base64: bool) -> bytes:
    """The OpenAI ``list`` of embeddings."""
    items = [_Item(i, _base64(v) if as_base64 else v) for i, v in enumerate(vectors)]
    return _encode(_List(items, model, _Usage(prompt_tokens, prompt_tokens)))
