"""RTP sequence arithmetic shared by the SFU and the kiosk: unwrapping, and when to NACK a gap."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


class Unwrapper:
    """Extends a wrapping RTP counter (16-bit sequence number, 32-bit timestamp) to a plain int."""

    def __init__(self, bits: int) -> None:
        self._modulus = 1 << bits
        self._half = self._modulus >> 1
        self._highest: int | None = None

    def unwrap(self, value: int) -> int:
        if self._highest is None:
            self._highest = value
            return value
        delta = (value - self._highest) % self._modulus
        if delta >= self._half:
            delta -= self._modulus
        extended = self._highest + delta
        self._highest = max(self._highest, extended)
        return extended


class LearntDelay:
    """A wait learnt from recent delays: the longest of the last `window`, with a margin,
    between `minimum` and `maximum`.

    Two of them time a NACK. The reorder allowance: a NACK sent for a packet that was only
    overtaken costs a retransmission for nothing (on a link with 30 ± 10 ms of jitter that
    was over a thousand in 30 s), so a gap is asked for only once older than the reordering
    seen lately; on a clean link a loss is still asked for after `minimum`, and past
    `maximum` anyway, leaving the retries time before the receiver gives the frame up. The
    retry spacing: asking again before a retransmission could have come back (a round trip)
    only duplicates the request, and on a congested link each duplicate is one more
    retransmission into the queue that lost the packet.
    """

    MARGIN = 1.25

    def __init__(self, minimum: float, maximum: float, window: int = 64) -> None:
        if not 0 <= minimum <= maximum:
            raise ValueError(f"a learnt delay needs 0 <= minimum ({minimum}) <= maximum ({maximum})")
        self.minimum = minimum
        self.maximum = maximum
        self._delays: deque[float] = deque(maxlen=window)
        self.current = minimum

    def observe(self, delay: float) -> None:
        self._delays.append(delay)
        self.current = min(self.maximum, max(self.minimum, self.MARGIN * max(self._delays)))


@dataclass
class _Missing:
    since: float
    last_sent: float | None = None
    """When it was last NACKed; None while it may still be reordering."""
    sent: int = 0


class NackTracker:
    """Which lost video packets to request again, and when.

    A gap is NACKed once it has been missing for the reorder allowance (at once without
    one), then again while the packet is missing, every `retry_interval` or a round trip if
    longer (learnt from retransmissions that answered a single NACK), until `deadline` (the
    assembler's: past it the frame is dropped anyway; `max_deadline` while the receiver waits
    for a keyframe).
    """

    def __init__(
        self,
        retry_interval: float,
        deadline: float,
        max_missing: int = 256,
        reorder: LearntDelay | None = None,
        max_deadline: float | None = None,
    ) -> None:
        self.retry_interval = retry_interval
        self.deadline = deadline
        self.base_deadline = deadline
        # On a congested access link a retransmission waits its turn in the bottleneck's
        # queue (200 ms at 250 kbit/s is common): a deadline shorter than that round trip
        # gives every repair up just before it arrives, and each lost frame becomes a
        # keyframe, which the same queue then loses. So the deadline follows the round
        # trips seen, answers that came too late included, up to `max_deadline`.
        self.max_deadline = deadline if max_deadline is None else max(deadline, max_deadline)
        # Set by the receiver while it waits for a keyframe: nothing behind a hole could be
        # shown anyway, and a new keyframe takes longer to come (and crosses the same link)
        # than the repairs of this one, so holes get the longest deadline.
        self.patient = False
        self.round_trip = LearntDelay(0.0, self.max_deadline)
        self._given_up: dict[int, float] = {}
        self.max_missing = max_missing
        self.reorder = reorder or LearntDelay(0.0, 0.0)
        self.retry = LearntDelay(retry_interval, max(retry_interval, deadline))
        self.requests = 0
        self.reordered = 0
        """Packets that came late but before their NACK: requests saved by the allowance."""
        self.needless = 0
        """Packets that came by themselves after they were NACKed: the allowance was too short."""
        self._unwrapper = Unwrapper(16)
        self._highest: int | None = None
        self._missing: dict[int, _Missing] = {}

    @property
    def current_deadline(self) -> float:
        return self.max_deadline if self.patient else self.deadline

    @property
    def missing(self) -> list[int]:
        return sorted(seq & 0xFFFF for seq in self._missing)

    def add(self, sequence_number: int, now: float, retransmission: bool = False) -> list[int]:
        """Records a received packet; returns the sequence numbers to NACK right away.

        `retransmission`: the packet came as an answer to a NACK (RTX), so its lateness says
        nothing about reordering.
        """
        seq = self._unwrapper.unwrap(sequence_number)
        if self._highest is None:
            self._highest = seq
            return []
        if seq <= self._highest:
            entry = self._missing.pop(seq, None)
            if entry is not None and not retransmission:
                if entry.last_sent is None:
                    self.reordered += 1
                else:
                    self.needless += 1
                self.reorder.observe(now - entry.since)
            elif entry is not None and entry.sent == 1 and entry.last_sent is not None:
                # The answer to one NACK: a round trip, unambiguously.
                self.retry.observe(now - entry.last_sent)
                self._observe_round_trip(now - entry.last_sent)
            elif entry is None and retransmission and seq in self._given_up:
                # An answer that came after the deadline: the round trip is longer than it.
                self._observe_round_trip(now - self._given_up.pop(seq))
            return self._first_requests(now)
        gap = range(self._highest + 1, seq)
        self._highest = seq
        if len(gap) > self.max_missing:
            # An outage, not a loss: only a keyframe helps, and the assembler will ask.
            self._missing.clear()
            return []
        for lost in gap:
            self._missing[lost] = _Missing(since=now)
        while len(self._missing) > self.max_missing:
            del self._missing[min(self._missing)]
        return self._first_requests(now)

    def _first_requests(self, now: float) -> list[int]:
        if not self._missing:
            return []
        allowance = self.reorder.current
        first = []
        for seq, entry in self._missing.items():
            if entry.last_sent is None and entry.since + allowance <= now:
                entry.last_sent = now
                entry.sent = 1
                first.append(seq & 0xFFFF)
        self.requests += len(first)
        return first

    def due(self, now: float) -> list[int]:
        """First requests and retries due by `now`; forgets packets past the deadline."""
        requests = []
        allowance, spacing, deadline = self.reorder.current, self.retry.current, self.current_deadline
        for seq, entry in list(self._missing.items()):
            # Same arithmetic as next_due(), so a timer set for it always finds work.
            if entry.since + deadline <= now:
                del self._missing[seq]
                if entry.last_sent is not None and self.max_deadline > self.base_deadline:
                    self._given_up[seq] = entry.last_sent
                    while len(self._given_up) > self.max_missing:
                        del self._given_up[next(iter(self._given_up))]
            elif entry.last_sent is None:
                if entry.since + allowance <= now:
                    entry.last_sent = now
                    entry.sent = 1
                    requests.append(seq & 0xFFFF)
            elif entry.last_sent + spacing <= now:
                entry.last_sent = now
                entry.sent += 1
                requests.append(seq & 0xFFFF)
        self.requests += len(requests)
        return requests

    def next_due(self) -> float | None:
        if not self._missing:
            return None
        deadline = self.current_deadline
        return min(
            min(
                entry.since + self.reorder.current if entry.last_sent is None else entry.last_sent + self.retry.current,
                entry.since + deadline,
            )
            for entry in self._missing.values()
        )

    def _observe_round_trip(self, delay: float) -> None:
        self.round_trip.observe(delay)
        # Room for the first request after the reorder allowance and one retry.
        self.deadline = min(self.max_deadline, max(self.base_deadline, 2 * self.round_trip.current + self.reorder.current))

    def forget_before(self, sequence_number: int) -> None:
        """A keyframe starting at `sequence_number` made everything before it irrelevant."""
        seq = self._unwrapper.unwrap(sequence_number)
        for lost in [s for s in self._missing if s < seq]:
            del self._missing[lost]
