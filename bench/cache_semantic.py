"""The semantic cache tier: recall on a generated paraphrase set, lookup latency at N entries, and (with a
Redis server) how long a stored vector takes to reach another worker.

    python -m bench.cache_semantic                                  # recall and lookup latency
    python -m bench.cache_semantic --redis redis://127.0.0.1:6379/0 # and the sync stream's delay

Recall. Questions are generated from templates with three slots (``QUESTIONS``): the first half of the
slot combinations is stored, then two kinds of query are asked:

    query        | made by                                               | right answer
    -------------+-------------------------------------------------------+-------------------------------
    paraphrase   | a stored question reworded: case, punctuation, a      | a hit on that question
                 | filler ("please", "could you tell me"), a synonym     |
    near miss    | a question never stored: the same template, another   | a miss (any hit is a wrong
                 | value in one slot ("in Rust" for "in Python")         | answer served)

Per threshold it prints recall (paraphrases answered by their own question), wrong answers (paraphrases
answered by another question, near misses answered at all) and the hit rate. The vectors are the mock
provider's (``gateway.providers.mock._embedding``, as the gateway embeds a prompt: ``user: <text>``): a
bag of words, so the figures describe the mock; a real embeddings model ranks meaning, not shared words,
and its threshold must be chosen on its own figures.

Latency. ``SemanticIndex.search`` over N rows of one partition (one tenant, one model: the worst case),
unit float32 vectors of D dimensions, median and 99th percentile of 2,000 searches.

Propagation (``--redis``). Two tiers on one server, as two workers (or nodes) are: one writes an entry
and announces its vector (``SET`` then ``XADD``), the other follows the stream; the delay is from the
write until the row is in the follower's index, bounded by ``SYNC_POLL`` plus a round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

# first: it keeps numpy to one BLAS thread, as a worker does
from gateway.cache.semantic_index import SemanticIndex

# isort: split
import numpy as np

from gateway.cache.config import CacheConfig, CachePolicy, SemanticPolicy
from gateway.cache.semantic import Pending, SemanticTier, _unit
from gateway.providers.mock import _embedding

#: templates, each with three slots, and the values of each slot
QUESTIONS: tuple[tuple[str, Sequence[str], Sequence[str], Sequence[str]], ...] = (
    ("How do I {0} a {1} in {2}?", ("sort", "reverse", "copy", "merge", "split"),
     ("list", "string", "dictionary", "file", "array"), ("Python", "Rust", "Go", "Java")),
    ("What is the {0} {1} of {2}?", ("average", "highest", "lowest"),
     ("temperature", "rainfall", "population"), ("Paris", "Tokyo", "Lima", "Cairo", "Oslo")),
    ("Summarise the {0} {1} about {2} in three sentences.", ("latest", "attached", "quarterly"),
     ("report", "article", "memo"), ("sales", "hiring", "security", "pricing")),
    ("Translate '{0} {1}' into {2}.", ("good", "happy", "quiet"), ("morning", "birthday", "evening"),
     ("French", "German", "Spanish", "Italian")),
)
FILLERS = ("please", "could you tell me", "quick question:", "hey,", "I wonder")
SYNONYMS = {"How do I": "How can I", "What is": "What's", "Summarise": "Summarize",
            "Translate": "Please translate", "three sentences": "3 sentences", "highest": "maximum",
            "lowest": "minimum"}
THRESHOLDS = (0.8, 0.85, 0.9, 0.95)
DIMS = 256
P = b"p" * 32


def _questions() -> list[tuple[int, tuple[int, ...], str]]:
    out = []
    for t, (template, *slots) in enumerate(QUESTIONS):
        for combo in itertools.product(*(range(len(s)) for s in slots)):
            text = template.format(*(slots[i][c] for i, c in enumerate(combo)))
            out.append((t, combo, text))
    return out


def paraphrase(text: str, rng: random.Random) -> str:
    """One rewording: case, punctuation, a filler and a synonym, each by chance."""
    if rng.random() < 0.7:
        for a, b in SYNONYMS.items():
            if a in text:
                text = text.replace(a, b, 1)
                break
    if rng.random() < 0.5:
        text = f"{rng.choice(FILLERS)} {text[0].lower()}{text[1:]}"
    if rng.random() < 0.5:
        text = text.lower()
    if rng.random() < 0.5:
        text = text.rstrip("?.") + rng.choice(("", " ?", "!", "."))
    return text


def _vector(text: str, dims: int = DIMS) -> np.ndarray[Any, Any]:
    v = _unit(_embedding(f"user: {text}", dims)[0])
    assert v is not None
    return v


def recall(seed: int = 1) -> list[dict[str, float]]:
    """Per threshold: recall, wrong answers and hit rates (see the module docstring)."""
    rng = random.Random(seed)
    questions = _questions()
    rng.shuffle(questions)
    stored, unseen = questions[: len(questions) // 2], questions[len(questions) // 2:]
    index = SemanticIndex()
    for i, (_, _, text) in enumerate(stored):
        index.add(P, i.to_bytes(32, "big"), _vector(text), float("inf"), (None, None, "m"), "m", 10**6)
    paraphrases = [(i, paraphrase(text, rng)) for i, (_, _, text) in enumerate(stored) for _ in range(3)]
    near = [text for _, _, text in unseen]
    found_p = [(i, index.search(P, _vector(q), 0.0)) for i, q in paraphrases]
    found_n = [index.search(P, _vector(q), 0.0) for q in near]
    answered = [(i, int.from_bytes(f[0], "big"), f[2]) for i, f in found_p if f is not None]
    rows = []
    for th in THRESHOLDS:
        right = sum(1 for i, j, sim in answered if sim >= th and j == i)
        wrong_p = sum(1 for i, j, sim in answered if sim >= th and j != i)
        wrong_n = sum(1 for f in found_n if f is not None and f[2] >= th)
        rows.append({"threshold": th, "recall": right / len(paraphrases),
                     "wrong_paraphrase": wrong_p / len(paraphrases), "near_miss_hit": wrong_n / len(near),
                     "paraphrases": len(paraphrases), "near_misses": len(near), "stored": len(stored)})
    return rows


def latency(n: int, dims: int, searches: int = 2000, seed: int = 2) -> tuple[float, float]:
    """(median, 99th percentile) µs of one search over ``n`` rows of ``dims`` dimensions."""
    rng = np.random.default_rng(seed)
    index = SemanticIndex()
    rows = rng.standard_normal((n, dims)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    for i in range(n):
        index.add(P, i.to_bytes(32, "big"), rows[i], float("inf"), (None, None, "m"), "m", n)
    queries = rng.standard_normal((searches, dims)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(P, q, 0.0)
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


async def propagation(url: str, rounds: int = 20) -> list[float]:
    """Seconds from one tier's write until another tier's index holds the row, per round."""
    from gateway.cache.redis_tier import RedisTier

    policy = SemanticPolicy(embeddings_model="e", max_entries=10000)
    config = CacheConfig(enabled=True, default=CachePolicy(semantic=policy))
    prefix = f"bench-semantic-{random.randrange(1 << 30)}"
    writer_redis = RedisTier(url, prefix, 1.0, 1024)
    reader_redis = RedisTier(url, prefix, 1.0, 1024)
    writer = SemanticTier(config, None)
    reader = SemanticTier(config, None)
    writer.reload(config, writer_redis)
    reader.reload(config, reader_redis)
    delays = []
    try:
        for r in range(rounds):
            key = r.to_bytes(32, "big")
            record = writer.keep(Pending(P, _vector(f"round {r}"), policy), key, (None, None, "m"), 60.0)
            assert record is not None
            t0 = time.perf_counter()
            writer_redis.set_soon(f"{prefix}:cache:-:-:m:{key.hex()}", b"x", 60.0,
                                  (writer.stream, writer.stream_len(), record))
            probe = _vector(f"round {r}")
            while (reader.index.search(P, probe, 0.0) or (b"",))[0] != key:
                if time.perf_counter() - t0 > 10:
                    raise TimeoutError("the row never reached the other tier")
                await asyncio.sleep(0.002)
            delays.append(time.perf_counter() - t0)
    finally:
        for tier in (writer, reader):
            tier.close()
        await writer_redis.purge(f"{prefix}:*")  # the entries and the stream
        for redis in (writer_redis, reader_redis):
            await redis.close()
    return delays


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="rows per search (comma-separated)")
    parser.add_argument("--dims", default="256,1536", help="vector dimensions (comma-separated)")
    parser.add_argument("--searches", type=int, default=2000)
    parser.add_argument("--redis", help="a Redis URL: also measure the sync stream's delay")
    args = parser.parse_args(argv)
    print("recall on the generated paraphrase set (the mock's bag-of-words embeddings, 256 dimensions)")
    rows = recall()
    print(f"  {rows[0]['stored']} questions stored, {rows[0]['paraphrases']} paraphrases, "
          f"{rows[0]['near_misses']} near misses (never stored)")
    print("  threshold  recall  wrong (paraphrase)  near miss answered")
    for row in rows:
        print(f"  {row['threshold']:9.2f}  {row['recall']:6.1%}  {row['wrong_paraphrase']:18.1%}  "
              f"{row['near_miss_hit']:18.1%}")
    print("lookup latency: SemanticIndex.search over one partition")
    print("        rows   dims   median µs   p99 µs")
    for n in (int(s) for s in args.sizes.split(",")):
        for d in (int(s) for s in args.dims.split(",")):
            med, p99 = latency(n, d, args.searches)
            print(f"  {n:10d}  {d:5d}  {med:10.1f}  {p99:7.1f}")
    if args.redis:
        delays = asyncio.run(propagation(args.redis))
        median = statistics.median(delays) * 1000
        print(f"propagation through Redis ({len(delays)} rounds): median {median:.1f} ms, "
              f"max {max(delays) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
