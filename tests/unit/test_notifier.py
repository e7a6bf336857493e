"""Listening starts before the caller looks at the database: news that arrives while it looks (a
commit it did not see, made while its own statement was on its way) still wakes its wait."""

from __future__ import annotations

import asyncio
import time

from aiki_server.notifier import Notifier


async def test_news_that_arrives_between_listening_and_waiting_is_not_missed() -> None:
    notifier = Notifier()
    with notifier.listen(["q"]) as news:
        notifier.notify("q")  # while the caller was still reading
        began = time.monotonic()
        await news(30)
    assert time.monotonic() - began < 5  # woken at once, not after the 30 s timeout


async def test_a_wait_without_news_ends_at_its_timeout_and_listening_ends_with_the_block() -> None:
    notifier = Notifier()
    with notifier.listen(["q", "r"]) as news:
        await news(0.01)
    assert notifier._waiters == {}  # nothing left registered
    notifier.notify("q")  # nobody listens: a no-op


async def test_only_the_keys_listened_to_wake() -> None:
    notifier = Notifier()
    with notifier.listen(["q"]) as news:
        waiting = asyncio.create_task(news(30))
        notifier.notify("other")
        await asyncio.sleep(0.01)
        assert not waiting.done()
        notifier.notify_all(["q", "other"])
        await asyncio.wait_for(waiting, 5)
