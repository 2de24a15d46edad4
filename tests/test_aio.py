"""``first_of``: the first awaitable wins, the rest are cancelled, deadlines hold."""

from __future__ import annotations

import asyncio

from sidecar.aio import first_of


def test_the_first_to_finish_is_returned_and_the_others_cancelled() -> None:
    async def scenario() -> None:
        fast, slow = asyncio.Event(), asyncio.Event()
        slow_wait = asyncio.ensure_future(slow.wait())
        fast.set()
        winner = await first_of(slow_wait, fast.wait())
        assert winner is not None
        assert winner is not slow_wait
        await asyncio.sleep(0)  # let the cancellation land
        assert slow_wait.cancelled()

    asyncio.run(scenario())


def test_a_deadline_in_the_past_returns_at_once_with_none() -> None:
    async def scenario() -> None:
        never = asyncio.Event()
        loop = asyncio.get_running_loop()
        assert await first_of(never.wait(), deadline=loop.time() - 1) is None

    asyncio.run(scenario())


def test_a_result_that_is_already_there_wins_over_the_deadline() -> None:
    async def scenario() -> None:
        done = asyncio.get_running_loop().create_future()
        done.set_result(7)
        winner = await first_of(done, deadline=0.0)
        assert winner is done
        assert winner.result() == 7

    asyncio.run(scenario())
