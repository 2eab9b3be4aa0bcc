"""Temporal layers for the kiosk's VP8 encoder: which frame goes in which layer, and what it may reference.

With three layers (L1T3) the base layer (TL0) is every 4th frame, TL1 the frame halfway
between, TL2 the rest: 7.5, 15 and 30 fps for a receiver that takes TL0, TL0–1 or all. An SFU
drops the layers a subscriber cannot take without touching the others, which holds only if
no frame references a higher layer than its own. The libvpx flags per frame see to that,
with VP8's three reference buffers: LAST holds the latest TL0 frame, GOLDEN the latest TL1.

    position  layer  references     updates   layer sync   nothing references it
    0         TL0    LAST           LAST      yes          no
    1         TL2    LAST           -         yes          yes
    2         TL1    LAST           GOLDEN    yes          no
    3         TL2    LAST, GOLDEN   -         no           yes

WebRTC's own VP8 pattern is the same shape. Every frame but position 3 references the base
layer alone, so a receiver can move up a layer almost anywhere (the Y bit). L1T2 is the
same with TL0 at every even frame and TL1 (referencing LAST, updating nothing) in between.

The pattern restarts at every keyframe: a keyframe is a base-layer frame, also when libvpx
makes one on its own (`encoded`). The encoder runs in error-resilient mode, so no frame
carries entropy state a receiver that skipped the frames before it would lack.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import libvpx
from .vp8payloader import BASE_LAYER_KEYFRAME, FrameLayer

_NO_REF_GOLDEN_ALTREF = libvpx.VP8_EFLAG_NO_REF_GF | libvpx.VP8_EFLAG_NO_REF_ARF
_NO_UPDATE = libvpx.VP8_EFLAG_NO_UPD_LAST | libvpx.VP8_EFLAG_NO_UPD_GF | libvpx.VP8_EFLAG_NO_UPD_ARF


@dataclass(frozen=True)
class _Slot:
    temporal_id: int
    flags: int
    layer_sync: bool
    non_reference: bool


_PATTERNS: dict[int, tuple[_Slot, ...]] = {
    1: (_Slot(0, 0, True, False),),
    2: (
        _Slot(0, _NO_REF_GOLDEN_ALTREF | libvpx.VP8_EFLAG_NO_UPD_GF | libvpx.VP8_EFLAG_NO_UPD_ARF, True, False),
        _Slot(1, _NO_REF_GOLDEN_ALTREF | _NO_UPDATE, True, True),
    ),
    3: (
        _Slot(0, _NO_REF_GOLDEN_ALTREF | libvpx.VP8_EFLAG_NO_UPD_GF | libvpx.VP8_EFLAG_NO_UPD_ARF, True, False),
        _Slot(2, _NO_REF_GOLDEN_ALTREF | _NO_UPDATE, True, True),
        _Slot(1, _NO_REF_GOLDEN_ALTREF | libvpx.VP8_EFLAG_NO_UPD_LAST | libvpx.VP8_EFLAG_NO_UPD_ARF, True, False),
        _Slot(2, libvpx.VP8_EFLAG_NO_REF_ARF | _NO_UPDATE, False, True),
    ),
}
# Cumulative share of the bitrate up to each layer (libvpx's ts_target_bitrate is
# cumulative). WebRTC splits 40/20/40; on a kiosk's picture (a still, detailed room, one
# person moving) that cost 3.8 dB against one layer at 1 Mbps, because only base frames
# refine the picture every later frame builds on. 60/15/25 costs 0.9 dB (BENCHMARKS.md)
# and still leaves a subscriber at 15 fps a quarter of the bits less.
_RATE_SHARES: dict[int, tuple[float, ...]] = {1: (1.0,), 2: (0.7, 1.0), 3: (0.6, 0.75, 1.0)}
SUPPORTED_LAYERS = tuple(_PATTERNS)


@dataclass(frozen=True)
class PlannedFrame:
    temporal_id: int
    flags: int
    """VP8_EFLAG_* for vpx_codec_encode."""


class TemporalLayers:
    """The layer pattern as frames go by: `plan` before encoding a frame, `encoded` after."""

    def __init__(self, layers: int) -> None:
        if layers not in _PATTERNS:
            raise ValueError(f"{layers} temporal layers: the kiosk encoder supports {SUPPORTED_LAYERS}")
        self.layers = layers
        self._pattern = _PATTERNS[layers]
        self._position = 0

    @property
    def periodicity(self) -> int:
        return len(self._pattern)

    def configure(self, config: libvpx.EncoderConfig, target_kbps: int) -> None:
        """Writes the layer structure and per-layer rates into libvpx's configuration."""
        config.ts_number_layers = self.layers
        if self.layers == 1:
            return
        config.g_error_resilient = libvpx.ERROR_RESILIENT_DEFAULT
        config.ts_periodicity = self.periodicity
        for index, slot in enumerate(self._pattern):
            config.ts_layer_id[index] = slot.temporal_id
        for layer in range(self.layers):
            config.ts_rate_decimator[layer] = 1 << (self.layers - 1 - layer)
        self.retarget(config, target_kbps)

    def retarget(self, config: libvpx.EncoderConfig, target_kbps: int) -> None:
        """Scales every layer's cumulative rate with a new total, keeping them strictly increasing."""
        config.rc_target_bitrate = target_kbps
        if self.layers == 1:
            return
        previous = 0
        for layer, share in enumerate(_RATE_SHARES[self.layers]):
            # libvpx refuses cumulative rates that do not strictly increase.
            previous = config.ts_target_bitrate[layer] = max(round(target_kbps * share), previous + 1)

    def plan(self, force_keyframe: bool) -> PlannedFrame:
        """The layer and reference flags for the next frame; a keyframe restarts the pattern."""
        if force_keyframe:
            self._position = 0
            return PlannedFrame(0, libvpx.EFLAG_FORCE_KF)
        slot = self._pattern[self._position]
        return PlannedFrame(slot.temporal_id, slot.flags)

    def encoded(self, keyframe: bool) -> FrameLayer:
        """What the frame just encoded is; advances the pattern."""
        if keyframe:
            # libvpx may make a keyframe unasked (kf_max_dist): it is base layer, the pattern restarts.
            self._position = 1 % self.periodicity
            return BASE_LAYER_KEYFRAME
        slot = self._pattern[self._position]
        self._position = (self._position + 1) % self.periodicity
        return FrameLayer(slot.temporal_id, slot.layer_sync, False, slot.non_reference)
