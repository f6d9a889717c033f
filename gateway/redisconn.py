"""What the store, the limits and the breaker sync share about talking to Redis through redis-py.

redis-py's own type hints change between the releases we support (``redis>=5``): a call that one release
leaves untyped, the next one types. The few calls that differ go through here, typed once by us, so that
strict mypy reads the same on every supported release and no ``type: ignore`` turns stale on an upgrade.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
from redis.asyncio.client import PubSub

__all__ = ["close_pubsub", "make_connection"]


async def close_pubsub(pubsub: PubSub) -> None:
    """Close a pub/sub object and its connection (``aclose`` is untyped before redis 8.2)."""
    close: Any = pubsub.aclose
    await close()


def make_connection(pool: redis.asyncio.ConnectionPool) -> Any:
    """A connection of ``pool``'s class and arguments, outside the pool's own bookkeeping (untyped before
    redis 8.2)."""
    make: Any = pool.make_connection
    return make()
