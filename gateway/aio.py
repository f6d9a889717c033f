"""Small asyncio helpers the rest of the package shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable``, raising ``TimeoutError`` after ``seconds`` (None: no bound).

    Use this instead of ``asyncio.wait_for``: on Python 3.11, ``wait_for`` loses a cancellation that
    arrives in the same loop iteration as its awaitable's result (it returns the result and the task
    goes on as if never cancelled; fixed in 3.12). A loop built on it, a watcher or a prober, then never
    stops. ``asyncio.timeout`` runs the awaitable in the caller's own task and keeps every cancellation."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def cancel_and_wait(*tasks: asyncio.Future[Any], grace: float = 0.0, again: float = 1.0) -> None:
    """Cancel ``tasks`` (those not done within ``grace`` seconds) and return once every one has ended (its
    outcome is retrieved and dropped).

    A cancel can be lost on the way: on Python 3.11 redis-py wraps a command's write in
    ``asyncio.wait_for``, which drops a cancel landing in the same loop iteration as the write's end, and a
    background loop then goes on as if it had never been asked to stop. So a task still running ``again``
    seconds later is cancelled again (a second cancel of a task that is already ending does no harm)."""
    left = {t for t in tasks if not t.done()}
    if left and grace > 0:
        _done, left = await asyncio.wait(left, timeout=grace)
    while left:
        for task in left:
            task.cancel()
        _done, left = await asyncio.wait(left, timeout=again)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: never "exception was never retrieved" at exit


def raise_lost_cancel() -> None:
    """Raise ``CancelledError`` if the running task was asked to cancel and the request never arrived
    (lost on the way, see ``cancel_and_wait``). For the top of a loop that would otherwise go on for
    ever; an ``asyncio.timeout`` around the caller still turns it into its ``TimeoutError``."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
