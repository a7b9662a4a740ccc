"""common/aio: the Handoff that carries a reader thread's arrivals to the loop."""

from __future__ import annotations

import asyncio
import threading
from unittest import mock

from sendense.common.aio import Handoff


def test_handoff_carries_every_item_in_order_waking_the_loop_once_per_batch() -> None:
    """Three threads put 300 items each while the loop is busy: every item comes
    out once, each thread's in its order, and the loop was woken far fewer times
    than there were items (one wake-up for the items queued before it ran)."""

    async def main() -> tuple[list[tuple[int, int]], int]:
        loop = asyncio.get_running_loop()
        handoff: Handoff[tuple[int, int]] = Handoff(loop)
        wakes = 0
        real = loop.call_soon_threadsafe

        def counting(*args: object) -> asyncio.Handle:
            nonlocal wakes
            wakes += 1
            return real(*args)  # type: ignore[arg-type]

        start = threading.Barrier(4)

        def producer(n: int) -> None:
            start.wait()
            for i in range(300):
                handoff.put((n, i))

        with mock.patch.object(loop, "call_soon_threadsafe", counting):
            threads = [threading.Thread(target=producer, args=(n,)) for n in range(3)]
            for t in threads:
                t.start()
            start.wait()
            for t in threads:  # the loop does not run while they put
                t.join()
            got = [await handoff.get() for _ in range(900)]
        return got, wakes

    got, wakes = asyncio.run(main())
    assert sorted(got) == [(n, i) for n in range(3) for i in range(300)]
    for n in range(3):
        assert [i for m, i in got if m == n] == list(range(300))
    assert wakes == 1


def test_handoff_get_waits_for_an_item_put_later() -> None:
    async def main() -> list[str]:
        handoff: Handoff[str] = Handoff(asyncio.get_running_loop())
        timer = threading.Timer(0.05, handoff.put, args=("late",))
        timer.start()
        first = await asyncio.wait_for(handoff.get(), 5)
        handoff.put("now")
        return [first, await asyncio.wait_for(handoff.get(), 5)]

    assert asyncio.run(main()) == ["late", "now"]
