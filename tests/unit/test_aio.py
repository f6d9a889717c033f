"""gateway.aio: bounded waits and stops that keep every cancellation (Python 3.11's ``asyncio.wait_for``,
and redis-py's use of it, can drop one)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.aio import cancel_and_wait, raise_lost_cancel, within


def test_within_answers_or_times_out() -> None:
    async def body() -> None:
        assert await within(asyncio.sleep(0, "done"), 5.0) == "done"
        assert await within(asyncio.sleep(0, "unbounded"), None) == "unbounded"
        with pytest.raises(TimeoutError):
            await within(asyncio.sleep(5.0), 0.01)

    asyncio.run(body())


def test_within_keeps_a_cancel_that_meets_the_result() -> None:
    """The cancel is queued before the awaited work's result is delivered: the caller is cancelled at its
    next wait, it does not go on as if never asked (``wait_for`` on 3.11 returned the result and lost it)."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        after: list[str] = []

        async def work() -> int:
            await asyncio.sleep(0)
            loop.call_soon(task.cancel)
            return 1

        async def caller() -> None:
            await within(work(), 5.0)
            after.append("went on")
            await asyncio.sleep(5.0)
            after.append("never cancelled")

        task = asyncio.ensure_future(caller())
        done, _ = await asyncio.wait([task], timeout=2.0)
        assert done and task.cancelled()
        assert after == ["went on"]

    asyncio.run(body())


async def _stubborn(stopped: list[str]) -> None:
    """A loop that loses its first cancel, as a redis-py call on 3.11 can, and goes on."""
    try:
        await asyncio.sleep(30.0)
    except asyncio.CancelledError:
        stopped.append("lost")
    try:
        await asyncio.sleep(30.0)
    except asyncio.CancelledError:
        stopped.append("stopped")
        raise


def test_cancel_and_wait_sends_a_lost_cancel_again() -> None:
    async def body() -> None:
        stopped: list[str] = []
        task = asyncio.ensure_future(_stubborn(stopped))
        quick = asyncio.ensure_future(asyncio.sleep(30.0))
        finished = asyncio.ensure_future(asyncio.sleep(0))
        ended = asyncio.ensure_future(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        assert finished.done()
        await within(cancel_and_wait(task, quick, finished, again=0.05), 5.0)
        assert task.cancelled() and quick.cancelled() and stopped == ["lost", "stopped"]
        assert not finished.cancelled()
        ended.cancel()
        await cancel_and_wait(ended)  # a task that already ended, however: nothing to wait for

    asyncio.run(body())


def test_cancel_and_wait_takes_a_task_errors_quietly() -> None:
    async def body() -> None:
        async def fails() -> None:
            raise RuntimeError("boom")

        task = asyncio.ensure_future(fails())
        await asyncio.sleep(0.01)
        await cancel_and_wait(task)  # no raise; the error is retrieved (no warning at exit)
        assert isinstance(task.exception(), RuntimeError)

    asyncio.run(body())


def test_raise_lost_cancel() -> None:
    async def body() -> None:
        raise_lost_cancel()  # nothing asked: nothing raised

        async def loop_that_lost_it() -> None:
            try:
                await asyncio.sleep(30.0)
            except asyncio.CancelledError:
                pass  # lost on the way
            raise_lost_cancel()

        task = asyncio.ensure_future(loop_that_lost_it())
        await asyncio.sleep(0.01)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
        assert done and task.cancelled()

        # under a caller's timeout that expired, the lost cancel surfaces as the timeout's TimeoutError
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await loop_that_lost_it()

    asyncio.run(body())


def test_cancel_and_wait_gives_the_grace_first() -> None:
    async def body() -> None:
        finishing = asyncio.ensure_future(asyncio.sleep(0.02, "finished"))
        stuck = asyncio.ensure_future(asyncio.sleep(30.0))
        await within(cancel_and_wait(finishing, stuck, grace=0.5), 5.0)
        assert finishing.result() == "finished"  # ended by itself within the grace: not cancelled
        assert stuck.cancelled()
        await cancel_and_wait(grace=0.5)  # nothing to wait for

    asyncio.run(body())
