"""The kiosk's bitrate governor: congestion acts at once, wiggles never rebuild the encoder."""

from __future__ import annotations

from kiosk_client.publishing import RAISE_AFTER_S, BitrateGovernor


def test_small_changes_are_ignored_and_drops_apply_at_once() -> None:
    governor = BitrateGovernor(ceiling=1_500_000)
    governor.target = 800_000
    assert governor.propose(850_000, now=100) is None
    assert governor.propose(700_000, now=101) is None  # -12.5 %: aiortc would rebuild here
    assert governor.propose(500_000, now=102) == 500_000  # -37.5 %: congestion


def test_rises_wait_for_a_quiet_spell_and_respect_the_ceiling() -> None:
    governor = BitrateGovernor(ceiling=1_000_000)
    governor.target = 400_000
    assert governor.propose(300_000, now=10) == 300_000
    assert governor.propose(900_000, now=11) is None
    assert governor.propose(900_000, now=10 + RAISE_AFTER_S) == 900_000
    assert governor.propose(5_000_000, now=100) is None  # the ceiling is only 11 % above
    governor.target = 400_000
    assert governor.propose(5_000_000, now=200) == 1_000_000
    assert governor.cap(150_000, now=101) == 150_000
    assert governor.target == 150_000


def test_a_remb_storm_changes_the_target_rarely() -> None:
    governor = BitrateGovernor(ceiling=1_500_000)
    estimates = [600_000, 650_000, 560_000, 700_000, 620_000, 580_000, 680_000, 640_000] * 10
    changes = sum(governor.propose(e, now=i * 0.5) is not None for i, e in enumerate(estimates))
    assert changes <= 2
