"""Who is heard: active-speaker detection and last-N audio from RFC 6464 audio levels.

Publishers put their microphone level in every audio packet's header (ssrc-audio-level,
0 = loudest, 127 = silence). A room forwards only the N loudest voices (default 3) plus
those always heard (the host), so a room of 30 does not send 29 audio streams to each
kiosk. The loudest voice above the speech threshold is the active speaker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..tasks import TaskOwner

if TYPE_CHECKING:
    from .producer import Producer

logger = logging.getLogger(__name__)

# Smoothed loudness (127 - dBov level) above which someone counts as speaking: ≈ -50 dBov.
SPEECH_LOUDNESS = 77.0


class SpeakerSelector:
    def __init__(
        self,
        producers: Callable[[], list["Producer"]],
        last_n: int,
        interval_s: float,
        on_active_speaker: Callable[[str | None], None] | None = None,
    ) -> None:
        self._producers = producers
        self.last_n = last_n
        self.interval_s = interval_s
        self.on_active_speaker = on_active_speaker
        self.active_speaker: str | None = None
        self._tasks = TaskOwner("speakers")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = self._tasks.spawn(self._run(), name="speaker-selection")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.select()
            except Exception:
                logger.exception("speaker selection failed")

    def select(self) -> None:
        """Marks which audio producers are forwarded; reports a new active speaker."""
        audio = [p for p in self._producers() if p.kind == "audio" and not p.closed]
        speaking = sorted(
            (p for p in audio if not p.paused),
            key=lambda p: p.loudness,
            reverse=True,
        )
        chosen = {p.id for p in speaking[: self.last_n]} | {p.id for p in audio if p.always_audible}
        for producer in audio:
            producer.set_audible(producer.id in chosen)
        loudest = speaking[0] if speaking and speaking[0].loudness >= SPEECH_LOUDNESS else None
        speaker = loudest.participant_id if loudest else None
        if speaker is not None and speaker != self.active_speaker:
            self.active_speaker = speaker
            if self.on_active_speaker is not None:
                self.on_active_speaker(speaker)

    def stop(self) -> None:
        """Final: the room's selection ends with its router."""
        self._tasks.cancel()
        self._task = None
