"""Decoded video frames → pygame surfaces, converted off the event loop.

Frames arrive far faster than anyone needs them drawn; only the newest frame per
participant is kept, and at most one conversion per participant runs at a time in a
worker thread (colour conversion and scaling in libswscale, which releases the GIL).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pygame
from av.video.reformatter import VideoReformatter


_local = threading.local()


def _convert(frame: Any, size: tuple[int, int]) -> tuple[bytes, tuple[int, int]]:
    """Scales to fit `size` keeping the aspect ratio, as packed RGB bytes.

    Uses this thread's own swscale context: `frame.reformat()` would use the one cached on
    the frame, and our own camera frame is being reformatted by the VP8 encoder's thread
    at the same time (two threads on one SwsContext deadlock)."""
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    width, height = size
    scale = min(width / frame.width, height / frame.height)
    w = max(2, int(frame.width * scale) // 2 * 2)
    h = max(2, int(frame.height * scale) // 2 * 2)
    rgb = reformatter.reformat(frame, width=w, height=h, format="rgb24")
    plane = rgb.planes[0]
    row = w * 3
    data = bytes(plane)
    if plane.line_size != row:
        data = b"".join(data[y * plane.line_size : y * plane.line_size + row] for y in range(h))
    return data, (w, h)


class VideoWall:
    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor or ThreadPoolExecutor(max_workers=2, thread_name_prefix="video")
        self._frames: dict[str, Any] = {}
        self._surfaces: dict[str, pygame.Surface] = {}
        self._wanted: dict[str, tuple[int, int]] = {}
        self._busy: set[str] = set()
        self.frames_in: dict[str, int] = {}
        self.frames_shown: dict[str, int] = {}
        self.last_frame_at: float | None = None

    def put(self, participant_id: str, frame: Any) -> None:
        self._frames[participant_id] = frame
        self.frames_in[participant_id] = self.frames_in.get(participant_id, 0) + 1
        self.last_frame_at = time.monotonic()

    def has(self, participant_id: str) -> bool:
        return participant_id in self._frames or participant_id in self._surfaces

    def surface(self, participant_id: str, size: tuple[int, int]) -> pygame.Surface | None:
        """The newest converted picture (maybe of another size; the caller scales)."""
        self._wanted[participant_id] = size
        return self._surfaces.get(participant_id)

    def tiles(self) -> dict[str, tuple[int, int]]:
        """The size each remote participant's picture was last drawn at (the `layout` the server hears)."""
        return {pid: size for pid, size in self._wanted.items() if pid != "self"}

    def update(self) -> None:
        """Starts conversions of new frames for the participants on screen."""
        loop = asyncio.get_running_loop()
        for pid, size in list(self._wanted.items()):
            frame = self._frames.pop(pid, None)
            if frame is None or pid in self._busy:
                if frame is not None:
                    self._frames[pid] = frame
                continue
            self._busy.add(pid)
            future = loop.run_in_executor(self._executor, _convert, frame, size)
            future.add_done_callback(lambda f, pid=pid: self._converted(pid, f))

    def _converted(self, pid: str, future: "asyncio.Future[tuple[bytes, tuple[int, int]]]") -> None:
        self._busy.discard(pid)
        if future.cancelled() or future.exception() is not None:
            return
        data, size = future.result()
        self._surfaces[pid] = pygame.image.frombytes(data, size, "RGB")
        self.frames_shown[pid] = self.frames_shown.get(pid, 0) + 1

    def forget(self, participant_id: str) -> None:
        self._frames.pop(participant_id, None)
        self._surfaces.pop(participant_id, None)
        self._wanted.pop(participant_id, None)

    def clear(self) -> None:
        self._frames.clear()
        self._surfaces.clear()
        self._wanted.clear()

    def close(self) -> None:
        self.clear()
        if isinstance(self._executor, ThreadPoolExecutor):
            self._executor.shutdown(wait=False, cancel_futures=True)
