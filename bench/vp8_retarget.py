"""A VP8 bitrate drop: aiortc's rebuild-per-change encoder against the kiosk's in-place retarget.

    python -m bench.vp8_retarget

Encodes a camera-like test pattern (still detailed background, moving block) at 640x480@30 through each encoder's aiortc `Encoder`
interface (`encode` → RTP payloads) and measures the VP8 frames inside the payloads. Two
scenarios, each run by three encoders:
  - `drop`: 1 Mbps for 3 s, then `target_bitrate = 200_000`, then 3 s more;
  - `steps`: 1 Mbps for 2 s, then one REMB-like step down per second
    (800, 600, 450, 300, 200 kbps), then 2 s more.
Encoders:
  - `aiortc`: aiortc 1.16's `Vp8Encoder` (PyAV's libvpx): each change of more than 10 %
    closes and reopens the encoder, so it starts again with a keyframe;
  - `in_place`: `kiosk_client.vp8encoder.Vp8Encoder`: `vpx_codec_enc_config_set` on the open
    encoder, no keyframe;
  - `fresh`: the kiosk's encoder started at the final rate (what a retarget should approach).
The kiosk's bitrate floor (`vpx.MIN_BITRATE` = 100 kbps) is set first, as the kiosk does.
Figures per run: kbps before the first change, in the first second after the last change
and from one to three seconds after it (`fresh`: the same windows of its own run), the
frames that were keyframes after the first change, their bytes, and how many times the
average delta frame after the change each keyframe weighed. Prints the command, the
machine and one JSON line.
"""

from __future__ import annotations

import fractions
import json
import math
import time
from functools import cache
from typing import Any

import aiortc
import aiortc.codecs.vpx as vpx
import av
import numpy as np
from aiortc.codecs.base import Encoder

from bench.machine import describe
from kiosk_client import libvpx
from kiosk_client.vp8encoder import Vp8Encoder

WIDTH, HEIGHT, FPS = 640, 480, 30
START_BPS = 1_000_000
# Bitrate changes by frame index, per scenario; the seconds after the last one are measured.
SCENARIOS: dict[str, dict[int, int]] = {
    "drop": {3 * FPS: 200_000},
    "steps": {(2 + i) * FPS: bps for i, bps in enumerate((800_000, 600_000, 450_000, 300_000, 200_000))},
}
SECONDS_AFTER_LAST_CHANGE = 3


@cache
def _background(width: int, height: int) -> np.ndarray:
    # Fixed fine detail, like a room behind the person: a keyframe must code all of it,
    # a delta frame almost none. Seeded, so every run sees the same picture.
    noise = np.random.default_rng(7).integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(noise, format="rgb24").reformat(
        width=width, height=height, interpolation="BICUBIC"
    ).to_ndarray()


def pattern_frame(i: int, width: int = WIDTH, height: int = HEIGHT, fps: int = FPS) -> av.VideoFrame:
    """Frame `i` of a camera-like picture: a still, detailed background and a moving,
    changing block (the person). 200 kbps is enough for its delta frames."""
    img = _background(width, height).copy()
    side = min(120, width // 4, height // 4)
    left, top = (i * 4) % (width - side), height // 3 + round(20 * math.sin(i / 10))
    x = np.arange(side)[None, :]
    y = np.arange(side)[:, None]
    block = img[top:top + side, left:left + side]
    block[..., 0] = (x * 2 + i * 3) % 256
    block[..., 1] = (y * 2) % 256
    block[..., 2] = 90
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
    return frame


def vp8_frame(payloads: list[bytes]) -> bytes:
    """The VP8 frame carried in one frame's RTP payloads (aiortc's own depayloader)."""
    return b"".join(vpx.vp8_depayload(p) for p in payloads)


def is_keyframe(frame: bytes) -> bool:
    # RFC 6386 9.1: bit 0 of the frame tag is 0 for a keyframe.
    return bool(frame) and frame[0] & 1 == 0


def _kbps(sizes: list[int]) -> int:
    return round(sum(sizes) * 8 / (len(sizes) / FPS) / 1000)


def _run(encoder: Encoder, changes: dict[int, int], frames: list[av.VideoFrame]) -> dict[str, Any]:
    sizes: list[int] = []
    keyframes: list[int] = []
    encode_s = 0.0
    for i, frame in enumerate(frames):
        if i in changes:
            encoder.target_bitrate = changes[i]  # type: ignore[attr-defined]
        started = time.perf_counter()
        payloads, _ = encoder.encode(frame)
        encode_s += time.perf_counter() - started
        data = vp8_frame(payloads)
        if is_keyframe(data):
            keyframes.append(i)
        sizes.append(len(data))
    first, last = min(changes), max(changes)
    after = [i for i in keyframes if i >= first]
    deltas = [sizes[i] for i in range(first, len(sizes)) if i not in after]
    mean_delta = sum(deltas) / len(deltas)
    return {
        "kbps_before": _kbps(sizes[FPS:first]),  # the first second is rate control settling
        "kbps_first_s_after": _kbps(sizes[last:last + FPS]),
        "kbps_after": _kbps(sizes[last + FPS:]),
        "keyframes_at": keyframes,
        "keyframes_after_change": len(after),
        "keyframe_bytes_after_change": [sizes[i] for i in after],
        "keyframe_to_delta_ratio": [round(sizes[i] / mean_delta, 1) for i in after],
        "encode_ms_per_frame": round(encode_s / len(frames) * 1000, 2),
    }


def _aiortc_encoder() -> Encoder:
    encoder = vpx.Vp8Encoder()
    encoder.target_bitrate = START_BPS
    return encoder


def scenario(name: str) -> dict[str, Any]:
    changes = SCENARIOS[name]
    count = max(changes) + SECONDS_AFTER_LAST_CHANGE * FPS
    frames = [pattern_frame(i) for i in range(count)]
    final = changes[max(changes)]
    return {
        "changes_kbps": {str(i / FPS) + "s": bps // 1000 for i, bps in changes.items()},
        "aiortc": _run(_aiortc_encoder(), changes, frames),
        "in_place": _run(Vp8Encoder(START_BPS), changes, frames),
        # Same frames, same windows, started at the final rate (its change sets that rate again).
        "fresh": _run(Vp8Encoder(final), {i: final for i in changes}, frames),
    }


def main() -> None:
    vpx.MIN_BITRATE = 100_000  # as kiosk_client.publishing sets it
    print("command: python -m bench.vp8_retarget")
    out: dict[str, Any] = {
        "bench": "vp8_retarget",
        **describe(),
        "aiortc_version": aiortc.__version__,
        "pyav": av.__version__,
        "libvpx": libvpx.load().vpx_codec_version_str().decode(),
        "size": f"{WIDTH}x{HEIGHT}@{FPS}",
    }
    for name in SCENARIOS:
        out[name] = scenario(name)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
