"""What layers cost the kiosk: encode CPU and picture quality of L1T1, L1T2, L1T3 and a second, smaller encoder.

    python -m bench.kiosk_layers [--quick]

Encodes the camera-like pattern of `bench.vp8_retarget` (a still, detailed room, one moving
block) at 640x480@30 and 1 Mbps through the kiosk's `Vp8Encoder` with one, two and three
temporal layers, and the L1T3 encoder plus a second encoder on the same frames scaled to
½ or ¼ size at 200 kbps (a simulcast layer; the scaling is counted). CPU is this process's
CPU time per frame (libvpx runs on the calling thread and its own worker threads); quality
is the luma PSNR of libvpx's decode against the source over the last seconds (rate control
has settled by then). Baseline and ratios come from the same run: `l1t1`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import av
import numpy as np

from bench.machine import describe
from bench.vp8_retarget import pattern_frame, vp8_frame
from kiosk_client import libvpx
from kiosk_client.vp8encoder import Vp8Encoder

WIDTH, HEIGHT, FPS = 640, 480, 30
TOP_BPS, SMALL_BPS = 1_000_000, 200_000


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _run(frames: list[av.VideoFrame], layers: int, small_scale: int | None) -> dict[str, Any]:
    top = Vp8Encoder(TOP_BPS, temporal_layers=layers)
    small = Vp8Encoder(SMALL_BPS, temporal_layers=layers) if small_scale else None
    decoder = av.CodecContext.create("libvpx", "r")
    cpu = 0.0
    sizes: list[int] = []
    psnrs: list[float] = []
    for frame in frames:
        started = time.process_time()
        payloads, _ = top.encode(frame)
        if small is not None and small_scale is not None:
            scaled = frame.reformat(width=WIDTH // small_scale, height=HEIGHT // small_scale)
            scaled.pts, scaled.time_base = frame.pts, frame.time_base
            small.encode(scaled)
        cpu += time.process_time() - started
        data = vp8_frame(payloads)
        sizes.append(len(data))
        (picture,) = decoder.decode(av.Packet(data))
        psnrs.append(_psnr(picture.to_ndarray(format="gray"), frame.to_ndarray(format="gray")))
    tail = len(frames) // 2
    return {
        "cpu_ms_per_frame": round(cpu / len(frames) * 1000, 2),
        "core_pct_at_30fps": round(cpu / len(frames) * FPS * 100, 1),
        "top_kbps": round(sum(sizes[-tail:]) * 8 / (tail / FPS) / 1000),
        "top_psnr_db": round(sum(psnrs[-tail:]) / tail, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="4 s of video instead of 10 s")
    args = parser.parse_args()
    seconds = 4 if args.quick else 10
    print(f"command: python -m bench.kiosk_layers{' --quick' if args.quick else ''}")
    frames = [pattern_frame(i) for i in range(seconds * FPS)]
    runs = {
        "l1t1": (1, None),
        "l1t2": (2, None),
        "l1t3": (3, None),
        "l1t3_plus_half": (3, 2),
        "l1t3_plus_quarter": (3, 4),
    }
    results = {name: _run(frames, layers, scale) for name, (layers, scale) in runs.items()}
    base = results["l1t1"]
    for name, result in results.items():
        result["cpu_ratio"] = round(result["cpu_ms_per_frame"] / base["cpu_ms_per_frame"], 2)
        result["psnr_delta_db"] = round(result["top_psnr_db"] - base["top_psnr_db"], 2)
        print(f"{name:18} {result}")
    if any(r["top_kbps"] < TOP_BPS / 1000 / 2 for r in results.values()):
        raise SystemExit("an encoder ran far under its target: the measurement is not of a 1 Mbps stream")
    print(json.dumps({
        "bench": "kiosk_layers",
        **describe(),
        "libvpx": libvpx.load().vpx_codec_version_str().decode(),
        "size": f"{WIDTH}x{HEIGHT}@{FPS}",
        "seconds": seconds,
        **results,
    }))


if __name__ == "__main__":
    main()
