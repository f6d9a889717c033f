"""Token counts: the admission estimate, offline tiktoken from bpe-openai, counting off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from gateway.limits import TiktokenDataError, TokenCounter, encoding_for_model, estimate_tokens
from gateway.limits import tokens as tokens_mod
from gateway.limits.tokens import (
    TIKTOKEN_FILES,
    prepare_offline_tiktoken,
    tiktoken_cache_dir,
    tiktoken_cache_name,
    tokens_of_kind,
)

# Token ids of known strings (as listed in OpenAI's tiktoken cookbook)
KNOWN = {
    "cl100k_base": {
        "tiktoken is great!": [83, 1609, 5963, 374, 2294, 0],
        "antidisestablishmentarianism": [519, 85342, 34500, 479, 8997, 2191],
        "hello world": [15339, 1917],
    },
    "o200k_base": {
        "tiktoken is great!": [83, 8251, 2488, 382, 2212, 0],
        "antidisestablishmentarianism": [493, 129901, 376, 160388, 21203, 2367],
        "hello world": [24912, 2375],
    },
}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh, empty TIKTOKEN_CACHE_DIR, no encoding loaded yet, and any download attempt fails."""
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_download(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return cache


# -- the admission estimate


@pytest.mark.parametrize(
    ("body_len", "max_tokens", "default_max", "expected"),
    [
        (400, 100, 4096, 200),  # 400 bytes / 4 + 100
        (401, 100, 4096, 201),  # bytes / 4 rounds up
        (0, None, 4096, 4096),  # no max_tokens: the configured default
        (1000, None, 512, 762),
        (1000, 0, 4096, 250),  # embeddings: no completion
        (8, -5, 4096, 2),  # a negative max_tokens counts as 0 (the upstream rejects it anyway)
    ],
)
def test_estimate_tokens(body_len: int, max_tokens: int | None, default_max: int, expected: int) -> None:
    assert estimate_tokens(body_len, max_tokens, default_max) == expected


def test_estimate_tokens_by_kind() -> None:
    assert estimate_tokens(400, 100, 4096, kind="total") == 200
    assert estimate_tokens(400, 100, 4096, kind="input") == 100
    assert estimate_tokens(400, 100, 4096, kind="output") == 100
    assert estimate_tokens(400, None, 4096, kind="output") == 4096
    with pytest.raises(ValueError):
        estimate_tokens(-1, None, 10)


def test_tokens_of_kind() -> None:
    assert tokens_of_kind("total", 30, 12) == 42
    assert tokens_of_kind("input", 30, 12) == 30
    assert tokens_of_kind("output", 30, 12) == 12


# -- offline tiktoken


def test_file_table_matches_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URLs and hashes are exactly the ones tiktoken's own encoding constructors ask for."""
    import tiktoken_ext.openai_public as public

    asked: dict[str, tuple[str, str | None]] = {}

    def capture(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        asked[url.rsplit("/", 1)[1].removesuffix(".tiktoken")] = (url, expected_hash)
        return {}

    monkeypatch.setattr(public, "load_tiktoken_bpe", capture)
    public.cl100k_base()
    public.o200k_base()
    assert asked == TIKTOKEN_FILES


def test_cache_name_is_sha1_of_url() -> None:
    url = TIKTOKEN_FILES["cl100k_base"][0]
    assert tiktoken_cache_name(url) == hashlib.sha1(url.encode()).hexdigest()
    assert tiktoken_cache_name(url) == "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"


def test_offline_encodings_give_known_tokens(offline: Path) -> None:
    assert prepare_offline_tiktoken() == str(offline)
    names = sorted(os.listdir(offline))
    assert names == sorted(tiktoken_cache_name(url) for url, _ in TIKTOKEN_FILES.values())
    for encoding_name, cases in KNOWN.items():
        encoding = tiktoken.get_encoding(encoding_name)
        for text, ids in cases.items():
            assert encoding.encode(text) == ids
            assert encoding.decode(ids) == text


def test_without_the_files_tiktoken_would_download(offline: Path) -> None:
    """The guard of the test above works: with an empty cache, loading fails on the download attempt."""
    with pytest.raises(AssertionError, match="tried to download"):
        tiktoken.get_encoding("cl100k_base")


def test_good_files_are_left_alone_and_bad_ones_replaced(offline: Path) -> None:
    prepare_offline_tiktoken()
    good = offline / tiktoken_cache_name(TIKTOKEN_FILES["o200k_base"][0])
    bad = offline / tiktoken_cache_name(TIKTOKEN_FILES["cl100k_base"][0])
    inode = good.stat().st_ino
    bad.write_bytes(b"truncated")
    prepare_offline_tiktoken()
    assert good.stat().st_ino == inode  # not rewritten
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == TIKTOKEN_FILES["cl100k_base"][1]
    assert not [n for n in os.listdir(offline) if n.endswith(".tmp")]


def test_explicit_directory_sets_the_environment(offline: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    assert prepare_offline_tiktoken(str(other), encodings=["cl100k_base"]) == str(other)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(other)
    assert tiktoken.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]


def test_cache_dir_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "mine"))
    assert tiktoken_cache_dir() == str(tmp_path / "mine")  # an existing setting is respected
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's "no cache" would mean downloading
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tiktoken_cache_dir() == str(tmp_path / "xdg" / "llm-gateway" / "tiktoken")
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    assert tiktoken_cache_dir() == str(tmp_path / "xdg" / "llm-gateway" / "tiktoken")


def test_default_directory_is_exported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    directory = prepare_offline_tiktoken(encodings=["cl100k_base"])
    assert directory == str(tmp_path / "xdg" / "llm-gateway" / "tiktoken")
    assert os.environ["TIKTOKEN_CACHE_DIR"] == directory


def test_missing_package_is_a_clear_error(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TiktokenDataError, match=r"bpe-openai is not installed \(pip install bpe-openai\)"):
        prepare_offline_tiktoken()


def test_unknown_encoding_is_an_error(offline: Path) -> None:
    with pytest.raises(
        TiktokenDataError, match=r"no offline BPE file for 'p50k_base' \(available: cl100k_base"
    ):
        prepare_offline_tiktoken(encodings=["p50k_base"])


# -- which encoding a model uses


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-sonnet-4", "cl100k_base"),
        ("omni-moderation-latest", "cl100k_base"),
        ("mock-1", "cl100k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


# -- TokenCounter


def test_counter_counts_off_the_loop(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    original = TokenCounter.count_sync

    def spy(self: TokenCounter, model: str, texts: Any, extra: int = 0) -> int:
        threads.append(threading.get_ident())
        return original(self, model, texts, extra)

    monkeypatch.setattr(TokenCounter, "count_sync", spy)

    async def main() -> tuple[int, int, int]:
        loop_thread = threading.get_ident()
        counter = TokenCounter()
        try:
            a = await counter.count("gpt-4", ["tiktoken is great!", "hello world"])
            b = await counter.count("gpt-4o-2024-08-06", ["antidisestablishmentarianism"])
            c = await counter.count("gpt-4o", [])
        finally:
            counter.close()
        assert threads and all(t != loop_thread for t in threads)
        return a, b, c

    assert asyncio.run(main()) == (6 + 2, 6, 0)
    assert os.listdir(offline)  # the counter wrote the files itself


def test_counter_chat_messages(offline: Path) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "hello world"},
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "tiktoken is great!"}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:..."}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
    ]

    async def main() -> int:
        counter = TokenCounter()
        try:
            return await counter.count_messages("gpt-4", messages)
        finally:
            counter.close()

    total = asyncio.run(main())
    enc = tiktoken.get_encoding("cl100k_base")
    texts = ["system", "hello world", "user", "tiktoken is great!", "ann", "user", "assistant", "f", "{}"]
    content = sum(len(enc.encode(t)) for t in texts)
    assert total == content + 4 * 3 + 1 + 3  # per message, one name, reply priming


def test_special_token_text_counts_as_plain_text(offline: Path) -> None:
    async def main() -> int:
        counter = TokenCounter()
        try:
            return await counter.count("gpt-4o", ["<|endoftext|>"])
        finally:
            counter.close()

    assert asyncio.run(main()) > 1


def test_warm_loads_encodings(offline: Path) -> None:
    async def main() -> None:
        counter = TokenCounter()
        try:
            await counter.warm()
        finally:
            counter.close()

    asyncio.run(main())
    assert set(tiktoken.registry.ENCODINGS) == {"cl100k_base", "o200k_base"}
