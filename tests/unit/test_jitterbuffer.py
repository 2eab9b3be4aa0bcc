"""The tuned receive buffers, fed packets directly on a virtual clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from kiosk_client.jitterbuffer import (
    AdaptiveAudioBuffer,
    AssemblyResult,
    AudioBufferSettings,
    AudioOutput,
    AudioPacket,
    Concealment,
    DecoderQueue,
    VideoAssemblerSettings,
    VideoFrameAssembler,
    VideoPacket,
    inspect_video_payload,
    put_dropping_oldest,
)

DEADLINE = VideoAssemblerSettings().deadline


def vp8(seq: int, ts: int, *, first: bool = False, last: bool = False, key: bool = False) -> VideoPacket:
    """A VP8 packet: 1-byte descriptor (S bit on the first packet) and a 1-byte VP8 header."""
    header = bytes([0x00 if key else 0x01]) if first else b""
    payload = bytes([0x10 if first else 0x00]) + header + f"{ts}:{seq};".encode()
    frame_start, keyframe = inspect_video_payload("video/VP8", payload)
    return VideoPacket(seq & 0xFFFF, ts, last, payload[1:], frame_start, keyframe)


def frame(seq: int, ts: int, count: int = 3, *, key: bool = False) -> list[VideoPacket]:
    return [vp8(seq + i, ts, first=i == 0, last=i == count - 1, key=key) for i in range(count)]


def feed(assembler: VideoFrameAssembler, packets: list[VideoPacket], now: float) -> AssemblyResult:
    merged = AssemblyResult()
    for packet in packets:
        result = assembler.add(packet, now)
        merged.frames += result.frames
        merged.keyframe_needed |= result.keyframe_needed
    return merged


def timestamps(result: AssemblyResult) -> list[int]:
    return [f.timestamp for f in result.frames]


# -- video ----------------------------------------------------------------------------------


def test_vp8_payload_descriptor_marks_frame_start_and_keyframe() -> None:
    assert inspect_video_payload("video/VP8", bytes([0x10, 0x00, 0xAA])) == (True, True)
    assert inspect_video_payload("video/VP8", bytes([0x10, 0x01, 0xAA])) == (True, False)
    assert inspect_video_payload("video/VP8", bytes([0x00, 0x00, 0xAA])) == (False, False)
    # S bit on a later partition is not a frame start.
    assert inspect_video_payload("video/VP8", bytes([0x11, 0x00, 0xAA])) == (False, False)


def test_frame_released_on_marker_bit_without_waiting_for_the_next_frame() -> None:
    a = VideoFrameAssembler()
    key = frame(100, 3000, key=True)
    assert feed(a, key[:2], 0.0).frames == []
    result = a.add(key[2], 0.001)
    assert timestamps(result) == [3000]
    assert result.frames[0].keyframe
    assert result.frames[0].data == b"".join(p.data for p in key)
    assert (result.frames[0].first_sequence, result.frames[0].last_sequence) == (100, 102)
    # A single-packet delta frame comes out the moment it arrives.
    assert timestamps(a.add(vp8(103, 6000, first=True, last=True), 0.033)) == [6000]
    assert not a.waiting_for_keyframe


def test_reordering_within_a_frame() -> None:
    a = VideoFrameAssembler()
    feed(a, frame(10, 0, key=True), 0.0)
    delta = frame(13, 3000, count=4)
    assert feed(a, [delta[3], delta[1], delta[0]], 0.01).frames == []
    result = a.add(delta[2], 0.012)
    assert timestamps(result) == [3000]
    assert result.frames[0].data == b"".join(p.data for p in delta)


def test_reordering_across_frames_keeps_decode_order() -> None:
    a = VideoFrameAssembler()
    feed(a, frame(0, 0, key=True), 0.0)
    second, third = frame(3, 3000), frame(6, 6000)
    assert feed(a, third, 0.01).frames == []
    assert timestamps(feed(a, second, 0.011)) == [3000, 6000]


def test_sequence_numbers_wrap() -> None:
    a = VideoFrameAssembler()
    released = feed(a, frame(65534, 0, count=4, key=True), 0.0)
    released.frames += feed(a, frame(2, 3000), 0.03).frames
    assert timestamps(released) == [0, 3000]
    assert released.frames[0].last_sequence == 1


def test_gap_then_deadline_drops_frame_and_asks_for_keyframe() -> None:
    a = VideoFrameAssembler()
    feed(a, frame(0, 0, key=True), 0.0)
    stuck = frame(3, 3000)
    assert feed(a, [stuck[0], stuck[2]], 0.010).frames == []
    # The next frame is complete but cannot decode before the stuck one: it waits.
    assert feed(a, frame(6, 6000), 0.040).frames == []
    assert a.next_deadline() == pytest.approx(0.010 + DEADLINE)
    assert a.poll(0.010 + DEADLINE - 0.001).frames == []

    result = a.poll(0.010 + DEADLINE)
    assert result.frames == []
    assert result.keyframe_needed
    assert a.waiting_for_keyframe
    assert a.stats.frames_dropped_incomplete == 1
    assert a.stats.frames_dropped_waiting_for_keyframe == 1  # the frame behind it

    # The missing packet finally shows up: too late, ignored.
    assert a.add(stuck[1], 0.2).frames == []
    assert a.stats.late_packets == 1


def test_deadline_can_be_held_while_queued_packets_are_processed() -> None:
    """After an event-loop stall the missing packet may be next in the socket."""
    a = VideoFrameAssembler()
    feed(a, frame(0, 0, key=True), 0.0)
    stuck = frame(3, 3000)
    a.add(stuck[0], 0.01)
    assert a.add(stuck[2], 0.2, expire=False).frames == []
    assert timestamps(a.add(stuck[1], 0.2, expire=False)) == [3000]
    assert a.stats.frames_dropped_incomplete == 0


def test_delta_frames_dropped_until_keyframe() -> None:
    a = VideoFrameAssembler()
    feed(a, frame(0, 0, key=True), 0.0)
    feed(a, [vp8(3, 3000, first=True)], 0.01)  # never completes
    assert a.poll(0.01 + DEADLINE).keyframe_needed

    for n in range(3):
        result = feed(a, frame(6 + 3 * n, 6000 + 3000 * n), 0.2 + n * 0.033)
        assert result.frames == []
        assert result.keyframe_needed
    assert a.stats.frames_dropped_waiting_for_keyframe == 3

    key = feed(a, frame(15, 15000, key=True), 0.4)
    assert timestamps(key) == [15000] and key.frames[0].keyframe
    assert not key.keyframe_needed
    assert timestamps(feed(a, frame(18, 18000), 0.43)) == [18000]


def test_initial_deltas_dropped_until_first_keyframe() -> None:
    a = VideoFrameAssembler()
    result = feed(a, frame(500, 90000), 0.0)
    assert result.frames == [] and result.keyframe_needed
    assert timestamps(feed(a, frame(503, 93000, key=True), 0.03)) == [93000]


def test_retransmission_within_deadline_releases_everything_in_order() -> None:
    a = VideoFrameAssembler()
    feed(a, frame(0, 0, key=True), 0.0)
    stuck = frame(3, 3000)
    feed(a, [stuck[0], stuck[2]], 0.01)
    feed(a, frame(6, 6000), 0.04)
    result = a.add(stuck[1], 0.05)
    assert timestamps(result) == [3000, 6000]
    assert not result.keyframe_needed


def test_complete_keyframe_supersedes_stuck_frames_without_waiting() -> None:
    a = VideoFrameAssembler()
    feed(a, frame(0, 0, key=True), 0.0)
    feed(a, [vp8(3, 3000, first=True)], 0.01)
    result = feed(a, frame(10, 9000, key=True), 0.02)
    assert timestamps(result) == [9000]
    assert a.stats.frames_superseded_by_keyframe == 1


def test_lost_whole_frame_blocks_until_deadline() -> None:
    a = VideoFrameAssembler()
    feed(a, frame(0, 0, key=True), 0.0)
    # Sequence numbers 3-5 (a whole frame) never arrive.
    assert feed(a, frame(6, 6000), 0.04).frames == []
    assert a.poll(0.04 + DEADLINE).keyframe_needed


def test_padding_between_frames_does_not_block() -> None:
    a = VideoFrameAssembler()
    feed(a, frame(0, 0, key=True), 0.0)
    a.add_padding(3, 0.01)
    a.add_padding(4, 0.01)
    assert timestamps(feed(a, frame(5, 3000), 0.02)) == [3000]


def test_frame_start_inferred_from_timestamp_change_without_start_flags() -> None:
    """H.264 carries no frame-start flag: the previous frame's end marks the next start."""

    def h264(seq: int, ts: int, last: bool = False, key: bool = False) -> VideoPacket:
        return VideoPacket(seq, ts, last, b"%d" % seq, None, key)

    a = VideoFrameAssembler()
    assert timestamps(feed(a, [h264(0, 0, key=True), h264(1, 0), h264(2, 0, last=True)], 0.0)) == [0]
    # Reordered: the frame's first packet comes last, the previous frame's end identifies it.
    assert feed(a, [h264(5, 3000, last=True), h264(4, 3000)], 0.03).frames == []
    assert timestamps(a.add(h264(3, 3000), 0.031)) == [3000]


def test_assembler_is_bounded() -> None:
    a = VideoFrameAssembler(VideoAssemblerSettings(max_packets=10))
    feed(a, frame(0, 0, key=True), 0.0)
    result = feed(a, [vp8(3 + i, 3000, first=i == 0) for i in range(12)], 0.01)
    assert a.packet_count <= 10
    assert result.keyframe_needed
    assert a.stats.frames_dropped_overflow >= 1


# -- audio ----------------------------------------------------------------------------------

PTIME = 0.020
SAMPLES = 960


def simulate(
    buffer: AdaptiveAudioBuffer, arrivals: Sequence[tuple[float, int, int | None]], until: float
) -> list[tuple[float, AudioOutput]]:
    """Drives the buffer like the receiver's timer: pops at every arrival and due time.

    `arrivals` are (arrival time, packet index, RFC 6464 level); index i has timestamp i × 960.
    """
    pending = sorted(arrivals)
    out: list[tuple[float, AudioOutput]] = []
    now, i = 0.0, 0
    while True:
        candidates = [t for t in (buffer.next_due(), pending[i][0] if i < len(pending) else None) if t is not None]
        if not candidates or min(candidates) > until:
            return out
        now = max(now, min(candidates))
        while i < len(pending) and pending[i][0] <= now:
            _, index, level = pending[i]
            buffer.push(index & 0xFFFF, (index * SAMPLES) & 0xFFFFFFFF, b"%d" % index, now, level)
            i += 1
        out += [(now, item) for item in buffer.pop(now)]


def played(out: list[tuple[float, AudioOutput]]) -> list[tuple[float, int]]:
    return [(t, item.timestamp // SAMPLES) for t, item in out if isinstance(item, AudioPacket)]


def test_clean_network_holds_one_packet() -> None:
    buffer = AdaptiveAudioBuffer()
    out = simulate(buffer, [(i * PTIME, i, None) for i in range(100)], until=100 * PTIME)
    assert [index for _, index in played(out)] == list(range(100))
    for t, index in played(out):
        assert t - index * PTIME == pytest.approx(PTIME, abs=1e-9)
    assert buffer.target_delay == pytest.approx(0.020)
    assert buffer.stats.concealed == 0


def test_missing_packet_is_concealed_at_its_playout_time() -> None:
    buffer = AdaptiveAudioBuffer()
    arrivals = [(i * PTIME, i, None) for i in range(20) if i != 7]
    arrivals.append((0.35, 7, None))  # far too late
    out = simulate(buffer, arrivals, until=20 * PTIME)
    concealed = [(t, item) for t, item in out if isinstance(item, Concealment)]
    assert len(concealed) == 1
    t, item = concealed[0]
    assert item.timestamp == 7 * SAMPLES and item.samples == SAMPLES
    assert t == pytest.approx(7 * PTIME + PTIME)  # when packet 7 was due: no waiting
    assert [index for _, index in played(out)] == [i for i in range(20) if i != 7]
    assert buffer.stats.late == 1


def test_concealment_can_be_held_for_packets_still_queued() -> None:
    buffer = AdaptiveAudioBuffer()
    for i in range(3):
        buffer.push(i, i * SAMPLES, b"%d" % i, i * PTIME)
        assert buffer.pop(i * PTIME + PTIME) == [AudioPacket(i * SAMPLES, b"%d" % i)]
    # The loop stalled 100 ms: packets 3-7 sat in the socket, they are not lost.
    assert buffer.pop(0.16, conceal=False) == []
    for i in range(3, 8):
        buffer.push(i, i * SAMPLES, b"%d" % i, 0.161)
    out = buffer.pop(0.161)
    assert not any(isinstance(item, Concealment) for item in out)
    assert buffer.stats.late == 0
    # The stall counts as jitter (the delay grows by a packet, so 7 waits for its new due
    # time) and the oldest is dropped to catch up rather than burst out late.
    assert buffer.target_delay == pytest.approx(2 * PTIME)
    assert [item.timestamp // SAMPLES for item in out] == [4, 5, 6]


def test_reordered_packet_within_delay_is_played_in_order() -> None:
    buffer = AdaptiveAudioBuffer()
    # Packet 4 is due at 0.100 and arrives at 0.095, after packet 5: still in time.
    arrivals = [(i * PTIME, i, None) for i in range(10) if i != 4] + [(4 * PTIME + 0.015, 4, None)]
    out = simulate(buffer, arrivals, until=10 * PTIME)
    assert [index for _, index in played(out)] == list(range(10))
    assert buffer.stats.concealed == 0


def test_delay_grows_under_jitter_and_shrinks_back_when_it_calms() -> None:
    rng = random.Random(7)
    buffer = AdaptiveAudioBuffer()
    noisy = [(i * PTIME + rng.uniform(0.0, 0.060), i, None) for i in range(250)]  # 5 s
    calm = [(i * PTIME, i, None) for i in range(250, 1000)]  # 15 s
    out = simulate(buffer, noisy, until=250 * PTIME)
    assert buffer.target_delay >= 0.060
    grown = buffer.target_delay
    shrunk_while_noisy = buffer.stats.dropped_shrinking
    # Most jittered packets make it; the misses are while the estimate ramps up.
    assert buffer.stats.concealed < 25

    out += simulate(buffer, calm, until=1000 * PTIME)
    assert buffer.target_delay == pytest.approx(0.020)
    assert buffer.stats.dropped_shrinking - shrunk_while_noisy == round((grown - 0.020) / PTIME)
    # Slowly: one packet at a time, a shrink interval apart.
    calm_played = {index for _, index in played(out)}
    shrink_drops = [i for i in range(260, 1000) if i not in calm_played]
    assert len(shrink_drops) == buffer.stats.dropped_shrinking - shrunk_while_noisy
    assert all(b - a >= 1.0 / PTIME for a, b in zip(shrink_drops, shrink_drops[1:], strict=False))
    # Shrinking drops packets one at a time; it never starves playout into concealment.
    assert not [t for t, item in out if isinstance(item, Concealment) and t > 250 * PTIME + 0.2]
    calm_latency = [t - index * PTIME for t, index in played(out) if index >= 900]
    assert max(calm_latency) == pytest.approx(0.020, abs=1e-6)


def test_shrinking_drops_a_quiet_packet_not_speech() -> None:
    settings = AudioBufferSettings()
    buffer = AdaptiveAudioBuffer(settings=settings)
    rng = random.Random(3)
    arrivals = [(i * PTIME + rng.uniform(0.0, 0.060), i, 10) for i in range(100)]
    # Calm, loud speech (-10 dBov) for 6 s, then quiet (-70 dBov).
    arrivals += [(i * PTIME, i, 10 if i < 400 else 70) for i in range(100, 600)]
    simulate(buffer, arrivals[:100], until=100 * PTIME)
    grown_packets = round(buffer.target_delay / PTIME)
    assert grown_packets > 1
    simulate(buffer, arrivals[100:], until=600 * PTIME)
    assert buffer.target_delay == pytest.approx(0.020)
    assert buffer.stats.dropped_shrinking == grown_packets - 1


def test_concealment_is_capped_and_stream_resyncs_after_a_pause() -> None:
    buffer = AdaptiveAudioBuffer()
    arrivals = [(i * PTIME, i, None) for i in range(10)]
    # The sender pauses 1 s and resumes where it stopped: the concealed packets were only late.
    arrivals += [(1.2 + (i - 10) * PTIME, i, None) for i in range(10, 20)]
    out = simulate(buffer, arrivals, until=1.2 + 10 * PTIME)
    assert buffer.stats.concealed == AudioBufferSettings().max_concealment
    assert buffer.stats.late == 0
    resumed = [(t, index) for t, index in played(out) if index >= 10]
    assert [index for _, index in resumed] == list(range(10, 20))
    for t, index in resumed:
        assert t - (1.2 + (index - 10) * PTIME) == pytest.approx(PTIME)


def test_burst_after_a_stall_is_dropped_not_queued() -> None:
    """Two seconds of audio delivered at once must not become two seconds of latency."""
    buffer = AdaptiveAudioBuffer()
    arrivals = [(i * PTIME, i, None) for i in range(10)]
    arrivals += [(2.2, i, None) for i in range(10, 110)]  # a stalled link flushes
    arrivals += [(2.2 + (i - 109) * PTIME, i, None) for i in range(110, 150)]
    out = simulate(buffer, arrivals, until=3.5)
    assert len(buffer) <= AudioBufferSettings().capacity
    after = [(t, index) for t, index in played(out) if index >= 110]
    assert after, "the stream must continue"
    # The burst is evidence of jitter, so the delay may grow, but only to its ceiling.
    for t, index in after:
        arrived = 2.2 + (index - 109) * PTIME
        assert t - arrived <= AudioBufferSettings().max_packets * PTIME + 1e-9
    burst_played = [index for _, index in played(out) if 10 <= index < 110]
    assert len(burst_played) <= AudioBufferSettings().capacity


# -- hand-off queues --------------------------------------------------------------------------


def test_audio_decoder_queue_drops_oldest() -> None:
    queue: DecoderQueue[int] = DecoderQueue(3)
    for item in range(5):
        queue.put(item)
    assert [queue.get() for _ in range(3)] == [2, 3, 4]
    assert queue.dropped == 2


def test_video_decoder_queue_drops_to_next_keyframe() -> None:
    queue: DecoderQueue[tuple[str, bool]] = DecoderQueue(3, lambda item: item[1])
    for name in ("k0", "d1", "d2"):
        queue.put((name, name.startswith("k")))
    queue.put(("d3", False))  # overflow: d1, d2 and k0 are useless without d3 and vice versa
    assert len(queue) == 0 and queue.awaiting_keyframe
    queue.put(("d4", False))
    assert len(queue) == 0
    queue.put(("k5", True))
    queue.put(("d6", False))
    assert not queue.awaiting_keyframe
    assert [queue.get(), queue.get()] == [("k5", True), ("d6", False)]
    assert queue.dropped == 5


def test_video_decoder_queue_keyframe_overflow_keeps_the_keyframe() -> None:
    queue: DecoderQueue[tuple[str, bool]] = DecoderQueue(2, lambda item: item[1])
    queue.put(("d1", False))
    queue.put(("d2", False))
    queue.put(("k3", True))
    assert not queue.awaiting_keyframe
    assert queue.get() == ("k3", True)


def test_decoder_queue_close_wakes_the_decoder() -> None:
    queue: DecoderQueue[int] = DecoderQueue(2)
    queue.put(1)
    queue.close()
    assert queue.get() is None
    queue.put(2)
    assert len(queue) == 0


async def test_output_queue_keeps_the_freshest_frames() -> None:
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    dropped = sum(put_dropping_oldest(queue, n, 2) for n in range(5))
    assert dropped == 3
    assert [queue.get_nowait(), queue.get_nowait()] == [3, 4]
