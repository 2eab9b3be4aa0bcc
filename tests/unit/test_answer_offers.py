"""The kiosk's (and the load generator's) offer loop: the newest offer wins, a failure is not the end."""

from __future__ import annotations

import asyncio
from typing import Any

from kiosk_client.signaling import answer_offers


async def test_only_the_newest_waiting_offer_is_answered_and_a_failure_does_not_stop_the_loop() -> None:
    offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    answered: list[int] = []
    failures: list[tuple[int, str]] = []
    done = asyncio.Event()

    async def answer(offer: dict[str, Any]) -> None:
        if offer["negotiation_id"] == 3:
            raise RuntimeError("broken offer")
        answered.append(offer["negotiation_id"])
        if offer["negotiation_id"] == 4:
            done.set()

    for n in (1, 2, 3):
        offers.put_nowait({"negotiation_id": n})
    loop = asyncio.ensure_future(answer_offers(offers, answer, lambda offer, exc: failures.append((offer["negotiation_id"], str(exc)))))
    await asyncio.sleep(0)
    offers.put_nowait({"negotiation_id": 4})
    await asyncio.wait_for(done.wait(), 1)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert failures == [(3, "broken offer")]
    assert answered == [4]
