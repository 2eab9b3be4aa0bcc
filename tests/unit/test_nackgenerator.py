"""The SFU's NACK generator on real timers: a gap is asked for after the allowance even when
no later packet comes, retried until the deadline, and never for a packet that was only late."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from server.rtc import nackgenerator
from server.rtc.nackgenerator import NACK_DEADLINE_S, NACK_RETRY_INTERVAL_S, NackGenerator


@pytest.fixture
def bounds() -> Iterator[None]:
    nackgenerator.configure(0.02, 0.04)
    yield
    nackgenerator.configure(0.005, 0.04)


async def test_a_lost_packet_is_nacked_after_the_allowance_then_retried_until_the_deadline(bounds: None) -> None:
    sent: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def send(ssrc: int, lost: list[int]) -> None:
        assert ssrc == 1234
        sent.append((loop.time(), lost))

    generator = NackGenerator(1234, send)
    start = loop.time()
    await generator.packet(10, retransmission=False)
    await generator.packet(12, retransmission=False)  # 11 missing; nothing else arrives
    assert sent == []
    await asyncio.sleep(NACK_DEADLINE_S + 0.05)
    generator.close()
    assert [lost for _, lost in sent][:2] == [[11], [11]]
    assert sent[0][0] - start >= 0.02 - 0.002  # not before the allowance
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:])]
    assert all(gap >= NACK_RETRY_INTERVAL_S - 0.005 for gap in gaps)
    assert sent[-1][0] - start <= NACK_DEADLINE_S + 0.02  # and not after the deadline
    assert len(sent) <= 1 + NACK_DEADLINE_S / NACK_RETRY_INTERVAL_S


async def test_a_packet_that_is_only_late_is_never_nacked(bounds: None) -> None:
    sent: list[list[int]] = []

    async def send(ssrc: int, lost: list[int]) -> None:
        sent.append(lost)

    generator = NackGenerator(1, send)
    await generator.packet(10, retransmission=False)
    await generator.packet(12, retransmission=False)
    await asyncio.sleep(0.01)
    await generator.packet(11, retransmission=False)
    await asyncio.sleep(0.1)
    generator.close()
    assert sent == [] and generator.tracker.reordered == 1


def test_impossible_bounds_are_refused_and_change_nothing() -> None:
    with pytest.raises(ValueError, match="minimum"):
        nackgenerator.configure(0.05, 0.01)
    assert NackGenerator(1, lambda ssrc, lost: asyncio.sleep(0)).tracker.reorder.maximum == 0.04
