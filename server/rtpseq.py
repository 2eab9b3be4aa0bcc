"""RTP sequence arithmetic shared by the SFU and the kiosk: unwrapping and NACK timing."""

from __future__ import annotations

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


@dataclass
class _Missing:
    since: float
    last_sent: float


class NackTracker:
    """Which lost video packets to request again, and when.

    A gap is NACKed at once, then again every `retry_interval` while the packet is missing,
    until `deadline` (the assembler's: past it the frame is dropped anyway).
    """

    def __init__(self, retry_interval: float, deadline: float, max_missing: int = 256) -> None:
        self.retry_interval = retry_interval
        self.deadline = deadline
        self.max_missing = max_missing
        self.requests = 0
        self._unwrapper = Unwrapper(16)
        self._highest: int | None = None
        self._missing: dict[int, _Missing] = {}

    @property
    def missing(self) -> list[int]:
        return sorted(seq & 0xFFFF for seq in self._missing)

    def add(self, sequence_number: int, now: float) -> list[int]:
        """Records a received packet; returns the sequence numbers to NACK right away."""
        seq = self._unwrapper.unwrap(sequence_number)
        if self._highest is None:
            self._highest = seq
            return []
        if seq <= self._highest:
            self._missing.pop(seq, None)
            return []
        gap = range(self._highest + 1, seq)
        self._highest = seq
        if len(gap) > self.max_missing:
            # An outage, not a loss: only a keyframe helps, and the assembler will ask.
            self._missing.clear()
            return []
        for lost in gap:
            self._missing[lost] = _Missing(since=now, last_sent=now)
        while len(self._missing) > self.max_missing:
            del self._missing[min(self._missing)]
        self.requests += len(gap)
        return [lost & 0xFFFF for lost in gap]

    def due(self, now: float) -> list[int]:
        """Retries due by `now`; forgets packets past the deadline."""
        retries = []
        for seq, entry in list(self._missing.items()):
            # Same arithmetic as next_due(), so a timer set for it always finds work.
            if entry.since + self.deadline <= now:
                del self._missing[seq]
            elif entry.last_sent + self.retry_interval <= now:
                entry.last_sent = now
                retries.append(seq & 0xFFFF)
        self.requests += len(retries)
        return retries

    def next_due(self) -> float | None:
        if not self._missing:
            return None
        return min(min(e.last_sent + self.retry_interval, e.since + self.deadline) for e in self._missing.values())

    def forget_before(self, sequence_number: int) -> None:
        """A keyframe starting at `sequence_number` made everything before it irrelevant."""
        seq = self._unwrapper.unwrap(sequence_number)
        for lost in [s for s in self._missing if s < seq]:
            del self._missing[lost]
