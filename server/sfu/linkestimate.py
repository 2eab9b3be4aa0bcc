"""LinkEstimate: how much one subscriber's downlink can carry, from what it reports.

Two signals, as in Google Congestion Control: the delay-based estimate the subscriber sends
as REMB, and the loss in its receiver reports. REMB alone misses a link whose queue is
already full (aiortc's delay-only estimator then climbs above the real cap), so loss caps
it: above 10 % loss the estimate falls to what got through, below 2 % the cap grows 8 % per
update until REMB alone decides again. Between the two, as in GCC's loss-based controller,
the estimate holds: nothing moves down, nothing probes up. A link that only reorders shows
a few per cent "lost" in single reports (packets late for one report, counted in the next),
so 2-10 % must not be read as congestion. Pure arithmetic, fed by the transport.
"""

from __future__ import annotations

from dataclasses import dataclass

# A REMB or receiver report older than this no longer speaks for the link.
REPORT_MAX_AGE_S = 5.0
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
LOSS_CAP_GROWTH = 1.08
# A REMB that falls by more than this between updates is the estimator backing off.
REMB_DROP = 0.9
# Congestion seen is remembered this long.
CONGESTION_MEMORY_S = 3.0


@dataclass(frozen=True)
class Remb:
    bitrate_bps: int
    ssrcs: frozenset[int]
    at: float


@dataclass(frozen=True)
class LossReport:
    fraction_lost: float  # 0..1
    at: float


class LinkEstimate:
    def __init__(self) -> None:
        self.available_bps: float | None = None
        self.loss = 0.0
        # What heavy loss showed got through, growing while the link is clean.
        self._loss_cap: float | None = None
        self._last_loss_at = 0.0
        self._last_remb: float | None = None
        self._congested_at = -CONGESTION_MEMORY_S
        self._lossy_at = -CONGESTION_MEMORY_S
        self._now = 0.0

    @property
    def loss_at(self) -> float:
        """When the newest receiver report (the loss it counts) was received."""
        return self._last_loss_at

    @property
    def congested(self) -> bool:
        """Loss above 10 %, or a REMB that fell, within the last few seconds: move down."""
        return self._now - self._congested_at < CONGESTION_MEMORY_S

    @property
    def holding(self) -> bool:
        """Loss above 2 % within the last few seconds: no probing up."""
        return self._now - self._lossy_at < CONGESTION_MEMORY_S

    def update(
        self, rembs: list[Remb], losses: list[LossReport], sent_bps: float, now: float, audio_bps: float = 0.0
    ) -> float | None:
        """The link's estimate now, audio included (None: the subscriber reports nothing to go by).

        A REMB speaks for the streams it names, and the receive-side estimators that send it
        (aiortc's, Chromium's without transport-cc) see video packets only: the link carries
        that and the audio (`audio_bps`, sent meanwhile) beside it. The loss cap is of the
        whole link.
        """
        # Chromium sends one REMB naming every SSRC it receives; aiortc one per stream.
        # The newest report for each SSRC counts once.
        covered: set[int] = set()
        remb_total: float | None = None
        for remb in sorted(rembs, key=lambda r: r.at, reverse=True):
            if now - remb.at > REPORT_MAX_AGE_S or remb.ssrcs & covered:
                continue
            covered |= remb.ssrcs
            remb_total = (remb_total or 0.0) + remb.bitrate_bps
        link_remb = None if remb_total is None else remb_total + audio_bps
        self._now = now
        if remb_total is not None:
            if self._last_remb is not None and remb_total < REMB_DROP * self._last_remb:
                self._congested_at = now
            self._last_remb = remb_total
        fresh = [r for r in losses if now - r.at <= REPORT_MAX_AGE_S]
        newest = max((r.at for r in fresh), default=0.0)
        if fresh and newest > self._last_loss_at:
            self._last_loss_at = newest
            self.loss = max(r.fraction_lost for r in fresh)
            if self.loss > LOSS_LOW:
                self._lossy_at = now
            if self.loss > LOSS_HIGH:
                self._congested_at = now
            if self.loss > LOSS_HIGH and sent_bps > 0:
                self._loss_cap = sent_bps * (1 - self.loss)
            elif self.loss < LOSS_LOW and self._loss_cap is not None:
                self._loss_cap *= LOSS_CAP_GROWTH
                if link_remb is not None and self._loss_cap > link_remb:
                    self._loss_cap = None
        elif not fresh:
            self.loss = 0.0
        candidates = [v for v in (link_remb, self._loss_cap) if v is not None]
        self.available_bps = min(candidates) if candidates else None
        return self.available_bps
