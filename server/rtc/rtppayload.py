"""Just enough of the VP8 and H.264 RTP payload formats to spot a keyframe's first packet."""

from __future__ import annotations


def is_vp8_keyframe_start(payload: bytes) -> bool:
    """RFC 7741: the first packet of a VP8 frame whose inter-frame bit is clear."""
    if len(payload) < 2:
        return False
    first = payload[0]
    start_of_partition = bool(first & 0x10)
    partition_id = first & 0x07
    if not start_of_partition or partition_id != 0:
        return False
    offset = 1
    if first & 0x80:
        if len(payload) <= offset:
            return False
        ext = payload[offset]
        offset += 1
        if ext & 0x80:  # PictureID, 7 or 15 bits
            if len(payload) <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # TL0PICIDX
            offset += 1
        if ext & 0x30:  # TID / KEYIDX
            offset += 1
    if len(payload) <= offset:
        return False
    return not (payload[offset] & 0x01)


_H264_IDR = 5
_H264_SPS = 7


def is_h264_keyframe_start(payload: bytes) -> bool:
    """RFC 6184: a single NAL, STAP-A or FU-A start that carries an IDR slice or an SPS."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_H264_IDR, _H264_SPS):
        return True
    if nal_type == 24:  # STAP-A: 16-bit size, NAL, repeated
        offset = 1
        while offset + 2 < len(payload):
            size = int.from_bytes(payload[offset : offset + 2], "big")
            if payload[offset + 2] & 0x1F in (_H264_IDR, _H264_SPS):
                return True
            offset += 2 + size
        return False
    if nal_type == 28 and len(payload) > 1:  # FU-A
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == _H264_IDR
    return False


def is_keyframe_start(mime_type: str, payload: bytes) -> bool:
    mime = mime_type.lower()
    if mime == "video/vp8":
        return is_vp8_keyframe_start(payload)
    if mime == "video/h264":
        return is_h264_keyframe_start(payload)
    return False
