"""The kiosk's VP8 payloader: RFC 7741 descriptors, byte by byte, and as aiortc reads them."""

from __future__ import annotations

import pytest
from aiortc.codecs.vpx import VpxPayloadDescriptor

from kiosk_client.vp8payloader import (
    BASE_LAYER_DELTA,
    BASE_LAYER_KEYFRAME,
    MAX_PAYLOAD_BYTES,
    FrameLayer,
    Vp8Payloader,
    read_written_descriptor,
)

TL2 = FrameLayer(temporal_id=2, layer_sync=False, keyframe=False, non_reference=True)
TL1_SYNC = FrameLayer(temporal_id=1, layer_sync=True, keyframe=False, non_reference=False)


def test_a_small_keyframe_is_one_payload_with_every_field_where_rfc7741_puts_it() -> None:
    payloader = Vp8Payloader(picture_id=0x1234, tl0_pic_idx=0x56, key_idx=7)
    (payload,) = payloader.packetize(b"\x10\x02\x00frame", BASE_LAYER_KEYFRAME)
    # X|S, I|L|T|K, M|PictureID (15 bits), TL0PICIDX, TID=0|Y|KEYIDX=7.
    assert payload[:6] == bytes((0x90, 0xF0, 0x80 | 0x12, 0x34, 0x56, 0x20 | 7))
    assert payload[6:] == b"\x10\x02\x00frame"


def test_a_non_reference_frame_sets_n_and_carries_the_last_base_index() -> None:
    payloader = Vp8Payloader(picture_id=5, tl0_pic_idx=9)
    payloader.packetize(b"key", BASE_LAYER_KEYFRAME)
    (payload,) = payloader.packetize(b"delta", TL2)
    assert payload[0] == 0x80 | 0x20 | 0x10  # X, N, S
    descriptor, data = read_written_descriptor(payload)
    assert (descriptor.picture_id, descriptor.tl0_pic_idx, descriptor.temporal_id) == (6, 9, 2)
    assert not descriptor.layer_sync and descriptor.non_reference and data == b"delta"


def test_a_big_frame_is_split_with_the_start_bit_on_the_first_payload_only() -> None:
    frame = bytes(range(256)) * 20  # 5120 bytes
    payloads = Vp8Payloader(picture_id=77).packetize(frame, TL1_SYNC)
    assert len(payloads) == 4 and all(len(p) <= MAX_PAYLOAD_BYTES for p in payloads)
    descriptors = [read_written_descriptor(p)[0] for p in payloads]
    assert [d.start for d in descriptors] == [True, False, False, False]
    assert {(d.picture_id, d.temporal_id, d.layer_sync, d.tl0_pic_idx) for d in descriptors} == {(77, 1, True, 255)}
    assert b"".join(read_written_descriptor(p)[1] for p in payloads) == frame


def test_indices_advance_per_frame_base_frame_and_keyframe_and_wrap() -> None:
    payloader = Vp8Payloader(picture_id=32767, tl0_pic_idx=255, key_idx=31)
    layers = [BASE_LAYER_KEYFRAME, TL2, TL1_SYNC, TL2, BASE_LAYER_DELTA, TL2, BASE_LAYER_KEYFRAME]
    read = [read_written_descriptor(payloader.packetize(b"x", layer)[0])[0] for layer in layers]
    assert [d.picture_id for d in read] == [32767, 0, 1, 2, 3, 4, 5]
    assert [d.tl0_pic_idx for d in read] == [255, 255, 255, 255, 0, 0, 1]
    assert [d.key_idx for d in read] == [31, 31, 31, 31, 31, 31, 0]


def test_aiortcs_depayloader_reads_the_same_fields() -> None:
    payloader = Vp8Payloader(picture_id=300, tl0_pic_idx=4, key_idx=2)
    payloader.packetize(b"key", BASE_LAYER_KEYFRAME)
    (payload,) = payloader.packetize(b"tl2 frame", TL2)
    descriptor, data = VpxPayloadDescriptor.parse(payload)
    assert (descriptor.partition_start, descriptor.partition_id, descriptor.picture_id) == (1, 0, 301)
    assert (descriptor.tl0picidx, descriptor.tid, descriptor.keyidx) == (4, (2, 0), 2)
    assert data == b"tl2 frame"


def test_an_empty_frame_sends_nothing_and_moves_no_index() -> None:
    payloader = Vp8Payloader(picture_id=10)
    assert payloader.packetize(b"", BASE_LAYER_DELTA) == []
    assert read_written_descriptor(payloader.packetize(b"x", BASE_LAYER_DELTA)[0])[0].picture_id == 10


def test_impossible_layers_and_sizes_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="keyframe belongs to the base layer"):
        Vp8Payloader().packetize(b"x", FrameLayer(1, True, True, False))
    with pytest.raises(ValueError, match="TID 4"):
        Vp8Payloader().packetize(b"x", FrameLayer(4, True, False, False))
    with pytest.raises(ValueError, match="no room"):
        Vp8Payloader(max_payload=6)
    with pytest.raises(ValueError, match="not X\\+I"):
        read_written_descriptor(b"\x90\x80\x80\x01abc")
