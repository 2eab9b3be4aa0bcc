"""Can PyAV retarget an open libvpx (VP8) encoder's bitrate in place?

    python -m bench.vp8_retarget

Encodes 6 s of a slowly moving test pattern at 640x480@30 with aiortc's VP8 settings (CBR,
realtime) three ways and prints one JSON line:
  - `steady_1m`: 1 Mbps throughout (the reference);
  - `in_place`: 1 Mbps, then after 3 s `codec_context.bit_rate = 200_000` on the open encoder
    (and the rate-control options re-assigned), no reopen;
  - `fresh_200k`: a new encoder at 200 kbps (what a real retarget should approach).
For each: kbps in the first and last 3 s and the frame indexes of keyframes. If `in_place`
stays near `steady_1m` after the change, the open encoder ignored it: a bitrate change needs
a new encoder, and a new encoder starts with a keyframe (what aiortc does on REMB).
"""

from __future__ import annotations

import fractions
import json
from typing import Any

import av
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 640, 480, 30, 6


def _encoder(bitrate: int) -> Any:
    # The options aiortc 1.16's Vp8Encoder uses (aiortc/codecs/vpx.py).
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.time_base = fractions.Fraction(1, FPS)
    codec.gop_size = 3000
    codec.options = _rate_options(bitrate)
    codec.qmin, codec.qmax = 2, 56
    return codec


def _rate_options(bitrate: int) -> dict[str, str]:
    return {"bufsize": str(bitrate), "minrate": str(bitrate), "maxrate": str(bitrate), "deadline": "realtime",
            "cpu-used": "4", "lag-in-frames": "0", "noise-sensitivity": "4", "partitions": "0", "static-thresh": "1",
            "undershoot-pct": "95", "overshoot-pct": "5", "end-usage": "cbr"}


def _frame(i: int) -> av.VideoFrame:
    # Smooth gradients drifting slowly plus a moving square: like a camera picture, easy
    # enough that 200 kbps is reachable (noise would overshoot any target).
    x = np.arange(WIDTH, dtype=np.int32)[None, :]
    y = np.arange(HEIGHT, dtype=np.int32)[:, None]
    img = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    img[..., 0] = ((x + i) // 3) % 256
    img[..., 1] = ((y + 2 * i) // 2) % 256
    img[..., 2] = 128
    left, top = (i * 6) % (WIDTH - 80), (i * 3) % (HEIGHT - 80)
    img[top:top + 80, left:left + 80] = (240, 200, 40)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = i, fractions.Fraction(1, FPS)
    return frame


def _run(start_bitrate: int, change_to: int | None) -> dict[str, Any]:
    codec = _encoder(start_bitrate)
    sizes: list[int] = []
    keyframes: list[int] = []
    half = SECONDS * FPS // 2
    for i in range(SECONDS * FPS):
        if change_to is not None and i == half:
            codec.bit_rate = change_to
            codec.options = _rate_options(change_to)
        for packet in codec.encode(_frame(i)):
            if packet.is_keyframe:
                keyframes.append(len(sizes))
            sizes.append(packet.size)
    third = FPS  # skip each half's first second (rate control settling)
    return {
        "kbps_first_half": round(sum(sizes[third:half]) * 8 / ((half - third) / FPS) / 1000),
        "kbps_second_half": round(sum(sizes[half + third:]) * 8 / ((len(sizes) - half - third) / FPS) / 1000),
        "keyframes_at": keyframes,
    }


def main() -> None:
    out = {
        "bench": "vp8_retarget",
        "pyav": av.__version__,
        "steady_1m": _run(1_000_000, None),
        "in_place": _run(1_000_000, 200_000),
        "fresh_200k": _run(200_000, None),
    }
    steady, in_place, fresh = out["steady_1m"], out["in_place"], out["fresh_200k"]
    # Retargeted = the second half moved at least halfway from the 1 Mbps reference to the 200 kbps one.
    midpoint = (steady["kbps_second_half"] + fresh["kbps_second_half"]) / 2
    out["in_place_retarget_works"] = in_place["kbps_second_half"] < midpoint
    print(json.dumps(out))


if __name__ == "__main__":
    main()
