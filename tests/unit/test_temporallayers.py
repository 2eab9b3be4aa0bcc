"""The kiosk encoder's temporal layers, encoded by real libvpx and decoded with layers dropped."""

from __future__ import annotations

import av
import pytest

from bench.vp8_retarget import is_keyframe, pattern_frame
from kiosk_client import libvpx
from kiosk_client.temporallayers import TemporalLayers
from kiosk_client.vp8encoder import Vp8Encoder
from kiosk_client.vp8payloader import WrittenDescriptor, read_written_descriptor


def encode(encoder: Vp8Encoder, count: int, keyframes_at: tuple[int, ...] = ()) -> list[tuple[WrittenDescriptor, bytes]]:
    """Per frame: the first packet's descriptor and the whole VP8 frame."""
    frames = []
    for i in range(count):
        payloads, _ = encoder.encode(pattern_frame(i), force_keyframe=i in keyframes_at)
        parsed = [read_written_descriptor(p) for p in payloads]
        assert [d.start for d, _ in parsed] == [True] + [False] * (len(parsed) - 1)
        assert len({(d.picture_id, d.temporal_id, d.tl0_pic_idx) for d, _ in parsed}) == 1
        frames.append((parsed[0][0], b"".join(data for _, data in parsed)))
    return frames


def test_l1t3_frames_follow_the_0_2_1_2_pattern_with_base_indices_and_sync_flags() -> None:
    frames = encode(Vp8Encoder(800_000), 12)
    descriptors = [d for d, _ in frames]
    assert [d.temporal_id for d in descriptors] == [0, 2, 1, 2] * 3
    assert [d.layer_sync for d in descriptors] == [True, True, True, False] * 3
    assert [d.non_reference for d in descriptors] == [False, True, False, True] * 3
    first = descriptors[0].tl0_pic_idx
    # TL0PICIDX moves with each base frame; the frames above carry their base frame's index.
    assert [(d.tl0_pic_idx - first) % 256 for d in descriptors] == [0] * 4 + [1] * 4 + [2] * 4
    assert [(d.picture_id - descriptors[0].picture_id) % 32768 for d in descriptors] == list(range(12))
    assert [is_keyframe(f) for _, f in frames] == [True] + [False] * 11
    assert {d.key_idx for d in descriptors} == {descriptors[0].key_idx}


def test_a_requested_keyframe_is_base_layer_restarts_the_pattern_and_moves_keyidx() -> None:
    frames = encode(Vp8Encoder(800_000), 10, keyframes_at=(5,))
    descriptors = [d for d, _ in frames]
    assert [is_keyframe(f) for _, f in frames] == [i in (0, 5) for i in range(10)]
    assert [d.temporal_id for d in descriptors] == [0, 2, 1, 2, 0, 0, 2, 1, 2, 0]
    assert [(d.tl0_pic_idx - descriptors[0].tl0_pic_idx) % 256 for d in descriptors] == [0, 0, 0, 0, 1, 2, 2, 2, 2, 3]
    assert descriptors[5].key_idx == (descriptors[0].key_idx + 1) % 32 == descriptors[9].key_idx


@pytest.mark.parametrize("kept_layers", [1, 2])
def test_dropping_the_upper_layers_leaves_a_stream_that_decodes_exactly_as_the_full_one(kept_layers: int) -> None:
    # If any kept frame referenced a dropped one, its picture would differ from the full decode.
    frames = encode(Vp8Encoder(800_000), 40)
    full, thinned = av.CodecContext.create("libvpx", "r"), av.CodecContext.create("libvpx", "r")
    kept = 0
    for descriptor, data in frames:
        (picture,) = full.decode(av.Packet(data))
        if descriptor.temporal_id < kept_layers:
            (same,) = thinned.decode(av.Packet(data))
            assert same.to_ndarray().tobytes() == picture.to_ndarray().tobytes()
            kept += 1
    assert kept == {1: 10, 2: 20}[kept_layers]


def test_l1t2_alternates_base_and_a_droppable_sync_layer() -> None:
    descriptors = [d for d, _ in encode(Vp8Encoder(600_000, temporal_layers=2), 6)]
    assert [(d.temporal_id, d.layer_sync, d.non_reference) for d in descriptors] == [(0, True, False), (1, True, True)] * 3


def test_retargeting_scales_every_layers_rate_in_place_without_a_keyframe() -> None:
    encoder = Vp8Encoder(1_000_000)
    frames = encode(encoder, 5)
    assert (encoder._config.rc_target_bitrate, list(encoder._config.ts_target_bitrate)[:3]) == (1000, [600, 750, 1000])
    encoder.target_bitrate = 300_000
    frames += encode(encoder, 5)
    assert (encoder._config.rc_target_bitrate, list(encoder._config.ts_target_bitrate)[:3]) == (300, [180, 225, 300])
    assert [is_keyframe(f) for _, f in frames] == [True] + [False] * 9
    # The libvpx encoder itself took the new rates (its own copy of the configuration).
    assert encoder._ctx is not None
    kept = libvpx.EncoderConfig.from_address(encoder._ctx.config)
    assert (kept.ts_number_layers, list(kept.ts_target_bitrate)[:3]) == (3, [180, 225, 300])


def test_layer_rates_stay_strictly_increasing_at_the_lowest_targets() -> None:
    config = libvpx.EncoderConfig()
    TemporalLayers(3).configure(config, 2)
    assert list(config.ts_target_bitrate)[:3] == [1, 2, 3]
    assert list(config.ts_rate_decimator)[:3] == [4, 2, 1] and list(config.ts_layer_id)[:4] == [0, 2, 1, 2]
    with pytest.raises(ValueError, match="supports"):
        TemporalLayers(4)
