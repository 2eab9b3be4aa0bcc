"""When a gap is NACKed: the reorder allowance, with plain numbers (no sockets, no clocks)."""

from __future__ import annotations

import random

import pytest

from server.rtc.rtpseq import NackTracker, LearntDelay


def test_a_gap_filled_within_the_allowance_is_never_nacked() -> None:
    nack = NackTracker(retry_interval=0.025, deadline=0.1, reorder=LearntDelay(0.02, 0.04))
    assert nack.add(1, 0.0) == []
    assert nack.add(3, 0.001) == []
    assert nack.add(2, 0.015) == []
    assert nack.due(0.05) == [] and nack.next_due() is None
    assert (nack.requests, nack.reordered, nack.needless) == (0, 1, 0)


def test_a_gap_still_open_after_the_allowance_is_nacked_then_retried_until_the_deadline() -> None:
    nack = NackTracker(retry_interval=0.025, deadline=0.1, reorder=LearntDelay(0.02, 0.04))
    nack.add(1, 0.0)
    assert nack.add(3, 0.0) == []
    assert nack.next_due() == pytest.approx(0.02)
    assert nack.due(0.019) == []
    assert nack.due(0.02) == [2]
    assert nack.next_due() == pytest.approx(0.045)
    assert nack.due(0.045) == [2]
    assert nack.due(0.1) == [] and nack.missing == []
    # A later packet also sends what is due (no timer needed when packets keep coming).
    nack.add(10, 0.2)
    assert nack.add(11, 0.221) == [4, 5, 6, 7, 8, 9]


def test_the_allowance_follows_the_longest_recent_reordering_within_its_bounds() -> None:
    allowance = LearntDelay(0.005, 0.04, window=3)
    assert allowance.current == 0.005
    allowance.observe(0.012)
    assert allowance.current == pytest.approx(0.015)
    allowance.observe(0.1)
    assert allowance.current == 0.04
    for _ in range(3):
        allowance.observe(0.001)
    assert allowance.current == 0.005  # the long one left the window
    with pytest.raises(ValueError, match="minimum"):
        LearntDelay(0.05, 0.01)


def test_a_packet_that_comes_by_itself_after_its_nack_is_needless_and_lengthens_the_allowance() -> None:
    nack = NackTracker(retry_interval=0.025, deadline=0.1, reorder=LearntDelay(0.005, 0.04))
    nack.add(1, 0.0)
    nack.add(3, 0.0)
    assert nack.due(0.005) == [2]
    nack.add(2, 0.016)
    assert nack.needless == 1 and nack.reorder.current == pytest.approx(0.02)
    # An answer to the NACK (RTX) says nothing about reordering.
    nack.add(5, 0.02)
    assert nack.due(0.04) == [4]
    nack.add(4, 0.06, retransmission=True)
    assert nack.needless == 1 and nack.reorder.current == pytest.approx(0.02)


def _jittered_stream(packets: int, loss: float, seed: int) -> tuple[list[tuple[float, int]], set[int]]:
    """Arrivals (time, seq) of packets sent every 2 ms, each delayed 30 ± 10 ms; some lost."""
    rng = random.Random(seed)
    lost = {seq for seq in range(1, packets) if rng.random() < loss}
    arrivals = sorted((seq * 0.002 + 0.03 + rng.uniform(-0.01, 0.01), seq) for seq in range(packets) if seq not in lost)
    return arrivals, lost


def _run(nack: NackTracker, arrivals: list[tuple[float, int]]) -> set[int]:
    requested: set[int] = set()
    for now, seq in arrivals:
        # The receiver's timer: everything due before this arrival, then the arrival itself.
        while (due := nack.next_due()) is not None and due <= now:
            requested.update(nack.due(due))
        requested.update(nack.add(seq & 0xFFFF, now))
    return requested


def test_reordering_alone_costs_under_one_percent_nacks_where_nacking_at_once_stormed() -> None:
    arrivals, _ = _jittered_stream(3000, loss=0.0, seed=1)
    at_once = NackTracker(retry_interval=0.025, deadline=0.1)
    _run(at_once, arrivals)
    allowed = NackTracker(retry_interval=0.025, deadline=0.1, reorder=LearntDelay(0.005, 0.04))
    _run(allowed, arrivals)
    assert at_once.requests > 0.3 * len(arrivals)
    assert allowed.requests <= 0.01 * len(arrivals), (allowed.requests, allowed.reorder.current)
    assert allowed.reordered > 0.3 * len(arrivals)


def test_real_losses_on_a_reordering_link_are_all_still_nacked() -> None:
    arrivals, lost = _jittered_stream(3000, loss=0.02, seed=2)
    nack = NackTracker(retry_interval=0.025, deadline=0.1, reorder=LearntDelay(0.005, 0.04))
    requested = _run(nack, arrivals)
    # The last few losses are past the end of the stream, before anything could ask for them.
    assert lost and {seq for seq in lost if seq < 2950} <= requested
    assert len(requested - lost) <= 0.01 * len(arrivals)


def test_retries_wait_for_a_round_trip_learnt_from_answered_nacks() -> None:
    # A slow link: a retransmission comes back 80 ms after its NACK. Asking again every
    # 25 ms would send three duplicate requests (and retransmissions) per lost packet.
    nack = NackTracker(retry_interval=0.025, deadline=0.3)
    nack.add(1, 0.0)
    assert nack.add(3, 0.0) == [2]
    assert nack.due(0.025) == [2]  # nothing learnt yet: the configured spacing
    assert nack.add(5, 0.03) == [4]  # no reorder allowance here: asked at once
    assert nack.add(6, 0.031) == []
    nack.add(2, 0.08, retransmission=True)  # answered a second NACK: ambiguous, not learnt
    assert nack.retry.current == 0.025
    assert nack.missing == [4]
    nack.add(4, 0.11, retransmission=True)  # 4 was NACKed once, at 0.03: a round trip of 80 ms
    assert nack.retry.current == pytest.approx(0.1)
    assert nack.add(7, 0.2) == []
    assert nack.add(9, 0.2) == [8]
    assert nack.due(0.25) == []  # 50 ms later: too soon to ask again
    assert nack.due(0.301) == [8]


def test_the_deadline_grows_to_the_round_trips_of_a_slow_link_answers_too_late_included() -> None:
    # A congested home link: each retransmission waits ~250 ms in the bottleneck's queue.
    nack = NackTracker(retry_interval=0.025, deadline=0.1, reorder=LearntDelay(0.005, 0.005), max_deadline=0.5)
    nack.add(1, 0.0)
    nack.add(3, 0.0)
    assert nack.due(0.005) == [2]
    assert nack.due(0.1) == [] and nack.missing == []  # given up at the 100 ms deadline...
    nack.add(2, 0.255, retransmission=True)  # ...and the answer came 250 ms after the NACK
    assert nack.deadline == pytest.approx(min(0.5, 2 * 0.25 * LearntDelay.MARGIN + 0.005))
    # The next loss is waited for long enough for its answer to arrive.
    nack.add(5, 1.0)
    assert nack.due(1.005) == [4]
    assert nack.due(1.2) == [4]  # retried after the 25 ms spacing, still in time
    nack.add(4, 1.255, retransmission=True)
    assert nack.missing == [] and nack.deadline == pytest.approx(0.5)
    # Without a maximum (the SFU's own tracker), the deadline is fixed.
    fixed = NackTracker(retry_interval=0.025, deadline=0.1, reorder=LearntDelay(0.005, 0.005))
    fixed.add(1, 0.0)
    fixed.add(3, 0.0)
    fixed.due(0.005)
    fixed.due(0.1)
    fixed.add(2, 0.255, retransmission=True)
    assert fixed.deadline == 0.1


def test_a_receiver_waiting_for_a_keyframe_repairs_its_holes_up_to_the_longest_deadline() -> None:
    # A weak link drops the tail of the first keyframe; the answers to the NACKs wait in its
    # queue. Nothing could be shown meanwhile, so they are waited for, not given up at 100 ms.
    nack = NackTracker(retry_interval=0.025, deadline=0.1, reorder=LearntDelay(0.005, 0.005), max_deadline=0.5)
    nack.patient = True
    assert nack.current_deadline == 0.5
    nack.add(1, 0.0)
    nack.add(4, 0.033)  # the next frame shows 2 and 3 missing
    assert nack.due(0.04) == [2, 3]
    assert nack.due(0.2) == [2, 3] and nack.missing == [2, 3]  # past 100 ms: still asked for
    assert nack.next_due() is not None and nack.next_due() <= 0.033 + 0.5
    nack.due(0.55)
    assert nack.missing == []  # the longest deadline is a deadline too
    # With a picture on screen, a hole holds up everything behind it: the learnt deadline.
    nack.patient = False
    assert nack.current_deadline == nack.deadline == 0.1
