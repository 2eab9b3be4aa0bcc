"""The VP8 descriptor rewriter: switching layers and dropping temporal frames keep one
continuous stream (sequence numbers, timestamps, PictureID, TL0PICIDX, KEYIDX). No sockets."""

from __future__ import annotations

from server.sfu.vp8rewriter import Vp8Rewriter, parse_descriptor

KEYFRAME_HEADER = b"\x50\x01\x00\x9d\x01\x2a" + (640).to_bytes(2, "little") + (360).to_bytes(2, "little")
DELTA_HEADER = b"\x51\x01\x00"


def vp8(pid: int, tl0: int, tid: int, sync: bool = False, keyidx: int = 0, start: bool = True,
        keyframe: bool = False) -> bytes:
    first = 0x80 | (0x10 if start else 0)
    ext = 0x80 | 0x40 | 0x20 | 0x10
    body = (KEYFRAME_HEADER if keyframe else DELTA_HEADER) if start else b"\xaa" * 8
    return bytes((first, ext, 0x80 | (pid >> 8), pid & 0xFF, tl0, (tid << 6) | (0x20 if sync else 0) | keyidx)) + body


def test_parse_reads_every_field_and_a_keyframe_size() -> None:
    d = parse_descriptor(vp8(0x1234, 7, 2, sync=True, keyidx=5, keyframe=True))
    assert d is not None
    assert (d.start, d.picture_id, d.picture_id_bits, d.tl0_pic_idx, d.tid, d.layer_sync, d.key_idx, d.size) == (
        True, 0x1234, 15, 7, 2, True, 5, 6)
    assert d.keyframe and (d.width, d.height) == (640, 360)
    plain = parse_descriptor(b"\x90\x80\x05" + DELTA_HEADER)  # aiortc's: 7-bit PictureID, no T
    assert plain is not None and plain.picture_id == 5 and plain.picture_id_bits == 7 and plain.tid is None
    assert not plain.keyframe
    assert parse_descriptor(b"\x80") is None and parse_descriptor(b"") is None


def test_first_source_goes_out_unchanged() -> None:
    r = Vp8Rewriter(initial_sequence=1000, initial_timestamp=5000)
    payload = vp8(300, 10, 0, keyframe=True)
    r.switch(40, 90_000, parse_descriptor(payload), 0)
    out = r.rewrite(40, 90_000, payload, parse_descriptor(payload))
    assert out is not None
    seq, ts, body = out
    assert (seq, ts) == (1000, 5000)
    assert body is payload  # no copy while nothing was switched or dropped
    nxt = vp8(301, 10, 2)
    assert r.rewrite(41, 93_000, nxt, parse_descriptor(nxt))[:2] == (1001, 8000)


def test_dropped_temporal_frames_leave_no_gaps() -> None:
    r = Vp8Rewriter(initial_sequence=0, initial_timestamp=0)
    pattern = [0, 2, 1, 2] * 4
    out_seqs, out_pids = [], []
    seq = 100
    for i, tid in enumerate(pattern):
        payload = vp8(500 + i, 20 + i // 4, tid, keyframe=(i == 0))
        d = parse_descriptor(payload)
        if i == 0:
            r.switch(seq, i * 3000, d, 0)
        for part in range(2):  # two packets per frame
            body = payload if part == 0 else vp8(500 + i, 20 + i // 4, tid, start=False)
            pd = parse_descriptor(body)
            if tid == 2:
                if part == 0:
                    r.drop_frame(pd)
                r.drop(seq)
            else:
                s, _, b = r.rewrite(seq, i * 3000, body, pd)
                out_seqs.append(s)
                if part == 0:
                    out_pids.append(parse_descriptor(b).picture_id)
            seq += 1
    assert out_seqs == list(range(len(out_seqs)))
    assert out_pids == list(range(500, 500 + len(out_pids)))


def test_a_switch_continues_every_counter() -> None:
    r = Vp8Rewriter(initial_sequence=65530, initial_timestamp=0xFFFFFF00)
    a = vp8(32760, 250, 0, keyidx=30, keyframe=True)
    r.switch(1, 0, parse_descriptor(a), 0)
    for i in range(10):
        body = vp8((32760 + i) & 0x7FFF, (250 + i) & 0xFF, 0, keyidx=30, keyframe=(i == 0))
        last = r.rewrite(1 + i, i * 3000, body, parse_descriptor(body))
    assert last is not None
    last_seq, last_ts, last_body = last
    old = parse_descriptor(last_body)
    # Another layer: its own numbering entirely.
    b = vp8(7, 99, 0, keyidx=3, keyframe=True)
    r.switch(40000, 123456, parse_descriptor(b), 3000)
    seq, ts, body = r.rewrite(40000, 123456, b, parse_descriptor(b))
    new = parse_descriptor(body)
    assert seq == (last_seq + 1) & 0xFFFF
    assert ts == (last_ts + 3000) & 0xFFFFFFFF
    assert new.picture_id == (old.picture_id + 1) & 0x7FFF
    assert new.tl0_pic_idx == (old.tl0_pic_idx + 1) & 0xFF
    assert new.key_idx == (old.key_idx + 1) & 0x1F
    assert body[new.size:] == b[parse_descriptor(b).size:]  # the VP8 payload itself is untouched
    # A late packet of the old layer's numbering is not forwarded into the new one.
    late = vp8(5, 99, 0, start=False)
    assert r.rewrite(39990, 120000, late, parse_descriptor(late)) is None


def test_reordered_packets_map_to_their_own_places() -> None:
    r = Vp8Rewriter(initial_sequence=0, initial_timestamp=0)
    k = vp8(1, 1, 0, keyframe=True)
    r.switch(10, 0, parse_descriptor(k), 0)
    assert r.rewrite(10, 0, k, parse_descriptor(k))[0] == 0
    d = vp8(2, 1, 1)
    # 12 arrives before 11.
    assert r.rewrite(12, 3000, d, parse_descriptor(d))[0] == 2
    assert r.rewrite(11, 0, vp8(1, 1, 0, start=False), parse_descriptor(vp8(1, 1, 0, start=False)))[0] == 1
