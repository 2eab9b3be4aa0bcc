"""Camera and microphone sources: test patterns for demos and tests, or real devices."""

from __future__ import annotations

import sys

from aiortc.contrib.media import MediaPlayer

from .speaker import silence_alsa_errors

VIDEO_TEST_SOURCE = "testsrc"
AUDIO_TEST_SOURCE = "tone"


def open_video(source: str, width: int = 640, height: int = 480, fps: int = 30) -> MediaPlayer:
    """`testsrc` or a camera device (e.g. /dev/video0 through v4l2)."""
    if source == VIDEO_TEST_SOURCE:
        return MediaPlayer(f"testsrc=size={width}x{height}:rate={fps}", format="lavfi")
    fmt = "v4l2" if sys.platform.startswith("linux") else None
    return MediaPlayer(source, format=fmt, options={"video_size": f"{width}x{height}", "framerate": str(fps)})


def open_audio(source: str) -> MediaPlayer:
    """`tone` (a 440 Hz sine) or an ALSA capture device (e.g. `default`, `hw:1`)."""
    if source == AUDIO_TEST_SOURCE:
        return MediaPlayer("sine=frequency=440:sample_rate=48000", format="lavfi")
    silence_alsa_errors()
    return MediaPlayer(source, format="alsa" if sys.platform.startswith("linux") else None)
